"""The gateway's Prometheus metrics, defined once so every layer increments the same series.

They live in prometheus-client's default registry; exposing them (``/metrics``) is the REST
layer's job.
"""

from __future__ import annotations

from prometheus_client import Counter

AUTH_FAILURES = Counter(
    "gateway_auth_failures",  # exposed as gateway_auth_failures_total
    "Calls refused as UNAUTHENTICATED, by reason",
    ["reason"],
)
"""Reasons: ``missing`` (no credentials), ``malformed`` (unparseable Authorization header),
``unknown_user``, ``wrong_password``, ``expired`` (token past its expiry), ``invalid_token``
(forged, from another server or its user gone or re-keyed), ``rate_limited`` (refused unchecked
after too many failures).  Clients never see the reason; operators do."""
