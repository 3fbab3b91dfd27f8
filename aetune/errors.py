"""The one exception type that a step script turns into a one-line message and a non-zero exit."""


class AetuneError(Exception):
    """A problem the user can fix (bad input, missing file, wrong flag): its message says how.

    Step scripts print ``error: <message>`` on one line and exit with code 2; no traceback, because
    the traceback is about our code and the fix is about their input (``--verbose`` shows it).
    """


class InvalidArgument(AetuneError, ValueError):
    """A bad argument value: a ``ValueError`` for library callers, one ``error:`` line in a step script."""
