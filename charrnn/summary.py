"""What a run trains, said twice: a few lines printed when it starts, and the settings TensorBoard's HPARAMS tab
compares runs by.

Both read the model's ``Architecture`` field by field, so every field of it (cell, depth, sizes, dropout) is shown
without being named here.
"""

import dataclasses
import math
import os

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from . import optim, rundir
from .cells import fast

# The HPARAMS metrics: scalars written at every validation (module.py and callbacks.BestCheckpoint).
METRICS = ("val/loss", "val/loss_best")


def lines(model, data, processes: int) -> list[str]:
    """The model, its parameters per tensor and in total, the stream layout and the text."""
    arch = dataclasses.asdict(model.arch)
    shapes = model.arch.param_shapes()
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    streams, window = processes * data.batch_size, data.seq_length
    on = f" on {processes} processes" if processes > 1 else ""
    return [
        "model: " + ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in arch.items()),
        f"parameters: {sum(sizes.values()):,} in total: "
        + ", ".join(f"{name} {'x'.join(map(str, shape))} = {sizes[name]:,}" for name, shape in shapes.items()),
        f"training: {streams} streams x {window} characters = {streams * window:,} characters per step{on}",
        f"text: {data.source}: {len(data.train_ids):,} characters for training, {len(data.val_ids):,} for validation",
        f"compute: {_compute(model)}",
    ]


def _compute(model) -> str:
    """How the cell's loops run for this trainer's precision and device (cells/fast.py's path): C window loops,
    C steps, oneDNN products or plain torch, and why not a faster one."""
    trainer = model._trainer
    dtype = torch.float64 if trainer is not None and str(trainer.precision).startswith("64") else torch.float32
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    return str(fast.path(model.arch.cell_math, dtype, device))


def settings(config, model, data, trainer) -> dict:
    """Every setting that changes what a run learns, named as its flag: TensorBoard's HPARAMS columns. The optimizer
    and the schedule are their class and every argument; the default optimizer's rate is ``--model.learning_rate``,
    shown as ``optimizer.lr`` like any other's (and ``--model.initial_accumulator_value`` likewise)."""
    rate, start = config["model"]["learning_rate"], config["model"]["initial_accumulator_value"]
    default = {"class_path": optim.ADAGRAD, "init_args": {"lr": rate, "initial_accumulator_value": start}}
    found = {f"model.{name}": value for name, value in dataclasses.asdict(model.arch).items()}
    found["model.clip"] = model.hparams.clip
    found |= _class_and_arguments("optimizer", config["optimizer"] or default)
    found |= _class_and_arguments("lr_scheduler", config["lr_scheduler"])
    # Not the path (the text's name is data.text) nor the vocabulary (--init_from's, which is named).
    found |= {f"data.{name}": value for name, value in _plain(config["data"]).items() if name not in ("path", "vocab")}
    found["data.text"] = os.path.basename(data.source)
    found["init_from"] = config["init_from"] or "none"
    found |= {"seed_everything": config["seed_everything"], "trainer.precision": trainer.precision}
    found["processes"] = trainer.world_size
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in found.items()}


def _plain(value) -> dict:
    return value.as_dict() if isinstance(value, Namespace) else dict(value)


def _class_and_arguments(group: str, chosen) -> dict:
    """``{group: class path, group.arg: value, ...}``, leaving out arguments that are None (unset)."""
    if chosen is None:
        return {group: "none"}
    chosen = _plain(chosen)
    arguments = {
        f"{group}.{name}": value for name, value in (chosen.get("init_args") or {}).items() if value is not None
    }
    return {group: chosen["class_path"], **arguments}


class HParams(L.Callback):
    """Writes the run's ``settings`` into TensorBoard's HPARAMS with ``METRICS`` as its metrics, once per run: a
    resumed run logging into the same version keeps its row (the settings it started with) and extends its curves."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_fit_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and not rundir.continues(trainer.ckpt_path, logger.log_dir):
                writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams writes them
                for event in hparams(self.settings, dict.fromkeys(METRICS, 0.0)):
                    writer.add_summary(event)
