"""Every backend by its `backend:` name. A new backend: its config model in
`schemas/_cluster.py` (added to `AnyClusterConfig`), one file here, and one entry below."""

from __future__ import annotations

from typing import Any

from slidemill.cluster._backend import Backend
from slidemill.cluster._cuda import CUDA
from slidemill.cluster._existing import EXISTING
from slidemill.cluster._kubernetes import KUBERNETES
from slidemill.cluster._local import LOCAL
from slidemill.cluster._slurm import SLURM

BACKENDS: dict[str, Backend[Any]] = {b.name: b for b in (LOCAL, EXISTING, SLURM, KUBERNETES, CUDA)}
