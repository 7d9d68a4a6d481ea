"""Which last.ckpt a run directory means."""

import os

from charrnn.rundir import LAST, newest_last_checkpoint


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return str(path)


def test_run_directory_means_its_highest_version(tmp_path):
    for n in (0, 2, 10):
        touch(tmp_path / "lightning_logs" / f"version_{n}" / "checkpoints" / LAST)
    expected = str(tmp_path / "lightning_logs" / "version_10" / "checkpoints" / LAST)
    assert newest_last_checkpoint(str(tmp_path)) == expected  # numeric, not lexical, order
    assert newest_last_checkpoint(str(tmp_path / "lightning_logs")) == expected
    version_2 = tmp_path / "lightning_logs" / "version_2"
    assert newest_last_checkpoint(str(version_2)) == str(version_2 / "checkpoints" / LAST)


def test_unrelated_deep_checkpoints_are_not_picked(tmp_path):
    touch(tmp_path / "some" / "other" / "project" / "lightning_logs" / "version_0" / "checkpoints" / LAST)
    assert newest_last_checkpoint(str(tmp_path)) is None
