"""Where the cluster config comes from, highest precedence first: arguments (command-line
flags), the environment, the config file, the defaults (the embedded LocalCluster).

- `--cluster FILE` / `SLIDEMILL_CLUSTER_FILE`: a YAML (`.yaml`, `.yml`) or TOML (`.toml`) file
  holding one `ClusterConfig`.
- `SLIDEMILL_CLUSTER__<FIELD>[__<FIELD>...]`: override one setting of that file, e.g.
  `SLIDEMILL_CLUSTER__ACCOUNT=lab42`, `SLIDEMILL_CLUSTER__CPU__ADAPT__MAXIMUM=40`; lists and
  tables as JSON. (Names are case-insensitive, so set mixed-case keys in the file.)
- Shortcuts: `--scheduler` / `SLIDEMILL_SCHEDULER` (the `existing` backend), and for the local
  backend `--workers` / `SLIDEMILL_N_WORKERS`, `SLIDEMILL_THREADS_PER_WORKER`,
  `SLIDEMILL_MEMORY_LIMIT`, `SLIDEMILL_DASHBOARD_ADDRESS`.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from slidemill.cluster.errors import ClusterConfigError
from slidemill.schemas import BACKEND_NAMES, AnyClusterConfig, LocalClusterConfig

_LOCAL_SHORTCUTS = {
    "n_workers": "--workers / SLIDEMILL_N_WORKERS",
    "threads_per_worker": "SLIDEMILL_THREADS_PER_WORKER",
    "memory_limit": "SLIDEMILL_MEMORY_LIMIT",
    "dashboard_address": "SLIDEMILL_DASHBOARD_ADDRESS",
}


class _YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, refusing a document that is not a mapping (it would fail
    on `.keys()`)."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if not isinstance(data, dict):
            raise ClusterConfigError(f"{file_path}: a cluster config must be a mapping of settings")
        return data


def read_config_file(settings_cls: type[BaseSettings], path: Path) -> dict[str, Any]:
    """The raw mapping in a YAML or TOML cluster config file, chosen by extension, read by
    pydantic-settings' own file sources."""
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ClusterConfigError(f"{path}: a cluster config must be .yaml, .yml or .toml")
    if not path.is_file():  # the sources skip a file that is not there: a named one must be
        why = "not a file" if path.exists() else "no such file"
        raise ClusterConfigError(f"{path}: cannot read the cluster config ({why})")
    try:
        if suffix == ".toml":
            data = TomlConfigSettingsSource(settings_cls, toml_file=path).toml_data
        else:
            data = _YamlFile(settings_cls, yaml_file=path).yaml_data
    except OSError as err:
        raise ClusterConfigError(
            f"{path}: cannot read the cluster config ({err.strerror})"
        ) from err
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterConfigError(f"{path}: not valid {suffix[1:].upper()}: {first}") from err
    if "backend" not in data:
        raise ClusterConfigError(f"{path}: no `backend:`; choose one of {', '.join(BACKEND_NAMES)}")
    return data


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The file named by the sources above it (`cluster_file`), as the `cluster` field (named
    only once those have run, so the file is read here rather than by a source given up front)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("cluster_file")
        return {"cluster": read_config_file(self.settings_cls, Path(path))} if path else {}


class ClusterSettings(BaseSettings):
    """Every source of the cluster choice, merged; `cluster` is the validated result.

    Arguments left as None do not mask the environment (a flag that was not given).
    """

    model_config = SettingsConfigDict(
        env_prefix="SLIDEMILL_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    cluster_file: Path | None = Field(
        default=None, description="YAML or TOML cluster config (SLIDEMILL_CLUSTER_FILE)."
    )
    scheduler: str | None = Field(
        default=None, description="Shortcut: an existing scheduler's address."
    )
    n_workers: int | None = Field(default=None, ge=1, description="Shortcut: local workers.")
    threads_per_worker: int | None = Field(
        default=None, ge=1, description="Shortcut: local threads per worker."
    )
    memory_limit: str | None = Field(default=None, description="Shortcut: local memory limit.")
    dashboard_address: str | None = Field(
        default=None, description="Shortcut: local dashboard address."
    )
    cluster: AnyClusterConfig = Field(default_factory=LocalClusterConfig)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ConfigFileSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _shortcuts(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        cluster = data.get("cluster")
        if isinstance(cluster, BaseModel):
            cluster = cluster.model_dump()
        scheduler = data.get("scheduler")
        local = {k: data[k] for k in _LOCAL_SHORTCUTS if data.get(k) is not None}
        if scheduler is not None:
            if cluster is not None:
                raise ValueError(
                    "a scheduler address (--scheduler, SLIDEMILL_SCHEDULER) and a cluster config "
                    "were both given; use one (or backend: existing in the config)"
                )
            cluster = {"backend": "existing", "scheduler": scheduler}
        if local:
            cluster = cluster if cluster is not None else {"backend": "local"}
            backend = cluster.get("backend") if isinstance(cluster, dict) else None
            if backend != "local":
                given = ", ".join(f"{k} ({_LOCAL_SHORTCUTS[k]})" for k in local)
                raise ValueError(
                    f"{given}: only for the local backend, not {backend!r}; size the workers "
                    "in the cluster config instead"
                )
            cluster = {**cluster, **local}
        if cluster is not None:
            data["cluster"] = cluster
        return data


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "cluster")
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_cluster_config(path: Path | str | None = None, **shortcuts: Any) -> AnyClusterConfig:
    """The validated cluster config from `path` (or `SLIDEMILL_CLUSTER_FILE`), the environment and
    `shortcuts` (`scheduler`, `n_workers`, `threads_per_worker`, `memory_limit`,
    `dashboard_address`; None = not given). No file and no setting: the local default."""
    try:
        settings = ClusterSettings(cluster_file=path, **shortcuts)
    except ValidationError as err:
        file = path or os.environ.get("SLIDEMILL_CLUSTER_FILE")
        where = f"{file}: " if file else ""
        raise ClusterConfigError(f"{where}invalid cluster config: {_describe(err)}") from err
    return settings.cluster


def example_config(name: str) -> Path:
    """The path of an example config shipped with slidemill (`local`, `slurm`, ...)."""
    path = Path(str(resources.files("slidemill.cluster") / f"{name}.yaml"))
    if not path.is_file():
        raise ClusterConfigError(
            f"no example cluster config {name!r}; there are: {', '.join(example_names())}"
        )
    return path


def example_names() -> list[str]:
    """Names of the example configs shipped with slidemill."""
    files = resources.files("slidemill.cluster").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))
