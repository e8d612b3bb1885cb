"""Typed errors. Each message is for a person: what, where, and what to do."""

from __future__ import annotations


class PreciseBaaError(Exception):
    """Base class of every error precise-baa raises on purpose."""


class ImageReadError(PreciseBaaError):
    """A file could not be turned into a radiograph; ``reason`` is one short line."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RecipeError(PreciseBaaError):
    """A recipe file or pipeline definition is invalid."""


class WeightsError(PreciseBaaError):
    """A weights folder is missing, incomplete, corrupted or does not match its recipe."""


class InputError(PreciseBaaError, ValueError):
    """Bad user input (stages, sex, ages, metadata), named precisely."""
