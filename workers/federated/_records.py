"""What crosses the network, both ways, as Flower records: the names, and the conversions between
moments and arrays. A site's replies hold only the keys `SITE_SENDS` lists (checked by
`tests/workers/federated`, on the replies a site actually sent)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from slidemill.workers.errors import TrainingError
from slidemill.workers.models import InputMoments, ReferenceMoments

# message types of the `query` steps (Flower's `train` carries the rounds)
DESCRIBE: Final = "describe"
"""Before training: the site's counts, width, encoder identity and moment sums."""
OOD: Final = "ood"
"""After training: the site's OOD-score percentile against the global reference."""

STEP: Final = "step"
SETTINGS: Final = "settings"
CLASS_NAMES: Final = "class-names"
CLASS_WEIGHTS: Final = "class-weights"
ROUND: Final = "server-round"
ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"
SITE: Final = "site"
INPUT_MOMENTS: Final = "input-moments"
REFERENCE_MOMENTS: Final = "reference-moments"
EXPECTED_DIM: Final = "feature-dim"
EXPECTED_ENCODER: Final = "encoder-id"
PERCENTILE: Final = "percentile"

# what a site's replies may hold, per step: record name → its keys (arrays: a head's state
# names, checked against the head the aggregator sent)
SITE_SENDS: Final[Mapping[str, Mapping[str, frozenset[str]]]] = {
    DESCRIBE: {
        SITE: frozenset(
            {"name", "n-slides", "feature-dim", "encoder-id", "class-names", "class-counts"}
        ),
        INPUT_MOMENTS: frozenset({"n", "total", "squares"}),
        REFERENCE_MOMENTS: frozenset({"n-slides", "n-tiles", "total", "outer"}),
    },
    "train": {METRICS: frozenset({"num-examples", "unit-weight", "train-loss"})},
    OOD: {METRICS: frozenset({"ood-percentile", "n-scored"})},
}
"""Per step, each record a site's reply may hold and its keys; a `train` reply also holds
`arrays`, the head's parameters under the names the aggregator sent."""


def _array(values: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(values))


def input_moments_record(m: InputMoments) -> ArrayRecord:
    return ArrayRecord(
        {
            "n": _array(np.array([m.n], dtype=np.int64)),
            "total": _array(m.total),
            "squares": _array(m.squares),
        }
    )


def input_moments_of(record: ArrayRecord) -> InputMoments:
    a = {k: v.numpy() for k, v in record.items()}
    return InputMoments(int(a["n"][0]), a["total"].astype(np.float64), a["squares"])


def reference_moments_record(m: ReferenceMoments) -> ArrayRecord:
    return ArrayRecord(
        {
            "n-slides": _array(np.array([m.n_slides], dtype=np.int64)),
            "n-tiles": _array(np.array([m.n_tiles], dtype=np.int64)),
            "total": _array(m.total),
            "outer": _array(m.outer),
        }
    )


def reference_moments_of(record: ArrayRecord) -> ReferenceMoments:
    a = {k: v.numpy() for k, v in record.items()}
    return ReferenceMoments(int(a["n-slides"][0]), int(a["n-tiles"][0]), a["total"], a["outer"])


def state_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A head's state dict as arrays (float tensors as float32 numpy)."""
    return ArrayRecord({k: _array(v.detach().cpu().numpy()) for k, v in state.items()})


def state_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v.numpy())) for k, v in record.items()}


def json_list(values: object) -> str:
    return json.dumps(values)


def config_str(record: ConfigRecord | MetricRecord, key: str) -> str:
    """`record[key]`, which must be a string (a `TrainingError` naming the key otherwise)."""
    value = record[key]
    if not isinstance(value, str):
        raise TrainingError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def config_number(record: ConfigRecord | MetricRecord, key: str) -> float:
    """`record[key]`, which must be a number."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TrainingError(f"{key}: expected a number, got {type(value).__name__}")
    return float(value)


R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)


def record_of(content: RecordDict, key: str, kind: type[R]) -> R:
    """`content[key]`, which must be a `kind` (a `TrainingError` naming the key otherwise)."""
    value = content.get(key)
    if not isinstance(value, kind):
        raise TrainingError(f"message record {key!r}: expected {kind.__name__}")
    return value
