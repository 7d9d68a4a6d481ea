"""What train.py, sample.py and visualize.py do before anything else: quiet signals and checked standard streams.

Imported before torch (it imports nothing heavy), so that Ctrl-C or SIGTERM during the seconds torch takes to
import ends with one line and exit code 130 instead of a traceback through the import machinery; so does one while
the main thread is stuck in C (DDP's rendezvous), and the ranks DDP started stay quiet and never outlive rank 0.
stdout and stderr are replaced by streams whose failed writes (a full disk, a reader that went away, a bad descriptor)
raise StreamError, which ends the run with one line and exit code 2 instead of a traceback (or Python's
"Exception ignored" note and exit code 120 at the final flush).
"""

import ctypes
import errno
import io
import logging
import os
import signal
import sys
import threading
import time

from .errors import Interrupted, StreamError

STDOUT, STDERR = "standard output", "standard error"
RANK_ZERO_PID = "CHARRNN_RANK_ZERO_PID"  # set by distributed.start_ranks_quietly (which cannot be imported here)
# A DDP rank Lightning started: train.py run again with LOCAL_RANK 1, 2 ... (rank 0 is the process the user ran).
STARTED_RANK = os.environ.get("LOCAL_RANK", "0") != "0"
_PR_SET_PDEATHSIG = 1  # from linux/prctl.h
_GRACE = 1.0  # seconds the main thread has to handle a signal before the watch thread ends the process
_handled = 0  # signals the main thread's handlers (below) have run for
_stop_started = None  # what ends the ranks this process started, before it exits at a signal (cli sets it)


def at_forced_exit(stop) -> None:
    """Call ``stop()`` before the process is ended at a signal its main thread could not handle."""
    global _stop_started
    _stop_started = stop


def _interrupt(signum, frame):
    global _handled
    _handled += 1
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
    global _handled
    _handled += 1
    say(f"interrupted by {signal.Signals(signum).name}")
    os._exit(130)


def _leave_to_rank_zero(signum, frame):
    """A started rank's signal before training: a terminal signals every rank at once, and rank 0 says it. No line
    of its own, and no exit before rank 0 stops it (a second signal), or rank 0's Lightning, seeing a rank end
    first, would kill rank 0 ("Forcefully terminating ...", exit code 137). Bounded, for a signal to this rank
    alone; a rank never outlives rank 0 anyway (_follow_rank_zero)."""
    global _handled
    _handled += 1
    if _handled > 1:
        os._exit(130)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)  # a second signal runs this handler again, inside this one
    os._exit(130)


def _follow_rank_zero() -> None:
    """A started rank is killed when rank 0 ends (Linux), however: it would otherwise wait in the rendezvous for a
    rank 0 that is gone, or print a traceback when the sockets rank 0 held close. Then it takes the signals rank 0
    started it with blocked (distributed.start_ranks_quietly), a pending one included."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux
        pass
    if os.environ.get(RANK_ZERO_PID, str(os.getppid())) != str(os.getppid()):
        os._exit(130)  # rank 0 ended before this rank could follow it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _watch_signals() -> None:
    """End the process at SIGINT / SIGTERM when its main thread cannot: one blocked in C (DDP's rendezvous, waiting
    for a rank that has stopped) runs no Python signal handler until the call returns, minutes later. The signal's
    byte (signal.set_wakeup_fd) wakes a thread, which waits _GRACE seconds for the main thread's handler. Only for
    this module's handlers: training's (callbacks.LastCheckpoint) finish the step and save, however long that takes."""
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    signal.set_wakeup_fd(writable, warn_on_full_buffer=False)

    def watch():
        while True:
            signum = os.read(readable, 1)[0]
            ours = signal.getsignal(signum) in (_interrupt, _exit_at_once)
            if signum not in (signal.SIGINT, signal.SIGTERM) or not ours:
                continue
            handled = _handled
            time.sleep(_GRACE)
            if _handled == handled:
                if _stop_started is not None:
                    _stop_started()
                say(f"interrupted by {signal.Signals(signum).name}")
                os._exit(130)

    threading.Thread(target=watch, name="charrnn-signal-watch", daemon=True).start()


def start() -> None:
    """First thing in an entry script, before it imports torch: signals end the process at once (nothing is being
    written yet; a rank DDP started leaves them to rank 0), and stdout and stderr become checked streams. Both
    must be open."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _leave_to_rank_zero if STARTED_RANK else _exit_at_once)
    closed = [label for fd, label in ((1, STDOUT), (2, STDERR)) if not _is_open(fd)]
    for fd in (0, 1, 2):
        if not _is_open(fd):
            _to_devnull(fd)  # so that no file opened later lands on a standard descriptor
    if STARTED_RANK:
        _follow_rank_zero()
    else:
        _watch_signals()
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
        signal.signal(sig, _leave_to_rank_zero if STARTED_RANK else _interrupt)
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
            signal.signal(sig, _leave_to_rank_zero if STARTED_RANK else _exit_at_once)
