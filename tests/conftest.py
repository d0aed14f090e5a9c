"""Shared test fixtures.

PostgreSQL fixtures use the throw-away server that ``scripts/test`` starts (see
``scripts/pg-test-server``); it exports:

- ``MESHGATE_TEST_PG_URI``  ``postgresql://postgres@127.0.0.1:PORT/meshgate_test`` (trust auth)
- ``MESHGATE_TEST_PG_BIN``  the directory holding ``pg_ctl``
- ``MESHGATE_TEST_PG_DATA`` the server's data directory
- ``MESHGATE_TEST_PG_LOG``  its log file

Run under plain ``pytest`` without them, tests that need PostgreSQL are skipped with a hint.

Fixtures:

- ``pg_uri`` (session): URI of the ``meshgate_test`` database.
- ``pg_control`` (function): ``stop()``, ``start()``, ``is_running()`` for the server; if a test
  leaves it stopped, it is started again after that test.
- ``make_pg_database`` (function): factory ``make_pg_database(prefix="t") -> uri`` creating a
  uniquely named empty database, dropped after the test.
- ``fresh_pg_database`` (function): the URI of one such database.
- ``free_port`` (session): callable ``free_port() -> int``, a currently free TCP port on 127.0.0.1.
- ``redis_uri`` (session): ``redis://127.0.0.1:PORT/0`` of the throw-away Redis server that
  ``scripts/test`` starts (``scripts/redis-test-server``; ``MESHGATE_TEST_REDIS_URI``).
- ``redis_control`` (function): ``kill()`` (SIGKILL, as a crash), ``start()``, ``is_running()``
  for that server; if a test leaves it down, it is started again after that test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

RUN_SCRIPT_HINT = "run the suite with scripts/test, which starts a throw-away PostgreSQL server"


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_admin_connect(uri: str):
    """An autocommit psycopg2 connection (CREATE/DROP DATABASE refuse to run in a transaction)."""
    import psycopg2

    conn = psycopg2.connect(uri, connect_timeout=5)
    conn.autocommit = True
    return conn


def _with_database(uri: str, dbname: str) -> str:
    return urlsplit(uri)._replace(path="/" + dbname).geturl()


class PgControl:
    """Stops and starts the test server with pg_ctl, as its OS user, like scripts/pg-test-server.

    The server refuses to run as root; when we are root, pg_ctl runs as the owner of the data
    directory (the ``postgres`` user) through runuser (or su where runuser is missing).
    """

    def __init__(self, uri: str, bin_dir: Path, data_dir: Path, log_file: Path):
        self.uri = uri
        self.pg_ctl = str(bin_dir / "pg_ctl")
        self.data_dir = data_dir
        self.log_file = log_file

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.pg_ctl, *args]
        owner = self.data_dir.stat().st_uid
        if os.geteuid() == 0 and owner != 0:
            user = pwd.getpwuid(owner).pw_name
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", user, "--", *cmd]
            else:
                cmd = ["su", user, "-s", "/bin/sh", "-c", subprocess.list2cmdline(cmd)]
        # cwd=/ because the server's user may not be allowed into our working directory.
        return subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=check, timeout=120)

    def is_running(self) -> bool:
        # pg_ctl status: 0 = running, 3 = not running.
        return self._run("status", "-D", str(self.data_dir), check=False).returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are disconnected) and wait until it is down."""
        self._run("stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it accepts connections."""
        # -l is required: without it the server would inherit our stdout pipe and
        # subprocess.run would wait for it forever.
        self._run("start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(int(timeout)))
        deadline = time.monotonic() + timeout
        while True:
            try:
                _pg_admin_connect(self.uri).close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_uri() -> str:
    uri = os.environ.get("MESHGATE_TEST_PG_URI")
    if not uri:
        pytest.skip(f"MESHGATE_TEST_PG_URI is not set: {RUN_SCRIPT_HINT}")
    return uri


@pytest.fixture(scope="session")
def _pg_control_session(pg_uri: str) -> PgControl:
    bin_dir = os.environ.get("MESHGATE_TEST_PG_BIN")
    data_dir = os.environ.get("MESHGATE_TEST_PG_DATA")
    if not bin_dir or not data_dir:
        pytest.skip(f"MESHGATE_TEST_PG_BIN/MESHGATE_TEST_PG_DATA are not set: {RUN_SCRIPT_HINT}")
    data = Path(data_dir)
    log_file = Path(os.environ.get("MESHGATE_TEST_PG_LOG") or data.parent / "postgres.log")
    return PgControl(pg_uri, Path(bin_dir), data, log_file)


@pytest.fixture
def pg_control(_pg_control_session: PgControl):
    yield _pg_control_session
    # A test that stops the server (and fails before restarting it) must not break the rest.
    if not _pg_control_session.is_running():
        _pg_control_session.start()


@pytest.fixture
def make_pg_database(pg_uri: str):
    """Factory: ``make_pg_database(prefix="t") -> uri`` of a new empty database, dropped after the test."""
    from psycopg2 import sql

    created: list[str] = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = _pg_admin_connect(pg_uri)  # psycopg2's `with conn` would not close it
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        created.append(name)
        return _with_database(pg_uri, name)

    yield make

    if not created:
        return
    conn = _pg_admin_connect(pg_uri)
    try:
        with conn.cursor() as cur:
            for name in created:
                # FORCE: a connection the test forgot to close must not keep the database alive.
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


@pytest.fixture
def fresh_pg_database(make_pg_database) -> str:
    """URI of a new, empty, uniquely named database, dropped after the test."""
    return make_pg_database()


@pytest.fixture(scope="session")
def free_port():
    """Callable returning a free TCP port on 127.0.0.1 (call it once per server you start)."""
    return find_free_port


@pytest.fixture(scope="session")
def live_mesh(tmp_path_factory: pytest.TempPathFactory, pg_uri: str):
    """The demo mesh (shipping in PostgreSQL) served by an in-process gateway on a real socket,
    plus a PostgreSQL oracle database holding the same data; see ``tests/mesh.py``."""
    from tests.mesh import build_live_mesh

    mesh = build_live_mesh(tmp_path_factory.mktemp("mesh"), pg_uri)
    yield mesh
    mesh.close()


REDIS_HINT = "run the suite with scripts/test, which starts a throw-away Redis server (scripts/redis-test-server)"


class RedisControl:
    """Kills and restarts the throw-away Redis server with its own config file (same port)."""

    def __init__(self, uri: str, binary: str, conf: Path) -> None:
        self.uri = uri
        self.binary = binary
        self.conf = conf
        self.pid_file = conf.parent / "redis.pid"

    def _client(self):
        import redis

        return redis.Redis.from_url(self.uri, socket_timeout=1, socket_connect_timeout=1)

    def is_running(self) -> bool:
        try:
            return bool(self._client().ping())
        except Exception:
            return False

    def kill(self) -> None:
        """SIGKILL the server (a crash: no goodbye to clients) and wait until it is gone."""
        pid = int(self.pid_file.read_text())
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def start(self, timeout: float = 10.0) -> None:
        subprocess.run([self.binary, str(self.conf)], check=True, capture_output=True, timeout=30)  # daemonizes
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not come back on {self.uri}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_uri() -> str:
    uri = os.environ.get("MESHGATE_TEST_REDIS_URI")
    if not uri:
        pytest.skip(f"MESHGATE_TEST_REDIS_URI is not set: {REDIS_HINT}")
    return uri


@pytest.fixture
def redis_control(redis_uri: str):
    binary, conf = os.environ.get("MESHGATE_TEST_REDIS_BIN"), os.environ.get("MESHGATE_TEST_REDIS_CONF")
    if not binary or not conf:
        pytest.skip(f"MESHGATE_TEST_REDIS_BIN/MESHGATE_TEST_REDIS_CONF are not set: {REDIS_HINT}")
    control = RedisControl(redis_uri, binary, Path(conf))
    yield control
    if not control.is_running():  # a test that kills the server must not break the rest
        control.start()
