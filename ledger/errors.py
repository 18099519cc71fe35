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


def describe(error: BaseException, max_chars: int = 240, where: bool = False) -> str:
    """'RuntimeError: first line of the message', cut to `max_chars`; with `where`, the file and line
    it was raised at ('(train.py:123)'), for errors from a child process the user cannot see."""
    message = first_line(error)
    if len(message) > max_chars:
        message = message[: max_chars - 3] + "..."
    text = type(error).__name__ if message == type(error).__name__ else f"{type(error).__name__}: {message}"
    if where:
        import traceback
        from pathlib import Path

        frames = traceback.extract_tb(error.__traceback__)
        text += f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return text
