"""Resuming a run: which checkpoint ``--ckpt_path`` means, whether it can continue this run, and where the curves go.

Everything is checked before Lightning starts writing into the run directory. This is the one place that reads
Lightning's private loop state in a checkpoint (``loops``).
"""

import os

from lightning.pytorch.loggers import TensorBoardLogger

from . import checkpoint, rundir
from .callbacks import OptimizerFromFlags
from .errors import UsageError


def resolve(ckpt_path: str | None, root: str) -> str | None:
    """The checkpoint file ``--ckpt_path`` names: ``last`` is the newest ``last.ckpt`` under ``root``, if any."""
    if ckpt_path != "last":
        return None if ckpt_path is None else checkpoint.resolve(ckpt_path)
    found = rundir.newest_last_checkpoint(root)  # where LastCheckpoint writes, the highest version first
    if found is None:
        print(f"--ckpt_path last: no checkpoint under {root} yet, starting a new run")
    return found


def check_resumable(ckpt: dict, path: str, model, data, trainer) -> None:
    """Everything Lightning would otherwise find wrong only after it has started writing into the run directory."""
    checkpoint.check_resumable_by(checkpoint.read_metadata(ckpt, path), model.arch, model.vocab, path)
    for callback in trainer.callbacks:
        if isinstance(callback, OptimizerFromFlags):
            callback.check_resumable(ckpt, path)
    layouts = ckpt.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
    if not (layouts and ckpt.get("optimizer_states") and type(data).__qualname__ in ckpt):
        raise UsageError(f"{path} holds weights but no training state, so it cannot be resumed; sample from it instead")
    data.load_state_dict(ckpt[type(data).__qualname__])
    data.trainer = trainer  # the stream layout depends on the number of processes
    data.setup("fit")
    data.train_dataloader().load_state_dict(layouts[0])


def prepare(ckpt_path: str | None, trainer, model, data, last_path: str) -> tuple[str | None, bool]:
    """``(checkpoint to resume from or None, whether that checkpoint is finished already)``, after every check.

    The data is set up for this run's processes on both paths (a resume checks its layout there too). A resumed run
    logs into its own TensorBoard version; a new run refuses to overwrite ``last_path`` (only possible without a
    versioned logger).
    """
    root = trainer.default_root_dir
    path = resolve(ckpt_path, root)
    if path is None:
        if os.path.exists(last_path):
            raise UsageError(
                f"{last_path} exists from an earlier run; continue it with --ckpt_path last "
                "or pass another --trainer.default_root_dir"
            )
        data.trainer = trainer  # the streams of all processes: a text too short for them is refused before any write
        data.setup("fit")
        return None, False
    ckpt = checkpoint.load(path)
    check_resumable(ckpt, path, model, data, trainer)
    if ckpt["global_step"] >= trainer.max_steps > -1:
        print(f"{path} is at step {ckpt['global_step']}, already --trainer.max_steps; nothing to do")
        return path, True
    version = rundir.log_version(path, root)
    if version is not None and isinstance(trainer.logger, TensorBoardLogger):
        trainer.loggers = [TensorBoardLogger(root, name=rundir.LOGS, version=version, default_hp_metric=False)]
    return path, False
