"""``POST /api/v1/auth/token``: HTTP Basic credentials in, a bearer token out.

The token comes from the same ``Authenticator`` (and so the same ``TokenIssuer``) as the Flight
SQL Handshake's, so either side's token works on both: log in once over REST and hand the token
to a Flight SQL client, or the other way round. Tokens expire after the server's ``--token-ttl``
(default one hour), when the server restarts, and when the user's password changes or the user is
removed; the response says when (``expires_in``, ``expires_at``). A still valid bearer token may
be presented instead of Basic credentials: the answer is that same token (tokens are not renewed
without the password).
"""

from __future__ import annotations

import datetime as dt
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway.auth import AuthenticationFailed
from gateway.rest.app import ApiError, errors, unauthenticated

router = APIRouter(tags=["authentication"])


class Token(BaseModel):
    """A bearer token (OAuth 2 token-response shape) and who it stands for."""

    access_token: str = Field(description="send as `Authorization: Bearer <access_token>` (REST) or as the Flight SQL bearer token")
    token_type: str = Field("bearer", description="always `bearer`")
    expires_in: int = Field(description="seconds until the token expires")
    expires_at: dt.datetime = Field(description="when the token expires (UTC)")
    principal: str = Field(description="the user the token authenticates")
    roles: list[str]


@router.post("/api/v1/auth/token", response_model=Token, responses=errors(400),
             summary="Exchange HTTP Basic credentials for a bearer token")
def issue_token(request: Request) -> Token:
    """Authenticate with `Authorization: Basic base64(user:password)`; the answer is a bearer
    token valid on the REST API and on Flight SQL until `expires_at` (the server's `--token-ttl`,
    default 3600 s; a server restart or a password change also ends it). Failed attempts are
    rate-limited per user name."""
    authenticator = request.app.state.authenticator
    if authenticator is None:
        raise ApiError(400, "authentication off", "this server runs without authentication (--insecure-no-auth): "
                       "no token is needed, every caller is 'anonymous'")
    try:
        login = authenticator.login(request.headers.get("authorization"))
    except AuthenticationFailed as err:
        raise unauthenticated(err) from None
    return Token(
        access_token=login.token,
        expires_in=max(0, int(login.expires_at - time.time())),
        expires_at=dt.datetime.fromtimestamp(login.expires_at, dt.timezone.utc),
        principal=login.principal.name,
        roles=sorted(login.principal.roles),
    )
