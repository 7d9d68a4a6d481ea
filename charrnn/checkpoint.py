"""Checkpoint files: atomic writes, safe reads, and charrnn's own entry in them.

Reading never unpickles code (``weights_only=True``), so a checkpoint from an untrusted source cannot run
anything. Writing is atomic (files.write_atomic): a process killed at any moment leaves either the old checkpoint
or the new one, never half of one. Which file a run directory means is rundir.py's.

This module imports torch only (not Lightning, not the flag checks), so ``sample.py`` starts fast.
"""

import os
import pickle
import re
import warnings
import zipfile
from typing import NamedTuple

import torch

from . import files, rundir
from .errors import UsageError
from .network import Architecture

# The layout of checkpoint["charrnn"] this version writes. Earlier ones are read too, upgraded on reading: format 1
# (vocab, hidden_size, hidden_state (B, H); the tanh RNN of one layer) and format 2 (the architecture recorded, the
# state still (B, H), no dropout seed).
FORMAT = 3


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` whole or not at all (files.write_atomic), creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_atomic(path, lambda f: torch.save(obj, f))


def resolve(path: str) -> str:
    """A checkpoint file, or a run directory meaning its newest ``last.ckpt``."""
    if os.path.isdir(path):
        found = rundir.newest_last_checkpoint(path)
        if found is None:
            best = rundir.newest_last_checkpoint(path, rundir.BEST)
            hint = f"; {best} is there: pass it" if best else "; pass a .ckpt file or a run directory"
            raise UsageError(f"no {rundir.LAST} found under {path}{hint}")
        return found
    if not os.path.exists(path):
        raise UsageError(f"checkpoint {path} {files.missing(path)}")
    files.regular_file(path, "checkpoint")
    return path


def _check_checksums(path: str, advice: str) -> None:
    """Refuse a checkpoint whose bytes changed after torch.save wrote them: torch.load reads the zip members without
    checking the CRC-32 torch.save stored for each, so a flipped bit in a weight would load as another weight."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every member and compares its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UsageError(f"{path} is damaged, truncated or not a checkpoint ({reason}); {advice}") from None
    if bad is not None:
        raise UsageError(f"{path} is damaged: its part {bad} does not match the checksum written with it; {advice}")


def load(path: str, map_location="cpu", advice: str = "pass a last.ckpt written by train.py") -> dict:
    """Load a charrnn checkpoint safely; anything else (corrupt, truncated, foreign, malicious) is a UsageError that
    ends with ``advice``."""
    path = resolve(path)
    ckpt = read(path, map_location, advice)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("charrnn"), dict) and "state_dict" in ckpt):
        raise UsageError(f"{path} is not a charrnn checkpoint (written by train.py); {advice}")
    return ckpt


def read(path: str, map_location="cpu", advice: str = "pass a last.ckpt written by train.py"):
    """What ``torch.save`` wrote to ``path`` (a charrnn checkpoint or any of Lightning's), read safely: checksums
    checked, no code run."""
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not a checkpoint file, or it is truncated; {advice}")
    _check_checksums(path, advice)
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
            f"could run code; {advice}"
        ) from None
    except Exception as e:
        # torch's own wording, without its closing appeal to report the message as a bug
        reason = str(e).split("Could this error message be improved?")[0].strip().splitlines()
        reason = reason[0][:200] if reason else type(e).__name__
        raise UsageError(f"{path} is damaged, truncated or not a checkpoint ({reason}); {advice}") from None
    return checkpoint


class Metadata(NamedTuple):
    """charrnn's entry of a checkpoint: what the network is, its characters, every stream's carried state
    (N * B, L * K, H), and the seed of the run's dropout masks (None without dropout)."""

    arch: Architecture
    vocab: list[str] | None
    hidden_state: torch.Tensor | None
    dropout_seed: int | None = None


class Network(NamedTuple):
    arch: Architecture
    params: dict
    vocab: list[str]


def write_metadata(ckpt: dict, arch: Architecture, vocab: list[str] | None, hidden_state, dropout_seed=None) -> None:
    """Put charrnn's entry into ``ckpt`` (Lightning's checkpoint dict, or one built by hand)."""
    ckpt["charrnn"] = {"format": FORMAT, "architecture": arch.as_dict(), "vocab": vocab, "hidden_state": hidden_state,
                       "dropout_seed": dropout_seed}  # fmt: skip


def _upgrade_format1(meta: dict) -> dict:
    vocab = meta.get("vocab")
    size = {"vocab_size": len(vocab) if isinstance(vocab, list) else None, "hidden_size": meta.get("hidden_size")}
    return {**meta, "format": 2, "architecture": size}


def _upgrade_format2(meta: dict) -> dict:
    """One layer of one state tensor: (B, H) becomes (B, 1, H)."""
    h = meta.get("hidden_state")
    return {**meta, "format": 3, "hidden_state": h.unsqueeze(1) if isinstance(h, torch.Tensor) and h.dim() == 2 else h}


def read_metadata(ckpt: dict, source: str) -> Metadata:
    """charrnn's entry of a loaded checkpoint, in this version's terms; a UsageError naming ``source`` if unreadable."""
    meta = ckpt["charrnn"]
    if meta.get("format") == 1:
        meta = _upgrade_format1(meta)
    if meta.get("format") == 2:
        meta = _upgrade_format2(meta)
    if meta.get("format") != FORMAT:
        raise UsageError(
            f"{source} has checkpoint format {meta.get('format')!r}, which this charrnn cannot read (it reads 1 to "
            f"{FORMAT}); use the charrnn that wrote it"
        )
    try:
        arch = Architecture(**meta["architecture"])
    except (KeyError, TypeError, UsageError):
        raise UsageError(f"{source} is damaged: it does not say what network it holds") from None
    vocab = meta.get("vocab")
    chars_ok = isinstance(vocab, list) and all(isinstance(c, str) and len(c) == 1 for c in vocab)
    if vocab is not None and not (chars_ok and len(vocab) == len(set(vocab)) == arch.vocab_size):
        raise UsageError(f"{source} is damaged: its vocabulary does not match its {arch.vocab_size} outputs")
    h, seed = meta.get("hidden_state"), meta.get("dropout_seed")
    rows = arch.num_layers * arch.cell_math.NUM_STATES
    if h is not None and not (isinstance(h, torch.Tensor) and h.dim() == 3 and h.shape[1:] == (rows, arch.hidden_size)):
        raise UsageError(f"{source} is damaged: its carried state does not fit its network")
    if arch.dropout > 0 and not (type(seed) is int and seed >= 0):
        raise UsageError(f"{source} is damaged: it trains with dropout but has no dropout seed")
    return Metadata(arch, vocab, h, seed)


def check_resumable_by(meta: Metadata, arch: Architecture, vocab: list[str] | None, source: str) -> None:
    """A UsageError unless a run of ``arch`` on a text of ``vocab`` can continue the checkpoint ``meta`` came from."""
    if meta.vocab != vocab:
        raise UsageError(
            f"{source} was trained on a text with a different vocabulary; resume with the same --data.path"
        )
    differ = {name: saved for name, saved in meta.arch.as_dict().items() if saved != getattr(arch, name)}
    if differ:
        has = ", ".join(
            f"{name.replace('_', ' ')} {saved} (not {getattr(arch, name)})" for name, saved in differ.items()
        )
        flags = " ".join(f"--model.{name} {saved}" for name, saved in differ.items())
        raise UsageError(f"{source} has {has}; resume with {flags}")


def load_network(path: str) -> Network:
    """The network of a checkpoint, its weights (CPU tensors) and vocabulary, for sampling.

    Shapes, vocabulary and finiteness are checked here, so a damaged or diverged checkpoint is one clear error
    instead of garbage text or a crash mid-generation.
    """
    path = resolve(path)
    return network_of(load(path), path)


def network_of(ckpt: dict, path: str) -> Network:
    """``load_network`` of a checkpoint already loaded from ``path``."""
    arch, vocab = read_metadata(ckpt, path)[:2]
    if vocab is None:
        raise UsageError(f"{path} has no vocabulary; pass a last.ckpt written by train.py")
    state = ckpt["state_dict"]
    params = {name: state.get(name) if isinstance(state, dict) else None for name in arch.param_shapes()}
    arch.check_params(params, path)
    return Network(arch, params, vocab)
