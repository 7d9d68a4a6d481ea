"""Files written whole or not at all, and files that must be regular files.

A write goes to a hidden temporary file beside the target that is flushed, fsynced and renamed over it, so a
process killed at any moment leaves either the old file or the new one, never half of one.
"""

import errno
import glob
import os
import stat
import tempfile
from typing import Callable

from .errors import UsageError


def _temporary_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def write_atomic(path: str, write, mode: int | None = None) -> None:
    """``write(f)`` into a binary file that replaces ``path`` only once complete; ``mode``: its permissions
    (default: the temporary file's, readable by the owner only)."""
    directory = os.path.dirname(os.path.abspath(path))
    # Hidden and not ending like the target, so nothing mistakes a half-written file for a finished one.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temporary_prefix(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
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
    """Delete what killed ``write_atomic(path, ...)`` calls left behind: a whole file's size per kill."""
    directory = glob.escape(os.path.dirname(os.path.abspath(path)))
    for tmp in glob.glob(os.path.join(directory, glob.escape(_temporary_prefix(path)) + "*")):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def missing(path: str) -> str:
    """Why ``path``, which cannot be opened, is not there, in words: it does not exist, or it is a symbolic link
    that loops or points nowhere (``os.path.exists`` says False for all three)."""
    try:
        os.stat(path)
    except ValueError:  # a NUL in the path
        pass
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link that loops (too many levels of links)"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return "does not exist"


def regular_file(path: str, what: str) -> None:
    """Refuse a pipe, device, socket or directory where a file is expected: reading one would block forever
    (a FIFO), never end (``/dev/zero``) or fail half-way."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the caller says which, in its own words
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, a device or a socket)"
        raise UsageError(f"{what} {path} is {kind}; pass a regular file")


def check_out(path: str, ours: Callable[[str], bool], command: str) -> None:
    """A UsageError unless ``path`` can be written: its directory exists, and it is absent or a regular file that
    ``ours(path)`` recognises as written by ``command``."""
    if not os.path.basename(path):  # '' or a directory's path ending in /
        raise UsageError(f"--out {path!r} names no file; pass a file name, e.g. --out page.html")
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


def write_out(path: str, data: bytes) -> None:
    """``data`` into the ``--out`` file ``path``, whole or not at all, readable by everyone (a page, an export); a
    failure is a UsageError."""
    try:
        write_atomic(path, lambda f: f.write(data), mode=0o644)
    except OSError as e:
        raise UsageError(f"--out {path}: cannot write it ({e.strerror})") from None
