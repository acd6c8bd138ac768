"""The library's own exceptions.

The CLI turns ``ConfigError`` into a usage error (exit 2) and every other
``XaiBatchError`` into a one-line runtime error (exit 1); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["XaiBatchError", "ConfigError", "ModelError", "ImageError", "StorageError", "one_line"]


class XaiBatchError(Exception):
    """Base class of the errors xai-batch reports to users as one line."""


class ConfigError(XaiBatchError, ValueError):
    """An option or input path that cannot work; ``param`` names the option."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelError(XaiBatchError):
    """A checkpoint or pretrained weights that cannot be loaded as ResNet18."""


class ImageError(XaiBatchError):
    """One input file that cannot be explained; becomes that file's error row."""


class StorageError(XaiBatchError, OSError):
    """A path or URI that cannot be opened or used, its credentials redacted: pyarrow's own errors quote
    a URI whole, secret included. An ``OSError`` too, so code that passes over unreadable files still does."""


def one_line(error: BaseException | str, keep: str = "all", limit: int | None = None) -> str:
    """An error's message as the one line a row, a log or a terminal shows.

    White space is folded; an exception without a message reads as its
    type's name. ``keep='first'`` keeps only the first line (libraries put
    the gist there and pages of detail after it); ``keep='last'`` keeps only
    the last line of a message of more than three (a traceback's, where the
    exception itself comes last). ``limit`` cuts the line to that many characters.
    """
    text = str(error).strip()
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    if keep == "first":
        lines = lines[:1]
    elif keep == "last" and len(lines) > 3:
        lines = lines[-1:]
    folded = " ".join(" ".join(lines).split())
    return folded[:limit] if limit is not None else folded
