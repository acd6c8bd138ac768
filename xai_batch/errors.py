"""The library's own exceptions.

The CLI turns ``ConfigError`` into a usage error (exit 2) and every other
``XaiBatchError`` into a one-line runtime error (exit 1); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["XaiBatchError", "ConfigError", "ModelError", "ImageError"]


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
