"""Every error Loupe reports to a user. Each is a ValueError: the message says what was wrong,
and the faces (CLI, server) turn it into one line (exit code 2) or a 4xx answer."""

from __future__ import annotations


class LoupeError(ValueError):
    """Base of the errors that are the user's to fix; never a programming bug."""


class LibraryError(LoupeError):
    """A library that cannot be opened or used as asked."""


class ModelMismatch(LibraryError):
    """The library's vectors come from another model than the one asked for."""


class UnknownImage(LibraryError, KeyError):
    """An id that names no (searchable) image of this library. A KeyError too, for
    callers that look ids up; a LibraryError, so the CLI reports it as the user's."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class QueryError(LoupeError):
    """A query that cannot be understood; the message says what is wrong."""


class ModelError(LoupeError):
    """A model name, tag or weights file that cannot be used."""


class DecodeError(LoupeError):
    """A file that is not a usable image; the message is the reason recorded in the catalog."""
