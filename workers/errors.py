"""Typed errors of the model side."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of everything `workers` raises on purpose."""


class ModelBundleError(WorkerError):
    """A model bundle is missing, incomplete, or its weights do not match its manifest."""


class UnknownComponentError(WorkerError):
    """An encoder or MIL head name that is not registered."""


class TrainingError(WorkerError):
    """Training cannot start or go on: bad features folder, too few slides, a diverging loss."""


class LabelError(TrainingError):
    """A labels CSV that cannot be used: missing columns, an unknown label, fewer than 2 classes."""
