"""The file a command writes (``--out``): refused before any work unless it is new or the command's own, then
written whole or not at all, so that a file charrnn did not write is never replaced and a killed run leaves either
the old file or the new one."""

import os
import tempfile
from typing import Callable

from .errors import UsageError


def check(path: str, ours: Callable[[str], bool], command: str) -> None:
    """A UsageError unless ``path`` can be written: its directory exists, and it is absent or a regular file that
    ``ours(path)`` recognises as written by ``command``."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"--out {path}: directory {directory} does not exist")
    if not os.path.lexists(path):
        return
    if not os.path.isfile(path):  # a directory, a FIFO, a dangling link
        raise UsageError(f"--out {path} exists and is not a regular file; pass another --out")
    try:
        mine = ours(path)
    except OSError as e:
        raise UsageError(f"--out {path}: cannot read it to check who wrote it ({e.strerror})") from None
    if not mine:
        raise UsageError(f"--out {path} exists and was not written by {command}; pass another --out or remove it")


def write_atomic(data: bytes, path: str) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename); a failure is a UsageError."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.tmp-")
    except OSError as e:
        raise UsageError(f"--out {path}: cannot write it ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise UsageError(f"--out {path}: cannot write it ({e.strerror})") from None
        raise
