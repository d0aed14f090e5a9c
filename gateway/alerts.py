"""SLA alerts: a log line, the ``product_sla_*`` counters and, optionally, a webhook POST.

An alert is raised when a product's check breaches a condition of its SLA that the previous
check did not (``firing``), and again when a later check no longer breaches it (``resolved``).
With a webhook URL (``--alert-webhook``) each alert is POSTed as JSON, one per request:

```json
{"source": "meshgate", "status": "firing", "product_id": "sales.orders", "version": "1.2.0",
 "condition": "freshness", "message": "data is 2h 5m old (max(updated_at) = ...); the SLA is 1h",
 "observed": 7500.0, "threshold": 3600.0, "checked_at": "2026-01-01T12:00:00Z",
 "text": "[meshgate] FIRING sales.orders freshness: data is 2h 5m old ...", "host": "gw-1"}
```

``observed`` and ``threshold`` are in the condition's unit: seconds (freshness), percent
(availability, completeness) or a 0-1 score (quality). ``text`` makes the body usable as a Slack
or Mattermost incoming-webhook message as is. Deliveries happen on a thread of their own (a slow
receiver never delays a check), with up to three attempts per alert; each outcome is counted in
``sla_alert_webhook_deliveries_total{outcome}``.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from gateway import metrics

log = logging.getLogger(__name__)

ATTEMPTS = 3
"""Tries per alert; waits 1 s, then 2 s between them."""


@dataclass(frozen=True)
class Alert:
    status: str  # firing | resolved
    product_id: str
    version: str
    condition: str  # freshness | availability | completeness | quality
    message: str
    observed: float | None
    threshold: float | None
    checked_at: float  # Unix time

    def payload(self) -> dict[str, Any]:
        return {
            "source": "meshgate",
            "status": self.status,
            "product_id": self.product_id,
            "version": self.version,
            "condition": self.condition,
            "message": self.message,
            "observed": self.observed,
            "threshold": self.threshold,
            "checked_at": datetime.fromtimestamp(self.checked_at, timezone.utc).isoformat().replace("+00:00", "Z"),
            "text": self.line(),
            "host": socket.gethostname(),
        }

    def line(self) -> str:
        return f"[meshgate] {self.status.upper()} {self.product_id} {self.condition}: {self.message}"


def check_webhook_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; ValueError naming the problem otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--alert-webhook {url!r}: expected an http:// or https:// URL")
    return url


class AlertSink:
    """Where alerts go: the log, the metrics, and the webhook when one is configured."""

    def __init__(self, webhook: str | None = None, timeout: float = 5.0, retry_delay: float = 1.0) -> None:
        self.webhook = check_webhook_url(webhook) if webhook else None
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.sent: list[Alert] = []  # every alert raised by this sink, newest last (bounded)
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        if self.webhook:
            self._sender = threading.Thread(target=self._deliver_all, name="sla-alert-webhook", daemon=True)
            self._sender.start()

    def send(self, alert: Alert) -> None:
        if alert.status == "firing":
            log.warning("SLA breach: %s %s %s: %s", alert.product_id, alert.version, alert.condition, alert.message)
            product = metrics.product_label(alert.product_id)
            metrics.PRODUCT_SLA_BREACHES.labels(product, alert.condition).inc()
            if alert.condition == "freshness":
                metrics.PRODUCT_SLA_FRESHNESS_BREACHES.labels(product).inc()
        else:
            log.warning("SLA recovered: %s %s %s: %s", alert.product_id, alert.version, alert.condition, alert.message)
        self.sent = [*self.sent[-999:], alert]
        if self._sender is not None:
            self._queue.put(alert)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for at most ``timeout`` seconds), then stop the sender."""
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join(timeout)

    def _deliver_all(self) -> None:
        while (alert := self._queue.get()) is not None:
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(alert.payload()).encode()
        for attempt in range(1, ATTEMPTS + 1):
            request = urllib.request.Request(
                self.webhook, data=body, method="POST",  # type: ignore[arg-type]
                headers={"Content-Type": "application/json", "User-Agent": "meshgate-sla-monitor"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                metrics.SLA_ALERT_DELIVERIES.labels("ok").inc()
                return
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = getattr(err, "reason", err)
                if attempt == ATTEMPTS:
                    metrics.SLA_ALERT_DELIVERIES.labels("failed").inc()
                    log.error("SLA alert webhook: giving up on %s %s after %d attempts: %s",
                              alert.product_id, alert.condition, ATTEMPTS, reason)
                    return
                time.sleep(self.retry_delay * attempt)
