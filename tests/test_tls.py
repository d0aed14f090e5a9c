"""TLS and mutual TLS, with certificates made for the test by ``openssl`` and real clients.

A test CA signs the server certificate (for 127.0.0.1 and localhost) and a client certificate;
a second, untrusted CA signs a rogue client certificate.  The ADBC Flight SQL driver connects
over ``grpc+tls://`` with the CA as its root; plaintext, an untrusted server and (under mutual
TLS) a missing or rogue client certificate must all fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest

from gateway.auth import Authenticator
from gateway.flight.server import MeshFlightServer, TlsFiles, serve
from gateway.users import UsersFile, add_user
from tests.mesh import LiveMesh

pytestmark = pytest.mark.postgres

ROOT_CERTS = "adbc.flight.sql.client_option.tls_root_certs"
CLIENT_CERT = "adbc.flight.sql.client_option.mtls_cert_chain"
CLIENT_KEY = "adbc.flight.sql.client_option.mtls_private_key"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=meshgate test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def make_leaf(folder: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certs")
    make_ca(folder, "ca")
    make_ca(folder, "rogue-ca")
    make_leaf(folder, "server", "ca", "/CN=localhost",
              "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    client_extensions = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    make_leaf(folder, "client", "ca", "/CN=alice", client_extensions)
    make_leaf(folder, "rogue", "rogue-ca", "/CN=mallory", client_extensions)
    return Certificates(*(folder / name for name in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key", "rogue.pem", "rogue.key")))


@pytest.fixture(scope="module")
def tls_server(live_mesh: LiveMesh, certs: Certificates) -> Iterator[MeshFlightServer]:
    with serve(live_mesh.service, "127.0.0.1", 0, tls=TlsFiles(certs.server_cert, certs.server_key)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(live_mesh: LiveMesh, certs: Certificates) -> Iterator[MeshFlightServer]:
    with serve(live_mesh.service, "127.0.0.1", 0, tls=TlsFiles(certs.server_cert, certs.server_key, certs.ca)) as server:
        yield server


def count_orders(uri: str, **options: Any) -> int:
    with flightsql.connect(uri, db_kwargs=options, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM orders.orders")
        return cur.fetch_arrow_table().column("n")[0].as_py()


def test_adbc_over_tls(tls_server: MeshFlightServer, certs: Certificates) -> None:
    assert count_orders(f"grpc+tls://127.0.0.1:{tls_server.port}", **{ROOT_CERTS: certs.ca.read_text()}) > 0
    assert count_orders(f"grpc+tls://localhost:{tls_server.port}", **{ROOT_CERTS: certs.ca.read_text()}) > 0


def test_pyarrow_over_tls(tls_server: MeshFlightServer, certs: Certificates) -> None:
    with flight.connect(f"grpc+tls://127.0.0.1:{tls_server.port}", tls_root_certs=certs.ca.read_bytes()) as client:
        assert "CreatePreparedStatement" in {action.type for action in client.list_actions()}


def test_plaintext_to_a_tls_server_fails(tls_server: MeshFlightServer) -> None:
    with pytest.raises(flightsql.OperationalError, match="server preface"):
        count_orders(f"grpc://127.0.0.1:{tls_server.port}")


def test_untrusted_server_certificate_is_refused(tls_server: MeshFlightServer, certs: Certificates) -> None:
    with pytest.raises(flightsql.OperationalError, match="unknown authority"):
        count_orders(f"grpc+tls://127.0.0.1:{tls_server.port}")  # the system roots do not know the test CA
    with pytest.raises(flightsql.OperationalError, match="unknown authority"):
        count_orders(f"grpc+tls://127.0.0.1:{tls_server.port}", **{ROOT_CERTS: (certs.ca.parent / "rogue-ca.pem").read_text()})


def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server: MeshFlightServer, certs: Certificates) -> None:
    uri = f"grpc+tls://127.0.0.1:{mtls_server.port}"
    trusted = {ROOT_CERTS: certs.ca.read_text()}
    assert count_orders(uri, **trusted, **{CLIENT_CERT: certs.client_cert.read_text(), CLIENT_KEY: certs.client_key.read_text()}) > 0
    with pytest.raises(flightsql.OperationalError):
        count_orders(uri, **trusted)  # no client certificate
    with pytest.raises(flightsql.OperationalError):
        count_orders(uri, **trusted, **{CLIENT_CERT: certs.rogue_cert.read_text(), CLIENT_KEY: certs.rogue_key.read_text()})


def test_mutual_tls_with_passwords(live_mesh: LiveMesh, certs: Certificates, tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    add_user(users, "alice", "alice-pw", ["analyst"], {"region": "DE"})
    tls = TlsFiles(certs.server_cert, certs.server_key, certs.ca)
    with serve(live_mesh.service, "127.0.0.1", 0, authenticator=Authenticator(UsersFile(users)), tls=tls) as server:
        uri = f"grpc+tls://127.0.0.1:{server.port}"
        client = {ROOT_CERTS: certs.ca.read_text(), CLIENT_CERT: certs.client_cert.read_text(), CLIENT_KEY: certs.client_key.read_text()}
        assert count_orders(uri, **client, username="alice", password="alice-pw") > 0
        with pytest.raises(flightsql.ProgrammingError, match="authentication required"):
            count_orders(uri, **client)  # the certificate opens the channel, not the door


def test_meshgate_serve_with_tls_flags(live_mesh: LiveMesh, certs: Certificates, tmp_path: Path, free_port) -> None:  # noqa: ANN001
    command = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--registry", str(live_mesh.registry.path),
               "--insecure-no-auth"]
    half = subprocess.run([*command, "--port", "0", "--tls-cert", str(certs.server_cert)], capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port), "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
         "--tls-client-ca", str(certs.ca)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        process.stderr.readline()  # the authentication warning
        assert f"serving Flight SQL on grpc+tls://127.0.0.1:{port}" in process.stderr.readline()
        client = {ROOT_CERTS: certs.ca.read_text(), CLIENT_CERT: certs.client_cert.read_text(), CLIENT_KEY: certs.client_key.read_text()}
        assert count_orders(f"grpc+tls://127.0.0.1:{port}", **client) > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
