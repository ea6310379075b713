"""Who may reach a slidemill server: the token rule, the loopback rule and the viewer's sessions.

`slidemill view` and `slidemill serve` both guard HTTP with one token, so the rule for what is a
token lives once, here: the viewer is the lowest room that serves HTTP, and the service (above
it) imports these names from `slidemill.viewer`. Each room raises its own config error with it."""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

from slidemill.schemas import SlidemillError

MIN_TOKEN_CHARS = 16
"""The shortest token a server accepts: a short one is guessed, an empty one is no guard."""
SESSION_TTL_S = 12 * 3600.0
"""How long a viewer session lasts after the token opened it: a working day."""
MAX_SESSIONS = 1024
"""Viewer sessions kept at once; past it the least recently used goes first."""

_HOW = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def checked_token(token: str, source: str, error: type[SlidemillError]) -> str:
    """`token`, if it can guard a server; else `error` naming `source` and the fix.

    A token given empty or short is a mistake (never "no token"), on loopback too. It must be
    printable ASCII without spaces, or a browser's link and an `Authorization` header cannot
    carry it unchanged."""
    if not token.strip():
        problem = "is only spaces" if token else "is empty"
    elif any(not ("!" <= ch <= "~") for ch in token):
        problem = "holds spaces or characters beyond printable ASCII"
    elif len(token) < MIN_TOKEN_CHARS:
        problem = f"is {len(token)} characters, under the {MIN_TOKEN_CHARS} a token needs"
    else:
        return token
    raise error(f"{source}: the token {problem}; {_HOW}")


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SessionStore:
    """The viewer's browser sessions, in memory: opaque random ids, each valid `ttl_s` from its
    opening, at most `max_sessions` of them. The cookie carries an id, never the token, so a
    leaked cookie dies with its session and says nothing about the token. A restart ends all."""

    def __init__(
        self,
        ttl_s: float = SESSION_TTL_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._ids: TTLCache[str, bool] = TTLCache(max_sessions, ttl_s, timer=clock)
        self._lock = threading.Lock()  # sync routes run on a thread pool; TTLCache is not safe

    def open(self) -> str:
        """A new session's id (256 random bits, URL-safe)."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._ids[sid] = True
        return sid

    def __contains__(self, sid: object) -> bool:
        """Whether `sid` names a session that has not expired."""
        with self._lock:
            return isinstance(sid, str) and sid in self._ids
