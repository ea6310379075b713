"""Typed errors of the model side, under the one root `SlidemillError`."""

from __future__ import annotations

from slidemill.schemas.errors import SlidemillError


class WorkerError(SlidemillError):
    """Base of everything `workers` raises on purpose."""


class ModelBundleError(WorkerError):
    """A model bundle is missing, incomplete, or its weights do not match its manifest."""


class PresetWeightsError(ModelBundleError):
    """An encoder preset's published weights are not on this machine, or a file is not them
    (tensors missing, unexpected or of the wrong shape: another model's weights)."""


class UnknownComponentError(WorkerError):
    """An encoder or MIL head name that is not registered."""


class TrainingError(WorkerError):
    """Training cannot start or go on: bad features folder, too few slides, a diverging loss."""


class LabelError(TrainingError):
    """A labels CSV that cannot be used: missing columns, an unknown label, fewer than 2 classes."""


class EvaluationError(WorkerError):
    """Inputs to a metric or an evaluation are malformed (shapes, values, duplicated slides)."""


class UndefinedMetricError(EvaluationError):
    """A metric is undefined on the data given, e.g. AUROC when only one class is present."""
