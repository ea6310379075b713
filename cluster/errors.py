"""Typed errors of the cluster side. Messages name the config file (when there is one) and the
fix; the command line prints them as usage errors."""

from __future__ import annotations

from slidemill.schemas.errors import SlidemillError


class ClusterError(SlidemillError):
    """Base of everything `cluster` raises on purpose."""


class ClusterConfigError(ClusterError):
    """A cluster config file or override is missing, unreadable or invalid."""


class MissingExtraError(ClusterError):
    """An optional dependency is not installed (e.g. dask-jobqueue for `slurm`, fastapi for
    `slidemill view`); the message names the extra that installs it."""


class PoolStartError(ClusterError):
    """A batch system's worker pool cannot start (its job is refused) or did not start in time
    (its jobs wait in the queue); the message names the pool and the batch system's reason."""
