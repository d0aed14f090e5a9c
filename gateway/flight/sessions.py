"""Flight sessions: the options a client sets with SetSessionOptions and reads back.

A session is named by the ``arrow_flight_session_id`` cookie, as the Flight specification
suggests; clients with cookie support (the JDBC driver; ADBC with
``adbc.flight.sql.rpc.with_cookie_middleware=true``) send it back on later calls.  pyarrow sends
a DoAction's response headers before the action runs, so a cookie cannot wait until
SetSessionOptions decides to create a session: every DoAction without a session cookie is
offered a fresh session id, and SetSessionOptions creates the session under the id the call
carries (a remembered id of an expired session is simply reused).  For the same reason an id
without a session is no error: GetSessionOptions answers the defaults.  A session belongs to the
principal that created it: presented by anyone else, it does not exist.

The options the gateway knows:

- ``catalog``: always ``mesh``, the only catalog; setting anything else is INVALID_VALUE.
- ``schema``: the default domain, for resolving unqualified product names (stored and
  validated; the service does not take a default domain yet).
- ``max_staleness``: how old a cached result may be (seconds, or a duration such as ``5m``),
  kept for the result cache.

Sessions live in this process (a bounded cache, idle ones forgotten after a day).
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow.flight as flight
from cachetools import TTLCache

from gateway.descriptor import DURATION
from gateway.errors import MeshError, NotFound
from gateway.flight import FlightSql_pb2 as pb
from gateway.names import CATALOG

COOKIE = "arrow_flight_session_id"
MIDDLEWARE_KEY = "session"
_IDLE_SECONDS = 24 * 3600.0
_MAX_SESSIONS = 100_000

OptionValue = str | bool | int | float | list[str]


@dataclass
class Session:
    owner: str  # the principal's name
    options: dict[str, OptionValue] = field(default_factory=dict)


class SessionCookie(flight.ServerMiddleware):
    """The session id of one call: the client's cookie, or one offered to it (``presented``
    False), or None."""

    def __init__(self, session_id: str | None, presented: bool) -> None:
        self.session_id = session_id
        self.presented = presented

    def sending_headers(self) -> dict[str, str]:
        if self.session_id is None or self.presented:
            return {}
        return {"set-cookie": f"{COOKIE}={self.session_id}; Path=/; HttpOnly"}


class SessionMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Reads the session cookie of every call; offers one on a DoAction without it."""

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> SessionCookie:
        presented = _session_cookie(headers.get("cookie", []))
        if presented is not None:
            return SessionCookie(presented, True)
        offered = secrets.token_urlsafe(24) if info.method == flight.FlightMethod.DO_ACTION else None
        return SessionCookie(offered, False)


def _session_cookie(values: list[Any]) -> str | None:
    for value in values:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for pair in text.split(";"):
            name, _, content = pair.strip().partition("=")
            if name == COOKIE and content:
                return content
    return None


class Sessions:
    """Every live session by id; safe to share between threads."""

    def __init__(self) -> None:
        self._sessions: TTLCache[str, Session] = TTLCache(maxsize=_MAX_SESSIONS, ttl=_IDLE_SECONDS)
        self._lock = threading.Lock()

    def find(self, session_id: str | None, owner: str) -> Session | None:
        """The session, if it exists and belongs to ``owner``; using it keeps it alive."""
        if session_id is None:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.owner != owner:
                return None
            self._sessions[session_id] = session  # TTLCache counts from the last write
            return session

    def find_or_create(self, session_id: str, owner: str) -> Session:
        """The session ``session_id`` of ``owner``, created if it does not exist; an id that
        another principal's session holds is NOT_FOUND (the cookie was not theirs to use)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                session = Session(owner)
            elif session.owner != owner:
                raise NotFound("session not found: log in again or drop the session cookie")
            self._sessions[session_id] = session
            return session

    def close(self, session_id: str | None, owner: str) -> None:
        with self._lock:
            session = self._sessions.get(session_id) if session_id else None
            if session is not None and session.owner == owner:
                del self._sessions[session_id]


# --- options ----------------------------------------------------------------------------------

_Error = pb.SetSessionOptionsResult


def _decode(value: pb.SessionOptionValue) -> OptionValue | None:
    """The Python value of an option value; None when no member is set (erase)."""
    kind = value.WhichOneof("option_value")
    if kind is None:
        return None
    if kind == "string_list_value":
        return list(value.string_list_value.values)
    return getattr(value, kind)  # type: ignore[no-any-return]


def _encode(value: OptionValue) -> pb.SessionOptionValue:
    if isinstance(value, list):
        return pb.SessionOptionValue(string_list_value=pb.SessionOptionValue.StringListValue(values=value))
    if isinstance(value, bool):  # before int: bool is an int
        return pb.SessionOptionValue(bool_value=value)
    if isinstance(value, int):
        return pb.SessionOptionValue(int64_value=value)
    if isinstance(value, float):
        return pb.SessionOptionValue(double_value=value)
    return pb.SessionOptionValue(string_value=value)


def _valid_staleness(value: OptionValue) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value >= 0
    return isinstance(value, str) and bool(DURATION.match(value) or re.fullmatch(r"\d+(\.\d+)?", value))


def option_checks(domain_exists: Callable[[str], bool]) -> dict[str, Callable[[OptionValue], bool]]:
    """Per known option, whether a value is acceptable."""
    return {
        "catalog": lambda v: isinstance(v, str) and v == CATALOG,
        "schema": lambda v: isinstance(v, str) and domain_exists(v),
        "max_staleness": _valid_staleness,
    }


def set_options(
    session: Session, request: pb.SetSessionOptionsRequest, checks: dict[str, Callable[[OptionValue], bool]]
) -> pb.SetSessionOptionsResult:
    """Apply every acceptable option of ``request``; the result names the ones refused."""
    result = pb.SetSessionOptionsResult()
    for name, raw in request.session_options.items():
        value = _decode(raw)
        if name not in checks:
            result.errors[name].value = _Error.INVALID_NAME
        elif value is None:
            session.options.pop(name, None)
        elif not checks[name](value):
            result.errors[name].value = _Error.INVALID_VALUE
        else:
            session.options[name] = value
    return result


def get_options(session: Session | None) -> pb.GetSessionOptionsResult:
    """The session's options; ``catalog`` is always there, as it cannot be anything but mesh."""
    options: dict[str, OptionValue] = {"catalog": CATALOG, **(session.options if session else {})}
    return pb.GetSessionOptionsResult(session_options={name: _encode(value) for name, value in options.items()})


def session_cookie(context: flight.ServerCallContext) -> SessionCookie:
    """The session cookie of the call; the server installs the middleware on every call."""
    cookie = context.get_middleware(MIDDLEWARE_KEY)
    if not isinstance(cookie, SessionCookie):
        raise MeshError("the session middleware did not run for this call")
    return cookie
