"""The data-product descriptor (``data-product.yaml``): parsing and validation.

The descriptor is the one source of truth for a product, so validation is strict: unknown keys
are errors, and every problem is reported at once with its path
(``spec.schema[2].type: unknown type 'strng'``) so an owner fixes a file in one round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import yaml

from gateway.errors import InvalidDescriptor
from gateway.types import ContractType, parse_duration, parse_type

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?$")
DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m|h|d)$")
CONNECTORS = ("postgres", "duckdb", "sqlite", "parquet", "flightsql", "mesh")
RESERVED_DOMAINS = ("mesh", "information_schema", "pg_catalog")
COMPATIBILITY = tuple(
    f"{mode}{suffix}" for mode in ("backward", "forward", "full") for suffix in ("", "_transitive")
) + ("none",)
MASKS = ("redact", "null", "hash", "email", "last4", "first4", "year_only", "custom")
SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Column:
    """One contract column; ``spec`` keeps the rest of the contract (enum, min, pattern...)."""

    name: str
    type: ContractType
    required: bool = False
    primary_key: bool = False
    description: str = ""
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """The output port the gateway reads; ``uri`` may still hold ``${ENV}`` references."""

    connector: str
    uri: str
    table: str | None
    query: str | None


DEFAULT_MONITOR_EVERY = 300.0
"""Seconds between the SLA monitor's checks of a product without ``sla.monitor_every``."""


@dataclass(frozen=True)
class Sla:
    """A product's ``spec.sla`` in numbers (seconds, percentages, a 0-1 score): what the cache,
    the watermarks and the SLA monitor read, parsed in one place."""

    freshness: float | None = None
    freshness_column: str | None = None
    availability: float | None = None  # percent of probes that must succeed
    completeness: float | None = None  # percent of the previous check's rows
    quality_threshold: float | None = None  # lowest acceptable quality score, 0-1
    monitor_every: float = DEFAULT_MONITOR_EVERY
    stale_while_revalidate: float = 0.0

    @classmethod
    def of(cls, sla: dict[str, Any]) -> Sla:
        """From a validated ``spec.sla`` mapping (missing keys: the defaults)."""
        return cls(
            freshness=parse_duration(sla.get("freshness")),
            freshness_column=sla.get("freshness_column"),
            availability=_number(sla.get("availability")),
            completeness=_number(sla.get("completeness")),
            quality_threshold=_number(sla.get("quality_threshold")),
            monitor_every=parse_duration(sla.get("monitor_every")) or DEFAULT_MONITOR_EVERY,
            stale_while_revalidate=parse_duration(sla.get("stale_while_revalidate")) or 0.0,
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Descriptor:
    """A validated data product version."""

    domain: str
    name: str
    version: str
    owner: str
    tags: tuple[str, ...]
    description: str
    source: Source
    columns: tuple[Column, ...]
    raw: dict[str, Any]
    base_dir: Path | None = None

    @property
    def product_id(self) -> str:
        return f"{self.domain}.{self.name}"

    @property
    def major(self) -> int:
        return int(SEMVER.match(self.version).group(1))  # type: ignore[union-attr]

    @property
    def version_key(self) -> tuple[int, int, int]:
        """Numeric ordering of versions (``1.10.0`` after ``1.9.0``)."""
        match = SEMVER.match(self.version)
        assert match
        return int(match.group(1)), int(match.group(2)), int(match.group(3))

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @cached_property
    def sla(self) -> Sla:
        """``spec.sla`` parsed once per version (the cache reads it on every query)."""
        sla = self.raw.get("spec", {}).get("sla")
        return Sla.of(sla if isinstance(sla, dict) else {})

    @property
    def derived(self) -> bool:
        """A view over other products (``source.connector: mesh``): no source of its own."""
        return self.source.connector == "mesh"


# --- a small structural validator -------------------------------------------------------------
# Each spec maps a key to (required, check). A check gets (value, path, problems) and appends
# "path: message" strings; nested dicts are validated by `_object`, lists by `_list_of`.

Check = Callable[[Any, str, list[str]], None]


def _object(spec: dict[str, tuple[bool, Check]]) -> Check:
    def check(value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_kind(value)}")
            return
        for key in value:
            if key not in spec:
                problems.append(f"{_join(path, key)}: unknown key (allowed: {', '.join(spec)})")
        for key, (required, sub) in spec.items():
            if key in value:
                sub(value[key], _join(path, key), problems)
            elif required:
                problems.append(f"{_join(path, key)}: required")

    return check


def _list_of(item: Check, min_items: int = 0) -> Check:
    def check(value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_kind(value)}")
            return
        if len(value) < min_items:
            problems.append(f"{path}: needs at least {min_items} item(s)")
        for i, element in enumerate(value):
            item(element, f"{path}[{i}]", problems)

    return check


def _typed(*types: type, pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = (), what: str = "") -> Check:
    def check(value: Any, path: str, problems: list[str]) -> None:
        if isinstance(value, bool) and bool not in types:
            problems.append(f"{path}: expected {what or _names(types)}, got a boolean")
        elif not isinstance(value, types):
            problems.append(f"{path}: expected {what or _names(types)}, got {_kind(value)}")
        elif choices and value not in choices:
            problems.append(f"{path}: '{value}' is not one of {', '.join(choices)}")
        elif pattern is not None and not pattern.match(str(value)):
            problems.append(f"{path}: '{value}' is not {what or 'valid'}")

    return check


def _column_type(value: Any, path: str, problems: list[str]) -> None:
    try:
        parse_type(value)
    except ValueError as err:
        problems.append(f"{path}: {err}")


def _sql_text(value: Any, path: str, problems: list[str]) -> None:
    """A SQL snippet must at least parse (PostgreSQL dialect) so it fails here, not at query time."""
    import sqlglot
    from sqlglot.errors import ParseError

    if not isinstance(value, str) or not value.strip():
        problems.append(f"{path}: expected SQL text")
        return
    try:
        sqlglot.parse_one(value, read="postgres")
    except ParseError as err:
        problems.append(f"{path}: does not parse: {str(err).splitlines()[0]}")


_STR = _typed(str)
_BOOL = _typed(bool)
_NUM = _typed(int, float, what="a number")
_STR_LIST = _list_of(_STR)
_DURATION = _typed(str, pattern=DURATION, what="a duration like 30s, 5m, 1h or 1d")
_CONDITIONS = _typed(dict, what="a mapping of attribute to value")

CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
_BOUND = _typed(int, float, str, what="a number, or an ISO date or timestamp in quotes")

_COLUMN = _object(
    {
        "name": (True, _typed(str, pattern=NAME, what="a lower-case name matching [a-z][a-z0-9_]*")),
        "type": (True, _column_type),
        "required": (False, _BOOL),
        "primary_key": (False, _BOOL),
        "unique": (False, _BOOL),
        "description": (False, _STR),
        "pii": (False, _BOOL),
        "classification": (False, _typed(str, choices=CLASSIFICATIONS)),
        "pattern": (False, _STR),
        "enum": (False, _list_of(_typed(str, int, float, what="a scalar"), min_items=1)),
        "min": (False, _BOUND),
        "max": (False, _BOUND),
        "references": (False, _typed(str, pattern=re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"),
                                     what="a column of another product, domain.product.column")),
        "tags": (False, _STR_LIST),
    }
)


def _column_constraints(column: dict[str, Any], path: str, problems: list[str]) -> None:
    """Constraints that must fit the column's type and each other: an enum of the column's
    values (never on a boolean), min/max on numbers and dates only and min <= max, a pattern
    only on strings and a valid regular expression. Without these a contract could promise
    what no check can verify, and its quality gates would fail with a SQL error instead."""
    try:
        family = parse_type(column.get("type")).family
    except ValueError:
        return  # reported by the structural check
    kind = f"{'an' if str(column['type'])[0] in 'aeiou' else 'a'} {column['type']} column"
    enum = column.get("enum")
    if isinstance(enum, list):
        if family not in ("string", "integer", "number"):
            problems.append(f"{path}.enum: not supported on {kind} (only on string and numeric columns)")
        else:
            for i, value in enumerate(enum):
                if not _fits(value, family):
                    problems.append(f"{path}.enum[{i}]: {value!r} is not a value of {kind}")
            for i, value in enumerate(enum):
                if value in enum[:i]:
                    problems.append(f"{path}.enum[{i}]: duplicate value {value!r}")
    bounds = {}
    for key in ("min", "max"):
        if key not in column or isinstance(column[key], bool):
            continue
        value = column[key]
        if family not in ("integer", "number", "date", "timestamp"):
            problems.append(f"{path}.{key}: not supported on {kind} (only on numbers, dates and timestamps; "
                            "use pattern or enum for strings)")
        elif not _fits(value, family):
            want = "a number" if family in ("integer", "number") else f"an ISO {family} like 2024-01-31"
            problems.append(f"{path}.{key}: {value!r} is not a value of {kind} (expected {want})")
        else:
            bounds[key] = _ordered(value, family)
    if len(bounds) == 2 and bounds["min"] > bounds["max"]:
        problems.append(f"{path}: min ({column['min']!r}) is greater than max ({column['max']!r}); no value can pass")
    pattern = column.get("pattern")
    if isinstance(pattern, str):
        if family != "string":
            problems.append(f"{path}.pattern: not supported on {kind} (only on string columns)")
        try:
            re.compile(pattern)
        except re.error as err:
            problems.append(f"{path}.pattern: not a valid regular expression: {err}")
    if column.get("primary_key") is True and column.get("required") is False:
        problems.append(f"{path}.required: a primary key column is always required; remove 'required: false'")
    tags = column.get("tags")
    if isinstance(tags, list) and any(isinstance(t, str) and t.lower() == "pii" for t in tags):
        problems.append(f"{path}.tags: write 'pii: true' instead of a 'pii' tag (governance reads pii)")


def _fits(value: Any, family: str) -> bool:
    """Is ``value`` (from YAML) a value of a column of ``family``?"""
    if isinstance(value, bool):
        return False
    if family == "string":
        return isinstance(value, str)
    if family == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if family == "number":
        return isinstance(value, (int, float))
    if family in ("date", "timestamp") and isinstance(value, str):
        try:
            (date.fromisoformat if family == "date" else datetime.fromisoformat)(value)
        except ValueError:
            return False
        return True
    return False


def _ordered(value: Any, family: str) -> Any:
    """``value`` in a form that orders as the column's values do (dates as dates, not text)."""
    if family == "date":
        return date.fromisoformat(value)
    if family == "timestamp":
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo is None else parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return value

_SPEC = _object(
    {
        "source": (
            True,
            _object(
                {
                    "connector": (True, _typed(str, choices=CONNECTORS)),
                    "uri": (False, _STR),
                    "table": (False, _STR),
                    "query": (False, _sql_text),
                }
            ),
        ),
        "schema": (False, _list_of(_COLUMN, min_items=1)),
        "contract_ref": (False, _STR),
        "compatibility": (False, _typed(str, choices=COMPATIBILITY)),
        "deprecation": (False, _object({"notice_days": (False, _typed(int, what="a whole number of days"))})),
        "sla": (
            False,
            _object(
                {
                    "freshness": (False, _DURATION),
                    "freshness_column": (False, _typed(str, pattern=NAME, what="a column name")),
                    "availability": (False, _NUM),
                    "completeness": (False, _NUM),
                    "stale_while_revalidate": (False, _DURATION),
                    "monitor_every": (False, _DURATION),
                    "quality_threshold": (False, _NUM),
                }
            ),
        ),
        "quality": (
            False,
            _list_of(
                _object(
                    {
                        "name": (True, _typed(str, pattern=NAME, what="a rule name")),
                        "rule": (True, _sql_text),
                        "severity": (False, _typed(str, choices=SEVERITIES)),
                        "description": (False, _STR),
                    }
                )
            ),
        ),
        "policies": (
            False,
            _object(
                {
                    "access": (
                        False,
                        _list_of(_object({"allow_roles": (False, _STR_LIST), "require": (False, _CONDITIONS)})),
                    ),
                    "masks": (
                        False,
                        _list_of(
                            _object(
                                {
                                    "column": (True, _STR),
                                    "mask": (True, _typed(str, choices=MASKS)),
                                    "expression": (False, _sql_text),
                                    "unless": (False, _CONDITIONS),
                                    "unless_roles": (False, _STR_LIST),
                                }
                            )
                        ),
                    ),
                    "row_filters": (
                        False,
                        _list_of(
                            _object(
                                {
                                    "filter": (True, _STR),
                                    "unless": (False, _CONDITIONS),
                                    "unless_roles": (False, _STR_LIST),
                                }
                            )
                        ),
                    ),
                    "min_group_size": (False, _typed(int, what="a whole number")),
                }
            ),
        ),
        "input_ports": (
            False,
            _list_of(_object({"product": (True, _STR), "version": (False, _STR)})),
        ),
    }
)

_DESCRIPTOR = _object(
    {
        "apiVersion": (True, _typed(str, choices=("datamesh.io/v1",))),
        "kind": (True, _typed(str, choices=("DataProduct",))),
        "metadata": (
            True,
            _object(
                {
                    "name": (True, _typed(str, pattern=NAME, what="a name matching [a-z][a-z0-9_]*")),
                    "domain": (True, _typed(str, pattern=NAME, what="a domain matching [a-z][a-z0-9_]*")),
                    "owner": (True, _STR),
                    "version": (True, _typed(str, pattern=SEMVER, what="a semantic version like 1.2.0")),
                    "tags": (False, _STR_LIST),
                    "description": (False, _STR),
                }
            ),
        ),
        "spec": (True, _SPEC),
    }
)


def _semantic_checks(doc: dict[str, Any], problems: list[str]) -> None:
    """Rules that span fields: names unique, the source complete, columns referenced exist."""
    meta, spec = doc.get("metadata", {}), doc.get("spec", {})
    if isinstance(meta, dict) and meta.get("domain") in RESERVED_DOMAINS:
        problems.append(f"metadata.domain: '{meta['domain']}' is reserved for system products")
    if not isinstance(spec, dict):
        return
    if "schema" in spec and "contract_ref" in spec:
        problems.append("spec: give either schema (inline) or contract_ref (an ODCS file), not both")
    elif "schema" not in spec and "contract_ref" not in spec:
        problems.append("spec.schema: required (or give contract_ref: an ODCS contract file)")
    columns = spec.get("schema") if isinstance(spec.get("schema"), list) else []
    names = [c.get("name") for c in columns if isinstance(c, dict)]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(f"spec.schema[{i}].name: duplicate column '{name}'")
    for i, column in enumerate(columns):
        if isinstance(column, dict):
            _column_constraints(column, f"spec.schema[{i}]", problems)
    rules = spec.get("quality") if isinstance(spec.get("quality"), list) else []
    rule_names = [r.get("name") for r in rules if isinstance(r, dict)]
    for i, name in enumerate(rule_names):
        if name in rule_names[:i]:
            problems.append(f"spec.quality[{i}].name: duplicate rule '{name}'")
    source = spec.get("source")
    if isinstance(source, dict) and isinstance(source.get("connector"), str):
        kind = source["connector"]
        has_table, has_query = "table" in source, "query" in source
        if kind == "mesh":
            if not has_query:
                problems.append("spec.source.query: required for connector 'mesh' (a view over other products)")
        elif "uri" not in source:
            problems.append("spec.source.uri: required")
        if has_table and has_query:
            problems.append("spec.source: give either table or query, not both")
        if kind in ("postgres", "duckdb", "sqlite", "flightsql") and not (has_table or has_query):
            problems.append(f"spec.source.table: required for connector '{kind}' (or give query)")
        uri = source.get("uri")
        if isinstance(uri, str) and re.search(r"://[^/@:]+:[^/@$]+@", uri) and "${" not in uri.split("@")[0]:
            problems.append("spec.source.uri: contains an inline password; use ${ENV_VAR} instead")
    sla = spec.get("sla")
    if isinstance(sla, dict) and isinstance(sla.get("freshness_column"), str) and sla["freshness_column"] not in names:
        problems.append(f"spec.sla.freshness_column: no column '{sla['freshness_column']}' in spec.schema")
    if isinstance(sla, dict):  # the SLA monitor's targets: percentages, and a score between 0 and 1
        for key, top, unit in (("availability", 100, "a percentage"), ("completeness", 100, "a percentage"),
                               ("quality_threshold", 1, "a score")):
            value = sla.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= top:
                problems.append(f"spec.sla.{key}: {value} is not between 0 and {top} ({unit})")
    policies = spec.get("policies")
    if isinstance(policies, dict) and isinstance(policies.get("masks"), list):
        for i, mask in enumerate(policies["masks"]):
            if isinstance(mask, dict) and isinstance(mask.get("column"), str) and mask["column"] not in names:
                problems.append(f"spec.policies.masks[{i}].column: no column '{mask['column']}' in spec.schema")


def validate(doc: Any, source: str = "<descriptor>", base_dir: Path | None = None) -> Descriptor:
    """Validate a parsed descriptor document; raise ``InvalidDescriptor`` listing every problem.

    A ``spec.contract_ref`` is resolved first: the ODCS file's schema (and quality rules) become
    the descriptor's ``spec.schema`` (and are appended to its ``spec.quality``), so the
    validated ``raw`` document is self-contained (the registry stores it; a later edit of the
    ODCS file changes nothing until the product is registered again). Problems in what came
    from the ODCS file are reported at their place in that file."""
    problems: list[str] = []
    located: Callable[[str], str] = lambda problem: problem  # noqa: E731
    spec = doc.get("spec") if isinstance(doc, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("contract_ref"), str) and "schema" not in spec:
        from gateway.odcs import resolve_contract_ref

        doc, located, ref_problems = resolve_contract_ref(doc, base_dir)
        problems.extend(ref_problems)
    _DESCRIPTOR(doc, "", problems)
    if isinstance(doc, dict):
        _semantic_checks(doc, problems)
    if problems:
        raise InvalidDescriptor(source, [located(p) for p in problems])
    meta, spec = doc["metadata"], doc["spec"]
    src = spec["source"]
    columns = tuple(
        Column(
            name=c["name"],
            type=parse_type(c["type"]),
            required=bool(c.get("required", False)),
            primary_key=bool(c.get("primary_key", False)),
            description=c.get("description", ""),
            spec={k: v for k, v in c.items() if k not in ("name", "type", "required", "primary_key", "description")},
        )
        for c in spec["schema"]
    )
    return Descriptor(
        domain=meta["domain"],
        name=meta["name"],
        version=meta["version"],
        owner=meta["owner"],
        tags=tuple(meta.get("tags", ())),
        description=meta.get("description", ""),
        source=Source(src["connector"], src.get("uri", ""), src.get("table"), src.get("query")),
        columns=columns,
        raw=doc,
        base_dir=base_dir,
    )


class _YamlLoader(yaml.SafeLoader):
    """YAML without implicit timestamps: an unquoted ``2024-01-31`` stays the text it is, as a
    contract bound or an ODCS field is meant (and as JSON, which the registry stores, can hold)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """Parse descriptor or contract YAML (safe, dates kept as text); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def load_file(path: Path) -> Descriptor:
    """Read and validate one YAML file; YAML syntax errors are reported with their line."""
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InvalidDescriptor(str(path), [f"not valid YAML: {err}"]) from err
    except OSError as err:
        raise InvalidDescriptor(str(path), [f"cannot read: {err.strerror}"]) from err
    return validate(doc, str(path), path.parent.resolve())


def find_descriptor_files(paths: list[Path]) -> list[Path]:
    """Files named on the command line, and every ``*.yaml``/``*.yml`` below named folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            found.append(path)
    return found


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _names(types: tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", int: "a whole number", float: "a number", dict: "a mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types)
