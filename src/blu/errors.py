"""The one exception type for problems the user can fix (bad input, bad files).

The command line prints its message as a single line and exits with code 2;
anything else that escapes is a bug in blu."""


class BluError(Exception):
    """A user-facing error whose message is one line saying what is wrong."""


class ReportedByRankZero(BluError):
    """Under torchrun, a user error that every rank ran into together, or that rank 0 ran into
    while the others waited: rank 0 prints it, the other ranks exit with code 2 in silence."""
