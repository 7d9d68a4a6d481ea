"""Where a run keeps its checkpoints: ``<run>/checkpoints/last.ckpt``, a run being a TensorBoard version
(``<root>/lightning_logs/version_N``) or, without a logger, the root itself.

The one place that knows this layout: where a training run writes, which ``last.ckpt`` a directory a user names
means, which run directory and which version a checkpoint belongs to. Imports nothing heavy (sample.py uses it).
"""

import glob
import os
import re

LAST = "last.ckpt"
BEST = "best.ckpt"  # beside last.ckpt: the state after the validation with the lowest loss (callbacks.BestCheckpoint)
CHECKPOINTS = "checkpoints"
LOGS = "lightning_logs"
_VERSION = re.compile(r"version_(\d+)")

# Where a run keeps its checkpoints, relative to the directory a user names: the run's root (train.py's
# --trainer.default_root_dir), its lightning_logs, one version_N, or the checkpoints folder itself.
_LAYOUTS = ("", CHECKPOINTS, os.path.join("version_*", CHECKPOINTS), os.path.join(LOGS, "version_*", CHECKPOINTS))


def checkpoint_path(trainer, name: str) -> str:
    """Where this run keeps its checkpoint ``name``: its TensorBoard version's, or the root's, ``checkpoints``."""
    return os.path.join(trainer.log_dir or trainer.default_root_dir, CHECKPOINTS, name)


def run_dir(checkpoint: str) -> str:
    """The run directory a checkpoint of that run (``<run>/checkpoints/NAME``) belongs to."""
    return os.path.dirname(os.path.dirname(checkpoint))


def version_dir(logs_dir: str, version: int) -> str:
    return os.path.join(logs_dir, f"version_{version}")


def version_number(name: str) -> int | None:
    """``version_N`` -> N; None for any other name."""
    match = _VERSION.fullmatch(name)
    return int(match.group(1)) if match else None


def newest_last_checkpoint(directory: str, name: str = LAST) -> str | None:
    """The ``last.ckpt`` (or checkpoint ``name``) of the highest ``version_N`` of a run directory, if any (no deep
    search: naming a large unrelated folder must neither be slow nor pick up someone else's run)."""
    found = [p for layout in _LAYOUTS for p in glob.glob(os.path.join(glob.escape(directory), layout, name))]

    def version(path: str) -> int:
        numbers = [version_number(part) for part in os.path.relpath(path, directory).split(os.sep)]
        return max((n for n in numbers if n is not None), default=-1)

    return max(found, key=lambda p: (version(p), os.path.getmtime(p))) if found else None


def log_version(path: str, root: str) -> int | None:
    """``<root>/lightning_logs/version_N/checkpoints/last.ckpt`` -> N, so a resumed run keeps writing the same
    curves. A checkpoint from anywhere else starts a new version: its N may belong to another run under root. So
    does any other checkpoint of a run (``best.ckpt``): continuing there would overwrite that run's newer last.ckpt."""
    version_path = run_dir(os.path.abspath(path))
    version = version_number(os.path.basename(version_path))
    if os.path.basename(path) != LAST or version is None:
        return None
    logs = os.path.join(root, LOGS)
    same_root = os.path.isdir(logs) and os.path.samefile(os.path.dirname(version_path), logs)
    return version if same_root else None


def continues(ckpt_path: str | None, log_dir: str) -> bool:
    """Whether a run resuming ``ckpt_path`` continues the TensorBoard run ``log_dir`` (its ``checkpoints``')."""
    return ckpt_path is not None and os.path.realpath(run_dir(ckpt_path)) == os.path.realpath(log_dir)
