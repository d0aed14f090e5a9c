"""Client-compatibility results: each client test records what it tested and whether it passed.

    from tests.clients.compat import check

    with check("JDBC (flight-sql-jdbc-driver)", "18.3.0", "prepared statements, every type") as result:
        ...                         # the test's assertions
        result.note("getObject() on timestamptz fails in the driver; getTimestamp() works")

The block's outcome (pass, or fail with the exception's first line) goes to
``tests/.results/compat/<client>--<version>--<feature>.json`` (git-ignored); the exception still
propagates, so the test fails as usual.  ``scripts/compat-table`` renders these files as the
README's "Client compatibility" table.  A later run overwrites the file of the same client,
version and feature; ``scripts/compat-table --reset`` forgets them all (after renaming a feature).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

RESULTS_DIR = Path(__file__).resolve().parents[1] / ".results" / "compat"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80]


@dataclass
class Result:
    client: str
    version: str
    feature: str
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """A limitation or detail worth a footnote in the table (it does not make the check fail)."""
        if text not in self.notes:
            self.notes.append(text)


def _first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line[:300]


def record(result: Result, passed: bool, error: str | None = None) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    entry = {
        "client": result.client,
        "version": result.version,
        "feature": result.feature,
        "passed": passed,
        "error": error,
        "notes": result.notes,
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
        "python": sys.version.split()[0],
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = RESULTS_DIR / f"{_slug(result.client)}--{_slug(result.version)}--{_slug(result.feature)}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


@contextmanager
def check(client: str, version: str, feature: str) -> Iterator[Result]:
    """Record whether the block passes (see the module docstring); skips are not recorded."""
    result = Result(client, version, feature)
    try:
        yield result
    except BaseException as error:
        if type(error).__name__ in ("Skipped", "XFailed"):  # pytest.skip/xfail: not a result
            raise
        record(result, False, _first_line(error))
        raise
    record(result, True)
