"""Every backend by its `backend:` name. A new backend: its config model in
`schemas/_cluster.py` (added to `AnyClusterConfig`), one file here, and one entry below."""

from __future__ import annotations

from typing import Any

from cluster._backend import Backend
from cluster._cuda import CUDA
from cluster._existing import EXISTING
from cluster._kubernetes import KUBERNETES
from cluster._local import LOCAL
from cluster._slurm import SLURM

BACKENDS: dict[str, Backend[Any]] = {b.name: b for b in (LOCAL, EXISTING, SLURM, KUBERNETES, CUDA)}
