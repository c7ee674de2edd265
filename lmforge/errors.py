"""The one error type a person is meant to read: `LmforgeError` says, in one line, which thing
(a file, a folder, a field, a service) is wrong and what to do about it. The CLI prints these as
one line and exit code 2; anything else is a bug and keeps its traceback (`--debug` shows it for
these too). Every module's own error class derives from it."""

from __future__ import annotations


class LmforgeError(Exception):
    """An error the user can act on; its message names the thing and what to do."""


class OutputRefused(LmforgeError):
    """An output folder may not be written: it is not this command's own kind of output, or it
    holds (or is inside) one of the command's inputs."""


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """A message on one line, cut at `limit` characters when given: libraries' messages (torch's,
    pydantic's) run to paragraphs, and a user's terminal gets one line per error."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
