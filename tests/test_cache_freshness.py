"""Freshness of the cache with a controllable clock: no entry is served past its products'
freshness SLA (result and fragment level), the source data's own age counts, a watermark advance
or a new product version invalidates, stale-while-revalidate, the client's max_staleness.

The mesh: tests/fresh_mesh.py (events: 1h SLA on a freshness column, 10 minutes old at T0;
kinds: 30m SLA, aged from its fetch).
"""

from __future__ import annotations

import copy
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import pytest

from gateway.cache import BYPASS, HIT, MISS, STALE
from gateway.descriptor import validate
from gateway.flight.server import MeshFlightServer
from policies import ANONYMOUS
from tests.fresh_mesh import JOIN, KINDS, T0, Mesh, iso

@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path, {"freshness": "30m"})
    yield m
    m.service.close()


def test_no_entry_is_served_past_its_products_sla_at_either_level(mesh: Mesh) -> None:
    answer, meta, fragments = mesh.run(JOIN)
    assert meta["meshgate.cache"] == MISS and fragments == {"events": MISS, "kinds": MISS}
    assert float(meta["meshgate.age_seconds"]) == 600  # the newest event was 10 minutes old when fetched
    mesh.at(1799)  # kinds: 30m from its fetch
    again, meta, _ = mesh.run(JOIN)
    assert meta["meshgate.cache"] == HIT and again.equals(answer) and mesh.sent() == []
    assert float(meta["meshgate.age_seconds"]) == 600 + 1799
    mesh.at(1800)  # kinds' SLA has passed: the result and the kinds fragment are refetched; events' is still fresh
    again, meta, fragments = mesh.run(JOIN)
    assert meta["meshgate.cache"] == MISS and fragments == {"events": HIT, "kinds": MISS} and mesh.sent() == ["kinds.sqlite"]
    assert float(meta["meshgate.age_seconds"]) == 600 + 1800 and again.equals(answer)  # events' data is that old
    mesh.at(2999)  # events' data is 3599 s old: one second left
    assert mesh.run(JOIN)[1]["meshgate.cache"] == HIT
    mesh.at(3000)  # events' data is an hour old: past its SLA, in the cache and at the source
    _, meta, fragments = mesh.run(JOIN)
    assert meta["meshgate.cache"] == BYPASS and fragments == {"events": BYPASS, "kinds": HIT}
    assert mesh.sent() == ["events.sqlite"] and float(meta["meshgate.age_seconds"]) == 3600
    explained = mesh.service.explain(JOIN, ANONYMOUS).column("cache").to_pylist()[-1]
    assert explained == "bypass: fresh.events@1.0.0's newest data is 1.0 h old at its source, past its 1.0 h freshness SLA"


def test_a_watermark_advance_invalidates_checked_at_most_every_few_seconds(mesh: Mesh) -> None:
    mesh.run(JOIN)
    assert mesh.run(JOIN)[1]["meshgate.cache"] == HIT
    with sqlite3.connect(mesh.events_db) as db:  # a new event: max(updated_at) advances
        db.execute("INSERT INTO events VALUES (99, 'c', ?)", (iso(T0 - 5),))
    reads = mesh.service.watermarks.reads
    mesh.at(1)  # the watermarks were read less than 5 s ago: not asked again, still a hit
    assert mesh.run(JOIN)[1]["meshgate.cache"] == HIT and mesh.service.watermarks.reads == reads
    mesh.at(6)
    answer, meta, fragments = mesh.run(JOIN)
    assert meta["meshgate.cache"] == MISS and fragments == {"events": MISS, "kinds": HIT}
    assert float(meta["meshgate.age_seconds"]) == 11 and "gamma" in answer.column("label").to_pylist()
    with sqlite3.connect(mesh.events_db) as db:  # a change that leaves max(updated_at) alone: events' watermark holds
        db.execute("UPDATE events SET event_id = 100 WHERE event_id = 99")
    mesh.at(12)
    assert mesh.run(JOIN)[1]["meshgate.cache"] == HIT
    with sqlite3.connect(mesh.kinds_db) as db:  # kinds has no freshness column: its file's mtime is the watermark
        db.execute("UPDATE kinds SET label = 'GAMMA' WHERE kind = 'c'")
    mesh.at(18)
    answer, meta, fragments = mesh.run(JOIN)
    assert meta["meshgate.cache"] == MISS and fragments == {"events": HIT, "kinds": MISS}
    assert "GAMMA" in answer.column("label").to_pylist()


def test_a_new_product_version_invalidates(mesh: Mesh) -> None:
    mesh.run(JOIN)
    assert mesh.run(JOIN)[1]["meshgate.cache"] == HIT
    doc = copy.deepcopy(mesh.kinds.raw)
    doc["metadata"]["version"] = "1.0.1"
    mesh.registry.register([validate(doc)])
    deadline = time.monotonic() + 5
    while mesh.registry.catalog(max_age=0).resolve("fresh", "kinds").version != "1.0.1":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _, meta, fragments = mesh.run(JOIN)
    assert meta["meshgate.cache"] == MISS and fragments == {"events": HIT, "kinds": MISS}
    assert "fresh.kinds@1.0.1" in meta["meshgate.products"]
    assert mesh.run(JOIN)[1]["meshgate.cache"] == HIT


def test_stale_while_revalidate_serves_the_stale_entry_while_one_refresh_runs(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, {"freshness": "30m", "stale_while_revalidate": "10m"})
    try:
        first, _, _ = mesh.run(KINDS)
        mesh.at(1800 + 60)  # past the SLA, within the window
        stale, meta, _ = mesh.run(KINDS)
        assert meta["meshgate.cache"] == STALE and float(meta["meshgate.age_seconds"]) == 1860 and stale.equals(first)
        deadline = time.monotonic() + 10
        while (meta := mesh.run(KINDS)[1])["meshgate.cache"] == STALE:  # until the background refresh lands
            assert time.monotonic() < deadline, "no background refresh"
            time.sleep(0.02)
        assert meta["meshgate.cache"] == HIT and float(meta["meshgate.age_seconds"]) == 0  # refreshed
        assert mesh.service.cache.misses == 2  # type: ignore[union-attr] # the first fetch and one refresh
        mesh.at(1800 + 60 + 1800 + 60)  # stale again, but the client allows less: a miss, not stale
        assert mesh.run(KINDS, max_staleness=1800)[1]["meshgate.cache"] == MISS
        mesh.at(1800 + 60 + 1800 + 60 + 1800 + 600)  # past SLA + window: nobody gets it
        assert mesh.run(KINDS)[1]["meshgate.cache"] == MISS
    finally:
        mesh.service.close()


def test_max_staleness_is_stricter_than_the_sla(mesh: Mesh) -> None:
    assert mesh.run(KINDS)[1]["meshgate.cache"] == MISS
    mesh.at(60)
    assert mesh.run(KINDS, max_staleness=120)[1]["meshgate.cache"] == HIT
    assert mesh.run(KINDS, max_staleness=30)[1]["meshgate.cache"] == MISS  # refetched, now age 0
    assert mesh.run(KINDS, max_staleness=30)[1]["meshgate.cache"] == HIT
    assert mesh.run(KINDS, max_staleness=0)[1]["meshgate.cache"] == BYPASS  # no staleness allowed
    _, meta, fragments = mesh.run(JOIN, max_staleness=0)
    assert meta["meshgate.cache"] == BYPASS and fragments == {}  # at no level


def test_flight_session_max_staleness_reaches_the_cache(mesh: Mesh) -> None:
    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_flightsql import ConnectionOptions

    svc = mesh.service
    server = MeshFlightServer("grpc://127.0.0.1:0", svc, principal_for=lambda _context: ANONYMOUS)
    cookies = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}

    def status(cur) -> str:  # noqa: ANN001 - the ADBC driver drops DoGet's schema metadata: count
        hits = svc.cache.hits  # type: ignore[union-attr]
        cur.execute(KINDS)
        cur.fetch_arrow_table()
        return HIT if svc.cache.hits > hits else MISS  # type: ignore[union-attr]

    try:
        with flightsql.connect(f"grpc://127.0.0.1:{server.port}", db_kwargs=cookies, autocommit=True) as conn:
            with conn.cursor() as cur:
                assert status(cur) == MISS
                mesh.at(120)
                assert status(cur) == HIT  # kinds: freshness 30m
                conn.adbc_connection.set_options(**{ConnectionOptions.OPTION_SESSION_OPTION_PREFIX.value + "max_staleness": "1m"})
                assert status(cur) == MISS  # 120 s old is too old for this session
                mesh.at(150)
                assert status(cur) == HIT
    finally:
        server.shutdown()
