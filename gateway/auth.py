"""Authentication: a username and password buy a bearer token; a bearer token names a principal.

Protocol-neutral: a protocol layer (``gateway/flight/auth.py`` for Flight SQL) hands over the
value of the caller's ``Authorization`` header and gets a ``Principal`` or an
``AuthenticationFailed``.

What a caller learns from a failure is deliberately nothing: unknown user, wrong password,
forged, expired or foreign token all give the same message, an unknown user costs the same scrypt
work as a wrong password, and secrets are compared in constant time.  The reason goes to the
``gateway_auth_failures_total{reason}`` counter for operators instead.

Tokens are ``mg1.<user>.<expiry>.<signature>``: HMAC-SHA256 over the user, the expiry and the
user's current password hash, keyed with a random secret drawn when the server starts.  So a
token needs no server-side storage, yet it stops working when it expires, when the server
restarts (a token of another server fails the same way), when the user is removed from the users
file, and when their password changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from cachetools import TTLCache

from gateway.errors import MeshError
from gateway.metrics import AUTH_FAILURES
from gateway.users import DUMMY_HASH, User, UsersFile, verify_password
from policies import Principal

DEFAULT_TOKEN_TTL = 3600.0

FAILED = "authentication failed: unknown user, wrong password, or an invalid or expired token; log in again"
REQUIRED = "authentication required: connect with a username and password"
RATE_LIMITED = "too many failed attempts; retry later"


class AuthenticationFailed(MeshError):
    """The caller is not authenticated; ``reason`` is for metrics and logs, never for the caller.

    Every refusal is one of these, so creating one counts it in ``gateway_auth_failures_total``.
    """

    status = "UNAUTHENTICATED"

    def __init__(self, reason: str, message: str = FAILED) -> None:
        super().__init__(message)
        self.reason = reason
        AUTH_FAILURES.labels(reason).inc()


@dataclass(frozen=True)
class Login:
    """An authenticated caller and the bearer token it should present from now on."""

    principal: Principal
    token: str
    expires_at: float  # Unix time


# --- tokens -----------------------------------------------------------------------------------

_TOKEN_VERSION = "mg1"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Signs and checks bearer tokens (module docstring); ``ttl`` is their lifetime in seconds."""

    def __init__(self, ttl: float = DEFAULT_TOKEN_TTL, clock: Callable[[], float] = time.time) -> None:
        if ttl <= 0:
            raise ValueError("the token lifetime must be positive")
        self.ttl = ttl
        self._secret = secrets.token_bytes(32)  # per server: a restart or another server invalidates
        self._clock = clock

    def _signature(self, payload: str, user: User) -> bytes:
        return hmac.new(self._secret, f"{payload}\n{user.password_hash}".encode(), hashlib.sha256).digest()

    def issue(self, user: User) -> Login:
        expires_at = int(self._clock() + self.ttl)
        payload = f"{_TOKEN_VERSION}.{_b64url(user.name.encode())}.{expires_at}"
        return Login(user.principal(), f"{payload}.{_b64url(self._signature(payload, user))}", expires_at)

    def verify(self, token: str, users: UsersFile) -> Login:
        """The login ``token`` stands for, with the principal as the users file says now."""
        parts = token.split(".")
        try:
            if len(parts) != 4 or parts[0] != _TOKEN_VERSION:
                raise ValueError
            name, expires_at, signature = _unb64url(parts[1]).decode(), int(parts[2]), _unb64url(parts[3])
        except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
            raise AuthenticationFailed("invalid_token") from None
        user = users.get(name)
        if user is None or not hmac.compare_digest(self._signature(".".join(parts[:3]), user), signature):
            raise AuthenticationFailed("invalid_token")
        if expires_at <= self._clock():
            raise AuthenticationFailed("expired")
        return Login(user.principal(), token, expires_at)


# --- rate limiting ----------------------------------------------------------------------------


class FailureLimiter:
    """Refuses a key after ``max_failures`` failures within ``window`` seconds, without checking
    its credentials, until the oldest of those failures leaves the window.

    Keys are whatever the protocol layer can attribute an attempt to; remembered keys are capped
    so that a flood of distinct keys cannot grow memory without bound.
    """

    def __init__(
        self, max_failures: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: TTLCache[str, deque[float]] = TTLCache(maxsize=100_000, ttl=window, timer=clock)
        self._lock = threading.Lock()

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.get(key, deque())
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures

    def check(self, key: str) -> None:
        with self._lock:
            refused = len(self._recent(key)) >= self.max_failures
        if refused:
            raise AuthenticationFailed("rate_limited", RATE_LIMITED)

    def record(self, key: str) -> None:
        with self._lock:
            failures = self._recent(key)
            failures.append(self._clock())
            self._failures[key] = failures  # re-set: the entry lives a window past the newest failure

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


# --- the authenticator ------------------------------------------------------------------------


class Authenticator:
    """Checks ``Authorization`` header values against a users file.

    ``login`` takes ``Basic`` credentials (or a still valid ``Bearer`` token, which some clients
    present when they reconnect) and returns a fresh token; ``authenticate`` takes only
    ``Bearer`` tokens, so the slow password check happens once per session, not once per call.

    Password attempts are rate-limited per user name: the protocol layer cannot always say which
    peer sent an attempt (pyarrow shows no peer address to a Flight handshake), but the name is
    what a password guesser has to target.  A successful login clears the name's failures.
    """

    def __init__(self, users: UsersFile, tokens: TokenIssuer | None = None, limiter: FailureLimiter | None = None) -> None:
        self.users = users
        self.tokens = tokens or TokenIssuer()
        self.limiter = limiter or FailureLimiter()

    def login(self, authorization: str | None) -> Login:
        scheme, credentials = _split(authorization)
        if scheme == "bearer":
            return self.tokens.verify(credentials, self.users)
        if scheme != "basic":
            raise AuthenticationFailed("malformed")
        name, password = _basic(credentials)
        key = f"user:{name}"
        self.limiter.check(key)
        user = self.users.get(name)
        if user is None:
            verify_password(password, DUMMY_HASH)  # same cost as a wrong password
            self.limiter.record(key)
            raise AuthenticationFailed("unknown_user")
        if not verify_password(password, user.password_hash):
            self.limiter.record(key)
            raise AuthenticationFailed("wrong_password")
        self.limiter.clear(key)
        return self.tokens.issue(user)

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, credentials = _split(authorization)
        if scheme != "bearer":
            raise AuthenticationFailed("malformed")
        return self.tokens.verify(credentials, self.users).principal


def _split(authorization: str | None) -> tuple[str, str]:
    """(lower-case scheme, credentials) of an Authorization header value."""
    if not authorization or not authorization.strip():
        raise AuthenticationFailed("missing", REQUIRED)
    scheme, _, credentials = authorization.strip().partition(" ")
    if not credentials.strip():
        raise AuthenticationFailed("malformed")
    return scheme.lower(), credentials.strip()


def _basic(credentials: str) -> tuple[str, str]:
    """``user:password`` from Basic credentials; padded or unpadded base64 (ADBC sends unpadded)."""
    try:
        decoded = base64.b64decode(credentials + "=" * (-len(credentials) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthenticationFailed("malformed") from None
    name, sep, password = decoded.partition(":")
    if not sep or not name:
        raise AuthenticationFailed("malformed")
    return name, password
