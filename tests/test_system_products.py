"""The ``mesh`` domain's system products: served from memory, listed in metadata, under policy,
with rows produced when each query runs (a cached plan still sees new rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pytest

from gateway import system_products
from gateway.errors import NotFound
from gateway.registry import Registry
from gateway.service import GatewayService
from gateway.system_products import SystemScope, system_product
from policies import ANONYMOUS, Principal
from policies.engine import PolicyEngine

OPEN = Path(__file__).parent / "policies" / "open"


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A system product ``mesh.ticks`` whose rows are whatever the list holds when a query runs,
    one row per entry, plus a column saying who asked."""
    monkeypatch.setattr(system_products, "_PRODUCTS", dict(system_products._PRODUCTS))
    seen: list[str] = []

    @system_product("ticks", "Test rows", [("tick", "string", "the entry"), ("n", "int64", "its position"),
                                           ("asked_by", "string", "the principal")])
    def _rows(scope: SystemScope) -> pa.Table:
        return pa.table({"tick": seen, "n": list(range(len(seen))), "asked_by": [scope.principal.name] * len(seen)})

    yield seen


@pytest.fixture
def service(tmp_path: Path) -> Iterator[GatewayService]:
    svc = GatewayService(Registry(tmp_path / "registry.db"), policies=PolicyEngine.load(OPEN))
    yield svc
    svc.close()


def test_rows_are_produced_when_the_query_runs(ticks: list[str], service: GatewayService) -> None:
    sql = "SELECT tick, asked_by FROM mesh.ticks WHERE n >= 1 ORDER BY n"
    assert service.execute(sql, ANONYMOUS).read_all().num_rows == 0
    ticks.extend(["a", "b", "c"])
    again = service.execute(sql, ANONYMOUS).read_all()  # the same (cached) plan
    assert again.to_pylist() == [{"tick": "b", "asked_by": "anonymous"}, {"tick": "c", "asked_by": "anonymous"}]
    bob = Principal("bob", frozenset({"public"}), {})
    assert service.execute("SELECT DISTINCT asked_by FROM mesh.ticks", bob).read_all().column(0).to_pylist() == ["bob"]
    joined = service.execute("SELECT count(*) AS n FROM mesh.ticks a JOIN mesh.ticks b USING (tick)", ANONYMOUS).read_all()
    assert joined.column(0).to_pylist() == [3]


def test_listed_in_metadata_with_its_contract(ticks: list[str], service: GatewayService) -> None:
    tables = service.execute(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'mesh'", ANONYMOUS
    ).read_all().to_pylist()
    assert {"table_name": "ticks", "table_type": "BASE TABLE"} in tables
    columns = service.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'ticks' ORDER BY ordinal_position",
        ANONYMOUS,
    ).read_all().to_pylist()
    assert [(c["column_name"], c["data_type"]) for c in columns] == [("tick", "text"), ("n", "bigint"), ("asked_by", "text")]
    infos = [t for t in service.list_tables(None, "mesh", "ticks", []) if t.name == "ticks"]
    assert len(infos) == 1 and infos[0].arrow_schema.names == ["tick", "n", "asked_by"]


def test_unknown_system_product_names_the_known_ones(ticks: list[str], service: GatewayService) -> None:
    with pytest.raises(NotFound, match=r"unknown system table 'mesh.nope' \(have: .*ticks"):
        service.execute("SELECT * FROM mesh.nope", ANONYMOUS)
    with pytest.raises(NotFound, match="information_schema.nope"):
        service.execute("SELECT * FROM information_schema.nope", ANONYMOUS)


def test_a_system_product_is_under_policy(ticks: list[str], tmp_path: Path) -> None:
    """A policy denying the mesh domain denies its system products like any product."""
    policies = tmp_path / "policies"
    (policies / "global").mkdir(parents=True)
    (policies / "global" / "deny-mesh.yaml").write_text(
        "access:\n  - {id: everyone, effect: allow}\n  - {id: no-system, effect: deny, products: ['mesh.*']}\n"
    )
    svc = GatewayService(Registry(tmp_path / "registry.db"), policies=PolicyEngine.load(policies))
    try:
        with pytest.raises(Exception, match="no-system"):
            svc.execute("SELECT * FROM mesh.ticks", ANONYMOUS)
        tables = svc.execute("SELECT table_name FROM information_schema.tables", ANONYMOUS).read_all()
        assert "ticks" not in tables.column(0).to_pylist()
    finally:
        svc.close()
