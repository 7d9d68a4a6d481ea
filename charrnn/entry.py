"""What train.py, sample.py and visualize.py do before anything else: quiet signals and checked standard streams.

Imported before torch (it imports nothing heavy), so that Ctrl-C or SIGTERM during the seconds torch takes to
import ends with one line and exit code 130 instead of a traceback through the import machinery. stdout and
stderr are replaced by streams whose failed writes (a full disk, a reader that went away, a bad descriptor)
raise StreamError, which ends the run with one line and exit code 2 instead of a traceback (or Python's
"Exception ignored" note and exit code 120 at the final flush).
"""

import errno
import logging
import io
import os
import signal
import sys

from .errors import Interrupted, StreamError

STDOUT, STDERR = "standard output", "standard error"


def _interrupt(signum, frame):
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


class _CheckedFile(io.FileIO):
    def __init__(self, fd: int, label: str):
        super().__init__(fd, "w", closefd=False)
        self.label = label

    def write(self, data):
        try:
            return super().write(data)
        except OSError as e:
            raise StreamError(e.errno, e.strerror, self.label) from None


def _checked_stream(fd: int, label: str, like) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.BufferedWriter(_CheckedFile(fd, label)),
        encoding=getattr(like, "encoding", None) or "utf-8",
        errors="backslashreplace" if fd == 2 else getattr(like, "errors", None) or "strict",
        line_buffering=fd == 2 or os.isatty(fd),
    )


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _to_devnull(fd: int) -> None:
    """Point ``fd`` at /dev/null: a file opened later cannot land on it, and the final flush is silent."""
    null = os.open(os.devnull, os.O_WRONLY)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def say(line: str) -> None:
    """``line`` on stderr; a stderr that cannot be written is silenced instead (nothing is left to tell)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except StreamError:
        _to_devnull(2)


def _exit_at_once(signum, frame):
    say(f"interrupted by {signal.Signals(signum).name}")
    os._exit(130)


def start() -> None:
    """First thing in an entry script, before it imports torch: signals end the process at once (nothing is being
    written yet), and stdout and stderr become checked streams. Both must be open."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_at_once)
    closed = [label for fd, label in ((1, STDOUT), (2, STDERR)) if not _is_open(fd)]
    for fd in (0, 1, 2):
        if not _is_open(fd):
            _to_devnull(fd)  # so that no file opened later lands on a standard descriptor
    sys.stdout = _checked_stream(1, STDOUT, sys.stdout)
    sys.stderr = _checked_stream(2, STDERR, sys.stderr)
    # A log note that cannot be written is not worth a traceback: the unwritten bytes stay buffered, and the
    # final flush in run() reports the stream once.
    logging.raiseExceptions = False
    if closed:
        say(f"error: {' and '.join(closed)} {'is' if len(closed) == 1 else 'are'} closed; run with it open")
        sys.exit(2)


def run(main, reader_may_leave: bool = False) -> int:
    """``main()``'s exit code; a signal raises Interrupted (exit code 130), a failed write to stdout or stderr is
    one line and exit code 2. ``reader_may_leave``: a reader closing stdout (``| head``) is exit code 0."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        code = main()
        sys.stdout.flush()
        return code
    except Interrupted as e:
        say(str(e))
        return 130
    except StreamError as e:
        _to_devnull(1)  # what is still buffered for stdout can never be written
        if reader_may_leave and e.errno == errno.EPIPE and e.filename == STDOUT:
            return 0
        say(f"error: cannot write to {e.filename} ({e.strerror})")
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # during the interpreter's shutdown: no traceback either
            signal.signal(sig, _exit_at_once)
