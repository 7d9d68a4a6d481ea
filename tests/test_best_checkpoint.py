"""best.ckpt beside last.ckpt: the state after the validation with the lowest val/loss of a run directory."""

import pytest
import torch

from charrnn import checkpoint
from tests.test_tensorboard import read_run
from tests.train_helpers import assert_same_training_state, corpus, newest, run_script, snapshot, tiny_args, train

N = 40
PAST_BEST = 30
EVERY_5 = ("--trainer.val_check_interval", 5)


@pytest.fixture(scope="module")
def unlike(tmp_path_factory):
    """English to train on, then 80 characters of "~" to validate on: "~" is never a training target, so every step
    lowers its probability and val/loss must rise (by about 1 nat from step 5 to 30), on any CPU."""
    path = tmp_path_factory.mktemp("unlike") / "input.txt"
    path.write_text(corpus(720) + "~" * 80)
    return path


def best_of(root):
    return checkpoint.load(str(root / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"))


def test_best_is_the_lowest_validation_and_resumes_exactly(unlike, tmp_path):
    assert train(tiny_args(unlike, tmp_path / "straight", *EVERY_5, steps=PAST_BEST)) == 0
    run = read_run(tmp_path / "straight" / "lightning_logs" / "version_0")
    losses = {e.step: e.value for e in run.Scalars("val/loss")}
    assert list(losses) == [5, 10, 15, 20, 25, 30]
    best_step = min(losses, key=losses.get)
    assert best_step < PAST_BEST, f"the validation loss never went up: {losses}"
    best = best_of(tmp_path / "straight")
    assert best["global_step"] == best_step
    assert best["callbacks"]["BestCheckpoint"]["val_loss"] == losses[best_step]
    # val/loss_best: after each validation, the lowest val/loss so far
    lowest = [min(v for s, v in losses.items() if s <= step) for step in losses]
    assert [e.value for e in run.Scalars("val/loss_best")] == lowest

    # best.ckpt holds the full training state: resumed, it continues exactly as the uninterrupted run did.
    before = snapshot(tmp_path / "straight")
    path = tmp_path / "straight" / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    assert train(tiny_args(unlike, tmp_path / "straight", *EVERY_5, "--ckpt_path", path, steps=PAST_BEST)) == 0
    assert {k: v for k, v in snapshot(tmp_path / "straight").items() if k in before} == before  # a new version
    branch = torch.load(tmp_path / "straight/lightning_logs/version_1/checkpoints/last.ckpt", weights_only=True)
    straight = torch.load(tmp_path / "straight/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert_same_training_state(straight, branch)


def test_a_resumed_run_keeps_a_better_best(text, tmp_path):
    """The loss to beat comes from the best.ckpt on disk: a worse validation after a resume never replaces it."""
    assert train(tiny_args(text, tmp_path, steps=20)) == 0
    path = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    best = torch.load(path, weights_only=True)
    best["callbacks"]["BestCheckpoint"]["val_loss"] = 0.5  # a loss no tiny run reaches
    checkpoint.save_atomic(best, str(path))
    kept = path.read_bytes()
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", steps=N)) == 0
    assert path.read_bytes() == kept
    acc = read_run(tmp_path / "lightning_logs" / "version_0")
    assert [e.value for e in acc.Scalars("val/loss_best") if e.step > 20] == [0.5, 0.5]
    assert newest(tmp_path)["global_step"] == N


def test_sample_takes_best_ckpt_and_a_run_directory_means_last(unlike, tmp_path):
    assert train(tiny_args(unlike, tmp_path, *EVERY_5, steps=PAST_BEST)) == 0
    best = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    last = best.with_name("last.ckpt")
    assert torch.load(best, weights_only=True)["global_step"] < PAST_BEST
    outputs = {}
    for name, source in (("best", best), ("last", last), ("directory", tmp_path)):
        code, outputs[name], err = run_script("sample.py", [source, "--length", 200, "--seed", 3])
        assert code == 0 and err == "", err
    assert outputs["directory"] == outputs["last"] != outputs["best"]
    assert len(outputs["best"]) == 200
