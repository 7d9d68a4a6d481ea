"""Checkpoint files: atomic writes, safe reads, and finding a run's newest ``last.ckpt``.

Reading never unpickles code (``weights_only=True``), so a checkpoint from an untrusted source cannot run
anything. Writing goes to a temporary file that is flushed, fsynced and renamed over the target, so a process
killed at any moment leaves either the old checkpoint or the new one, never half of one.

This module imports torch only (not Lightning), so ``sample.py`` starts fast.
"""

import glob
import os
import pickle
import re
import tempfile
import zipfile

import torch

from .errors import UsageError

LAST = "last.ckpt"


def _temporary_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def save_atomic(obj, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Hidden and not ending in .ckpt, so nothing mistakes a half-written file for a checkpoint.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temporary_prefix(path))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_temporaries(path: str) -> None:
    """Delete what a killed ``save_atomic(..., path)`` left behind: a checkpoint-sized file per kill."""
    directory = glob.escape(os.path.dirname(os.path.abspath(path)))
    for tmp in glob.glob(os.path.join(directory, glob.escape(_temporary_prefix(path)) + "*")):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _version_number(path: str) -> int:
    match = re.search(r"version_(\d+)", path)
    return int(match.group(1)) if match else -1


def newest_last_checkpoint(directory: str) -> str | None:
    """The ``last.ckpt`` of the highest ``lightning_logs/version_N`` below ``directory`` (or in it), if any."""
    direct = os.path.join(directory, LAST)
    if os.path.isfile(direct):
        return direct
    found = glob.glob(os.path.join(directory, "**", LAST), recursive=True)
    return max(found, key=lambda p: (_version_number(p), os.path.getmtime(p))) if found else None


def resolve(path: str) -> str:
    """A checkpoint file, or a run directory meaning its newest ``last.ckpt``."""
    if os.path.isdir(path):
        found = newest_last_checkpoint(path)
        if found is None:
            raise UsageError(f"no {LAST} found under {path}; pass a .ckpt file or a run directory")
        return found
    if not os.path.exists(path):
        raise UsageError(f"checkpoint {path} does not exist")
    return path


def load(path: str, map_location="cpu") -> dict:
    """Load a charrnn checkpoint safely; anything else (corrupt, truncated, foreign, malicious) is a UsageError."""
    path = resolve(path)
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not a checkpoint file, or it is truncated; pass a last.ckpt written by train.py")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        refs = f" (it references {found.group(1)})" if found else ""
        raise UsageError(
            f"refused to load {path}: it holds objects other than tensors and plain data{refs}, and loading them "
            "could run code; pass a checkpoint written by train.py"
        ) from None
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is not a readable charrnn checkpoint ({reason[:200]})") from None
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("charrnn"), dict) and "state_dict" in checkpoint):
        raise UsageError(f"{path} is not a charrnn checkpoint (written by train.py)")
    return checkpoint
