"""The viewer's access: the token rule shared with the service, and the browser's session cookie
(an opaque id that expires, never the token) over a real uvicorn on loopback; `slidemill view`
refusing a weak token before it binds anything."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
import uvicorn

from slidemill.viewer import (
    MIN_TOKEN_CHARS,
    SESSION_COOKIE,
    LookupCatalog,
    SessionStore,
    ViewerConfigError,
    ViewerOptions,
    checked_token,
    create_viewer_app,
)
from tests.helpers import REPO, free_port

TOKEN = "viewer-token-0123456789"
WEAK = ["", "   ", " " * 20, "short-token", "has spaces in it, 16+", "tab\tseparated-token-xx"]


class Clock:
    """A monotonic clock the test moves by hand, so expiry needs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def served(options: ViewerOptions, clock: Clock | None = None) -> Iterator[str]:
    """The viewer app (no runs) under a real uvicorn on a free loopback port, in a thread. It
    trusts X-Forwarded-Proto from loopback, as behind a TLS proxy, so a test can say https."""
    app = create_viewer_app(
        LookupCatalog(lambda _: None, list), options, clock=clock or time.monotonic
    )
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _trade(client: httpx.Client, url: str = "/?token=" + TOKEN, **headers: str) -> httpx.Response:
    """Visit a link holding the token; the answer must be the redirect that sets the cookie."""
    response = client.get(url, headers=headers)
    assert response.status_code == 303, response.text
    return response


def _cookie(response: httpx.Response) -> SimpleCookie:
    cookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    assert list(cookie) == [SESSION_COOKIE]
    return cookie


# --- the token rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("weak", WEAK)
def test_an_empty_short_or_spaced_token_is_refused(weak: str) -> None:
    with pytest.raises(ViewerConfigError, match=r"^SLIDEMILL_TOKEN: the token .*token_urlsafe"):
        checked_token(weak, "SLIDEMILL_TOKEN", ViewerConfigError)
    with pytest.raises(ViewerConfigError, match="the token"):
        ViewerOptions(token=weak)
    assert checked_token("x" * MIN_TOKEN_CHARS, "t", ViewerConfigError) == "x" * MIN_TOKEN_CHARS


def _view(
    run: Path, port: int, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """`slidemill view` that must refuse: a deadline, so one that serves fails the test."""
    args = [sys.executable, "-m", "slidemill.cli", "view", str(run), "--port", str(port), *extra]
    base = {k: v for k, v in os.environ.items() if k != "SLIDEMILL_TOKEN"}
    return subprocess.run(
        args, capture_output=True, text=True, cwd=REPO, env={**base, "COLUMNS": "200", **env},
        timeout=60, check=False,
    )  # fmt: skip


def test_view_refuses_a_weak_token_in_one_line_on_loopback_too(tmp_path: Path) -> None:
    # each start imports the whole stack: two cases here, the others in the rule's test above
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("slide_id,status\n")
    short = tmp_path / "token"
    short.write_text("  \n")
    for env, extra, phrase in (
        ({"SLIDEMILL_TOKEN": ""}, ("--host", "127.0.0.1"), "SLIDEMILL_TOKEN"),
        ({}, ("--host", "0.0.0.0", "--token-file", str(short)), str(short)),
    ):
        proc = _view(run, free_port(), env, *extra)
        assert proc.returncode == 2, (env, extra, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and phrase in lines[0] and "the token" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and "slidemill viewer on" not in proc.stderr


# --- sessions over a real server ----------------------------------------------------------------


def test_the_cookie_is_an_opaque_session_that_expires_never_the_token() -> None:
    clock = Clock()
    options = ViewerOptions(token=TOKEN, session_ttl_s=600)
    with served(options, clock) as url, httpx.Client(base_url=url) as browser:
        assert browser.get("/api/runs").status_code == 401
        assert browser.get("/?token=wrong-token-0123456789").status_code == 401
        first = _trade(browser)
        morsel = _cookie(first)[SESSION_COOKIE]
        assert TOKEN not in morsel.value and len(morsel.value) >= 32
        assert morsel["max-age"] == "600" and morsel["httponly"] and morsel["path"] == "/"
        assert morsel["samesite"].lower() == "strict" and not morsel["secure"]  # loopback http
        assert browser.get("/api/runs").status_code == 200  # by the cookie
        second = _cookie(_trade(browser))[SESSION_COOKIE].value
        assert second != morsel.value  # each visit opens its own session

        clock.now += 599
        assert browser.get("/api/runs").status_code == 200
        clock.now += 2
        expired = browser.get("/api/runs")
        assert expired.status_code == 401 and "?token=" in expired.json()["detail"]

    # the raw token in the cookie is no credential; the bearer header still is, for API clients
    with served(options) as url:
        as_cookie = httpx.get(f"{url}/api/runs", cookies={SESSION_COOKIE: TOKEN})
        assert as_cookie.status_code == 401
        for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
            assert httpx.get(f"{url}/api/runs", headers={"Authorization": header}).is_success
        for header in ("Bearer", f"Basic {TOKEN}", TOKEN):
            refused = httpx.get(f"{url}/api/runs", headers={"Authorization": header})
            assert refused.status_code == 401, header


def test_the_cookie_is_secure_off_loopback_and_over_tls() -> None:
    with served(ViewerOptions(token=TOKEN, off_loopback=True)) as url, httpx.Client() as c:
        assert _cookie(_trade(c, f"{url}/?token={TOKEN}"))[SESSION_COOKIE]["secure"]
    with served(ViewerOptions(token=TOKEN)) as url, httpx.Client() as c:
        tls = _trade(c, f"{url}/?token={TOKEN}", **{"X-Forwarded-Proto": "https"})
        assert _cookie(tls)[SESSION_COOKIE]["secure"]


def test_the_redirect_is_relative_whatever_the_host_header_says() -> None:
    with served(ViewerOptions(token=TOKEN)) as url, httpx.Client(base_url=url) as c:
        hostile = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
        assert _trade(c, **hostile).headers["location"] == "/"
        kept = _trade(c, f"/?run=night-1&token={TOKEN}&x=%2F%2Fevil", **hostile)
        assert kept.headers["location"] == "/?run=night-1&x=%2F%2Fevil"  # other params stay


def test_sessions_are_bounded_and_expire() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=10, max_sessions=2, clock=clock)
    a, b = store.open(), store.open()
    assert a in store and b in store and a != b and "" not in store
    c = store.open()  # a third pushes out the oldest
    assert a not in store and b in store and c in store
    clock.now += 10
    assert b not in store and c not in store
