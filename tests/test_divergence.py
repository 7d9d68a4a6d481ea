"""Divergence: a non-finite loss or gradient stops training with one line naming the step, exit code 2, and the
last good checkpoint intact (a NaN never replaces it)."""

import torch

from charrnn import rundir
from tests.train_helpers import assert_one_line_error, newest, run_train_py, tiny_args, train

ABSURD = ("--model.learning_rate", 1e38)  # step 1 moves weights by ~1e38; step 2 overflows float32 (1e30 does not)


def test_fresh_run_diverges_at_step_2_and_writes_nothing(text, tmp_path):
    root = tmp_path / "runs"
    code, _, err = run_train_py(tiny_args(text, root, *ABSURD, steps=30))
    assert code == 2
    assert_one_line_error(err, "training diverged at step 2:", "no checkpoint was written")
    assert rundir.newest_last_checkpoint(str(root)) is None


def test_last_good_checkpoint_survives_a_divergence_between_saves(text, tmp_path, capsys):
    """Checked only every 5th step (the log interval), the divergence is still named at the step it happened,
    and the checkpoint resumed from is byte for byte what it was."""
    assert train(tiny_args(text, tmp_path, steps=10)) == 0
    path = rundir.newest_last_checkpoint(str(tmp_path))
    good = open(path, "rb").read()
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path, *ABSURD, "--ckpt_path", "last", steps=30)) == 2
    assert_one_line_error(capsys.readouterr().err, "training diverged at step 12:", f"{path} is unchanged")
    assert open(path, "rb").read() == good


def test_divergence_is_caught_before_the_checkpoint_after_it(text, tmp_path, capsys):
    """With a checkpoint every step, step 11 (huge but finite) is saved and step 12 (not finite) is not."""
    assert train(tiny_args(text, tmp_path, steps=10)) == 0
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path, *ABSURD, "--checkpoint_every", 1, "--ckpt_path", "last", steps=30)) == 2
    assert_one_line_error(capsys.readouterr().err, "diverged at step 12:", "(step 11) is the last good checkpoint")
    ckpt = newest(tmp_path)
    assert ckpt["global_step"] == 11
    assert all(torch.isfinite(p).all() for p in ckpt["state_dict"].values())
