"""Settings precedence, the loopback rule and the allowed-roots rule, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidemill.service import (
    PathNotAllowedError,
    ServiceConfigError,
    inside_roots,
    is_loopback,
    load_settings,
)


def test_paths_must_be_absolute_and_resolve_inside_a_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "out").symlink_to(tmp_path / "secret")
    assert inside_roots(root / "a" / "x.svs", [root], "slide") == root / "a" / "x.svs"
    assert inside_roots(root / "new" / "folder", [root], "output") == root / "new" / "folder"
    for bad, rule in (
        (root / ".." / "secret", "outside the allowed roots"),
        (root / "out" / "x.svs", "outside the allowed roots"),  # a link that leads out
        (Path("relative.svs"), "absolute path"),
        (tmp_path / "rootless", "outside the allowed roots"),  # a sibling sharing the prefix
    ):
        with pytest.raises(PathNotAllowedError, match=rule):
            inside_roots(bad, [root], "slide")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.2", False), ("lab-server", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_flags_over_environment_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "service.toml"
    config.write_text(f'port = 9001\nmax_running = 5\nallow_roots = ["{tmp_path}"]\n')
    monkeypatch.setenv("SLIDEMILL_PORT", "9002")
    monkeypatch.setenv("SLIDEMILL_MAX_RUNNING", "3")
    settings = load_settings(config, max_running=4)
    assert (settings.port, settings.max_running, settings.allow_roots) == (9002, 4, (tmp_path,))
    assert load_settings(config).max_running == 3
    monkeypatch.delenv("SLIDEMILL_PORT")
    assert load_settings(config).port == 9001
    assert load_settings().port == 8000


def test_refusals_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIDEMILL_TOKEN", raising=False)
    with pytest.raises(ServiceConfigError, match="--allow-root"):
        load_settings().check()
    with pytest.raises(ServiceConfigError, match="needs a token"):
        load_settings(host="0.0.0.0", allow_roots=(tmp_path,)).check()
    token = tmp_path / "token"
    token.write_text("settings-token-0123456789\n")
    settings = load_settings(host="0.0.0.0", allow_roots=(tmp_path,), token_file=token)
    settings.check()
    assert settings.bearer_token() == "settings-token-0123456789"
    with pytest.raises(ServiceConfigError, match="max_running"):
        load_settings(max_running=0)
