"""Several windows per trainer batch change nothing but speed: same windows, same steps, same curves."""

import glob
import os

import lightning as L
import pytest
import torch

from charrnn import cli, network, optim
from charrnn.data import CharDataModule, TrainBatches, choose_windows_per_batch
from charrnn.module import CharRNN
from tests.train_helpers import quiet_trainer

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))  # 2.1 k chars


def flat_windows(batches):
    return [(w, x, y) for xs, ys, ws in batches for x, y, w in zip(xs, ys, ws)]


@pytest.mark.parametrize("start", [0, 3, 17, 41])
@pytest.mark.parametrize("W", [1, 4, 7])
def test_batches_hold_the_same_windows_in_the_same_order(start, W):
    ids = torch.arange(1000) % 251
    inputs, targets = ids[:960].view(4, 240), ids[1:961].view(4, 240)  # 4 streams of 24 windows of 10
    single = flat_windows(TrainBatches(inputs, targets, 10, lambda: start))
    batches = list(TrainBatches(inputs, targets, 10, lambda: start, per_batch=W))
    steps = [start]
    for _, _, windows in batches:
        steps.append(steps[-1] + len(windows))
    assert all(s % W == 0 for s in steps[1:]), "batches end on multiples of W optimizer steps"
    assert steps[-1] % (W * len(TrainBatches(inputs, targets, 10, per_batch=W))) == 0, "an epoch ends there"
    grouped = flat_windows(batches)
    # Step s trains on window s % 24: the same sequence as one window per batch, wrapping around the text.
    assert [w for w, _, _ in grouped] == [s % 24 for s in range(start, steps[-1])]
    by_window = {w: (x, y) for w, x, y in single + flat_windows(TrainBatches(inputs, targets, 10))}
    for w, x, y in grouped:
        assert torch.equal(x, by_window[w][0]) and torch.equal(y, by_window[w][1])
        assert torch.equal(x, inputs[:, w * 10 : (w + 1) * 10])


def test_windows_per_batch_divides_the_step_counts():
    assert choose_windows_per_batch(25, (10000, -1)) == 125  # min-char-rnn: 3200 / 25 = 128 -> largest divisor of 10000
    assert choose_windows_per_batch(800, (500, 5000)) == 4
    assert choose_windows_per_batch(800, (500, 333)) == 1  # gcd 1: exact counts win over speed
    assert choose_windows_per_batch(3200, (500,)) == 1
    assert choose_windows_per_batch(25, ()) == 128


def fit(path, W, max_steps, B=2, T=5, H=8):
    torch.manual_seed(0)
    data = CharDataModule(path, seq_length=T, batch_size=B)
    data.windows_per_batch = W
    model = CharRNN(vocab_size=data.vocab_size, hidden_size=H, vocab=data.chars)
    trainer = quiet_trainer(max_steps=max_steps, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    return trainer, model, data


def test_training_is_identical_whatever_the_windows_per_batch(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    max_steps = 230  # crosses the end of the text (189 windows of 2 x 5) and is not a multiple of 4 or 6
    runs = [fit(str(path), W, max_steps) for W in (1, 4, 6)]
    assert runs[0][2].train_inputs.shape[1] // 5 < max_steps
    for trainer, model, _ in runs:
        assert trainer.global_step == max_steps
        for name in model.params:
            assert torch.equal(getattr(model, name), getattr(runs[0][1], name)), name
        assert torch.equal(model.h, runs[0][1].h)


@pytest.mark.slow
def test_train_py_logs_the_mean_loss_against_optimizer_steps(tmp_path):
    """The curves written with several windows per batch: train/loss every log_every_n_steps optimizer steps, equal
    to the mean per-character loss of those steps (recomputed here with the plain math), val/loss at each check."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    B, T, H, lr = 2, 5, 8, 0.1
    args = ["--data.path", str(path), "--data.batch_size", str(B), "--data.seq_length", str(T),
            "--model.hidden_size", str(H), "--model.learning_rate", str(lr), "--trainer.max_steps", "60",
            "--trainer.val_check_interval", "20",
            "--trainer.log_every_n_steps", "10", "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false", "--seed_everything", "7",
            "--model.initial_accumulator_value", "0"]  # fmt: skip
    assert choose_windows_per_batch(B * T, (20, 60)) == 20
    assert cli.main(args) == 0
    events = EventAccumulator(glob.glob(str(tmp_path / "runs" / "lightning_logs" / "version_0"))[0])
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(logged) == [10, 20, 30, 40, 50, 60]
    assert [e.step for e in events.Scalars("val/loss")] == [20, 40, 60]
    assert [e.step for e in events.Scalars("val/bpc")] == [20, 40, 60]

    # The same 60 steps by hand: seed_everything(7) makes the model's initial parameters.
    L.seed_everything(7)
    data = CharDataModule(str(path), seq_length=T, batch_size=B)
    arch = network.Architecture(data.vocab_size, H)
    params = arch.init_params()
    opt = optim.Adagrad(params.values(), lr=lr)
    losses = []
    h = arch.zero_state(B)
    for window, inputs, targets in flat_windows(TrainBatches(data.train_inputs, data.train_targets, T))[:60]:
        h = arch.zero_state(B) if window == 0 else h
        loss, h = network.train_step(arch, params, opt, inputs, targets, h)
        losses.append(float(loss) / (B * T))
    for step, value in logged.items():
        assert value == pytest.approx(sum(losses[step - 10 : step]) / 10, rel=1e-5)
    assert os.path.exists(tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
