"""Resuming a run: which checkpoint ``--ckpt_path`` means, whether it can continue this run, and where the curves go.

Everything is checked before Lightning starts writing into the run directory. This is the one place that reads
Lightning's private loop state in a checkpoint (``loops``).
"""

import os

import torch
from lightning.pytorch.loggers import TensorBoardLogger

from . import checkpoint, checks, rundir
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
    _check_precision(ckpt, path, model.arch, str(trainer.precision))
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


def _check_precision(ckpt: dict, path: str, arch, precision: str) -> None:
    """A run continues in the precision it was trained in: a resume in another would silently convert its weights
    (and its last.ckpt and best.ckpt with them). Refused like another architecture, naming the flag to repeat."""
    state = ckpt.get("state_dict")
    dtypes = {state[name].dtype for name in arch.param_shapes() if isinstance(state.get(name), torch.Tensor)}
    trained = [name for name, dtype in checks.DTYPES.items() if dtype in dtypes and name.endswith("-true")]
    if trained and checks.DTYPES[precision] not in dtypes:
        raise UsageError(f"{path} was trained in {trained[0]}; resume with --trainer.precision {trained[0]}")


def _check_best(trainer, path: str) -> None:
    """The ``best.ckpt`` a resumed run reads (the loss to beat, callbacks.BestCheckpoint) must load too, or the
    refusal would come only after the run directory has been written into."""
    best = rundir.checkpoint_path(trainer, rundir.BEST)
    if os.path.exists(best) and not os.path.samefile(best, path):
        advice = (f"resuming {path} reads it for the best validation loss so far: move it away to resume (the "
                  "run then keeps the best of its validations from here on)")  # fmt: skip
        checkpoint.load(best, advice=advice)


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
    _check_best(trainer, path)
    return path, False
