"""Shared pieces of the benchmarks: data location, thread control, timing callbacks, memory probes, tables.

The timing callbacks are passed to ``train.py`` on its command line (``--trainer.callbacks+=bench.common.X``), so
charrnn is measured exactly as users run it; they report through a JSON file.
"""

import json
import logging
import os
import statistics
import subprocess
import sys
import time

import lightning as L
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
SEQ_LENGTH = 25


def find_shakespeare() -> str | None:
    """tiny-shakespeare in ``shared/data`` beside the repository, if it is there (never copied into it)."""
    path = os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare.txt")
    return path if os.path.exists(path) else None


def shakespeare_path() -> str:
    """tiny-shakespeare (find_shakespeare); exit cleanly if absent."""
    path = find_shakespeare()
    if path is None:
        sys.exit("error: tinyshakespeare.txt not found under ../shared/data beside the repository")
    return path


def set_threads(n: int) -> None:
    """Use ``n`` torch intra-op threads here; bench.threads already set the environment for NumPy and children."""
    torch.set_num_threads(n)


def start(threads: int) -> None:
    """What a benchmark of training does first: its threads, Lightning's notes off, the machine line printed."""
    set_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(machine_line())


def run_train(args: list[str], log_path: str) -> None:
    """``python train.py ARGS`` from the repository root, its console output kept in ``log_path``."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        done = subprocess.run([PYTHON, "train.py", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        with open(log_path) as log:
            sys.exit(f"train.py {' '.join(args)} failed (exit {done.returncode}):\n{log.read()[-3000:]}")


class RateMeter:
    """Steps per second, robust to a shared machine: after a warm-up, the best of ``windows`` consecutive windows
    (``best``), or the rate of the median batch over all of them (``median``: a burst of load from another user of
    the machine slows a few batches, which the median leaves out, where it lowers every window it falls in).

    Call ``tick(steps)`` after each batch of ``steps`` steps; it returns True when the measurement is complete (then
    read ``best`` or ``median``).
    """

    def __init__(self, seconds: float = 3.0, windows: int = 3, warmup_seconds: float = 0.5):
        self.window, self.windows, self.warmup_seconds = seconds / windows, windows, warmup_seconds
        self.started, self.t0, self.last, self.steps, self.rates, self.batch_rates = None, None, None, 0, [], []

    def tick(self, steps: int = 1) -> bool:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        elif self.t0 is None:
            if now - self.started >= self.warmup_seconds:
                self.t0 = self.last = now
        else:
            self.steps += steps
            self.batch_rates.append(steps / (now - self.last))
            self.last = now
            if now - self.t0 >= self.window:
                self.rates.append(self.steps / (now - self.t0))
                self.t0, self.steps = now, 0
        return len(self.rates) >= self.windows

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return statistics.median(self.batch_rates)


class Stopwatch(L.Callback):
    """Training steps per second (a RateMeter) measured inside a Lightning run, which it then stops.

    Timed from one ``on_train_batch_end`` to a later one, so every per-step cost (hooks, logging, progress bar,
    data, checkpoints when due) is inside the measurement, and start-up and the final validation are not.
    """

    def __init__(self, seconds: float = 3.0, windows: int = 3, out: str | None = None):
        self.meter, self.out, self.step = RateMeter(seconds, windows), out, 0

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        steps, self.step = trainer.global_step - self.step, trainer.global_step
        if not trainer.should_stop and self.meter.tick(steps):
            trainer.should_stop = True
            if self.out:
                with open(self.out, "w") as f:
                    json.dump({"steps_per_second": self.meter.best, "median_steps_per_second": self.meter.median,
                               "windows": self.meter.rates}, f)  # fmt: skip


class QualityClock(L.Callback):
    """Training wall time at each validation, with the clock paused while validating; stops at ``stop_at``.

    The clock starts again with the next training batch, so what the run does after a validation (train.py writes
    ``best.ckpt``) is validation time too. Writes ``[{"seconds", "step", "val_loss"}, ...]`` to ``out`` after every
    validation.
    """

    def __init__(self, out: str, stop_at: float = 0.0, max_seconds: float = float("inf")):
        self.out, self.stop_at, self.max_seconds = out, stop_at, max_seconds
        self.elapsed, self.since, self.curve = 0.0, None, []

    def on_train_start(self, trainer, pl_module):
        self.since = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.since is None:
            self.since = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        self.pause()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.record(trainer, float(trainer.callback_metrics["val/loss"]))

    def pause(self):
        if self.since is not None:
            self.elapsed += time.perf_counter() - self.since
            self.since = None

    def record(self, trainer, loss: float):
        """Note a validation loss at this step (the clock paused), and stop the run if it is done."""
        self.curve.append({"seconds": round(self.elapsed, 3), "step": trainer.global_step, "val_loss": loss})
        with open(self.out, "w") as f:
            json.dump(self.curve, f)
        if loss <= self.stop_at or self.elapsed >= self.max_seconds:
            trainer.should_stop = True


def first_point(curve: list[dict], target: float) -> dict | None:
    """The first validation with ``val_loss <= target`` (None if never)."""
    return next((point for point in curve if point["val_loss"] <= target), None)


def first_reaching(curve: list[dict], target: float):
    """Seconds of training at the first validation with ``val_loss <= target`` (None if never)."""
    point = first_point(curve, target)
    return None if point is None else point["seconds"]


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) at the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}  {cpu_model()}  cores={os.cpu_count()}  "
        f"torch threads={torch.get_num_threads()}  "
        f"torch {torch.__version__}  lightning {L.__version__}  load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table, so the output pastes straight into BENCHMARKS.md."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()
