"""``train.py``: LightningCLI without subcommands, and its one-line errors.

``python train.py [--config configs/X.yaml] [--data.*] [--model.*] [--trainer.*] [--optimizer CLASS]
[--lr_scheduler CLASS] [--ckpt_path last|PATH] [--seed_everything N]``. Values come from ``configs/default.yaml`` unless a config file or flag overrides them.

Exit codes: 0 when training finished, or stopped by Ctrl-C / SIGTERM with ``last.ckpt`` saved; 2 with one line
``error: ...`` on stderr for a bad input or a diverged run (nothing on disk overwritten); 130 for Ctrl-C / SIGTERM
outside training, or a second one during it (README.md lists every case). Resuming takes the learning rate from the
flags, everything else from the checkpoint.
"""

import argparse
import contextlib
import ctypes
import importlib
import logging
import os
import sys
import warnings

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from . import checks, optim, resume, runlock, summary
from .callbacks import AtomicCheckpointIO, BestCheckpoint, LastCheckpoint, OptimizerFromFlags, ProgressBar
from .cells import parallel
from .data import CharDataModule
from .entry import Interrupted
from .errors import Diverged, UsageError, one_line
from .module import CharRNN

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
SUPPORTED_PRECISION = ("32-true", "32", "64-true", "64")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
# The default optimizer's settings as --model flags: (name, what it is, the --optimizer argument that replaces it).
DEFAULT_OPTIMIZER_FLAGS = (("learning_rate", "rate", "lr"),
                           ("initial_accumulator_value", "initial accumulator", "initial_accumulator_value"))

# main(args) is also called in-process (tests), where sys.argv holds the caller's own arguments.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
# Lightning 2.6 calls a torch pytree API that torch deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# Lightning compares log_every_n_steps with its batch count, but a batch may hold several steps and charrnn logs
# by step (module._logging_step): the advice to lower the interval does not apply.
warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
# --optimizer replaces CharRNN.configure_optimizers (min-char-rnn's Adagrad) by design.
warnings.filterwarnings("ignore", message=r"`CharRNN.configure_optimizers` will be overridden")
# --data.val_fraction 0 turns validation off on purpose; Lightning asks whether an empty loader was intended.
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")


class CharRNNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.chars", "model.vocab", apply_on="instantiate")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint; 'last' means the newest last.ckpt under --trainer.default_root_dir",
        )
        parser.add_argument("--checkpoint_every", type=int, default=1000, help="steps between last.ckpt writes")
        parser.add_argument(
            "--threads",
            type=int | None,
            default=None,
            help="CPU threads that train (default: every core this process may use, shared among the processes of "
            "a multi-process run; with OMP_NUM_THREADS set, torch's threads as it says)",
        )

    def parse_arguments(self, parser, args):
        try:
            super().parse_arguments(parser, args)
        except (OSError, UnicodeDecodeError) as e:  # the parser reads a path given for a class (e.g. a logger)
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise UsageError(f"a flag names a file that cannot be read as settings ({reason})") from None
        _check_flags(self.config)  # before LightningCLI seeds (a seed out of range crashes there) or builds anything
        if self.config["optimizer"]:
            given = parser.parse_args(args, defaults=False)
            for name, what, twin in DEFAULT_OPTIMIZER_FLAGS:
                if given.get(f"model.{name}") is not None:
                    raise UsageError(f"--model.{name} is the {what} of the default optimizer; with --optimizer set --optimizer.{twin}")

    def instantiate_trainer(self, **kwargs):
        try:
            return super().instantiate_trainer(**kwargs)
        except (TypeError, ValueError) as e:  # Lightning's own checks of the --trainer.* values
            raise UsageError(f"the --trainer settings do not work: {' '.join(str(e).split())}") from None


def _check_flags(config) -> None:
    """Flag values Lightning would accept and then crash on, refused before the text is read."""
    if config["checkpoint_every"] < 1:
        raise UsageError(f"--checkpoint_every must be a positive integer, got {config['checkpoint_every']}")
    if config["threads"] is not None and config["threads"] < 1:
        raise UsageError(f"--threads must be a positive integer, got {config['threads']}")
    trainer = config["trainer"]
    precision = str(trainer["precision"] or "32-true")
    if precision not in SUPPORTED_PRECISION:
        # Measured: bf16-true runs but the smoothed loss and Adagrad's sums of squares stop growing in 16 bits
        # (tinyshakespeare, H=100, B=32, 600 steps: val loss 2.57 against 2.38 in float32).
        raise UsageError(
            f"--trainer.precision {precision} is not supported: the hand-written BPTT computes in the parameters' "
            "dtype and is not written for autocast, and in 16 bits Adagrad's accumulators and the smoothed loss "
            "stall; use 32-true or 64-true"
        )
    for name in ("max_steps", "max_epochs"):
        if trainer[name] is not None and trainer[name] != -1 and trainer[name] < 1:
            raise UsageError(f"--trainer.{name} must be a positive integer, or -1 for no limit, got {trainer[name]}")
    for name in ("log_every_n_steps", "val_check_interval"):  # not a fraction of an epoch: charrnn counts steps
        if trainer[name] is not None and not (type(trainer[name]) is int and trainer[name] > 0):
            raise UsageError(f"--trainer.{name} must be a positive whole number of steps, got {trainer[name]}")
    checks.seed(config["seed_everything"])
    for name in ("learning_rate", "clip"):
        checks.positive_float(f"--model.{name}", config["model"][name], precision)
    checks.zero_or_positive_float("--model.initial_accumulator_value", config["model"]["initial_accumulator_value"], precision)
    _check_optimization(config["optimizer"], config["lr_scheduler"], precision)
    devices = trainer["devices"]
    checks.fits_in_memory(config, devices if type(devices) is int and devices > 0 else 1)


def _no_advert(record: logging.LogRecord) -> bool:
    """Lightning advertises a cloud logging service at every start; that is not a note about this run."""
    return "litlogger" not in record.getMessage()


def _check_optimization(optimizer, scheduler, precision: str) -> None:
    if scheduler is None:
        pass
    elif optimizer is None:
        raise UsageError(
            "--lr_scheduler needs --optimizer; for min-char-rnn's Adagrad: --optimizer charrnn.optim.Adagrad --optimizer.lr X"
        )
    elif issubclass(_class(scheduler), torch.optim.lr_scheduler.ReduceLROnPlateau):
        # It would step at validations, and a last.ckpt written just before one could not resume it exactly.
        raise UsageError("--lr_scheduler ReduceLROnPlateau is not supported: use a schedule that counts steps (e.g. StepLR)")
    arguments = {} if optimizer is None else optimizer["init_args"]
    if arguments.get("lr") is not None:
        checks.positive_float("--optimizer.lr", arguments["lr"], precision)
    if arguments.get("initial_accumulator_value") is not None:  # charrnn's Adagrad and torch's
        checks.zero_or_positive_float("--optimizer.initial_accumulator_value", arguments["initial_accumulator_value"], precision)


def _class(chosen) -> type:
    """The class a class-path setting (``--optimizer``, ``--lr_scheduler``) names; the parser imported it already."""
    module, name = chosen["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@contextlib.contextmanager
def _lightning_notes_on_stdout():
    """Lightning logs its progress notes ("Seed set to", "GPU available") on stderr; train.py keeps stderr for
    warnings and errors, so a failed start shows exactly one line there."""
    handlers = [
        handler
        for name in ("lightning.pytorch", "lightning.fabric")
        for handler in logging.getLogger(name).handlers
        if type(handler) is logging.StreamHandler
    ]
    previous = [handler.setStream(sys.stdout) for handler in handlers]
    for handler in handlers:
        handler.addFilter(_no_advert)
    try:
        yield
    finally:
        for handler, stream in zip(handlers, previous):
            handler.removeFilter(_no_advert)
            if stream is not None:
                handler.setStream(stream)


def _check_writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".charrnn-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write to output directory {directory} ({e.strerror}); pass a writable --trainer.default_root_dir") from None


# Where a container's CPU quota is: cgroup v2's "QUOTA PERIOD" (QUOTA "max": none), or cgroup v1's two files.
CPU_QUOTA = ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cpu_quota() -> float | None:
    """The cgroup's CPU quota in CPUs, or None when there is none (or no cgroup file says)."""
    v2, v1_quota, v1_period = CPU_QUOTA
    try:
        with open(v2) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(v1_quota) as f, open(v1_period) as g:
                quota, period = f.read().strip(), g.read().strip()
        except OSError:
            return None
    try:
        return None if quota in ("max", "-1") else int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a batch scheduler's allocation), capped by the
    cgroup's CPU quota (a container's ``--cpus``) in whole CPUs; not os.cpu_count(), which counts the machine's."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))


def _default_threads(requested: int | None, processes: int = 1) -> None:
    """The threads that train: ``--threads`` (or ``threads:`` in a config) if given; else, when OMP_NUM_THREADS is
    set, torch's threads as it says (and charrnn's one); else every available core, shared among the ``processes``
    of a multi-process run on this machine.

    charrnn's threads (cells/parallel.py) run the window loops over blocks of streams and the large products over
    blocks of rows, with no synchronisation inside a block; torch then runs on one thread. torch's own threads wait
    for each other at the end of every operation, hundreds of times a window, and stall next to a busy process
    (docs/cores.md)."""
    omp = os.environ.get("OMP_NUM_THREADS")
    if requested is None and omp is not None:
        parallel.set_threads(1)  # torch sized its threads from OMP_NUM_THREADS
        return
    parallel.set_threads(requested or max(1, available_cores() // processes))
    torch.set_num_threads(1)


def _keep_freed_memory() -> None:
    """Keep freed blocks of up to 32 MiB in the process (glibc): by default glibc maps large blocks afresh and
    returns them on free, so every window's activation buffers page-fault again (1.4 us a 4 KiB page here; up to
    5,000 faults a window for an LSTM of 256 over 32 x 50 characters: a tenth of its time)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest
            libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
        except (OSError, AttributeError):  # not glibc: its allocator has its own policy
            pass


def _build(args):
    """The CLI's trainer, model and data, with charrnn's checkpoint writer, its checkpoints, HPARAMS and progress
    bar."""
    cli = CharRNNCLI(
        CharRNN,
        CharDataModule,
        run=False,
        args=checks.config_files(sys.argv[1:] if args is None else args),
        parser_kwargs={"exit_on_error": False, "default_config_files": [DEFAULT_CONFIG]},
        save_config_kwargs={"overwrite": True},
        # Lightning's model summary sees no submodules in charrnn ("0 Modules", "n/a"): summary.lines says more.
        trainer_defaults={"enable_checkpointing": False, "check_val_every_n_epoch": None, "enable_model_summary": False},
    )
    trainer = cli.trainer
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # not a trainer default: jsonargparse cannot dump it
    last = LastCheckpoint(cli.config["checkpoint_every"])
    chosen = [(cli.config[group] or {}).get("class_path") for group in ("optimizer", "lr_scheduler")]
    trainer.callbacks += [
        last,
        BestCheckpoint(),
        OptimizerFromFlags(chosen[0] or optim.ADAGRAD, chosen[1]),
        summary.HParams(summary.settings(cli.config, cli.model, cli.datamodule, trainer)),
    ]
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger._default_hp_metric = False  # no "hp_metric" placeholder card: summary.HParams writes the metrics
    ProgressBar.replace_default(trainer)
    return cli, last


def _fit(trainer, model, data, ckpt_path: str | None, last: LastCheckpoint) -> None:
    lock = runlock.claim(trainer, last.path) if trainer.is_global_zero else None
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except Diverged as e:
        kept = _kept(last, trainer, ckpt_path, e.step)
        raise UsageError(f"{e}; {kept}; lower --model.learning_rate (or --model.clip) and train again") from None
    except Interrupted as e:
        raise Interrupted(f"{e}; {_kept(last, trainer, ckpt_path)}") from None
    finally:
        if lock is not None:
            lock.release()


def _kept(last: LastCheckpoint, trainer, ckpt_path: str | None, bad_step: int | None = None) -> str:
    """Which checkpoint on disk a stopped run leaves intact (``bad_step``: where it diverged)."""
    if last.saved_step is None:
        if not ckpt_path:
            return "no checkpoint was written"
        step = f" (step {last.start_step})" if bad_step is None and last.start_step is not None else ""
        return f"{ckpt_path} is unchanged{step}"
    if bad_step is None:
        return f"{last.path(trainer)} (step {last.saved_step}) is intact"
    if last.saved_step >= bad_step:  # saved at the step whose validation then diverged
        return f"{last.path(trainer)} (step {last.saved_step}) holds the weights that diverged"
    return f"{last.path(trainer)} (step {last.saved_step}) is the last good checkpoint"


def _report(trainer, last: LastCheckpoint) -> None:
    if not trainer.is_global_zero:
        return
    where = last.path(trainer)
    if last.stop_signal:
        print(f"stopped by {last.stop_signal} at step {trainer.global_step}; saved {where}; continue with --ckpt_path last")
    elif os.path.exists(where):
        print(f"finished at step {trainer.global_step}; saved {where}")


def run(args=None) -> None:
    """Build, prepare (every check runs before Lightning writes into the run directory, so a refused start leaves
    what is on disk as it was), fit, report."""
    _keep_freed_memory()
    cli, last = _build(args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    _default_threads(cli.config["threads"], trainer.num_devices)
    ckpt_path, finished = resume.prepare(cli.config["ckpt_path"], trainer, model, data, last.path(trainer))
    if finished:
        return
    _check_writable(trainer.default_root_dir)
    if trainer.is_global_zero:
        print("\n".join(summary.lines(model, data, trainer.world_size)))
    _fit(trainer, model, data, ckpt_path, last)
    _report(trainer, last)


def main(args=None) -> int:
    try:
        with _lightning_notes_on_stdout():
            run(args)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except (argparse.ArgumentError, MisconfigurationException) as e:
        print(f"error: {one_line(checks.plain_parser_error(str(e)))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as e:
        print(one_line(e) or "interrupted", file=sys.stderr)
        return 130
    return 0
