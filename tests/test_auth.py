"""Authentication end to end: the users file, ``meshgate user add``, Handshake and bearer tokens,
the refusals (missing, malformed, wrong, unknown, expired, foreign), rate limiting, and the
principal reaching the policies.

Clients are real: the ADBC Flight SQL driver (which handshakes with unpadded Basic auth, then
sends the bearer token on every call), pyarrow.flight (``authenticate_basic_token``) and, where
a test must send exactly the headers JDBC or a broken client would, a raw gRPC call.  The
gateway behind them is the live demo mesh under the packaged policies.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import adbc_driver_flightsql.dbapi as flightsql
import grpc
import pyarrow.flight as flight
import pytest
import yaml
from adbc_driver_manager import AdbcStatusCode
from prometheus_client import REGISTRY

from gateway.auth import FAILED, RATE_LIMITED, REQUIRED, AuthenticationFailed, Authenticator, FailureLimiter, TokenIssuer
from gateway.flight.server import MeshFlightServer
from gateway.service import GatewayService
from gateway.users import SCRYPT_N, UsersFile, add_user, hash_password, load_users, parse_attribute, write_users
from policies.engine import PolicyEngine
from tests.mesh import LiveMesh

pytestmark = pytest.mark.postgres

MESHGATE = [sys.executable, "-m", "gateway.cli"]
PASSWORDS = {"alice": "alice-Pw-1", "bob": "bob-Pw-22", "carol": "carol-Pw-333"}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_auth_failures_total", {"reason": reason}) or 0.0


def write_demo_like_users(path: Path) -> None:
    add_user(path, "alice", PASSWORDS["alice"], ["analyst"], {"region": "DE", "zone": "EU", "pii_training": True})
    add_user(path, "bob", PASSWORDS["bob"], ["analyst"], {"region": "US"})
    add_user(path, "carol", PASSWORDS["carol"], ["admin"], {"region": "DE"})


@dataclass
class Gateway:
    uri: str
    port: int
    users: Path
    authenticator: Authenticator
    server: MeshFlightServer


@pytest.fixture(scope="module")
def service(live_mesh: LiveMesh) -> Iterator[GatewayService]:
    """The live mesh under the packaged (real) policies."""
    governed = GatewayService(live_mesh.registry, policies=PolicyEngine.load())
    yield governed
    governed.close()


@pytest.fixture
def start(service: GatewayService, tmp_path: Path) -> Iterator:  # noqa: ANN001
    """``start(authenticator=None)``: an authenticating gateway over a fresh users file."""
    servers: list[MeshFlightServer] = []
    users = tmp_path / "users.yaml"
    write_demo_like_users(users)

    def start_gateway(authenticator: Authenticator | None = None) -> Gateway:
        authenticator = authenticator or Authenticator(UsersFile(users))
        server = MeshFlightServer("grpc://127.0.0.1:0", service, authenticator=authenticator)
        servers.append(server)
        return Gateway(f"grpc://127.0.0.1:{server.port}", server.port, users, authenticator, server)

    yield start_gateway
    for server in servers:
        server.shutdown()


@pytest.fixture
def gateway(start) -> Gateway:  # noqa: ANN001
    return start()


def connect(gateway: Gateway, user: str) -> flightsql.Connection:
    return flightsql.connect(gateway.uri, db_kwargs={"username": user, "password": PASSWORDS[user]}, autocommit=True)


def raw_handshake(port: int, authorization: list[str]) -> str:
    """A Handshake with exactly these Authorization headers (as JDBC or a broken client sends
    them); the Authorization header of the answer."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        handshake = channel.stream_stream("/arrow.flight.protocol.FlightService/Handshake")
        responses = handshake(iter([b""]), metadata=[("authorization", value) for value in authorization], timeout=10)
        list(responses)
        return dict(responses.initial_metadata())["authorization"]


def bearer(gateway: Gateway, user: str = "alice") -> str:
    with flight.connect(gateway.uri) as client:
        _, value = client.authenticate_basic_token(user, PASSWORDS[user])
    return value.decode()


# --- the users file and `meshgate user add` ---------------------------------------------------


def test_user_add_writes_a_salted_scrypt_hash_never_the_password(tmp_path: Path) -> None:
    users = tmp_path / "conf" / "users.yaml"
    command = [*MESHGATE, "user", "add", "alice", "--users", str(users), "--role", "analyst", "--role", "reader",
               "--attr", "region=DE", "--attr", "zone=EU", "--attr", "pii_training=true", "--attr", "level=3",
               "--attr", "country=NO", "--password-stdin"]
    result = subprocess.run(command, input="s3cret pass\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "added user alice" in result.stdout
    text = users.read_text()
    assert "s3cret" not in text and users.stat().st_mode & 0o777 == 0o600
    (entry,) = yaml.safe_load(text)["users"]
    assert entry["password_hash"].startswith(f"scrypt${SCRYPT_N}$8$1$")
    assert entry["roles"] == ["analyst", "reader"]
    assert entry["attributes"] == {"region": "DE", "zone": "EU", "pii_training": True, "level": 3, "country": "NO"}
    alice = UsersFile(users).get("alice")
    assert alice is not None and alice.principal().attributes["pii_training"] is True

    again = subprocess.run(command, input="s3cret pass\n", capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "updated user alice" in again.stdout
    rehashed = yaml.safe_load(users.read_text())["users"][0]["password_hash"]
    assert rehashed != entry["password_hash"]  # a fresh salt each time


@pytest.mark.parametrize(
    ("arguments", "stdin", "message"),
    [
        (["--password-stdin"], "\n", "the password is empty"),
        (["--password-stdin", "--attr", "Region=DE"], "pw\n", "key=value"),
        ([], "pw\n", "--password-stdin"),  # no terminal to prompt on
    ],
)
def test_user_add_refuses_bad_input(tmp_path: Path, arguments: list[str], stdin: str, message: str) -> None:
    users = tmp_path / "users.yaml"
    result = subprocess.run([*MESHGATE, "user", "add", "alice", "--users", str(users), "--role", "analyst", *arguments],
                            input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert not users.exists()


def test_attribute_values_are_typed_as_policies_expect() -> None:
    assert parse_attribute("pii_training=TRUE") == ("pii_training", True)
    assert parse_attribute("active=false") == ("active", False)
    assert parse_attribute("level=-2") == ("level", -2)
    assert parse_attribute("region=NO") == ("region", "NO")  # not YAML 1.1's False
    assert parse_attribute("note=a=b") == ("note", "a=b")


def test_broken_users_file_keeps_the_last_good_users(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    add_user(path, "alice", "pw", ["analyst"], {})
    users = UsersFile(path)
    assert users.get("alice") is not None
    path.write_text("users: [{name: alice, password_hash: plain-text-password}]\n")
    assert users.get("alice") is not None  # the invalid file was not loaded
    with pytest.raises(ValueError, match=r"users\[0\]\.password_hash"):
        load_users(path)


# --- logging in -------------------------------------------------------------------------------


def test_adbc_logs_in_and_the_policies_see_the_principal(gateway: Gateway) -> None:
    sql = "SELECT name FROM customers.customers ORDER BY customer_id LIMIT 3"
    with connect(gateway, "alice") as conn, conn.cursor() as cur:  # pii_training: unmasked
        cur.execute(sql)
        assert "[REDACTED]" not in cur.fetch_arrow_table().column("name").to_pylist()
    with connect(gateway, "carol") as conn, conn.cursor() as cur:  # admin may read it, masked
        cur.execute(sql)
        assert set(cur.fetch_arrow_table().column("name").to_pylist()) == {"[REDACTED]"}
    with connect(gateway, "bob") as conn, conn.cursor() as cur:  # no pii_training: refused
        with pytest.raises(flightsql.Error, match="no rule allows bob") as caught:
            cur.execute(sql)
        assert caught.value.status_code == AdbcStatusCode.UNAUTHORIZED
        cur.execute("SELECT count(*) AS n FROM orders.orders")  # a non-pii product is fine
        assert cur.fetch_arrow_table().column("n")[0].as_py() > 0


def test_calls_without_credentials_are_unauthenticated(gateway: Gateway) -> None:
    before = failures("missing")
    with flightsql.connect(gateway.uri, autocommit=True) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error, match=REQUIRED) as caught:
            cur.execute("SELECT 1")
        assert caught.value.status_code == AdbcStatusCode.UNAUTHENTICATED
    with flight.connect(gateway.uri) as client:
        for call in (lambda: list(client.list_actions()),
                     lambda: list(client.do_action(flight.Action("CloseSession", b""))),
                     lambda: client.get_flight_info(flight.FlightDescriptor.for_command(b"anything"))):
            with pytest.raises(flight.FlightUnauthenticatedError, match=REQUIRED):
                call()
    with pytest.raises(grpc.RpcError) as rpc:
        raw_handshake(gateway.port, [])
    assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert failures("missing") >= before + 5


def test_wrong_password_and_unknown_user_get_the_same_answer(gateway: Gateway) -> None:
    before = failures("wrong_password"), failures("unknown_user")
    messages = []
    for user, password in (("alice", "not-her-password"), ("mallory", "whatever")):
        with pytest.raises(flightsql.Error) as caught:
            flightsql.connect(gateway.uri, db_kwargs={"username": user, "password": password})
        assert caught.value.status_code == AdbcStatusCode.UNAUTHENTICATED
        messages.append(str(caught.value).split("[FlightSQL] ")[1].split(". Detail")[0])
    assert messages == [FAILED, FAILED]  # nothing tells which names exist
    assert (failures("wrong_password"), failures("unknown_user")) == (before[0] + 1, before[1] + 1)


def test_unknown_user_costs_what_a_wrong_password_costs(gateway: Gateway) -> None:
    def login_seconds(user: str) -> float:
        started = time.perf_counter()
        with pytest.raises(AuthenticationFailed):
            gateway.authenticator.login("Basic " + base64.b64encode(f"{user}:wrong".encode()).decode())
        return time.perf_counter() - started

    wrong, unknown = min(login_seconds("carol") for _ in range(3)), min(login_seconds("nobody") for _ in range(3))
    assert unknown > 0.5 * wrong  # the unknown name ran scrypt as well


@pytest.mark.parametrize(
    "authorization",
    [
        ["Basic !!!not-base64!!!"],
        ["Basic " + base64.b64encode(b"no-colon-here").decode()],
        ["Basic"],
        ["Digest username=alice"],
        ["Bearer not-a-token"],
        ["Bearer mg1.YWxpY2U.99999999999.c2lnbmF0dXJl"],  # well-formed, forged
        ["Basic " + base64.b64encode(b"alice:alice-Pw-1").decode(), "Bearer something-else"],  # ambiguous
    ],
)
def test_malformed_or_forged_handshake_headers_are_unauthenticated(gateway: Gateway, authorization: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as rpc:
        raw_handshake(gateway.port, authorization)
    assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rpc.value.details().startswith(FAILED)


def test_basic_credentials_count_only_on_handshake(gateway: Gateway) -> None:
    basic = ("authorization", "Basic " + base64.b64encode(b"alice:alice-Pw-1").decode())
    with flight.connect(gateway.uri) as client:
        with pytest.raises(flight.FlightUnauthenticatedError, match="authentication failed"):
            list(client.list_actions(flight.FlightCallOptions(headers=[tuple(p.encode() for p in basic)])))


def test_basic_auth_with_and_without_base64_padding(gateway: Gateway) -> None:
    credentials = base64.b64encode(b"alice:alice-Pw-1").decode()
    assert credentials.endswith("=")
    for value in (credentials, credentials.rstrip("=")):  # pyarrow pads, ADBC does not
        assert raw_handshake(gateway.port, [f"Basic {value}"]).startswith("Bearer mg1.")


def test_bearer_token_on_handshake_and_on_every_call(gateway: Gateway) -> None:
    token = bearer(gateway)
    assert raw_handshake(gateway.port, [token]) == token  # JDBC re-handshakes with its bearer token
    # ADBC with a ready-made Authorization header sends it on every call and never handshakes
    with flightsql.connect(gateway.uri, db_kwargs={"adbc.flight.sql.authorization_header": token}, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM customers.customers LIMIT 1")  # as alice: pii allowed
            assert cur.fetch_arrow_table().num_rows == 1
    with flight.connect(gateway.uri) as client:
        options = flight.FlightCallOptions(headers=[(b"authorization", token.encode())])
        assert "CancelFlightInfo" in {a.type for a in client.list_actions(options)}


def test_expired_token_and_token_of_another_server_are_refused(start, tmp_path: Path) -> None:  # noqa: ANN001
    clock = Clock()
    first = start()
    issuer = TokenIssuer(ttl=60, clock=clock)
    timed = start(Authenticator(first.authenticator.users, issuer))
    token = bearer(timed)
    options = flight.FlightCallOptions(headers=[(b"authorization", token.encode())])
    with flight.connect(timed.uri) as client:
        list(client.list_actions(options))
        expired_before = failures("expired")
        clock.now += 61
        with pytest.raises(flight.FlightUnauthenticatedError, match="authentication failed"):
            list(client.list_actions(options))
        assert failures("expired") == expired_before + 1
    foreign_before = failures("invalid_token")
    with flight.connect(first.uri) as client:  # same users, other server, other secret
        with pytest.raises(flight.FlightUnauthenticatedError, match="authentication failed"):
            list(client.list_actions(options))
    assert failures("invalid_token") == foreign_before + 1


def test_users_file_changes_apply_without_restart(gateway: Gateway) -> None:
    token = bearer(gateway, "bob")
    with flightsql.connect(gateway.uri, db_kwargs={"adbc.flight.sql.authorization_header": token}, autocommit=True) as conn:
        with conn.cursor() as cur, pytest.raises(flightsql.Error, match="no rule allows bob"):
            cur.execute("SELECT name FROM customers.customers LIMIT 1")
        # bob gets pii_training in the file (his hash untouched): his live token now carries it
        users = load_users(gateway.users)
        bob = users["bob"]
        users["bob"] = type(bob)(bob.name, bob.password_hash, bob.roles, {**bob.attributes, "pii_training": True})
        write_users(gateway.users, users.values())
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM customers.customers LIMIT 1")
            assert cur.fetch_arrow_table().num_rows == 1

    add_user(gateway.users, "dave", "dave-pw", ["analyst"], {})  # a new user logs in at once
    with flightsql.connect(gateway.uri, db_kwargs={"username": "dave", "password": "dave-pw"}, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM orders.orders")
            assert cur.fetch_arrow_table().num_rows == 1

    options = flight.FlightCallOptions(headers=[(b"authorization", token.encode())])
    with flight.connect(gateway.uri) as client:
        add_user(gateway.users, "bob", "bob-new-password", ["analyst"], {})  # new password: old tokens die
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(client.list_actions(options))
        dave = bearer_for(gateway, "dave", "dave-pw")
        write_users(gateway.users, [u for u in load_users(gateway.users).values() if u.name != "dave"])  # removed
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(client.list_actions(flight.FlightCallOptions(headers=[(b"authorization", dave.encode())])))


def bearer_for(gateway: Gateway, user: str, password: str) -> str:
    with flight.connect(gateway.uri) as client:
        return client.authenticate_basic_token(user, password)[1].decode()


def test_repeated_failures_are_rate_limited(start) -> None:  # noqa: ANN001
    clock = Clock()
    first = start()
    limited = start(Authenticator(first.authenticator.users, limiter=FailureLimiter(10, 60.0, clock=clock)))

    def login(user: str, password: str) -> None:
        with flight.connect(limited.uri) as client:
            client.authenticate_basic_token(user, password)

    for _ in range(10):
        with pytest.raises(flight.FlightUnauthenticatedError, match="authentication failed"):
            login("alice", "guess")
    before = failures("rate_limited")
    started = time.perf_counter()
    with pytest.raises(flight.FlightUnauthenticatedError, match=RATE_LIMITED):
        login("alice", PASSWORDS["alice"])  # even the right password: the name is locked for now
    assert time.perf_counter() - started < 0.5
    assert failures("rate_limited") == before + 1
    login("bob", PASSWORDS["bob"])  # other users are not affected
    clock.now += 61  # the failures leave the window
    login("alice", PASSWORDS["alice"])


def test_failure_limiter_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=3, window=10.0, clock=clock)
    for _ in range(3):
        limiter.check("k")
        limiter.record("k")
        clock.now += 1
    with pytest.raises(AuthenticationFailed, match=RATE_LIMITED):
        limiter.check("k")
    clock.now += 8  # the first failure (t=0) leaves the 10 s window at t=10
    limiter.check("k")
    limiter.clear("k")
    limiter.check("k")


def test_password_hashes_are_salted_and_verified_in_constant_time_form() -> None:
    first, second = hash_password("same"), hash_password("same")
    assert first != second and first.startswith("scrypt$")
    from gateway.users import verify_password

    assert verify_password("same", first) and not verify_password("Same", first)


# --- the command line -------------------------------------------------------------------------


def test_serve_needs_users_or_the_insecure_flag(tmp_path: Path) -> None:
    for arguments, message in (
        ([], "no --users file given"),
        (["--users", str(tmp_path / "u.yaml"), "--insecure-no-auth"], "not both"),
        (["--users", str(tmp_path / "missing.yaml")], "cannot read"),
    ):
        result = subprocess.run([*MESHGATE, "serve", "--port", "0", "--registry", str(tmp_path / "r.db"), *arguments],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_meshgate_serve_with_users(live_mesh: LiveMesh, tmp_path: Path, free_port) -> None:  # noqa: ANN001
    users = tmp_path / "users.yaml"
    write_demo_like_users(users)
    port = free_port()
    process = subprocess.Popen(
        [*MESHGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--registry", str(live_mesh.registry.path),
         "--users", str(users), "--token-ttl", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        first_line = process.stderr.readline()
        assert "authentication on: 3 users" in first_line and "600 s" in first_line
        assert "serving Flight SQL on grpc://127.0.0.1" in process.stderr.readline()
        uri = f"grpc://127.0.0.1:{port}"
        with flightsql.connect(uri, db_kwargs={"username": "alice", "password": PASSWORDS["alice"]}, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) AS n FROM customers.customers")
                assert cur.fetch_arrow_table().column("n")[0].as_py() > 0
        query = subprocess.run([*MESHGATE, "query", "--server", uri, "--user", "bob", "SHOW SCHEMAS"],
                               capture_output=True, text=True, timeout=60, env={**os.environ, "MESHGATE_PASSWORD": PASSWORDS["bob"]})
        assert query.returncode == 0 and "orders" in query.stdout, query.stderr
        refused = subprocess.run([*MESHGATE, "query", "--server", uri, "SHOW SCHEMAS"], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "authentication required" in refused.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
