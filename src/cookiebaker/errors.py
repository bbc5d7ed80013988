"""Domain errors. Library code raises these; only the CLI turns them into a one-line message."""

from __future__ import annotations


class CookiebakerError(Exception):
    """Base class for every error a user can cause or fix."""


def shown(path: object) -> str:
    """A path as one line of an error message: control characters (a newline in a file name) written as escapes."""
    text = str(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(CookiebakerError):
    """A configuration value is unknown, of the wrong type, or impossible together with another."""


class InputFileError(CookiebakerError):
    """An input file cannot be read or is not what the stage expects."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{shown(self.path)}: {problem}")


class ExportFormatError(InputFileError):
    """A file is readable but is not a chat export that a reader takes (or is one, damaged)."""


class DatasetError(CookiebakerError):
    """A dataset (Parquet) produced by an earlier stage is missing, empty or has the wrong schema."""


class ModelError(CookiebakerError):
    """A base model, adapter or tokenizer cannot be found, loaded or used as asked."""


class ServiceError(CookiebakerError):
    """A service a command needs (the Bot API, an engine) cannot be reached or refuses it."""
