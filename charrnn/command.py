"""What every charrnn command line shares: flag errors and file errors are the same one line, with one exit code.

A ``UsageError`` (bad flag, bad file, wrong checkpoint) ends a command as one line ``error: ...`` on stderr and
exit code 2; Ctrl-C or a signal (``Interrupted``) as one line and 130; anything else is a bug and keeps its
traceback.
"""

import argparse
import sys

from .entry import say
from .errors import Interrupted, UsageError, one_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose complaints are UsageErrors, so a bad flag reads like any other bad input."""

    def error(self, message):
        raise UsageError(message)


def exit_code(run, argv) -> int:
    """``run(argv)``, and the exit code of how it ended."""
    try:
        run(argv)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as e:
        say(one_line(e) or "interrupted")
        return 130
    return 0
