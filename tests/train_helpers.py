"""What the tests share (their fixtures are in conftest.py): running train.py in-process through ``charrnn.cli.main``
(fast; for the logic) or as a real process (slower; for what a user sees on stderr and for real signals), a quiet
Trainer, the checks a refused input must pass, and the test data."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import lightning as L
import torch

from bench.common import find_shakespeare as shakespeare_path  # noqa: F401  (the tests' larger text, if present)
from charrnn import checkpoint, cli, rundir

ROOT = Path(__file__).resolve().parent.parent
EPOCH = 44  # training windows per epoch of tiny_args on corpus(): (720 - 1) // (2 streams * 8 characters)


def corpus(n: int = 800) -> str:
    """English text that ships with every Python, so these tests need no data files."""
    return "\n".join(topics[k] for k in sorted(topics))[:n]


def tiny_args(data, root, *extra, steps: int = 60) -> list[str]:
    """A model small enough that a step takes milliseconds and an epoch of corpus() is EPOCH steps."""
    return [
        "--data.path", str(data), "--data.batch_size", "2", "--data.seq_length", "8", "--model.hidden_size", "16",
        "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "5",
        "--trainer.val_check_interval", "10", *map(str, extra),
    ]  # fmt: skip


def train(args) -> int:
    """``python train.py ARGS`` in this process; returns the exit code."""
    return cli.main([str(a) for a in args])


def start_script(script: str, args, cwd=ROOT, text=True) -> subprocess.Popen:
    """``python SCRIPT ARGS`` (a file of the repository) as a real process: fresh imports, real signals, pipes."""
    command = [sys.executable, str(ROOT / script), *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text)


def run_script(script: str, args, cwd=ROOT, text=True, timeout=300) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``python SCRIPT ARGS``."""
    proc = start_script(script, args, cwd, text)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def start_train_py(args) -> subprocess.Popen:
    return start_script("train.py", args)


def run_train_py(args, cwd=ROOT) -> tuple[int, str, str]:
    return run_script("train.py", args, cwd)


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Trainer that prints, logs and checkpoints nothing unless ``kwargs`` ask for it."""
    quiet = dict.fromkeys(("logger", "enable_progress_bar", "enable_model_summary", "enable_checkpointing"), False)
    return L.Trainer(**{**quiet, **kwargs})


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is exactly one line ``error: ...`` (no traceback, no warnings) containing every fragment."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{stderr}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


class Malicious:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def newest(root) -> dict:
    """The newest last.ckpt under root, loaded the safe way (as sample.py and resume do)."""
    path = rundir.newest_last_checkpoint(str(root))
    assert path is not None, f"no last.ckpt under {root}"
    return checkpoint.load(path)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Bitwise: parameters, smoothed loss, Adagrad memory, carried hidden state, dropout seed and step. (Not
    Lightning's epoch counter: it counts trainer batches, which group several windows in a number that depends on the
    run's step counts; the position in the text is a function of the step.)"""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    mems_a = [s["mem"] for s in a["optimizer_states"][0]["state"].values()]
    mems_b = [s["mem"] for s in b["optimizer_states"][0]["state"].values()]
    assert len(mems_a) == len(mems_b) == len(a["state_dict"]) - 1  # every parameter (all but smooth_loss)
    assert all(map(torch.equal, mems_a, mems_b))
    meta_a, meta_b = (checkpoint.read_metadata(ckpt, "a checkpoint") for ckpt in (a, b))
    assert torch.equal(meta_a.hidden_state, meta_b.hidden_state) and meta_a.dropout_seed == meta_b.dropout_seed


def snapshot(directory) -> dict:
    """Every file under directory with a hash of its bytes: equal snapshots mean nothing was added, changed or lost."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, directory)
            out[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) else "dir"
    return out


def run_main_quietly(args) -> None:
    """Process target: train.py's main in a child forked from a process that imported charrnn already."""
    sys.stdout = open(os.devnull, "w")
    sys.exit(train(args))


class SendSignal(L.Callback):
    """Sends a signal to this process from inside a Lightning hook at a given step (e.g. mid-validation)."""

    def __init__(self, hook: str = "on_validation_start", at_step: int = 20, name: str = "SIGINT"):
        self.at_step, self.signum = at_step, signal.Signals[name]
        setattr(self, hook, self._send)

    def _send(self, trainer, *args):
        if trainer.global_step == self.at_step and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signum)
            self.at_step = None
