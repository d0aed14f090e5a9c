"""The Arrow Flight SQL front door: protocol translation only, no SQL logic.

``server.MeshFlightServer`` decodes Flight SQL requests and calls ``gateway.service``;
``sql_info`` holds what the server reports about its dialect; ``FlightSql_pb2`` is generated
from ``FlightSql.proto`` by ``regenerate.sh``.
"""

from gateway.flight.server import MeshFlightServer, serve

__all__ = ["MeshFlightServer", "serve"]
