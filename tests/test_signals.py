"""Interruption: Ctrl-C and SIGTERM stop with a fresh last.ckpt and exit 0; SIGKILL at any moment leaves a newest
checkpoint that loads and resumes exactly."""

import errno
import glob
import multiprocessing
import os
import random
import signal
import time

import pytest
import torch

from charrnn import checkpoint, rundir
from charrnn.data import choose_windows_per_batch
from tests.train_helpers import (
    assert_one_line_error,
    assert_same_training_state,
    newest,
    run_main_quietly,
    start_train_py,
    tiny_args,
    train,
)


def _debris(root):
    return glob.glob(os.path.join(root, "**", ".last.ckpt.tmp-*"), recursive=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_last_checkpoint_and_exits_0(text, tmp_path, sig):
    args = tiny_args(text, tmp_path, "--checkpoint_every", 5, steps=-1)
    proc = start_train_py(args)
    try:
        deadline = time.monotonic() + 120
        while rundir.newest_last_checkpoint(str(tmp_path)) is None and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "error" not in err.lower(), err
    stopped = [line for line in out.splitlines() if line.startswith(f"stopped by {sig.name} at step ")]
    assert len(stopped) == 1, out
    step = int(stopped[0].split()[5].rstrip(";"))
    assert newest(tmp_path)["global_step"] == step > 5
    assert not _debris(str(tmp_path))


@pytest.fixture(scope="module")
def straight_to_30(text, tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    assert train(tiny_args(text, root, steps=30)) == 0
    return newest(root)


@pytest.mark.parametrize(
    "hook, at_step", [("on_validation_start", 20), ("on_save_checkpoint", 18), ("on_train_batch_start", 20)]
)
def test_signal_anywhere_stops_after_the_next_step_with_its_checkpoint(
    text, tmp_path, capsys, straight_to_30, hook, at_step
):
    """Delivered mid-validation, mid-save or mid-step, a signal ends training at the end of the next trainer batch
    (a batch groups W small windows, one step each) with that step saved (--checkpoint_every 6 would not have
    saved it), and the run resumes to the state of one never stopped."""
    send = ("--trainer.callbacks+=tests.train_helpers.SendSignal", "--trainer.callbacks.hook", hook)
    args = tiny_args(text, tmp_path, *send, "--trainer.callbacks.at_step", at_step, "--checkpoint_every", 6, steps=30)
    W = choose_windows_per_batch(2 * 8, (10, 30, 6))  # tiny_args: 2 streams of 8, validation every 10 steps
    stop = (at_step // W + 1) * W
    assert W > 1 and stop % 6 != 0
    assert train(args) == 0
    assert f"stopped by SIGINT at step {stop};" in capsys.readouterr().out
    assert newest(tmp_path)["global_step"] == stop
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", steps=30)) == 0
    assert_same_training_state(newest(tmp_path), straight_to_30)


def test_a_full_disk_mid_write_keeps_the_previous_checkpoint(text, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save_until_the_disk_fills(obj, f):
        if obj["global_step"] >= 10:
            f.write(b"the first bytes of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    assert train(tiny_args(text, tmp_path, "--checkpoint_every", 5, steps=30)) == 2
    assert_one_line_error(capsys.readouterr().err, "No space left on device", "the checkpoint before it is intact")
    assert newest(tmp_path)["global_step"] == 5
    assert not _debris(str(tmp_path))


CELL_FLAGS = ("--model.num_layers", 2, "--model.dropout", 0.2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, kills",
    [((), 20), (("--model.cell", "lstm", *CELL_FLAGS), 8), (("--model.cell", "gru", *CELL_FLAGS), 8)],
    ids=["rnn", "lstm-2-layers-dropout", "gru-2-layers-dropout"],
)
def test_sigkill_at_random_moments_never_costs_a_loadable_checkpoint(text, tmp_path, model, kills):
    """Kill training ``kills`` times at random moments (starting up, mid-step, mid-write: --checkpoint_every 1);
    after each kill the newest last.ckpt loads and is no older than before, and the run resumed from the survivors
    ends bitwise where an uninterrupted run to the same step ends.

    Children are forked from a server that has imported charrnn already, so each start costs a fraction of a
    second instead of a fresh interpreter's import of torch and Lightning."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["charrnn.cli", "tests.train_helpers"])
    killed, resumed = tmp_path / "killed", tmp_path / "straight"
    args = ("--checkpoint_every", 1, "--ckpt_path", "last", *model)
    rng = random.Random(1234)
    steps, debris_seen = [], 0
    for _ in range(kills):
        child = context.Process(target=run_main_quietly, args=(tiny_args(text, killed, *args, steps=-1),))
        child.start()
        time.sleep(rng.uniform(0.05, 1.0))
        child.kill()
        child.join()
        assert child.exitcode == -signal.SIGKILL
        debris_seen += bool(_debris(str(killed)))
        path = rundir.newest_last_checkpoint(str(killed))
        steps.append(checkpoint.load(path)["global_step"] if path else 0)
        assert steps[-1] >= max(steps), "a kill lost a checkpoint that had been written"
    print(f"steps after each kill: {steps}; kills that interrupted a write: {debris_seen}")
    assert steps[-1] > 0

    final = steps[-1] + 5
    for root in (killed, resumed):
        child = context.Process(target=run_main_quietly, args=(tiny_args(text, root, *args, steps=final),))
        child.start()
        child.join()
        assert child.exitcode == 0
    assert_same_training_state(newest(killed), newest(resumed))
    assert not _debris(str(killed)), "a resumed run leaves no temporary files behind"
