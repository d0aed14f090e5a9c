"""A query's result as an HTTP response: JSON or an Arrow IPC stream, chosen by ``Accept``,
streamed batch by batch so a large result is never held in the server's memory.

- ``application/vnd.apache.arrow.stream``: the Arrow IPC streaming format, one message per
  batch as the engine produces it; types exactly as over Flight SQL.
- ``application/json`` (also for ``*/*`` or no ``Accept``): ``{"columns": [...], "rows":
  [{...}], "metadata": {...}}``, written row batch by row batch. Dates and timestamps are ISO
  8601 strings, decimals JSON numbers, binary values base64, NaN and infinities ``null``; the
  Arrow stream is exact where JSON is not. Duplicate column names (``SELECT a.id, b.id``) get
  ``_2``, ``_3`` suffixes as row keys.

The result schema's metadata (``meshgate.cache``, ``meshgate.age_seconds``,
``meshgate.products``, and whatever ``meshgate.*`` keys the service adds) goes into response
headers (``X-Meshgate-Cache``, ``X-Meshgate-Age-Seconds``, ``X-Meshgate-Products``, ...) and, for
JSON, into the ``metadata`` object too, with ``rows_returned`` and ``execution_time_ms``.

The first batch is read before the response starts, so whatever fails while planning or while
the sources start answering (permission, unknown product, source down, timeout) is an HTTP
error status with a JSON body. A failure after the first bytes were sent can no longer change
the status: the server then cuts the response short (no final chunk), so no client mistakes a
partial result for a complete one; the audit log has the reason. A client that goes away
cancels the query at its sources.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import threading
import time
from typing import Any, AsyncIterator, Iterator

import orjson
import pyarrow as pa
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gateway.rest.app import ApiError
from gateway.types import sql_type_name

JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
MEDIA_TYPES = (JSON, ARROW_STREAM)
METADATA_PREFIX = "meshgate."


class ResultColumn(BaseModel):
    name: str = Field(description="the column's name (as PostgreSQL would name it)")
    type: str = Field(description="PostgreSQL type name, e.g. bigint, text, numeric(12,2), timestamptz")
    arrow_type: str = Field(description="the Arrow type the Arrow stream carries")
    nullable: bool


class ResultMetadata(BaseModel, extra="allow"):
    """The result schema's ``meshgate.*`` metadata without the prefix (also sent as
    ``X-Meshgate-*`` headers), and counts only known at the end of the stream."""

    cache: str | None = Field(None, description="result cache: hit, miss or bypass")
    age_seconds: float | None = Field(None, description="age of the answer (0 unless served from the cache)")
    products: list[str] = Field([], description="product versions the query read, as domain.product@version")
    rows_returned: int
    execution_time_ms: float = Field(description="from the request to the last row")


class QueryResult(BaseModel):
    """A query's answer as JSON."""

    columns: list[ResultColumn]
    rows: list[dict[str, Any]] = Field(description="one object per row, keyed by column name")
    metadata: ResultMetadata


RESULT_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "model": QueryResult,
        "description": f"the result, as `{JSON}` or as `{ARROW_STREAM}` (Arrow IPC stream) by `Accept`; "
                       "headers X-Meshgate-Cache, X-Meshgate-Age-Seconds, X-Meshgate-Products carry the result metadata",
        "content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}},
    }
}
"""The OpenAPI description of a query route's 200 answer."""


def negotiate(accept: str | None) -> str:
    """The media type to answer with for an ``Accept`` header (q-values honoured; none or
    ``*/*``: JSON); ApiError 406 when it names nothing we produce."""
    if accept is None or not accept.strip():
        return JSON
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        for offered in MEDIA_TYPES:
            if quality > 0 and (media == offered or media == "*/*" or media == offered.split("/")[0] + "/*"):
                specificity = 0 if media == offered else 1
                ranked.append((-quality, specificity * 100 + position, offered))
                break
    if not ranked:
        raise ApiError(406, "not acceptable", f"cannot answer with {accept!r}: results are {JSON} or {ARROW_STREAM}",
                       "Accept")
    return min(ranked)[2]


def result_headers(schema: pa.Schema) -> dict[str, str]:
    """``X-Meshgate-<Key>`` for every ``meshgate.<key>`` of the result schema's metadata."""
    headers = {}
    for key, value in (schema.metadata or {}).items():
        name = key.decode("utf-8", "replace")
        if name.startswith(METADATA_PREFIX):
            words = name[len(METADATA_PREFIX):].replace("_", "-").split("-")
            headers["X-Meshgate-" + "-".join(w.capitalize() for w in words)] = value.decode("latin-1")
    return headers


def result_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The ``meshgate.*`` schema metadata as JSON values (numbers as numbers, products a list)."""
    found: dict[str, Any] = {}
    for key, value in (schema.metadata or {}).items():
        name = key.decode("utf-8", "replace")
        if not name.startswith(METADATA_PREFIX):
            continue
        text = value.decode("utf-8", "replace")
        name = name[len(METADATA_PREFIX):]
        if name == "products":
            found[name] = [p for p in text.split(",") if p]
        else:
            try:
                found[name] = float(text) if "." in text or "e" in text.lower() else int(text)
            except ValueError:
                found[name] = text
    return found


def columns(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": sql_type_name(f.type), "arrow_type": str(f.type), "nullable": f.nullable}
            for f in schema]


def stream_result(reader: pa.RecordBatchReader, media_type: str, started: float, cancelled: threading.Event,
                  extra_metadata: dict[str, Any] | None = None) -> StreamingResponse:
    """The response for ``reader`` (call it from a worker thread: it reads the first batch)."""
    batches = iter(reader)
    try:
        first = next(batches, None)
    except BaseException:
        reader.close()
        raise
    if media_type == ARROW_STREAM:
        chunks = _arrow_chunks(reader.schema, first, batches)
    else:
        chunks = _json_chunks(reader.schema, first, batches, started, extra_metadata or {})
    return StreamingResponse(_streamed(chunks, reader, cancelled), media_type=media_type,
                             headers={**result_headers(reader.schema), "Cache-Control": "no-store"})


async def _streamed(chunks: Iterator[bytes], reader: pa.RecordBatchReader, cancelled: threading.Event) -> AsyncIterator[bytes]:
    """``chunks``, each produced in a worker thread; when the client goes away or the stream
    ends, the query is cancelled (if still running) and its reader closed, which frees its
    admission slot and completes its audit record."""
    lock = threading.Lock()  # close() must not run while a step is still reading

    def step() -> bytes | None:
        with lock:
            return next(chunks, None)

    def close() -> None:
        with lock:
            chunks.close()  # type: ignore[attr-defined]
            reader.close()

    try:
        while (chunk := await run_in_threadpool(step)) is not None:
            yield chunk
    finally:
        cancelled.set()
        await run_in_threadpool(close)


def _arrow_chunks(schema: pa.Schema, first: pa.RecordBatch | None, batches: Iterator[pa.RecordBatch]) -> Iterator[bytes]:
    sink = io.BytesIO()

    def taken() -> bytes:
        data = sink.getvalue()
        sink.seek(0)
        sink.truncate()
        return data

    with pa.ipc.new_stream(sink, schema) as writer:
        yield taken()  # the schema message: the client learns the columns at once
        for batch in _chain(first, batches):
            writer.write_batch(batch)
            yield taken()
    yield taken()  # the end-of-stream marker


def _json_chunks(schema: pa.Schema, first: pa.RecordBatch | None, batches: Iterator[pa.RecordBatch], started: float,
                 extra: dict[str, Any]) -> Iterator[bytes]:
    keys = _unique(schema.names)
    yield b'{"columns":' + orjson.dumps(columns(schema)) + b',"rows":['
    rows = 0
    for batch in _chain(first, batches):
        if not batch.num_rows:
            continue
        values = [column.to_pylist() for column in batch.columns]
        encoded = b",".join(orjson.dumps(dict(zip(keys, row)), default=_json_value) for row in zip(*values))
        yield (b"," if rows else b"") + encoded
        rows += batch.num_rows
    metadata = {**result_metadata(schema), **extra, "rows_returned": rows,
                "execution_time_ms": round((time.perf_counter() - started) * 1000, 3)}
    yield b'],"metadata":' + orjson.dumps(metadata) + b"}"


def _chain(first: pa.RecordBatch | None, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    if first is not None:
        yield first
        yield from rest


def _unique(names: list[str]) -> list[str]:
    """Row keys: the column names, a repeated one suffixed ``_2``, ``_3``..."""
    keys: list[str] = []
    for name in names:
        key, n = name, 1
        while key in keys:
            n += 1
            key = f"{name}_{n}"
        keys.append(key)
    return keys


def _json_value(value: Any) -> Any:
    """What orjson does not encode itself."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)

