"""Each product's freshness watermark, asked of its source at most every few seconds.

A product's watermark is the newest value of its ``sla.freshness_column`` (one ``max()`` pushed
to the source) or, without one, when its files last changed (``Connector.freshness``; servers
without a column have none).  The cache records it with every entry: when it moves, the source
changed and the entries that read the product are dropped.  Where the product declares a
freshness column the watermark also dates the data itself, so its age counts against the SLA.

Asking costs a source round trip, so a product's watermark is re-read only when the last reading
is ``interval`` seconds old, by one caller while the others use the previous reading; a failed
reading keeps the previous one (logged), so a source outage does not turn into a query storm.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from connectors.base import Connector
from gateway.descriptor import Descriptor

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
"""Seconds a watermark reading is reused before the source is asked again."""


def stalest_newest_data(descriptors: Iterable[Descriptor], connector_for: Callable[[Descriptor], Connector]) -> float | None:
    """The oldest of the products' newest freshness-column values (epoch seconds): the moment by
    which every product with a freshness column had data. Benchmarks and tests set their cache
    clock relative to it, so that ages are the same whenever the data was generated. None when
    no product declares a freshness column or none has data."""
    newest = []
    for d in descriptors:
        column = d.sla.freshness_column
        if column is not None:
            found = connector_for(d).freshness(d.source.table, d.source.query, column)
            if found.as_of is not None:
                newest.append(found.as_of.timestamp())
    return min(newest) if newest else None


@dataclass
class _Reading:
    value: float | None  # epoch seconds; None: unknown
    read_at: float
    refreshing: bool = False


class Watermarks:
    """Watermarks by product version; ``clock`` is the cache's (epoch seconds)."""

    def __init__(self, clock: Callable[[], float] = time.time, interval: float = DEFAULT_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self.reads = 0  # source round trips, for tests and operators
        self._readings: dict[str, _Reading] = {}
        self._lock = threading.Lock()

    def current(self, descriptor: Descriptor, connector: Connector) -> float | None:
        """The product's watermark (epoch seconds), re-read when the last reading is too old."""
        key = f"{descriptor.product_id}@{descriptor.version}"
        now = self.clock()
        with self._lock:
            reading = self._readings.get(key)
            if reading is not None:
                if reading.refreshing or now - reading.read_at < self.interval:
                    return reading.value
                reading.refreshing = True
        value = self._read(descriptor, connector, reading.value if reading else None)
        with self._lock:
            self._readings[key] = _Reading(value, self.clock())
        return value

    def _read(self, descriptor: Descriptor, connector: Connector, previous: float | None) -> float | None:
        self.reads += 1
        try:
            found = connector.freshness(descriptor.source.table, descriptor.source.query, descriptor.sla.freshness_column)
        except Exception as err:  # noqa: BLE001 - any driver error: keep what we knew
            log.warning("cannot read the freshness watermark of %s (keeping the previous one): %s",
                        descriptor.product_id, str(err).splitlines()[0][:300] if str(err) else type(err).__name__)
            return previous
        return found.as_of.timestamp() if found.as_of is not None else None
