"""Exceptions a user can cause; the UI turns each into a readable message (gr.Error)."""

from __future__ import annotations


class BrandGenError(Exception):
    """Base class: the message is written for the person using the app, not for a developer."""


class InvalidInput(BrandGenError, ValueError):
    """A request field is missing, malformed or out of range."""


class ModelUnavailable(BrandGenError):
    """The model is unknown, or its weights cannot be found or loaded."""


class LoraError(BrandGenError):
    """A LoRA file is missing, unsafe, corrupt, or does not fit the loaded model."""


class OutOfMemory(BrandGenError):
    """The accelerator ran out of memory; memory was freed and the message says what to change."""


class Cancelled(BrandGenError):
    """The user stopped the work before it finished."""


class StorageError(BrandGenError):
    """A file could not be written (disk full, read-only folder); nothing half-written was kept."""
