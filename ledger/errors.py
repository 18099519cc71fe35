"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class LedgerError(Exception):
    """A problem with the user's input or environment, not a bug in ledger."""

    exit_code = 1


class SpecError(LedgerError):
    """An experiment spec or a command-line value that does not validate.

    `keypath` and `detail` (the message without the file and key path) are set when the error is
    about one key of a spec, so that an error caused by a `--set` override can name the override
    instead of the file, whose text never said it.
    """

    exit_code = 2

    def __init__(self, message: str, keypath: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.keypath, self.detail = keypath, detail


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when there is none):
    enough to act on, short enough for one line of output or one ledger field."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
