"""The test infrastructure is real: the PostgreSQL server from scripts/test answers through ADBC,
can be stopped and started by a test, and hands out isolated databases."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import adbc_driver_postgresql.dbapi as pg_dbapi
import pytest

pytestmark = pytest.mark.postgres


def query_one(uri: str, sql: str):
    with pg_dbapi.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def test_pg_uri_answers_through_adbc(pg_uri):
    (version,) = query_one(pg_uri, "select version()")
    assert version.startswith("PostgreSQL")
    assert query_one(pg_uri, "select current_database()") == ("meshgate_test",)


def test_pg_control_stops_and_starts_the_server(pg_control, pg_uri):
    assert pg_control.is_running()

    pg_control.stop()
    assert not pg_control.is_running()
    with pytest.raises(pg_dbapi.Error):
        query_one(pg_uri, "select 1")

    pg_control.start()
    assert pg_control.is_running()
    assert query_one(pg_uri, "select 1") == (1,)


def test_fresh_pg_database_is_new_and_isolated(fresh_pg_database, make_pg_database, pg_uri):
    assert urlsplit(fresh_pg_database).path != urlsplit(pg_uri).path
    with pg_dbapi.connect(fresh_pg_database) as conn, conn.cursor() as cur:
        cur.execute("create table t (x int)")
        cur.execute("insert into t values (1), (2)")
        conn.commit()
        cur.execute("select sum(x) from t")
        assert cur.fetchone() == (3,)

    other = make_pg_database("other")
    assert other != fresh_pg_database
    # A second database does not see the first one's table.
    assert query_one(other, "select to_regclass('public.t') is null") == (True,)


def test_free_port_can_be_bound(free_port):
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
