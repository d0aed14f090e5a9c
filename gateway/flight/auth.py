"""Authentication on the Flight SQL wire: ``Authorization`` headers in, a ``Principal`` out.

Flight SQL clients (ADBC, JDBC, Go, pyarrow's ``authenticate_basic_token``) all speak the same
header protocol: Handshake carries ``Authorization: Basic <user:password>`` (or a bearer token),
its response carries ``Authorization: Bearer <token>``, and every later call carries that bearer
header.  The ServerAuthHandler pyarrow offers cannot see call headers, so the work is done by a
server middleware, which sees the headers of every call, Handshake included, and rejects a call
before any handler runs.  pyarrow only answers Handshake when an auth handler is installed, hence
the handler that accepts it once the middleware has.
"""

from __future__ import annotations

from typing import Any

import pyarrow.flight as flight

from gateway.auth import AuthenticationFailed, Authenticator
from policies import Principal

MIDDLEWARE_KEY = "auth"


class HandshakeAcceptor(flight.ServerAuthHandler):
    """Lets Handshake succeed: the middleware has already checked its credentials."""

    def authenticate(self, outgoing: flight.ServerAuthSender, incoming: flight.ServerAuthReader) -> None:
        return None

    def is_valid(self, token: bytes) -> bytes:
        return b""  # identity travels through the middleware, not pyarrow's token header


class Caller(flight.ServerMiddleware):
    """The authenticated caller of one call, and the token a Handshake hands back."""

    def __init__(self, principal: Principal, token: str | None = None) -> None:
        self.principal = principal
        self._token = token

    def sending_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"} if self._token else {}


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Authenticates every call; a failure ends it as UNAUTHENTICATED before any handler runs."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> Caller:
        try:
            authorization = _authorization(headers)
            if info.method == flight.FlightMethod.HANDSHAKE:
                login = self.authenticator.login(authorization)
                return Caller(login.principal, login.token)
            return Caller(self.authenticator.authenticate(authorization))
        except AuthenticationFailed as error:
            raise flight.FlightUnauthenticatedError(error.message) from None


def _authorization(headers: dict[str, list[Any]]) -> str | None:
    """The call's Authorization header.  ADBC repeats the same value; different values are
    ambiguous, so they are refused rather than one picked."""
    values = {v.decode("latin-1") if isinstance(v, bytes) else v for v in headers.get("authorization", [])}
    if len(values) > 1:
        raise AuthenticationFailed("malformed")
    return next(iter(values), None)


def authenticated_principal(context: flight.ServerCallContext) -> Principal:
    """The principal the middleware established for this call (fail closed if it did not run)."""
    caller = context.get_middleware(MIDDLEWARE_KEY)
    if not isinstance(caller, Caller):
        raise flight.FlightUnauthenticatedError(AuthenticationFailed("missing").message)
    return caller.principal
