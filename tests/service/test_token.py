"""The service's token: `slidemill serve` refuses an empty, short or spaced one before binding,
on loopback too; a real service answers an empty bearer with 401; its mounted viewer trades the
token for a session cookie and redirects to a path under /viewer, whatever the Host header."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from slidemill.service import ServiceConfigError, is_loopback, load_settings
from slidemill.viewer import SESSION_COOKIE
from tests.service.conftest import TOKEN, Service, start_service


def _serve(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`slidemill serve` that must refuse: a deadline, so one that serves fails the test."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLIDEMILL_")}
    args = ["serve", "--port", "0", "--allow-root", str(tmp_path), "--state", str(tmp_path / "s")]
    return subprocess.run(
        [sys.executable, "-m", "slidemill.cli", *args, *extra],
        capture_output=True, text=True, env={**base, "COLUMNS": "200", **env}, timeout=60,
        check=False,
    )  # fmt: skip


def test_serve_refuses_a_weak_token_in_one_line_on_loopback_too(tmp_path: Path) -> None:
    # each start imports the whole stack: two cases here, the rest in the settings test below
    short = tmp_path / "token"
    short.write_text("s3cret\n")
    for env, extra, phrase in (
        ({"SLIDEMILL_TOKEN": ""}, ("--host", "127.0.0.1"), "SLIDEMILL_TOKEN"),
        ({}, ("--host", "0.0.0.0", "--token-file", str(short)), str(short)),
    ):
        proc = _serve(tmp_path, env, *extra)
        assert proc.returncode == 2, (env, extra, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and phrase in lines[0] and "the token" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "s").exists()  # refused before anything was made


def test_settings_check_the_token_wherever_it_comes_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLIDEMILL_TOKEN", raising=False)
    config = tmp_path / "service.toml"
    config.write_text('token = "short"\n')
    blank = tmp_path / "blank"
    blank.write_text("  \n\n")
    for settings in (
        load_settings(allow_roots=(tmp_path,), token=""),
        load_settings(allow_roots=(tmp_path,), token=" " * 20),
        load_settings(config, allow_roots=(tmp_path,)),
        load_settings(allow_roots=(tmp_path,), token_file=blank),
    ):
        with pytest.raises(ServiceConfigError, match="the token"):
            settings.check()  # on loopback: a token given weak is a mistake, not "no token"
    for value, problem in (("", "is empty"), ("   ", "only spaces"), ("s3cret", "6 characters")):
        monkeypatch.setenv("SLIDEMILL_TOKEN", value)
        with pytest.raises(ServiceConfigError, match=rf"SLIDEMILL_TOKEN.*{problem}"):
            load_settings(allow_roots=(tmp_path,)).check()
    monkeypatch.setenv("SLIDEMILL_TOKEN", TOKEN)
    load_settings(host="0.0.0.0", allow_roots=(tmp_path,)).check()
    assert is_loopback("::1") and not is_loopback("0.0.0.0")  # the one rule, re-exported


def _raw_status(url: str, path: str, authorization: str) -> int:
    """The status of a GET sent byte for byte (httpx refuses a header value ending in a space,
    which is what the finding sent: `Authorization: Bearer `)."""
    parts = urlsplit(url)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {authorization}\r\n"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request.encode())
        head = sock.makefile("rb").readline()
    return int(head.split()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("token")
    running = start_service(base / "state", (base,))
    yield running
    running.stop()


def test_an_empty_or_wrong_bearer_is_401_and_the_right_one_is_not(service: Service) -> None:
    for path in ("/api/batches", "/viewer/api/runs"):
        for header in ("Bearer", "bearer", f"Basic {TOKEN}"):
            refused = httpx.get(service.url + path, headers={"Authorization": header})
            assert refused.status_code == 401, (path, header)
        assert _raw_status(service.url, path, "Bearer ") == 401
        assert httpx.get(service.url + path).status_code == 401
        with service.client() as c:
            assert c.get(path).status_code == 200, path


def test_the_mounted_viewer_sets_a_session_cookie_and_a_relative_redirect(
    service: Service,
) -> None:
    with httpx.Client(base_url=service.url) as browser:
        hostile = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
        first = browser.get(f"/viewer/?token={TOKEN}", headers=hostile)
        assert first.status_code == 303 and first.headers["location"] == "/viewer/"
        cookie = SimpleCookie()
        cookie.load(first.headers["set-cookie"])
        morsel = cookie[SESSION_COOKIE]
        assert TOKEN not in morsel.value and morsel["path"] == "/viewer"
        assert morsel["httponly"] and morsel["samesite"].lower() == "strict"
        assert int(morsel["max-age"]) > 0 and not morsel["secure"]  # loopback, plain http
        assert browser.get("/viewer/api/runs").status_code == 200  # by the cookie
        assert browser.get("/api/batches").status_code == 401  # the cookie is the viewer's only
