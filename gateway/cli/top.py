"""``meshgate top``: a live terminal view of a running gateway's queries, over its REST API.

Every second it asks ``GET /api/v1/queries`` for the newest queries (the caller's own, or every
principal's for role ``admin``) and shows the running ones with their elapsed time, the most
recent ones, and per product over the last ``--window`` seconds: queries, rate, p50 latency,
cache hit ratio and errors. ``q`` or Ctrl-C quits; ``--once`` prints one frame and exits.
``--audit-log FILE`` shows the same frame from an audit log, with no gateway needed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import statistics
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gateway.cli.common import DEFAULT_HTTP_PORT, stderr, stdout

FETCH_LIMIT = 1000
STATUS_STYLE = {"ok": "green", "running": "cyan", "error": "red", "denied": "magenta", "cancelled": "yellow"}


class TopError(Exception):
    """The gateway could not be asked; ``code`` is the exit code (1 failure, 2 bad input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_commands(commands: argparse._SubParsersAction) -> None:
    top = commands.add_parser("top", help="live view of a gateway's running and recent queries (q quits)")
    top.add_argument("--server", default=f"http://127.0.0.1:{DEFAULT_HTTP_PORT}",
                     help=f"the gateway's REST address (default http://127.0.0.1:{DEFAULT_HTTP_PORT})")
    top.add_argument("--user", help="log in as this user; the password is read from $MESHGATE_PASSWORD")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=_positive, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--window", type=_positive, default=60.0, help="seconds the per-product figures cover (default 60)")
    top.add_argument("--recent", type=_count, default=None,
                     help="recent queries shown (default: as many as the terminal has room for; 15 with --once)")
    top.add_argument("--audit-log", type=Path, default=None,
                     help="show the queries of this audit log instead of asking a gateway (prints one frame)")
    top.set_defaults(handler=cmd_top)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of seconds")
    return value


@dataclass(frozen=True)
class Snapshot:
    """What one frame shows: the queries (newest first, as ``/api/v1/queries`` returns them)."""

    source: str
    queries: list[dict[str, Any]]
    now: datetime  # the gateway's clock when it answered
    principal: str | None  # whose queries; None: every principal's


def cmd_top(args: argparse.Namespace) -> int:
    try:
        fetch = _audit_fetcher(args.audit_log) if args.audit_log else _rest_fetcher(args.server, args.user)
        if args.once or args.audit_log:
            stdout.print(render(fetch(), args.window, args.recent or 15))
            return 0
        return _live(fetch, args)
    except TopError as err:
        stderr.print(f"[red]error:[/red] {err}", highlight=False)
        return err.code


def _rest_fetcher(server: str, user: str | None) -> Callable[[], Snapshot]:
    headers = {"Accept": "application/json"}
    if user:
        password = os.environ.get("MESHGATE_PASSWORD")
        if not password:
            raise TopError("--user needs the password in the MESHGATE_PASSWORD environment variable", 2)
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if not server.startswith(("http://", "https://")):
        raise TopError(f"--server {server!r}: give the REST address, e.g. http://127.0.0.1:{DEFAULT_HTTP_PORT}", 2)
    url = server.rstrip("/") + "/api/v1/queries?" + urllib.parse.urlencode({"limit": FETCH_LIMIT})

    def fetch() -> Snapshot:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read()).get("detail", err.reason)
            except ValueError:
                detail = err.reason
            raise TopError(f"{server} answered {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TopError(f"cannot reach the gateway's REST API at {server}: {reason}") from None
        now = _parse_time(body.get("generated")) or datetime.now(timezone.utc)
        return Snapshot(server, body.get("queries", []), now, body.get("principal"))

    return fetch


def _audit_fetcher(path: Path) -> Callable[[], Snapshot]:
    from gateway.query_history import QueryHistory

    if not path.exists():
        raise TopError(f"--audit-log {path}: no such file", 2)

    def fetch() -> Snapshot:
        entries = QueryHistory.from_audit(path).entries(limit=FETCH_LIMIT)
        return Snapshot(str(path), [e.as_dict() for e in entries], datetime.now(timezone.utc), None)

    return fetch


def _live(fetch: Callable[[], Snapshot], args: argparse.Namespace) -> int:
    """Refresh every ``--interval`` seconds until q, Ctrl-C or end of input; a failed refresh is
    shown in the frame and retried."""
    from rich.live import Live

    def frame() -> RenderableType:
        try:
            return render(fetch(), args.window, args.recent, stdout.size.height)
        except TopError as err:
            return Text(f"meshgate top: {err} (retrying every {args.interval:g} s; q quits)", style="red")

    try:
        with _KeyReader() as pressed, Live(frame(), console=stdout, screen=True, auto_refresh=False) as live:
            while True:
                if "q" in pressed(args.interval).lower():
                    return 0
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return 0


class _KeyReader:
    """Keys typed while waiting (cbreak mode on a terminal, so no Enter is needed)."""

    def __enter__(self) -> Callable[[float], str]:
        self._fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        self._saved = None
        if self._fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        return self._wait

    def _wait(self, seconds: float) -> str:
        if self._fd is None:
            time.sleep(seconds)
            return ""
        ready, _, _ = select.select([self._fd], [], [], seconds)
        return os.read(self._fd, 64).decode(errors="replace") if ready else ""

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


# --- one frame ----------------------------------------------------------------------------------


def render(snapshot: Snapshot, window: float = 60.0, recent: int | None = 15, height: int | None = None) -> RenderableType:
    """The frame: a header, running queries, per-product figures, recent queries (``recent`` of
    them; None: as many as fit in ``height`` lines below the rest)."""
    running = [q for q in snapshot.queries if q.get("status") == "running"]
    finished = [q for q in snapshot.queries if q.get("status") != "running"]
    since = snapshot.now - timedelta(seconds=window)
    in_window = [q for q in finished if (_parse_time(q.get("started")) or snapshot.now) >= since]
    if recent is None:  # three tables of title, header and borders (5 lines each), two header lines
        products = len(product_stats(in_window, window))
        recent = max(3, (height or 40) - 17 - max(1, len(running)) - max(1, products))
    whose = f"queries of {snapshot.principal}" if snapshot.principal else "every principal's queries"
    header = Text.assemble(
        ("meshgate top", "bold"), f"  {snapshot.source}  ", (whose, "dim"),
        f"  {snapshot.now.astimezone().strftime('%H:%M:%S')}  ",
        (f"{len(running)} running", "cyan"), f", {len(in_window)} finished in the last {window:g} s"
        f" ({len(in_window) / window:.2f}/s)  ", ("q quits", "dim"),
    )
    return Group(header, _running_table(running, snapshot.now), _products_table(in_window, window),
                 _recent_table(finished[:recent]))


def _running_table(queries: list[dict[str, Any]], now: datetime) -> Table:
    table = Table(title=f"Running ({len(queries)})", title_justify="left", expand=True)
    for name, kwargs in (("id", {}), ("principal", {}), ("elapsed", {"justify": "right"}), ("products", {"max_width": 36}),
                         ("fragments", {"justify": "right"}), ("sql", {"ratio": 1})):
        table.add_column(name, no_wrap=True, overflow="ellipsis", **kwargs)
    for q in sorted(queries, key=lambda q: q.get("duration_ms") or 0, reverse=True):
        table.add_row(q["id"][:8], q.get("principal") or "", _duration(q.get("duration_ms")), _products(q),
                      str(len(q.get("fragments") or ())), _one_line(q.get("sql")))
    if not queries:
        table.add_row("", "", "", "", "", Text("nothing running", style="dim"))
    return table


def _products_table(queries: list[dict[str, Any]], window: float) -> Table:
    table = Table(title=f"Per product, last {window:g} s", title_justify="left", expand=True)
    table.add_column("product", no_wrap=True, ratio=1)
    for name in ("queries", "rate/s", "p50 ms", "cache hits", "errors"):
        table.add_column(name, justify="right", no_wrap=True)
    stats = product_stats(queries, window)
    for product, figures in stats.items():
        ratio = figures["cache_hit_ratio"]
        table.add_row(product, str(figures["queries"]), f"{figures['rate']:.2f}", _number(figures["p50_ms"]),
                      "-" if ratio is None else f"{ratio:.0%}", str(figures["errors"]))
    if not stats:
        table.add_row(Text("no queries of products in this window", style="dim"), "", "", "", "", "")
    return table


def product_stats(queries: list[dict[str, Any]], window: float) -> dict[str, dict[str, Any]]:
    """Per product read (``domain.product``): finished queries, rate per second over ``window``,
    median duration, cache hit ratio (answers from the cache, stale ones included, among those
    and misses; None when none was cacheable)
    and errors, busiest product first."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for q in queries:
        for pid in sorted({p["id"] for p in q.get("products") or ()}):
            grouped.setdefault(pid, []).append(q)
    stats = {}
    for pid, group in grouped.items():
        durations = [q["duration_ms"] for q in group if q.get("status") == "ok" and q.get("duration_ms") is not None]
        caches = [(q.get("cache") or {}).get("status") for q in group]
        cacheable = [c for c in caches if c in ("hit", "stale", "miss")]
        stats[pid] = {
            "queries": len(group),
            "rate": len(group) / window,
            "p50_ms": statistics.median(durations) if durations else None,
            "cache_hit_ratio": (len(cacheable) - cacheable.count("miss")) / len(cacheable) if cacheable else None,
            "errors": sum(q.get("status") in ("error", "cancelled") for q in group),
        }
    return dict(sorted(stats.items(), key=lambda item: (-item[1]["queries"], item[0])))


def _recent_table(queries: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Recent ({len(queries)})", title_justify="left", expand=True)
    # the short columns keep their width (a time, a status, a number); products and sql give way
    for name, kwargs in (("finished", {"min_width": 8}), ("principal", {"min_width": 5}), ("status", {"min_width": 6}),
                         ("ms", {"justify": "right", "min_width": 7}), ("rows", {"justify": "right", "min_width": 5}),
                         ("bytes", {"justify": "right", "min_width": 9}), ("cache", {"min_width": 6}),
                         ("products", {"max_width": 36, "ratio": 1}), ("sql", {"ratio": 1})):
        table.add_column(name, no_wrap=True, overflow="ellipsis", **kwargs)
    for q in queries:
        status = q.get("status") or ""
        moment = _parse_time(q.get("finished") or q.get("started"))
        cache = q.get("cache") or {}
        table.add_row(
            moment.astimezone().strftime("%H:%M:%S") if moment else "",
            q.get("principal") or "",
            Text(status, style=STATUS_STYLE.get(status, "")),
            _number(q.get("duration_ms")),
            "" if q.get("rows") is None else str(q["rows"]),
            _bytes(q.get("bytes")),
            cache.get("status") or "",
            _products(q),
            Text(_one_line(q.get("error") if status in ("error", "denied") else q.get("sql")),
                 style="red" if status in ("error", "denied") else ""),
        )
    if not queries:
        table.add_row("", "", "", "", "", "", "", "", Text("no queries yet", style="dim"))
    return table


def _products(query: dict[str, Any]) -> str:
    return ", ".join(p["id"] for p in query.get("products") or ()) or "-"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def _duration(ms: float | None) -> str:
    if ms is None:
        return ""
    seconds = ms / 1000
    return f"{ms:,.0f} ms" if seconds < 1 else f"{seconds:,.1f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"


def _bytes(value: int | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return ""


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
