"""The one exception type for problems a user can fix (bad file, bad flag, wrong checkpoint).

Entry points print its message as a single line and exit with code 2; anything else is a bug and keeps its
traceback.
"""


class UsageError(Exception):
    """A problem with the user's input, reported as one line: what is wrong and what to do."""
