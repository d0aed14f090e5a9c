"""The gateway's Prometheus metrics, defined once so every layer increments the same series.

They live in prometheus-client's default registry; exposing them (``/metrics``) is the REST
layer's job.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AUTH_FAILURES = Counter(
    "gateway_auth_failures",  # exposed as gateway_auth_failures_total
    "Calls refused as UNAUTHENTICATED, by reason",
    ["reason"],
)
"""Reasons: ``missing`` (no credentials), ``malformed`` (unparseable Authorization header),
``unknown_user``, ``wrong_password``, ``expired`` (token past its expiry), ``invalid_token``
(forged, from another server or its user gone or re-keyed), ``rate_limited`` (refused unchecked
after too many failures).  Clients never see the reason; operators do."""

# --- queries, per product (label values come from the registry: a finite set) -----------------

PRODUCT_QUERIES = Counter("product_queries", "Answered queries reading each product", ["product_id", "domain"])
PRODUCT_QUERY_DURATION = Histogram(
    "product_query_duration_seconds", "Time from execute to the last row, per product read", ["product_id"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PRODUCT_ROWS = Counter("product_rows_returned", "Rows returned by queries reading each product", ["product_id"])

# --- result cache ---------------------------------------------------------------------------------

CACHE_HITS = Counter("gateway_cache_hits", "Queries answered from the result cache")
CACHE_MISSES = Counter("gateway_cache_misses", "Cacheable queries that ran on the sources")
CACHE_EVICTIONS = Counter("gateway_cache_evictions", "Entries evicted to keep the cache within --cache-bytes")
CACHE_BYTES = Gauge("gateway_cache_bytes", "Bytes of results held by the result cache")

# --- governance and sources -------------------------------------------------------------------------

POLICY_DECISIONS = Counter("policy_decisions", "Per-product governance decisions of planned statements", ["decision"])
"""``decision``: ``allow`` (unchanged), ``transform`` (masks, row filters or group sizes applied), ``deny``."""
CONNECTOR_FRAGMENT_SECONDS = Histogram(
    "connector_fragment_seconds", "Time to fetch one fragment from its source", ["connector"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONNECTOR_ERRORS = Counter("connector_errors", "Fragments that failed at their source", ["connector"])
"""``connector``: the connector kind (postgres, duckdb, sqlite, parquet, flightsql): a fixed set."""
