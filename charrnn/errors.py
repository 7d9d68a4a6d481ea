"""charrnn's exception types: problems a user can fix (bad file, bad flag, wrong checkpoint, a diverged run),
a signal, a standard stream that cannot be written.

Entry points print a UsageError's message as a single line ``error: ...`` on stderr and exit with code 2 (see
command.exit_code); anything else is a bug and keeps its traceback.
"""


def one_line(message: str) -> str:
    """``message`` with line breaks and other control characters escaped (a path may hold a newline)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(message))


class UsageError(ValueError):
    """A problem with the user's input, reported as one line: what is wrong and what to do. A ValueError, so that
    the Python API (charrnn.api) raises what Python code expects of a bad argument, in the scripts' words."""


class Diverged(UsageError):
    """Training produced a non-finite or exploding loss, or non-finite parameters: the learning rate (or clip) is
    too high for this model."""

    advice = None  # what to change, when it is not the learning rate

    def __init__(self, step: int, reason: str = "the loss or the parameters are not finite"):
        super().__init__(f"training diverged at step {step}: {reason}")
        self.step = step


class ScheduleFailed(Diverged):
    """The learning-rate schedule failed, or set a negative or non-finite rate, for ``step``: the run stops before
    training that step, its last checkpoint intact."""

    advice = "fix the --lr_scheduler arguments and train again"

    def __init__(self, step: int, reason: str):
        UsageError.__init__(self, f"training stopped at step {step}: {reason}")
        self.step = step


class Interrupted(BaseException):
    """A signal outside training's clean stop (LastCheckpoint's first one): ends the process with exit code 130.

    Not a KeyboardInterrupt, which Lightning turns into exit code 1 and a note on stdout; a BaseException, so
    that nothing catching Exception swallows it."""


class StreamError(OSError):
    """A write to stdout or stderr failed (entry.py's checked streams); ``filename`` names the stream."""
