"""The gateway's Prometheus metrics, defined once so every layer increments the same series.

They live in prometheus-client's default registry (which also has the ``process_*`` and
``python_*`` metrics); exposing them (``/metrics``) is the REST layer's job.

Label values are bounded so a scrape stays small whatever the traffic: ``product_id`` and
``domain`` come from the registry, but only the first ``MESHGATE_METRICS_MAX_PRODUCTS``
(default 200) products seen get their own series, later ones are counted as ``other``;
``consumer_domain`` is the querying principal's ``domain`` (or ``team``) attribute (``unknown``
without one, at most 50 values); never a principal's name or a query's text.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Mapping

from prometheus_client import Counter, Gauge, Histogram

OTHER = "other"
"""The label value of everything past a label's limit."""


class BoundedLabel:
    """Label values of one kind: the first ``limit`` distinct values pass, later ones are ``other``.

    First come, first kept: a series once exported never changes its label, so counters stay
    monotonic, and a registry with more products than the limit cannot blow up the scrape."""

    def __init__(self, limit: int, pattern: str = r"^[a-z][a-z0-9_.]*$") -> None:
        self.limit = limit
        self._pattern = re.compile(pattern)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not self._pattern.match(value):
            return OTHER
        with self._lock:
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
        return value


product_label = BoundedLabel(int(os.environ.get("MESHGATE_METRICS_MAX_PRODUCTS", "200")), r"^[a-z][a-z0-9_.]*(@[0-9]+)?$")
"""``product_id`` label values (``domain.name``; the SLA monitor's ``domain.name@N`` for an older major)."""
domain_label = BoundedLabel(int(os.environ.get("MESHGATE_METRICS_MAX_PRODUCTS", "200")))
consumer_domain_label = BoundedLabel(50)



def consumer_domain(principal: Any) -> str:
    """The ``consumer_domain`` label of a principal: its ``domain`` (or ``team``) attribute, else the
    domain of its ``owner:<domain>`` role, else ``unknown`` (the rule ``gateway/usage.py`` uses)."""
    attributes: Mapping[str, Any] = principal.attributes
    value = attributes.get("domain") or attributes.get("team")
    if not value:
        value = min((r.split(":", 1)[1] for r in principal.roles if r.startswith("owner:") and len(r) > 6), default=None)
    return consumer_domain_label(str(value).lower()) if value else "unknown"


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

PRODUCT_QUERIES = Counter(
    "product_queries", "Answered queries reading each product, by the consumer's domain", ["product_id", "domain", "consumer_domain"]
)
PRODUCT_QUERY_DURATION = Histogram(
    "product_query_duration_seconds", "Time from execute to the last row, per product read", ["product_id"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PRODUCT_ROWS = Counter("product_rows_returned", "Rows returned by queries reading each product", ["product_id"])
PRODUCT_BYTES_SCANNED = Counter(
    "product_bytes_scanned", "Arrow bytes fetched from the sources for each product (a fragment joining "
    "several products at their source counts to each)", ["product_id"],
)

# --- SLA monitor (gateway/sla_monitor.py): set at each product's check ----------------------------

PRODUCT_DATA_AGE = Gauge(
    "product_data_age_seconds", "Age of the product's newest data at its last SLA check (freshness column, "
    "else the source files' modification time)", ["product_id"],
)
PRODUCT_SLA_FRESHNESS_BREACHES = Counter(
    "product_sla_freshness_breaches", "Times the product's data became older than its sla.freshness", ["product_id"]
)
PRODUCT_SLA_BREACHES = Counter(
    "product_sla_breaches", "SLA alerts raised, by condition (freshness, availability, completeness, quality)",
    ["product_id", "condition"],
)
PRODUCT_SLA_BREACHED = Gauge(
    "product_sla_breached", "1 while the product's last SLA check breached the condition, else 0", ["product_id", "condition"]
)
PRODUCT_QUALITY_SCORE = Gauge(
    "product_quality_score", "Share of the product's quality rules that passed at its last check (0-1)", ["product_id"]
)
PRODUCT_VALIDATION_FAILURES = Counter(
    "product_validation_failures", "Quality-rule runs that failed or could not run, by rule", ["product_id", "rule"]
)
PRODUCT_AVAILABILITY = Gauge(
    "product_availability_ratio", "Share of the product's probe queries that succeeded over the availability window (0-1)",
    ["product_id"],
)
PRODUCT_COMPLETENESS = Gauge(
    "product_completeness_ratio", "Rows at the last check against the previous check's count, capped at 1", ["product_id"]
)
PRODUCT_CONSUMERS = Gauge(
    "product_consumers", "Distinct principals that queried the product recently (from the audit log)", ["product_id"]
)
PRODUCT_SLA_LAST_CHECK = Gauge(
    "product_sla_last_check_timestamp_seconds", "When the product's last SLA check ran (Unix time)", ["product_id"]
)
SLA_CHECK_SECONDS = Histogram(
    "sla_check_seconds", "Time one product's SLA check took (probe, freshness, row count, quality gates)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SLA_ALERT_DELIVERIES = Counter(
    "sla_alert_webhook_deliveries", "SLA alert webhook POSTs, by outcome (ok, failed)", ["outcome"]
)

# --- result cache ---------------------------------------------------------------------------------
# ``level``: result | fragment (gateway/cache.py's two levels); ``tier``: memory | redis.

CACHE_HITS = Counter("gateway_cache_hits", "Lookups answered from the cache", ["level", "tier"])
CACHE_MISSES = Counter("gateway_cache_misses", "Cacheable lookups a tier could not answer", ["level", "tier"])
CACHE_EVICTIONS = Counter("gateway_cache_evictions", "Entries evicted to keep the cache within --cache-bytes", ["level", "tier"])
CACHE_BYTES = Gauge("gateway_cache_bytes", "Bytes of entries held by the cache in this process", ["level", "tier"])
CACHE_ERRORS = Counter("gateway_cache_errors", "Failed calls to a shared cache tier (the query went on without it)", ["tier"])

# --- governance and sources -------------------------------------------------------------------------

POLICY_DECISIONS = Counter("policy_decisions", "Per-product governance decisions of planned statements", ["decision"])
"""``decision``: ``allow`` (unchanged), ``transform`` (masks, row filters or group sizes applied), ``deny``."""
POLICY_EVALUATION = Histogram(
    "policy_evaluation_seconds", "Time to decide one principal's access to one product (planning a statement)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
CONNECTOR_FRAGMENT_SECONDS = Histogram(
    "connector_fragment_seconds", "Time to fetch one fragment from its source", ["connector"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONNECTOR_ERRORS = Counter("connector_errors", "Fragments that failed at their source", ["connector"])
"""``connector``: the connector kind (postgres, duckdb, sqlite, parquet, flightsql): a fixed set."""
