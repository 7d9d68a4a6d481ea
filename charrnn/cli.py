"""``train.py``: LightningCLI without subcommands, and its one-line errors.

``python train.py [--config configs/X.yaml] [--data.*] [--model.*] [--trainer.*] [--optimizer CLASS]
[--lr_scheduler CLASS] [--ckpt_path last|PATH] [--seed_everything N]``. Values come from ``configs/default.yaml``
unless a config file or flag overrides them.

Exit codes: 0 when training finished, or stopped by Ctrl-C / SIGTERM with ``last.ckpt`` saved; 2 with one line
``error: ...`` on stderr for a bad input or a diverged run (nothing on disk overwritten); 130 for Ctrl-C / SIGTERM
outside training, or a second one during it (README.md lists every case). Resuming takes the learning rate from the
flags, everything else from the checkpoint (the precision must be repeated: another one is refused).
"""

import argparse
import contextlib
import ctypes
import logging
import os
import sys
import warnings

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from . import checks, cores, distributed, entry, finetune, optim, resume, runlock, summary
from .callbacks import AtomicCheckpointIO, BestCheckpoint, LastCheckpoint, OptimizerFromFlags, ProgressBar
from .cells import parallel
from .command import exit_code
from .data import CharDataModule, choose_windows_per_batch
from .errors import Diverged, Interrupted, UsageError
from .module import CharRNN

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
# The default optimizer's settings as --model flags: (name, what it is, the --optimizer argument that replaces it).
DEFAULT_OPTIMIZER_FLAGS = (
    ("learning_rate", "rate", "lr"),
    ("initial_accumulator_value", "initial accumulator", "initial_accumulator_value"),
)

# main(args) is also called in-process (tests), where sys.argv holds the caller's own arguments.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
# Lightning 2.6 calls a torch pytree API that torch deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# Lightning compares log_every_n_steps with its batch count, but a batch may hold several steps and charrnn logs
# by step (module._logging_step): the advice to lower the interval does not apply.
warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
# --optimizer replaces CharRNN.configure_optimizers (min-char-rnn's Adagrad) by design.
warnings.filterwarnings("ignore", message=r"`CharRNN.configure_optimizers` will be overridden")
# A run resumed without a callback it had (EarlyStopping, to train on past where it stopped) leaves it out on purpose.
warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
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
        parser.add_argument(
            "--init_from",
            type=str | None,
            default=None,
            help="fine-tune: a new run starting from this checkpoint's weights and network (a .ckpt file or a run "
            "directory); see docs/finetune.md",
        )
        # The data's leading vocabulary is no flag of its own: it is --init_from's checkpoint's.
        parser.link_arguments("init_from", "data.vocab", compute_fn=self.vocabulary_of, apply_on="parse")

    def vocabulary_of(self, path: str | None) -> list[str] | None:
        """The checkpoint's vocabulary, read once per path; a checkpoint that cannot be read is reported by
        parse_arguments (the parser would bury the reason in its own message)."""
        if path is None:
            return None
        if path not in self.init_networks:
            try:
                self.init_networks[path] = finetune.read(path)
            except UsageError as e:
                self.init_networks[path] = e
        found = self.init_networks[path]
        return None if isinstance(found, UsageError) else found.vocab

    def parse_arguments(self, parser, args):
        self.init_networks = {}  # --init_from path -> its checkpoint.Network, or why it cannot be read
        try:
            super().parse_arguments(parser, args)
        except (OSError, UnicodeDecodeError) as e:  # the parser reads a path given for a class (e.g. a logger)
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise UsageError(f"a flag names a file that cannot be read as settings ({reason})") from None
        # What the user set, on the command line or in a --config file (init_from: the link to data.vocab needs it).
        given = parser.parse_args(args, namespace=Namespace(init_from=None), defaults=False)
        self.init_network = None
        if self.config["init_from"] is not None:
            self.init_network = self.init_networks[self.config["init_from"]]
            if isinstance(self.init_network, UsageError):
                raise self.init_network
            finetune.take_architecture(self.config["model"], self.init_network, given, self.config["init_from"])
        checks.flags(self.config)  # before LightningCLI seeds or builds anything
        if self.config["optimizer"]:
            for name, what, twin in DEFAULT_OPTIMIZER_FLAGS:
                if given.get(f"model.{name}") is not None:
                    raise UsageError(
                        f"--model.{name} is the {what} of the default optimizer; "
                        f"with --optimizer set --optimizer.{twin}"
                    )

    def after_instantiate_classes(self):
        if self.init_network is not None:
            finetune.start_from(self.model, self.init_network)

    def instantiate_trainer(self, **kwargs):
        try:
            return super().instantiate_trainer(**kwargs)
        except UsageError:  # a ValueError too, and already in the user's words
            raise
        except (TypeError, ValueError) as e:  # Lightning's own checks of the --trainer.* values
            raise UsageError(f"the --trainer settings do not work: {' '.join(str(e).split())}") from None


def _no_advert(record: logging.LogRecord) -> bool:
    """Lightning advertises a cloud logging service at every start; that is not a note about this run."""
    return "litlogger" not in record.getMessage()


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
        raise UsageError(
            f"cannot write to output directory {directory} ({e.strerror}); pass a writable --trainer.default_root_dir"
        ) from None


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
    parallel.set_threads(requested or max(1, cores.available() // processes), pin=processes == 1)
    torch.set_num_threads(1)


def keep_freed_memory() -> None:
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
        args=checks.config_files(checks.values_not_flags(sys.argv[1:] if args is None else args)),
        parser_kwargs={"exit_on_error": False, "default_config_files": [DEFAULT_CONFIG]},
        save_config_kwargs={"overwrite": True},
        # Lightning's model summary sees no submodules in charrnn ("0 Modules", "n/a"): summary.lines says more.
        trainer_defaults={
            "enable_checkpointing": False,
            "check_val_every_n_epoch": None,
            "enable_model_summary": False,
        },
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


def _group_windows(trainer, data: CharDataModule, every_n_steps: int) -> None:
    """Several windows per trainer batch when windows are small (not under DDP: one window per batch keeps every
    rank's collectives in step). Validation and checkpoints keep counting optimizer steps: the trainer's validation
    interval, which Lightning counts in batches and reads only when fitting starts, is divided here."""
    if trainer.world_size > 1:
        return
    val_every = trainer.val_check_interval if isinstance(trainer.val_check_interval, int) else 0
    chars = data.batch_size * data.seq_length
    data.windows_per_batch = choose_windows_per_batch(chars, (val_every, trainer.max_steps, every_n_steps))
    if val_every:
        trainer.val_check_interval = val_every // data.windows_per_batch


def _steps(trainer, data: CharDataModule) -> int | None:
    """How many optimizer steps the run trains from step 0 (None: no limit), once the data is set up."""
    batches = data.train_dataloader()
    epochs = trainer.max_epochs * len(batches) * batches.per_batch if (trainer.max_epochs or 0) > 0 else None
    limits = [n for n in (trainer.max_steps, epochs) if n is not None and n > 0]
    return min(limits) if limits else None


def _fit(trainer, model, data, ckpt_path: str | None, last: LastCheckpoint, rate_flag: str) -> None:
    """``rate_flag``: the flag that sets this run's learning rate, named when it diverges."""
    lock = runlock.claim(trainer, last.path, new_run=ckpt_path is None) if trainer.is_global_zero else None
    launcher = trainer.strategy.launcher
    distributed.start_ranks_quietly(launcher)
    entry.at_forced_exit(lambda: distributed.stop_started_ranks(launcher))
    try:
        try:
            trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
        except BaseException:
            distributed.stop_started_ranks(launcher)  # DDP's other ranks, if it started them
            raise
    except Diverged as e:
        kept = _kept(last, trainer, ckpt_path, e.step)
        raise UsageError(f"{e}; {kept}; {e.advice or f'lower {rate_flag} (or --model.clip) and train again'}") from None
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
        print(
            f"stopped by {last.stop_signal} at step {trainer.global_step}; saved {where}; "
            "continue with --ckpt_path last"
        )
    elif os.path.exists(where):
        print(f"finished at step {trainer.global_step}; saved {where}")


@contextlib.contextmanager
def _parser_errors_as_usage_errors(args):
    """The parser's and Lightning's refusals, said as every other bad input (checks.plain_parser_error)."""
    try:
        yield
    except (argparse.ArgumentError, MisconfigurationException) as e:
        raise UsageError(checks.plain_parser_error(str(e), args)) from None


def run(args=None) -> None:
    """Build, prepare (every check runs before Lightning writes into the run directory, so a refused start leaves
    what is on disk as it was), fit, report."""
    with _lightning_notes_on_stdout(), _parser_errors_as_usage_errors(sys.argv[1:] if args is None else args):
        _run(args)


def _run(args) -> None:
    keep_freed_memory()
    cli, last = _build(args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    _default_threads(cli.config["threads"], trainer.num_devices)
    _group_windows(trainer, data, last.every_n_steps)
    ckpt_path, finished = resume.prepare(cli.config["ckpt_path"], trainer, model, data, last.path(trainer))
    if finished:
        return
    checks.dry_run(cli.config, _steps(trainer, data))
    _check_writable(trainer.default_root_dir)
    if trainer.is_global_zero:
        print("\n".join(summary.lines(model, data, trainer.world_size)))
        if cli.init_network is not None:
            print(finetune.summary(cli.config["init_from"], cli.init_network, data.chars))
    rate_flag = "--optimizer.lr" if cli.config["optimizer"] else "--model.learning_rate"
    _fit(trainer, model, data, ckpt_path, last, rate_flag)
    _report(trainer, last)


def main(args=None) -> int:
    return exit_code(run, args)
