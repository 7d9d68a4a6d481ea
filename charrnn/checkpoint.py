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
import warnings
import zipfile

import torch

from . import checks, rnn
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


# Where a run keeps last.ckpt, relative to the directory a user names: the run's root (train.py's
# --trainer.default_root_dir), its lightning_logs, one version_N, or the checkpoints folder itself.
_LAYOUTS = (
    LAST,
    os.path.join("checkpoints", LAST),
    os.path.join("version_*", "checkpoints", LAST),
    os.path.join("lightning_logs", "version_*", "checkpoints", LAST),
)


def newest_last_checkpoint(directory: str) -> str | None:
    """The ``last.ckpt`` of the highest ``version_N`` of a run directory, if any (no deep search: naming
    a large unrelated folder must neither be slow nor pick up someone else's run)."""
    found = [p for layout in _LAYOUTS for p in glob.glob(os.path.join(glob.escape(directory), layout))]
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
    checks.regular_file(path, "checkpoint")
    return path


def load(path: str, map_location="cpu") -> dict:
    """Load a charrnn checkpoint safely; anything else (corrupt, truncated, foreign, malicious) is a UsageError."""
    path = resolve(path)
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not a checkpoint file, or it is truncated; pass a last.ckpt written by train.py")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise before the one-line error
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message ends with advice to retry with weights_only=False: the one thing not to do here.
        found = re.search(r"GLOBAL (\S+)", str(e))
        refs = f" (it references {found.group(1)})" if found else ""
        raise UsageError(
            f"refused to load {path}: it holds objects other than tensors and plain data{refs}, and loading them "
            "could run code; pass a checkpoint written by train.py"
        ) from None
    except Exception as e:
        # torch's own wording, without its closing appeal to report the message as a bug
        reason = str(e).split("Could this error message be improved?")[0].strip().splitlines()
        reason = reason[0][:200] if reason else type(e).__name__
        raise UsageError(f"{path} is damaged, truncated or not a checkpoint ({reason})") from None
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("charrnn"), dict) and "state_dict" in checkpoint):
        raise UsageError(f"{path} is not a charrnn checkpoint (written by train.py)")
    return checkpoint


def model(path: str) -> tuple[dict, list[str]]:
    """The network (``rnn.PARAM_NAMES`` -> CPU tensor) and its vocabulary.

    Shapes, vocabulary and finiteness are checked here, so a damaged or diverged checkpoint is one clear error
    instead of garbage text or a crash mid-generation.
    """
    path = resolve(path)
    ckpt = load(path)
    state, vocab = ckpt["state_dict"], ckpt["charrnn"].get("vocab")
    params = {name: state.get(name) if isinstance(state, dict) else None for name in rnn.PARAM_NAMES}
    if not all(isinstance(p, torch.Tensor) and p.is_floating_point() and p.dim() == 2 for p in params.values()):
        raise UsageError(f"{path} is not a charrnn checkpoint (its weights are missing or malformed)")
    H, V = params["Wxh"].shape
    expected = {"Wxh": (H, V), "Whh": (H, H), "Why": (V, H), "bh": (H, 1), "by": (V, 1)}
    if any(tuple(params[name].shape) != shape for name, shape in expected.items()):
        raise UsageError(f"{path} is damaged: its weight shapes do not fit one network")
    chars_ok = isinstance(vocab, list) and all(isinstance(c, str) and len(c) == 1 for c in vocab)
    if not (chars_ok and len(vocab) == len(set(vocab)) == V):
        raise UsageError(f"{path} is damaged: its vocabulary does not match its {V} outputs")
    if not all(bool(torch.isfinite(p).all()) for p in params.values()):
        raise UsageError(f"{path} has non-finite weights (training diverged); sample from an earlier checkpoint")
    return params, vocab
