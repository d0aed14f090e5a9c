"""Build (or find already built) the Java and Go client programs, via ``tests/clients/setup``."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"

JDBC_DRIVER_VERSIONS = tuple(os.environ.get("MESHGATE_JDBC_DRIVER_VERSIONS", "18.3.0 18.2.0").split())
"""The flight-sql-jdbc-driver releases tested; the same default as tests/clients/setup."""


@functools.cache
def build(target: str) -> Path:
    """Run ``tests/clients/setup TARGET`` (quick when nothing changed) and return its build folder.

    A failed build is a test failure, not a skip: CI must not pass without these clients."""
    result = subprocess.run(
        [str(HERE / "setup"), target], capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise RuntimeError(f"tests/clients/setup {target} failed:\n{result.stderr[-4000:]}")
    return BUILD / target


def jdbc_classpath(version: str) -> str:
    return (build("jdbc") / version / "classpath").read_text().strip()


def go_client() -> tuple[Path, str]:
    """The Go client binary and the arrow-go version it was built with."""
    folder = build("go")
    return folder / "meshgate-go-client", (folder / "version").read_text().strip()
