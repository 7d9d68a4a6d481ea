"""One run, one writer: the process training into a run directory holds an exclusive lock on a file in it.

Two processes resuming the same ``version_N`` would each write ``last.ckpt`` and the slower one would silently
overwrite the other's steps; the second is refused instead, in one line naming the first. The lock is an
``flock`` on ``<run directory>/.charrnn.lock``, so the kernel releases it when its holder exits or is killed:
a stale lock file never blocks. A new run claims its ``version_N`` by creating the directory (``mkdir`` either
creates it or fails), so two runs started at once into the same root never share one.
"""

import fcntl
import os

from lightning.pytorch.loggers import TensorBoardLogger

from . import rundir
from .errors import UsageError

LOCK = ".charrnn.lock"


class RunLock:
    def __init__(self, run_dir: str):
        os.makedirs(run_dir, exist_ok=True)
        self.fd = os.open(os.path.join(run_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            self.release()
            raise UsageError(
                f"{run_dir} is being written by another train.py (process {holder}); "
                "wait for it to end, or pass another --trainer.default_root_dir"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)


def _claim_version(logs_dir: str, version: int) -> int:
    """``version``, or the next free one (Lightning's rule: one more than the highest) if another run created
    ``version_<version>`` since the logger picked it; this process creates the directory either way."""
    os.makedirs(logs_dir, exist_ok=True)
    while True:
        try:
            os.mkdir(rundir.version_dir(logs_dir, version))
            return version
        except FileExistsError:
            taken = [n for n in map(rundir.version_number, os.listdir(logs_dir)) if n is not None]
            version = max(taken) + 1


def claim(trainer, last_path, new_run: bool) -> RunLock:
    """Lock the directory this run writes ``last_path(trainer)`` into; a new TensorBoard run first claims its
    ``version_N`` by creating it, even when the directory is there already: another run started at the same moment
    may have just created it (a resumed run locks the version it continues)."""
    logger = trainer.logger
    if isinstance(logger, TensorBoardLogger) and isinstance(logger.version, int) and new_run:
        version = _claim_version(logger.root_dir, logger.version)
        if version != logger.version:
            trainer.loggers = [
                TensorBoardLogger(logger.save_dir, name=logger.name, version=version, default_hp_metric=False)
            ]
    return RunLock(rundir.run_dir(last_path(trainer)))
