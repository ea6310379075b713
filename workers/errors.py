"""Typed errors of the model side."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of everything `workers` raises on purpose."""


class ModelBundleError(WorkerError):
    """A model bundle is missing, incomplete, or its weights do not match its manifest."""


class UnknownComponentError(WorkerError):
    """An encoder or MIL head name that is not registered."""
