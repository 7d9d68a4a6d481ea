"""What a user trying to break charrnn found: values checked against what the run can do, one writer per run,
divergence in training and validation, signals at any moment (imports included), and full or closed streams."""

import math
import os
import signal
import subprocess
import sys
import time
import zipfile

import lightning as L
import pytest
import torch

from charrnn import checks, rundir, runlock
from charrnn.network import Architecture
from tests.train_helpers import (
    ROOT,
    assert_one_line_error,
    corpus,
    newest,
    run_train_py,
    snapshot,
    start_train_py,
    tiny_args,
    train,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished 10-step run under ``runs`` next to its text and a FIFO, a non-UTF-8, non-YAML and list config."""
    d = tmp_path_factory.mktemp("reliability")
    (d / "input.txt").write_text(corpus())
    assert train(tiny_args(d / "input.txt", d / "runs", steps=10)) == 0
    os.mkfifo(d / "fifo")
    (d / "latin1.yaml").write_bytes("model: {learning_rate: 0.1} # caf\xe9\n".encode("latin-1"))
    (d / "broken.yaml").write_text("model: {hidden_size: [\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "empty.yaml").write_text("")
    (d / "fifo-data.yaml").write_text(f"data:\n  path: {d / 'fifo'}\n")
    ckpt = d / "runs/lightning_logs/version_0/checkpoints/last.ckpt"
    with zipfile.ZipFile(d / "corrupt.ckpt", "w") as z:  # a zip whose member is not what torch wrote
        z.writestr("archive/data.pkl", ckpt.read_bytes()[:100])
    return d


CASES = {
    "seed below 0": (["--seed_everything", -5], "--seed_everything must be an integer from 0 to 4294967295"),
    "seed above 2**32 - 1": (["--seed_everything", 2**32], "got 4294967296"),
    "rate overflowing float32": (["--model.learning_rate", 1e300], "cannot be represented in 32-true"),
    "rate below float32": (["--model.learning_rate", 1e-40], "cannot be represented in 32-true"),
    "clip overflowing float32": (["--model.clip", 1e39], "--model.clip 1e+39 cannot be represented in 32-true"),
    "rate overflowing float32, resuming": (["--model.learning_rate", 1e300, "--ckpt_path", "last"], "32-true"),
    "rate nan": (["--model.learning_rate", "nan"], "--model.learning_rate must be a finite positive number, got nan"),
    "clip inf": (["--model.clip", "inf"], "--model.clip must be a finite positive number, got inf"),
    "val_fraction nan": (["--data.val_fraction", "nan"], "--data.val_fraction must be a number from 0 up to"),
    "checkpoint_every nan": (["--checkpoint_every", "nan"], "--checkpoint_every must be an integer, got nan"),
    "precision not a choice": (["--trainer.precision", "foo"], "--trainer.precision must be one of 32-true, 64-true"),
    "a logger that is not one": (["--trainer.logger", 5], "--trainer.logger cannot be 5; python train.py --help"),
    "devices not a number": (["--trainer.devices", "nan"], "the --trainer settings do not work"),
    "accelerator unknown": (["--trainer.accelerator", "junk"], "invalid accelerator name"),
    "val_check_interval true": (["--trainer.val_check_interval", "true"], "must be a positive whole number of steps"),
    "hidden size beyond memory": (["--model.hidden_size", 200000], "needs at least", "GB of memory"),
    "streams of all processes": (
        ["--data.batch_size", 60, "--trainer.devices", 2, "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"],
        "too few for 120 streams",
    ),
    "one process's streams alone too many": (
        ["--data.batch_size", 100000, "--trainer.devices", 2, "--trainer.strategy", "ddp"]
        + ["--trainer.accelerator", "cpu"],
        "too few for 100000 streams per process",
    ),
    "config not UTF-8": (["--config", "{d}/latin1.yaml"], "--config file", "is not UTF-8 text (byte 0xe9"),
    "config not YAML": (["--config", "{d}/broken.yaml"], "is not valid YAML (line 2)"),
    "config a list": (["--config", "{d}/list.yaml"], "must hold settings as YAML"),
    "config not a file": (["--config=/bin/ls"], "--config file /bin/ls is not UTF-8 text"),
    "group config not UTF-8": (["--model", "/bin/ls"], "--model file /bin/ls is not UTF-8 text"),
    "config a FIFO": (["--config", "{d}/fifo"], "--config", "is not a regular file"),
    "a FIFO for a logger": (["--trainer.logger", "{d}/fifo"], "--trainer.logger", "is not a regular file"),
    "config a directory": (["--config", "{d}"], "is a directory"),
    "data a FIFO": (["--data.path", "{d}/fifo"], "--data.path", "is not a regular file"),
    "data a device": (["--data.path", "/dev/zero"], "--data.path /dev/zero is not a regular file"),
    "data a FIFO, from a config": (["--config", "{d}/fifo-data.yaml"], "data file", "is not a regular file"),
    "checkpoint a FIFO": (["--ckpt_path", "{d}/fifo"], "--ckpt_path", "is not a regular file"),
    "checkpoint a corrupt zip": (["--ckpt_path", "{d}/corrupt.ckpt"], "is damaged, truncated or not a checkpoint"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_refused_in_one_line_in_the_users_words(world, capsys, case):
    flags, *fragments = CASES[case]
    before = snapshot(world)
    args = tiny_args(world / "input.txt", world / "runs", *(str(f).format(d=world) for f in flags), steps=20)
    assert train(args) == 2
    line = assert_one_line_error(capsys.readouterr().err, *fragments)
    for jargon in ("<class", "typing.", "Could this error message be improved", "Traceback"):
        assert jargon not in line
    assert snapshot(world) == before


def test_an_empty_config_means_no_settings(world, tmp_path):
    assert train(tiny_args(world / "input.txt", tmp_path, "--config", world / "empty.yaml", steps=5)) == 0


def test_memory_estimate_grows_with_every_size():
    rnn = Architecture(1, 256)
    base = checks.memory_needed(rnn, 32, 25, 200, "32-true")
    assert checks.memory_needed(Architecture(1, 512), 32, 25, 200, "32-true") > 2 * base
    assert checks.memory_needed(rnn, 32, 25, 200, "64-true") > 1.9 * base
    assert checks.memory_needed(rnn, 3200, 25, 200, "32-true") > 10 * base
    # The cell's gates and the layers: an LSTM holds 4 gates' weights and more activations per layer than a GRU's 3.
    lstm, gru = (checks.memory_needed(Architecture(1, 256, cell), 32, 25, 200, "32-true") for cell in ("lstm", "gru"))
    assert lstm > gru > 1.9 * base
    assert checks.memory_needed(Architecture(1, 256, "lstm", 3), 32, 25, 200, "32-true") > 2.9 * lstm
    for arch in (Architecture(65, 16, cell, 3) for cell in ("rnn", "lstm", "gru")):
        assert arch.num_weights() == sum(math.prod(shape) for shape in arch.param_shapes().values())
    assert Architecture(1, 8, "gru", 2**40).num_weights() > 2**46  # counted, not listed
    assert 0 < checks.available_memory() < 2**50


# Divergence: any non-finite or exploding loss, in training or validation, in both precisions.


@pytest.mark.parametrize("precision, overflow", [("32-true", 1e38), ("64-true", 1e300)])
@pytest.mark.parametrize(
    "kind, flags, fragment",
    [
        ("exploding training loss", ("--model.learning_rate", 1e3), "the training loss over the last 5 steps is"),
        ("exploding validation loss", ("--model.learning_rate", 1e3, "--trainer.val_check_interval", 2,
                                       "--trainer.log_every_n_steps", 50), "the validation loss is"),
        ("non-finite loss", ("--model.learning_rate", "OVERFLOW"), "diverged at step"),
    ],
)  # fmt: skip
def test_divergence_stops_with_exit_2_in_both_precisions(tmp_path, capsys, precision, overflow, kind, flags, fragment):
    (tmp_path / "input.txt").write_text(corpus())
    flags = [overflow if f == "OVERFLOW" else f for f in flags]
    args = tiny_args(tmp_path / "input.txt", tmp_path / "runs", *flags, "--trainer.precision", precision, steps=30)
    assert train(args) == 2
    line = assert_one_line_error(capsys.readouterr().err, "training diverged at step", fragment)
    assert "finished" not in line and "no checkpoint was written" in line


# One run, one writer.


def _wait_for_checkpoint(proc, root):
    deadline = time.monotonic() + 120
    while rundir.newest_last_checkpoint(str(root)) is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def test_a_second_writer_is_refused_and_a_killed_ones_lock_never_blocks(tmp_path, capsys):
    (tmp_path / "input.txt").write_text(corpus())

    def args(steps):
        return tiny_args(tmp_path / "input.txt", tmp_path, "--ckpt_path", "last", "--checkpoint_every", 5, steps=steps)

    first = start_train_py(args(-1))
    try:
        _wait_for_checkpoint(first, tmp_path)
        assert train(args(400)) == 2
        assert_one_line_error(capsys.readouterr().err, "is being written by another train.py", f"process {first.pid}")
        first.kill()
        first.wait()
    finally:
        first.kill()
    assert (tmp_path / "lightning_logs/version_0" / runlock.LOCK).exists()  # left behind by the killed process
    assert train(args(newest(tmp_path)["global_step"] + 5)) == 0
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0"]


def test_two_new_runs_at_once_get_their_own_versions(tmp_path):
    (tmp_path / "input.txt").write_text(corpus())
    jobs = [start_train_py(tiny_args(tmp_path / "input.txt", tmp_path, steps=10)) for _ in range(3)]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.communicate()
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0", "version_1", "version_2"]
    for v in range(3):
        assert newest(tmp_path / f"lightning_logs/version_{v}")["global_step"] == 10


def test_a_version_taken_after_the_logger_picked_it_moves_to_the_next(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_2").mkdir()
    assert runlock._claim_version(str(tmp_path), 1) == 1
    assert runlock._claim_version(str(tmp_path), 1) == 3


# Signals at any moment, and streams that cannot be written.


class CtrlCTwice(L.Callback):
    """Two Ctrl-C in a moment, during the validation at step 20 (a signal only sets a flag until the second)."""

    def on_validation_start(self, trainer, pl_module):
        if trainer.global_step == 20 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_aborts_at_once_naming_the_intact_checkpoint(tmp_path, capsys):
    (tmp_path / "input.txt").write_text(corpus())
    callback = ("--trainer.callbacks+=tests.test_reliability.CtrlCTwice",)
    assert train(tiny_args(tmp_path / "input.txt", tmp_path, *callback, "--checkpoint_every", 15, steps=40)) == 130
    out, err = capsys.readouterr()
    assert "graceful shutdown" not in out
    path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert err == f"aborted by a second SIGINT; {path} (step 15) is intact\n"
    assert newest(tmp_path)["global_step"] == 15


def _script_args(script: str, world, out_dir) -> list:
    """A command line of ``script`` that works: training into ``out_dir``, or reading ``world``'s run."""
    if script == "train.py":
        return tiny_args(world / "input.txt", out_dir, steps=5)
    return [world / "runs", *(("--out", out_dir / "page.html") if script == "visualize.py" else ())]


@pytest.mark.parametrize("script", ["train.py", "sample.py", "visualize.py"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_torch_imports_is_one_line_and_exit_130(world, script, sig):
    args = _script_args(script, world, world / "unused")
    proc = subprocess.Popen([sys.executable, script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.4)  # importing torch takes seconds
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == f"interrupted by {sig.name}\n"
    assert not (world / "unused").exists()


@pytest.mark.parametrize("script", ["train.py", "sample.py", "visualize.py"])
def test_a_full_disk_or_closed_stdout_is_exit_2_and_one_line(world, tmp_path, script):
    args = _script_args(script, world, tmp_path)
    command = [sys.executable, script, *map(str, args)]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == "error: cannot write to standard output (No space left on device)\n"
    closed = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=300,
                            preexec_fn=lambda: os.close(1))  # fmt: skip
    assert closed.returncode == 2
    assert closed.stderr == "error: standard output is closed; run with it open\n"


def test_warnings_a_user_cannot_act_on_do_not_appear(tmp_path):
    """An epoch shorter than the logging interval (in Lightning's batches of several steps): no warning."""
    (tmp_path / "input.txt").write_text(corpus())
    code, _, err = run_train_py(tiny_args(tmp_path / "input.txt", tmp_path, "--trainer.log_every_n_steps", 50))
    assert code == 0 and err == ""
    assert torch.load(rundir.newest_last_checkpoint(str(tmp_path)), weights_only=True)["global_step"] == 60
