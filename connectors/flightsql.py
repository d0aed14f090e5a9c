"""Any remote Flight SQL server (another meshgate, or a PostgreSQL-dialect server), through the
ADBC Flight SQL driver.

``uri`` is ``grpc://host:port`` (``grpc+tls://`` for TLS); credentials may be given in it as
``grpc://user:password@host:port`` (the password through ``${ENV_VAR}``), and are sent by the
driver's basic-auth handshake rather than left in the URI. The remote speaks PostgreSQL's
dialect with PostgreSQL's semantics, so it can take any fragment. Cancel is ADBC's, which
cancels the running gRPC call.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

import adbc_driver_flightsql.dbapi

from connectors.base import AdbcConnector, Capabilities, uri_without_password


class FlightSQLConnector(AdbcConnector):
    kind: ClassVar[str] = "flightsql"
    dialect: ClassVar[str] = "postgres"
    capabilities: ClassVar[Capabilities] = Capabilities(
        joins=True, aggregates=True, full_sql=True, portable_filters_only=False
    )
    dbapi = adbc_driver_flightsql.dbapi

    @property
    def source_id(self) -> str:
        return f"flightsql:{uri_without_password(self.config.uri)}"

    def _driver_uri(self) -> str:
        parts = urlsplit(self.config.uri)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def _database_options(self) -> dict[str, str]:
        parts = urlsplit(self.config.uri)
        options: dict[str, str] = {}
        if parts.username is not None:
            options["username"] = unquote(parts.username)
        if parts.password is not None:
            options["password"] = unquote(parts.password)
        return options
