"""best.ckpt beside last.ckpt: the state after the validation with the lowest val/loss of a run directory."""

import torch

from charrnn import checkpoint
from tests.test_tensorboard import read_run
from tests.train_helpers import assert_same_training_state, newest, run_script, snapshot, tiny_args, train

N = 40
OVERFIT = ("--model.learning_rate", 0.5, "--trainer.val_check_interval", 5)  # val/loss falls until 20, then rises
PAST_BEST = 30


def best_of(root):
    return checkpoint.load(str(root / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"))


def test_best_is_the_lowest_validation_and_resumes_exactly(text, tmp_path):
    assert train(tiny_args(text, tmp_path / "straight", *OVERFIT, steps=PAST_BEST)) == 0
    losses = {e.step: e.value for e in read_run(tmp_path / "straight" / "lightning_logs" / "version_0").Scalars("val/loss")}
    best_step = min(losses, key=losses.get)
    assert best_step < PAST_BEST, f"the validation loss never went up again: {losses}"
    best = best_of(tmp_path / "straight")
    assert best["global_step"] == best_step
    assert best["callbacks"]["BestCheckpoint"]["val_loss"] == losses[best_step]

    # best.ckpt holds the full training state: resumed, it continues exactly as the uninterrupted run did.
    before = snapshot(tmp_path / "straight")
    path = tmp_path / "straight" / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    assert train(tiny_args(text, tmp_path / "straight", *OVERFIT, "--ckpt_path", path, steps=PAST_BEST)) == 0
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


def test_sample_takes_best_ckpt_and_a_run_directory_means_last(text, tmp_path):
    assert train(tiny_args(text, tmp_path, *OVERFIT, steps=PAST_BEST)) == 0
    best = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    last = best.with_name("last.ckpt")
    assert torch.load(best, weights_only=True)["global_step"] < PAST_BEST
    outputs = {}
    for name, source in (("best", best), ("last", last), ("directory", tmp_path)):
        code, outputs[name], err = run_script("sample.py", [source, "--length", 200, "--seed", 3])
        assert code == 0 and err == "", err
    assert outputs["directory"] == outputs["last"] != outputs["best"]
    assert len(outputs["best"]) == 200
