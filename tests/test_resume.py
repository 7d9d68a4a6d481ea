"""Exact resume: a run stopped at step k and resumed to N ends bitwise where an uninterrupted run to N ends."""

import os

import pytest
import torch

from charrnn import checkpoint, rundir
from tests.train_helpers import (
    EPOCH,
    assert_one_line_error,
    assert_same_training_state,
    newest,
    snapshot,
    tiny_args,
    train,
)

N = 60
PRINT_EVERY = 4  # samples and smoothed losses printed during training, compared line by line too


def _printed_from(stdout: str, step: int) -> str:
    """min-char-rnn style output (``----`` sample ``----``, then ``iter N, loss``) from iteration ``step`` on."""
    end = stdout.index(f"\niter {step}, loss")
    start = stdout.rindex("----", 0, stdout.rindex("----", 0, end))
    return "\n".join(line for line in stdout[start:].splitlines() if not line.startswith(("finished", "stopped")))


CELLS = {
    name: ("--model.cell", name, "--model.num_layers", 2, "--model.dropout", 0.2) for name in ("rnn", "lstm", "gru")
}


@pytest.mark.parametrize(
    "k, model",
    [(17, ()), (EPOCH, ()), *((17, flags) for flags in CELLS.values())],
    ids=["mid-epoch", "epoch-boundary", *(f"{name}-2-layers-dropout-mid-epoch" for name in CELLS)],
)
def test_stop_and_resume_is_bitwise_exact(text, tmp_path, capsys, k, model):
    extra = ("--model.print_every", PRINT_EVERY, *model)
    assert train(tiny_args(text, tmp_path / "straight", *extra, steps=N)) == 0
    straight_out = capsys.readouterr().out

    assert train(tiny_args(text, tmp_path / "resumed", *extra, steps=k)) == 0
    assert newest(tmp_path / "resumed")["global_step"] == k
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path / "resumed", *extra, "--ckpt_path", "last", steps=N)) == 0
    resumed_out = capsys.readouterr().out

    assert_same_training_state(newest(tmp_path / "straight"), newest(tmp_path / "resumed"))
    # The same samples (seeded from the step, drawn from the carried state) and smoothed losses after the resume.
    first = -(-k // PRINT_EVERY) * PRINT_EVERY
    assert _printed_from(resumed_out, first) == _printed_from(straight_out, first)
    # One run directory, continued: the resume wrote into version_0 rather than a new version.
    assert os.listdir(tmp_path / "resumed" / "lightning_logs") == ["version_0"]


def test_resume_uses_the_new_learning_rate(text, tmp_path):
    """After a divergence the way forward is the last good checkpoint with a lower rate: the rate must apply."""
    assert train(tiny_args(text, tmp_path, steps=10)) == 0
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", "--model.learning_rate", 0.01, steps=12)) == 0
    ckpt = newest(tmp_path)
    assert ckpt["global_step"] == 12 and ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01


def test_resuming_a_finished_run_changes_nothing(text, tmp_path, capsys):
    assert train(tiny_args(text, tmp_path, steps=10)) == 0
    before = snapshot(tmp_path)
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", steps=10)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_resume_from_another_directory_never_writes_into_a_stranger_run(text, tmp_path):
    """A checkpoint from elsewhere/version_0 resumed under a root that has its own version_0 starts version_1."""
    assert train(tiny_args(text, tmp_path / "a", steps=8)) == 0
    assert train(tiny_args(text, tmp_path / "b", steps=4)) == 0
    before = snapshot(tmp_path / "b")
    ckpt_a = rundir.newest_last_checkpoint(str(tmp_path / "a"))
    assert train(tiny_args(text, tmp_path / "b", "--ckpt_path", ckpt_a, steps=12)) == 0
    after = snapshot(tmp_path / "b")
    assert {k: v for k, v in after.items() if k in before} == before
    continued = tmp_path / "b/lightning_logs/version_1/checkpoints/last.ckpt"
    assert torch.load(continued, weights_only=True)["global_step"] == 12


def test_without_a_logger_a_new_run_refuses_to_overwrite_and_last_resumes(text, tmp_path, capsys):
    no_logger = ("--trainer.logger", "false")
    assert train(tiny_args(text, tmp_path, *no_logger, steps=6)) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path, *no_logger, steps=6)) == 2
    assert_one_line_error(capsys.readouterr().err, "exists from an earlier run", "--ckpt_path last")
    assert snapshot(tmp_path) == before
    assert train(tiny_args(text, tmp_path, *no_logger, "--ckpt_path", "last", steps=9)) == 0
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9


def test_dropout_masks_follow_the_seed_and_the_checkpoint_keeps_it(text, tmp_path):
    """The masks' seed comes from --seed_everything (the same seed trains the same model, another seed another
    one); the checkpoint holds it, and without dropout there is none."""
    runs = {}
    for name, flags in {"a": (1, 0.2), "b": (1, 0.2), "c": (2, 0.2), "no-dropout": (1, 0.0)}.items():
        seed, p = flags
        assert train(tiny_args(text, tmp_path / name, *CELLS["lstm"][:4], "--model.dropout", p,
                               "--seed_everything", seed, steps=6)) == 0  # fmt: skip
        runs[name] = newest(tmp_path / name)
    assert_same_training_state(runs["a"], runs["b"])
    seeds = {name: checkpoint.read_metadata(ckpt, name).dropout_seed for name, ckpt in runs.items()}
    assert seeds["a"] == seeds["b"] != seeds["c"] and seeds["no-dropout"] is None
    # The same seed and first weights: dropout is what makes these two runs differ.
    assert not torch.equal(runs["a"]["state_dict"]["Whh"], runs["no-dropout"]["state_dict"]["Whh"])


def test_a_resume_in_another_precision_is_refused_and_the_same_one_continues(text, tmp_path, capsys):
    assert train(tiny_args(text, tmp_path, "--trainer.precision", "64-true", steps=6)) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", steps=9)) == 2
    assert_one_line_error(capsys.readouterr().err, "was trained in 64-true; resume with --trainer.precision 64-true")
    assert snapshot(tmp_path) == before
    assert train(tiny_args(text, tmp_path, "--trainer.precision", "64", "--ckpt_path", "last", steps=9)) == 0
    ckpt = newest(tmp_path)
    assert ckpt["global_step"] == 9 and ckpt["state_dict"]["Whh"].dtype == torch.float64
    best = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/best.ckpt", weights_only=True)
    assert best["state_dict"]["Whh"].dtype == torch.float64
    # And the other way round.
    assert train(tiny_args(text, tmp_path / "32", steps=3)) == 0
    assert train(tiny_args(text, tmp_path / "32", "--trainer.precision", "64-true", "--ckpt_path", "last")) == 2
    assert_one_line_error(capsys.readouterr().err, "was trained in 32-true; resume with --trainer.precision 32-true")


@pytest.mark.parametrize("damage", ["truncated", "flipped bit"])
def test_a_damaged_best_checkpoint_refuses_the_resume_before_anything_is_written(text, tmp_path, capsys, damage):
    assert train(tiny_args(text, tmp_path, steps=12)) == 0
    best = tmp_path / "lightning_logs/version_0/checkpoints/best.ckpt"
    good = best.read_bytes()
    middle = len(good) // 2
    best.write_bytes(
        good[:middle] if damage == "truncated" else good[:middle] + bytes([good[middle] ^ 4]) + good[middle + 1 :]
    )
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", steps=15)) == 2
    line = assert_one_line_error(capsys.readouterr().err, str(best), "move it away to resume")
    assert "pass a last.ckpt" not in line
    assert snapshot(tmp_path) == before  # no config.yaml rewritten, no events file added
    best.unlink()
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", steps=15)) == 0
    assert newest(tmp_path)["global_step"] == 15
