"""Lightning's EarlyStopping on val/loss: where it stops, last.ckpt and best.ckpt then, and an exact resume after."""

import pytest

from charrnn import checkpoint
from tests.test_tensorboard import read_run
from tests.train_helpers import assert_one_line_error, assert_same_training_state, newest, snapshot, tiny_args, train

N = 60
OVERFIT = ("--model.learning_rate", 0.5, "--trainer.val_check_interval", 5)  # val/loss falls, then wanders up
PATIENCE = 2
EARLY_STOPPING = ("--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor",
                  "val/loss", "--trainer.callbacks.patience", PATIENCE)  # fmt: skip


def stops(losses: dict) -> list[int]:
    """The steps where EarlyStopping stops on these validations, resumed each time with the same flags: after
    PATIENCE in a row without a new lowest loss, and then (its count restored, not reset) at each one without."""
    best, waited, found = float("inf"), 0, []
    for step, loss in sorted(losses.items()):
        best, waited = (loss, 0) if loss < best else (best, waited + 1)
        if waited >= PATIENCE:
            found.append(step)
    return found


def val_losses(root) -> dict:
    return {e.step: e.value for e in read_run(root / "lightning_logs" / "version_0").Scalars("val/loss")}


@pytest.fixture(scope="module")
def straight(text, tmp_path_factory):
    """An uninterrupted run without early stopping, and its validation losses."""
    root = tmp_path_factory.mktemp("straight")
    assert train(tiny_args(text, root, *OVERFIT, steps=N)) == 0
    losses = val_losses(root)
    assert len(stops(losses)) >= 2, f"these validations do not stop twice: {losses}"
    return newest(root), losses


def test_it_stops_with_last_and_best_right_and_resumes_exactly(text, tmp_path, straight):
    """The stopped run and the uninterrupted one train the same steps up to the stop."""
    uninterrupted, losses = straight
    stop = stops(losses)[0]
    assert train(tiny_args(text, tmp_path, *OVERFIT, *EARLY_STOPPING, steps=N)) == 0
    assert val_losses(tmp_path) == {step: loss for step, loss in losses.items() if step <= stop}
    assert newest(tmp_path)["global_step"] == stop
    best = checkpoint.load(str(tmp_path / "lightning_logs/version_0/checkpoints/best.ckpt"))
    best_step = min((step for step in losses if step <= stop), key=losses.get)
    assert best["global_step"] == best_step and best["callbacks"]["BestCheckpoint"]["val_loss"] == losses[best_step]

    # Resumed without early stopping, it goes on to N exactly as the run that never stopped.
    assert train(tiny_args(text, tmp_path, *OVERFIT, "--ckpt_path", "last", steps=N)) == 0
    assert_same_training_state(uninterrupted, newest(tmp_path))


def test_resumed_with_early_stopping_it_keeps_its_count(text, tmp_path, straight):
    _, losses = straight
    first, second = stops(losses)[:2]
    assert train(tiny_args(text, tmp_path, *OVERFIT, *EARLY_STOPPING, steps=N)) == 0
    assert newest(tmp_path)["global_step"] == first
    assert train(tiny_args(text, tmp_path, *OVERFIT, *EARLY_STOPPING, "--ckpt_path", "last", steps=N)) == 0
    assert newest(tmp_path)["global_step"] == second


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--trainer.callbacks.monitor", "val_loss"), "EarlyStopping can watch val/loss or val/bpc"),
        (("--trainer.callbacks.monitor", "val/loss", "--trainer.callbacks.mode", "max"), "mode must be min"),
        (("--trainer.callbacks.monitor", "val/loss", "--trainer.callbacks.patience", -1), "patience must be 0 or"),
        (
            ("--trainer.callbacks.monitor", "val/loss", "--trainer.callbacks.check_on_train_epoch_end", "true"),
            "check_on_train_epoch_end must be false",
        ),
        (("--trainer.callbacks.monitor", "val/loss", "--data.val_fraction", 0), "--data.val_fraction 0 turns off"),
        ((), "EarlyStopping needs --trainer.callbacks.monitor"),
        (
            ("--trainer.callbacks.monitor", "val/loss", "--trainer.callbacks.min_delta", "nan"),
            "--trainer.callbacks.min_delta must be a finite number, got nan",
        ),
    ],
)
def test_settings_it_cannot_run_with_are_one_line(text, tmp_path, capsys, flags, fragment):
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path / "root", "--trainer.callbacks+=EarlyStopping", *flags, steps=10)) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)
    assert snapshot(tmp_path) == before
