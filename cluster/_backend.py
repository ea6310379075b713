"""The backend protocol: how one `backend:` value becomes a running cluster and a client on it.

A backend is one file in `cluster/` that builds a `Backend` value (plus its config model in
`schemas/_cluster.py`); `cluster._registry.BACKENDS` lists them. Backends import their optional
libraries (dask-jobqueue, dask-kubernetes, dask-cuda) only when opened.
"""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Generic, TypeVar

import dask.config
from distributed import Client
from pydantic import BaseModel

from slidemill.cluster.errors import MissingExtraError

C = TypeVar("C", bound=BaseModel)

PRE_SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"
PRE_SPAWN_ENVIRON_VAR = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
"""How `distributed.nanny.pre-spawn-environ` travels to workers started elsewhere: dask reads
`DASK_*` variables into its config when it is imported (the value is a Python/JSON literal)."""

GPU_RESOURCE = "GPU"
"""The worker resource GPU workers declare and inference tasks ask for."""


@dataclass(frozen=True, slots=True)
class Backend(Generic[C]):
    """One way of getting a Dask cluster."""

    name: str
    """The `backend:` value of its config files."""
    config_type: type[C]
    """Its validated config model."""
    open: Callable[[C], AbstractContextManager[Client]]
    """Start (or reach) the cluster; the context yields a client and tears down what it
    started."""


def require_extra(module: str, extra: str, needed_by: str | None = None) -> ModuleType:
    """Import an optional dependency, or say which slidemill extra installs it; `needed_by`
    names what needs it (default: the `extra` backend)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0].replace("_", "-")
        raise MissingExtraError(
            f"{needed_by or f'the {extra} backend'} needs {top}, which is not installed: "
            f"pip install 'slidemill[{extra}]'"
        ) from err


@contextmanager
def nanny_environ(environ: Mapping[str, str | None]) -> Iterator[None]:
    """Nannies created inside this context (in this process) set `environ` in their workers
    before starting them; the rest of `distributed.nanny.pre-spawn-environ` is kept."""
    current = dask.config.get(PRE_SPAWN_ENVIRON, default={}) or {}
    with dask.config.set({PRE_SPAWN_ENVIRON: {**current, **environ}}):
        yield


def nanny_environ_export(environ: Mapping[str, str | None]) -> str:
    """A shell line that hands `environ` to the nannies a job script starts."""
    return f"export {PRE_SPAWN_ENVIRON_VAR}={shlex.quote(pre_spawn_literal(environ))}"


def pre_spawn_literal(environ: Mapping[str, str | None]) -> str:
    """`environ` as dask reads a config value from an environment variable: a Python literal
    (dask parses it with `ast.literal_eval`, so JSON's `null` would stay a string)."""
    return repr(dict(environ))
