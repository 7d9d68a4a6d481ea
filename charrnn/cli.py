"""``train.py``: LightningCLI without subcommands, plus resume resolution and one-line errors.

``python train.py [--config configs/X.yaml] [--data.*] [--model.*] [--trainer.*] [--ckpt_path last|PATH]
[--seed_everything N]``. Values come from ``configs/default.yaml`` unless a config file or flag overrides them.
"""

import argparse
import os
import sys

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from . import checkpoint
from .callbacks import AtomicCheckpointIO, LastCheckpoint, ProgressBar
from .data import CharDataModule, windows_per_batch
from .errors import UsageError
from .module import CharRNN

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
SUPPORTED_PRECISION = ("32-true", "32", "64-true", "64")


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


def _check_writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".charrnn-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write to output directory {directory} ({e.strerror}); pass a writable --trainer.default_root_dir") from None


def _resolve_ckpt_path(ckpt_path: str | None, root: str) -> str | None:
    if ckpt_path != "last":
        return None if ckpt_path is None else checkpoint.resolve(ckpt_path)
    found = checkpoint.newest_last_checkpoint(os.path.join(root, "lightning_logs"))
    if found is None:
        print(f"--ckpt_path last: no checkpoint under {root} yet, starting a new run")
    return found


def _check_resumable(ckpt: dict, path: str, model: CharRNN) -> None:
    saved = ckpt["charrnn"]
    if saved["vocab"] != model.vocab:
        raise UsageError(f"{path} was trained on a text with a different vocabulary; resume with the same --data.path")
    if saved["hidden_size"] != model.hparams.hidden_size:
        raise UsageError(
            f"{path} has hidden size {saved['hidden_size']}, not {model.hparams.hidden_size}; "
            f"resume with --model.hidden_size {saved['hidden_size']}"
        )


def _log_version(path: str) -> int | None:
    """``lightning_logs/version_N/checkpoints/last.ckpt`` -> N, so a resumed run keeps writing the same curves."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if len(parts) >= 3 and parts[-2] == "checkpoints" and parts[-3].startswith("version_"):
        return int(parts[-3][len("version_") :]) if parts[-3][len("version_") :].isdigit() else None
    return None


def _default_threads() -> None:
    """One intra-op thread unless OMP_NUM_THREADS says otherwise.

    This model's operations are too small for torch's intra-op threads to pay off (measured equal on an idle 2-core
    machine), and when another process shares the cores the threads wait on each other: training ran 5x slower
    with two threads next to one other busy process (BENCHMARKS.md).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def run(args=None) -> None:
    _default_threads()
    config_args = ["--config", DEFAULT_CONFIG] if os.path.exists(DEFAULT_CONFIG) else []
    argv = sys.argv[1:] if args is None else list(args)
    cli = CharRNNCLI(
        CharRNN,
        CharDataModule,
        run=False,
        args=config_args + argv,
        parser_kwargs={"exit_on_error": False},
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "plugins": [AtomicCheckpointIO()],
            "enable_checkpointing": False,
            "check_val_every_n_epoch": None,
        },
    )
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    every = cli.config["checkpoint_every"]
    if every < 1:
        raise UsageError(f"--checkpoint_every must be a positive integer, got {every}")
    precision = str(cli.config["trainer"]["precision"] or "32-true")
    if precision not in SUPPORTED_PRECISION:
        raise UsageError(
            f"--trainer.precision {precision} is not supported: the hand-written BPTT computes in the parameters' "
            "dtype and is not autocast-aware; use 32-true or 64-true"
        )
    # Several windows per trainer batch at small batch sizes; validation keeps counting optimizer steps.
    val_every = trainer.val_check_interval if isinstance(trainer.val_check_interval, int) else 0
    data.windows_per_batch = windows_per_batch(data.batch_size * data.seq_length, (val_every, trainer.max_steps))
    if val_every:
        trainer.val_check_interval = val_every // data.windows_per_batch
    last = LastCheckpoint(every)
    trainer.callbacks.append(last)
    ProgressBar.replace_default(trainer)
    root = trainer.default_root_dir
    _check_writable(root)
    ckpt_path = _resolve_ckpt_path(cli.config["ckpt_path"], root)
    if ckpt_path is not None:
        _check_resumable(checkpoint.load(ckpt_path), ckpt_path, model)
        version = _log_version(ckpt_path)
        if version is not None and isinstance(trainer.logger, TensorBoardLogger):
            trainer.loggers = [TensorBoardLogger(root, name="lightning_logs", version=version, default_hp_metric=False)]
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    where = last.path(trainer)
    if last.stop_signal:
        print(f"stopped by {last.stop_signal} at step {trainer.global_step}; saved {where}; continue with --ckpt_path last")
    elif os.path.exists(where):
        print(f"finished at step {trainer.global_step}; saved {where}")


def main(args=None) -> int:
    try:
        run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
