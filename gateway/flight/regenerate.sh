#!/usr/bin/env bash
# Regenerate FlightSql_pb2.py from FlightSql.proto. Needs grpcio-tools (the `test` extra); the
# generated module needs protobuf at least as new as the protoc inside grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")"
python -m grpc_tools.protoc --proto_path=. --python_out=. FlightSql.proto
{
  echo "# Generated from FlightSql.proto by grpcio-tools ($(python -m grpc_tools.protoc --version)): do not edit."
  echo "# Regenerate with gateway/flight/regenerate.sh after changing the .proto."
  cat FlightSql_pb2.py
} >FlightSql_pb2.py.new
mv FlightSql_pb2.py.new FlightSql_pb2.py
