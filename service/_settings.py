"""The service's settings, in one typed place: flags over `SLIDEMILL_*` variables over a config
file (YAML or TOML) over defaults."""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from slidemill.schemas import describe
from slidemill.service.errors import ServiceConfigError
from slidemill.viewer import checked_token, is_loopback

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("slidemill_service_config", default=None)

INTERACTIVE_PRIORITY = 1_000_000
"""Added to the Dask priority of every task of a batch submitted over the API, so that it runs
ahead of a scheduled night of slides sharing the cluster (a batch's own tasks span less)."""


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/slidemill`, else `~/.local/state/slidemill`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "slidemill"


class ServiceSettings(BaseSettings):
    """How `slidemill serve` runs."""

    model_config = SettingsConfigDict(env_prefix="SLIDEMILL_", extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(default=8000, ge=0, le=65535)
    state_dir: Path = Field(
        default_factory=default_state_dir, description="Where the default SQLite ledger lives."
    )
    db: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the ledger (postgresql+psycopg://…); default a SQLite "
        "file in the state folder.",
    )
    allow_roots: tuple[Path, ...] = Field(
        default=(),
        description="Folders that slides, outputs and models may come from; every path in a "
        "request must resolve inside one of them.",
    )
    token: SecretStr | None = Field(default=None, description="Bearer token of the API.")
    token_file: Path | None = Field(default=None, description="A file holding the token.")
    max_running: int = Field(default=2, ge=1, description="Batches run at once.")
    max_slides: int = Field(default=10_000, ge=1, description="Slides per batch, at most.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Request body, at most.")
    cluster_file: Path | None = Field(default=None, description="Cluster config, as for `run`.")
    scheduler: str | None = Field(default=None, description="An existing Dask scheduler.")
    n_workers: int | None = Field(default=None, ge=1, description="Embedded cluster's workers.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file_source(settings_cls)
        return (init_settings, env_settings, *([config_file] if config_file else []))

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.state_dir / 'ledger.sqlite'}"

    def bearer_token(self) -> str | None:
        """The API token: `token`, else the first line of `token_file`, else None. One given
        empty or short is refused (`checked_token`, the viewer's rule too), never taken as none."""
        if self.token is not None:
            source = "the token (SLIDEMILL_TOKEN, or `token` in the config)"
            return checked_token(self.token.get_secret_value(), source, ServiceConfigError)
        if self.token_file is not None:
            try:
                lines = self.token_file.read_text().strip().splitlines()
            except OSError as err:
                raise ServiceConfigError(f"{self.token_file}: cannot read the token file") from err
            token = lines[0] if lines else ""
            return checked_token(token, str(self.token_file), ServiceConfigError)
        return None

    def check(self) -> None:
        """Refuse settings a lab must not run with: off loopback without a token, a weak token
        (on loopback too), no roots."""
        if not self.allow_roots:
            raise ServiceConfigError(
                "no allowed roots: give the folders slides, models and outputs may come from "
                "with --allow-root DIR (repeatable) or SLIDEMILL_ALLOW_ROOTS"
            )
        missing = [str(r) for r in self.allow_roots if not r.is_dir()]
        if missing:
            raise ServiceConfigError(f"allowed root(s) {', '.join(missing)}: not a folder")
        token = self.bearer_token()  # read even on loopback: a weak token is refused there too
        if not is_loopback(self.host) and token is None:
            raise ServiceConfigError(
                f"binding {self.host} (beyond loopback) needs a token: set SLIDEMILL_TOKEN or "
                "--token-file"
            )


def load_settings(config: Path | None = None, **flags: Any) -> ServiceSettings:
    """Settings from `flags` (None means not given), the environment and `config`."""
    token = _CONFIG_FILE.set(config)
    try:
        return ServiceSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        raise ServiceConfigError(f"service settings: {describe(err)}") from err
    finally:
        _CONFIG_FILE.reset(token)


class _YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, refusing a document that is not a mapping (it would fail
    on `.keys()`)."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if not isinstance(data, dict):
            raise ServiceConfigError(f"{file_path}: the service config must be a mapping")
        return data


def _config_file_source(settings_cls: type[BaseSettings]) -> PydanticBaseSettingsSource | None:
    """pydantic-settings' own TOML (`.toml`) or YAML (any other name) source of the file named
    by `load_settings`, or None without one."""
    path = _CONFIG_FILE.get()
    if path is None:
        return None
    if not path.is_file():  # the sources skip a file that is not there: a named one must be
        why = "not a file" if path.exists() else "no such file"
        raise ServiceConfigError(f"{path}: cannot read the service config: {why}")
    try:
        if path.suffix == ".toml":
            return TomlConfigSettingsSource(settings_cls, toml_file=path)
        return _YamlFile(settings_cls, yaml_file=path)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ServiceConfigError(f"{path}: cannot read the service config: {err}") from err
