"""Which host files a data product may read: the gateway's ``--source-root`` folders.

A descriptor names its data; for file sources (``sqlite``, ``duckdb``, ``parquet``) that name is
a path on the gateway's host. Without a fence, anyone allowed to publish could point the
gateway at its own users file, its registry or any file it can read. So a file source must
resolve (after ``..`` and symlinks) to a path under one of the roots, and never to one of the
gateway's own state files (registry, audit log, users file), even inside a root. The check runs
when a product is published and again whenever the gateway opens a source (fail closed: a
product registered under other roots is not opened). Parquet sources are additionally read by
a DuckDB whose file access is limited to the roots, so a ``query:`` cannot reach beyond them.

Default roots (no ``--source-root``): ``$MESHGATE_HOME`` (where ``meshgate demo`` puts its data)
plus the folders the operator named on the command line (``serve --products``, the
descriptors given to ``meshgate product ...``).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from connectors.base import SourceConfig
from gateway.descriptor import Descriptor
from gateway.errors import PermissionDenied
from gateway.home import meshgate_home

FILE_CONNECTORS = ("sqlite", "duckdb", "parquet")
_GLOB = set("*?[")


def state_files(registry: Path, audit_log: Path | None = None, users: Path | None = None) -> list[Path]:
    """The gateway's own files that no product may read: the registry (with its WAL), the audit
    log (with its rotated files) and the users file."""
    files = [registry, registry.with_name(registry.name + "-wal"), registry.with_name(registry.name + "-shm")]
    audit = audit_log or registry.parent / "audit.log"
    files += [audit, *audit.parent.glob(audit.name + ".*")]
    if users is not None:
        files.append(users)
    return files


@dataclass(frozen=True)
class SourceRoots:
    """Resolved root folders plus the forbidden state files; ``check`` a product against them."""

    roots: tuple[Path, ...]
    forbidden: frozenset[Path] = frozenset()

    @classmethod
    def of(cls, roots: Iterable[Path], forbidden: Iterable[Path] = ()) -> "SourceRoots":
        unique = dict.fromkeys(Path(r).expanduser().resolve() for r in roots)
        return cls(tuple(unique), frozenset(Path(f).expanduser().resolve() for f in forbidden))

    @classmethod
    def default(cls, forbidden: Iterable[Path] = ()) -> "SourceRoots":
        return cls.of([meshgate_home()], forbidden)

    def adding(self, roots: Iterable[Path] = (), forbidden: Iterable[Path] = ()) -> "SourceRoots":
        return SourceRoots.of([*self.roots, *roots], [*self.forbidden, *forbidden])

    def describe(self) -> str:
        return ", ".join(map(str, self.roots)) or "none"

    def problems(self, descriptor: Descriptor, uri: str | None = None) -> list[str]:
        """Why ``descriptor``'s source may not be read (empty when it may). ``uri`` is the source
        uri with ``${ENV}`` references substituted, when the caller has done that."""
        source = descriptor.source
        if source.connector not in FILE_CONNECTORS:
            return []
        config = SourceConfig(source.connector, uri if uri is not None else source.uri, descriptor.base_dir)
        raw = Path(config.uri)
        if not raw.is_absolute():
            raw = (config.base_dir or Path.cwd()) / raw
        parts = raw.parts
        static = next((i for i, part in enumerate(parts) if _GLOB & set(part)), len(parts))
        if ".." in parts[static:]:
            return [f"spec.source.uri: '{source.uri}' has '..' inside its glob; name the folder without it"]
        fixed = Path(*parts[:static]).resolve()
        paths = [fixed]
        if static < len(parts) or fixed.is_dir():  # every file a glob or a folder reads, after symlinks
            pattern = str(raw) if static < len(parts) else str(fixed / "**" / "*")
            paths += [Path(p).resolve() for p in glob.iglob(pattern, recursive=True)]
        problems = []
        for path in dict.fromkeys(paths):
            if path in self.forbidden:
                problems.append(f"spec.source.uri: '{source.uri}' is one of the gateway's own files ({path}); "
                                "a product can never read it")
            elif not any(path.is_relative_to(root) for root in self.roots):
                problems.append(f"spec.source.uri: '{source.uri}' resolves to {path}, outside the gateway's source roots "
                                f"({self.describe()}); move the data under a root or start the gateway with "
                                "--source-root FOLDER")
            if len(problems) >= 5:
                break
        return problems

    def check(self, descriptor: Descriptor, uri: str | None = None) -> None:
        """Raise PermissionDenied when ``problems`` finds any."""
        problems = self.problems(descriptor, uri)
        if problems:
            raise PermissionDenied(f"source of {descriptor.product_id} {descriptor.version} refused: " + "; ".join(problems))


def roots_of_paths(paths: Iterable[Path]) -> list[Path]:
    """The folders of descriptor files or folders named on a command line (default roots)."""
    return [p if p.is_dir() else p.parent for p in (Path(x).expanduser() for x in paths)]
