"""Contracts as Open Data Contract Standard (ODCS, bitol-io) documents: import and export.

A descriptor may name an ODCS file instead of an inline schema (``spec.contract_ref:
contracts/orders.odcs.yaml``, relative to the descriptor's folder; ``file#object`` picks one
of several schema objects). ``resolve_contract_ref`` turns that file into the descriptor's own
``spec.schema`` and ``spec.quality`` before validation, so the rest of the gateway (registry,
compatibility, quality gates, policies) sees one contract format. ``export`` writes the other
way: a descriptor as an ODCS document.

The ``open-data-contract-standard`` package is the model: it ships the ODCS JSON schema, which
validates every imported file (errors name the file and the path inside it) and every export,
and its pydantic model writes the export. We write the ``apiVersion`` that schema defaults to,
so what we write is exactly what the package validates.

What maps (ODCS -> descriptor column):
``name``; ``physicalType`` (any SQL type: ``bigint``, ``numeric(12,2)``, ``varchar(20)``...) or
else ``logicalType`` (+ ``logicalTypeOptions.format``/``timezone``) -> ``type``; ``required``;
``primaryKey`` (ordered by ``primaryKeyPosition``); ``unique``; ``description``;
``classification``; ``tags`` (a ``pii`` tag -> ``pii: true``); ``enum`` values;
``logicalTypeOptions`` ``pattern``/``minimum``/``maximum`` (and ``exclusiveMinimum``,
``exclusiveMaximum``, ``minLength``, ``maxLength`` as error rules); ``relationships`` ``to:
domain.product.column`` -> ``references``. Quality: ``sql`` checks of the form ``SELECT
count(*) FROM ${object} WHERE <condition>`` that must be 0, and the library metrics
``nullValues``, ``missingValues``, ``invalidValues`` (``validValues``/``pattern``) and
``duplicateValues`` (per property) that must be 0. A check that cannot become a meshgate gate
(``custom``, ``rowCount``, other thresholds) is an error rather than silently dropped: a
consumer would believe it is enforced. ``text`` checks are documentation and are skipped.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import sqlglot
import yaml
from sqlglot import exp

from gateway.descriptor import DURATION, Descriptor, load_yaml
from gateway.types import parse_type
from policies.loader import dotted_path

_LOGICAL = {  # ODCS logicalType -> contract type, refined by logicalTypeOptions below
    "string": "string", "integer": "int64", "number": "double", "boolean": "boolean", "date": "date",
    "timestamp": "timestamp",
}
_INT_FORMATS = {"i8": "int32", "i16": "int32", "i32": "int32", "u8": "int32", "u16": "int32", "i64": "int64", "u32": "int64"}
_FAMILY_OF_LOGICAL = {"string": ("string", "binary"), "integer": ("integer",), "number": ("number", "integer"),
                      "boolean": ("boolean",), "date": ("date",), "timestamp": ("timestamp",)}
_SQL_TYPES = {  # sqlglot type -> contract type, for physicalType
    "TEXT": "string", "VARCHAR": "string", "CHAR": "string", "NVARCHAR": "string", "NCHAR": "string",
    "UUID": "string", "BOOLEAN": "boolean", "TINYINT": "int32", "SMALLINT": "int32", "INT": "int32",
    "MEDIUMINT": "int32", "BIGINT": "int64", "FLOAT": "float", "DOUBLE": "double", "DATE": "date",
    "TIMESTAMP": "timestamp", "DATETIME": "timestamp", "TIMESTAMPTZ": "timestamptz", "BINARY": "binary",
    "VARBINARY": "binary", "BLOB": "binary",
}
_SEVERITY = {"error": "error", "warning": "warning", "warn": "warning", "info": "warning"}
_TYPE_KEYS = ("format", "timezone", "defaultTimezone")
_BOUND_KEYS = {"minimum": "min", "maximum": "max"}
_RULE_OPTIONS = {  # logicalTypeOptions that become error rules: option -> predicate template
    "exclusiveMinimum": "{col} > {value}", "exclusiveMaximum": "{col} < {value}",
    "minLength": "length({col}) >= {value}", "maxLength": "length({col}) <= {value}",
}
_SLA_DURATIONS = {"freshness": "latency", "stale_while_revalidate": "staleWhileRevalidate", "monitor_every": "monitorEvery"}
_SLA_NUMBERS = {"availability": "availability", "completeness": "completeness", "quality_threshold": "qualityThreshold"}
_PLACEHOLDERS = re.compile(r"\$\{(object|table|model|property|column|field)\}")
_COUNT_QUERY = "SELECT count(*) FROM ${object} WHERE NOT ({rule})"
_EXPORTED_QUERY = re.compile(r"^SELECT count\(\*\) FROM \$\{object\} WHERE NOT \((.*)\)$", re.DOTALL)


# --- the model ---------------------------------------------------------------------------------


@functools.cache
def _json_schema() -> dict[str, Any]:
    from open_data_contract_standard.model import OpenDataContractStandard

    return json.loads(OpenDataContractStandard.json_schema())


def api_version() -> str:
    """The ODCS version the installed model's schema describes (its default ``apiVersion``)."""
    return str(_json_schema()["properties"]["apiVersion"]["default"])


def schema_problems(document: Any) -> list[str]:
    """Every way ``document`` breaks the ODCS JSON schema, each as ``path: message``."""
    from jsonschema import Draft201909Validator

    validator = Draft201909Validator(_json_schema())
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        problem = f"{dotted_path(error.absolute_path) or '(document)'}: {error.message}"
        if problem not in problems:
            problems.append(problem)
    return problems


# --- import: contract_ref -> spec.schema / spec.quality -----------------------------------------


class _Import:
    """One ODCS schema object turned into descriptor columns and rules, remembering where in the
    ODCS file each generated descriptor path came from (``origins``) so that a problem found
    when the descriptor is validated names the ODCS file's path."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.columns: list[dict[str, Any]] = []
        self.quality: list[dict[str, Any]] = []
        self.sla: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        self.problems: list[str] = []
        self.first_rule = 0  # index in spec.quality of the first imported rule

    def object(self, obj: dict[str, Any], path: str) -> None:
        properties = obj.get("properties") or []
        if not properties:
            self.problems.append(f"{path}.properties: the contract has no properties (columns)")
        keys: list[tuple[int, int, str]] = []
        for i, prop in enumerate(properties):
            self.column(prop, f"{path}.properties[{i}]")
            if prop.get("primaryKey"):
                keys.append((prop.get("primaryKeyPosition", -1), i, prop.get("name", "")))
        order = [name for _, _, name in sorted(keys, key=lambda k: (k[0] if k[0] >= 0 else 1_000_000, k[1]))]
        if order != [name for _, _, name in keys]:  # contract order is key order in the descriptor
            by_name = {c["name"]: c for c in self.columns}
            keyed = iter([by_name[n] for n in order])
            self.columns = [next(keyed) if c.get("primary_key") else c for c in self.columns]
        for i, check in enumerate(obj.get("quality") or []):
            self.check(check, f"{path}.quality[{i}]", None)

    def column(self, prop: dict[str, Any], path: str) -> None:
        index = len(self.columns)
        at = f"spec.schema[{index}]"
        name = prop.get("name", "")
        column: dict[str, Any] = {"name": name}
        self.origins[at] = path
        self.origins[f"{at}.name"] = f"{path}.name"
        if prop.get("properties") or prop.get("items") or prop.get("map") or prop.get("logicalType") in ("object", "array", "map", "vector"):
            self.problems.append(f"{path}: nested {prop.get('logicalType', 'object')} properties are not supported "
                                 "(a product is a flat table: flatten it in spec.source.query)")
            return
        if "physicalName" in prop and prop["physicalName"] != name:
            self.problems.append(f"{path}.physicalName: '{prop['physicalName']}' differs from name '{name}': meshgate "
                                 "reads a column by its name (rename it in spec.source.query)")
        column["type"], type_path = self.type_of(prop, path)
        self.origins[f"{at}.type"] = type_path
        options = dict(prop.get("logicalTypeOptions") or {})
        for key, target, value in (
            ("description", "description", prop.get("description")),
            ("required", "required", prop.get("required")),
            ("primaryKey", "primary_key", prop.get("primaryKey")),
            ("unique", "unique", prop.get("unique")),
            ("classification", "classification", prop.get("classification")),
        ):
            if value is not None and value is not False:
                column[target] = value.lower() if key == "classification" and isinstance(value, str) else value
                self.origins[f"{at}.{target}"] = f"{path}.{key}"
        tags = [t for t in prop.get("tags") or [] if isinstance(t, str)]
        if any(t.lower() == "pii" for t in tags):
            column["pii"] = True
            self.origins[f"{at}.pii"] = f"{path}.tags"
        rest = [t for t in tags if t.lower() != "pii"]
        if rest:
            column["tags"] = rest
            self.origins[f"{at}.tags"] = f"{path}.tags"
        if prop.get("enum"):
            column["enum"] = [v.get("value") for v in prop["enum"]]
            self.origins[f"{at}.enum"] = f"{path}.enum"
            for i in range(len(prop["enum"])):
                self.origins[f"{at}.enum[{i}]"] = f"{path}.enum[{i}].value"
        if "pattern" in options:
            column["pattern"] = options.pop("pattern")
            self.origins[f"{at}.pattern"] = f"{path}.logicalTypeOptions.pattern"
        for key, target in _BOUND_KEYS.items():
            if key in options:
                column[target] = options.pop(key)
                self.origins[f"{at}.{target}"] = f"{path}.logicalTypeOptions.{key}"
        for key, template in _RULE_OPTIONS.items():
            if key in options:
                value = options.pop(key)
                literal = exp.Literal.string(value) if isinstance(value, str) else exp.Literal.number(value)
                rule = template.format(col=exp.column(name, quoted=True).sql("postgres"), value=literal.sql("postgres"))
                self.rule(f"{name}_{_snake(key)}", rule, "error", "", f"{path}.logicalTypeOptions.{key}")
        for key in options:
            if key not in _TYPE_KEYS:
                self.problems.append(f"{path}.logicalTypeOptions.{key}: not supported by meshgate contracts")
        relationships = prop.get("relationships") or []
        if len(relationships) > 1:
            self.problems.append(f"{path}.relationships: meshgate keeps one reference per column")
        for i, relation in enumerate(relationships[:1]):
            target = relation.get("to")
            parts = target.split(".") if isinstance(target, str) else []
            if len(parts) == 2:
                parts = [self.domain, *parts]
            if len(parts) != 3 or "/" in str(target):
                self.problems.append(f"{path}.relationships[{i}].to: {target!r}: name a column of a product "
                                     "as domain.product.column (composite and id-based references are not supported)")
            else:
                column["references"] = ".".join(parts)
                self.origins[f"{at}.references"] = f"{path}.relationships[{i}].to"
        self.columns.append(column)
        for i, check in enumerate(prop.get("quality") or []):
            self.check(check, f"{path}.quality[{i}]", name)

    def type_of(self, prop: dict[str, Any], path: str) -> tuple[str, str]:
        """The contract type of an ODCS property and the path it was read from: the
        ``physicalType`` when it names a type meshgate knows, else the ``logicalType``."""
        logical, physical = prop.get("logicalType"), prop.get("physicalType")
        options = prop.get("logicalTypeOptions") or {}
        from_logical = None
        if logical in _LOGICAL:
            from_logical = _LOGICAL[logical]
            if logical == "integer":
                from_logical = _INT_FORMATS.get(options.get("format", "i64"), "int64")
            elif logical == "number" and options.get("format") == "f32":
                from_logical = "float"
            elif logical == "timestamp" and options.get("timezone") is True:
                from_logical = "timestamptz"
        from_physical = _sql_type(physical) if isinstance(physical, str) else None
        if from_physical and logical in _FAMILY_OF_LOGICAL and parse_type(from_physical).family not in _FAMILY_OF_LOGICAL[logical]:
            self.problems.append(f"{path}.physicalType: '{physical}' is not a {logical} (logicalType)")
        if from_physical:
            return from_physical, f"{path}.physicalType"
        if from_logical:
            return from_logical, f"{path}.logicalType"
        if logical is None and physical is None:
            self.problems.append(f"{path}: give a logicalType or a physicalType")
        elif physical is not None:
            self.problems.append(f"{path}.physicalType: '{physical}' is not a type meshgate knows; give a logicalType "
                                 f"({', '.join(_LOGICAL)})")
        else:
            self.problems.append(f"{path}.logicalType: '{logical}' is not supported (use one of {', '.join(_LOGICAL)})")
        return "string", f"{path}.logicalType"

    def check(self, check: dict[str, Any], path: str, column: str | None) -> None:
        """One ODCS quality check as a gate rule (or a column constraint), or a problem."""
        kind = check.get("type", "library")
        severity = _SEVERITY.get(str(check.get("severity", "error")).lower())
        if kind == "text":
            return  # prose for people; nothing to run
        if kind == "custom":
            self.problems.append(f"{path}: custom ({check.get('engine', 'vendor')}) checks cannot run as meshgate "
                                 "quality gates; express it as type: sql")
            return
        if severity is None:
            self.problems.append(f"{path}.severity: '{check.get('severity')}' is not one of error, warning, info")
            return
        if not _must_be_zero(check):
            self.problems.append(f"{path}: only checks that must find 0 rows (mustBe: 0) can run as quality gates")
            return
        col = exp.column(column, quoted=True).sql("postgres") if column else ""
        name = _snake(check.get("name") or "") or ""
        if kind == "sql":
            rule = _sql_condition(check.get("query", ""), column)
            if rule is None:
                self.problems.append(f"{path}.query: meshgate runs SQL checks of the form "
                                     "SELECT count(*) FROM ${object} WHERE <condition> (the rows that fail)")
                return
            self.rule(name or f"{column or 'sql'}_check", rule, severity, check.get("description", ""), path, f"{path}.query")
            return
        metric = check.get("metric") or check.get("rule")
        arguments = check.get("arguments") or {}
        if not column and metric != "rowCount":
            self.problems.append(f"{path}.metric: '{metric}' needs to be on a property (a column)")
            return
        if metric == "nullValues":
            self.rule(name or f"{column}_not_null", f"{col} IS NOT NULL", severity, check.get("description", ""), path)
        elif metric == "missingValues":
            missing = [v for v in arguments.get("missingValues", []) if v is not None]
            rule = f"{col} IS NOT NULL" + (f" AND {col} NOT IN ({_values(missing)})" if missing else "")
            self.rule(name or f"{column}_not_missing", rule, severity, check.get("description", ""), path)
        elif metric == "invalidValues" and ("validValues" in arguments or "pattern" in arguments):
            if "validValues" in arguments:
                self.rule(name or f"{column}_valid", f"{col} IN ({_values(arguments['validValues'])})", severity,
                          check.get("description", ""), path)
            if "pattern" in arguments:
                pattern = exp.Literal.string(str(arguments["pattern"])).sql("postgres")
                self.rule(name or f"{column}_pattern", f"{col} ~ {pattern}", severity, check.get("description", ""), path)
        elif metric == "duplicateValues" and severity == "error":
            target = next(c for c in self.columns if c["name"] == column)
            target["unique"] = True
            self.origins[f"spec.schema[{self.columns.index(target)}].unique"] = path
        else:
            self.problems.append(f"{path}: metric '{metric}' (severity {severity}) cannot run as a meshgate quality gate "
                                 "(supported: nullValues, missingValues, invalidValues with validValues or pattern, "
                                 "duplicateValues as an error)")

    def rule(self, name: str, rule: str, severity: str, description: str, path: str, rule_path: str = "") -> None:
        at = f"spec.quality[{self.first_rule + len(self.quality)}]"
        item = {"name": name, "rule": rule, "severity": severity}
        if description:
            item["description"] = description
        self.quality.append(item)
        self.origins[at] = path
        self.origins[f"{at}.rule"] = rule_path or path

    def sla_properties(self, properties: list[dict[str, Any]], path: str) -> None:
        """The SLA properties meshgate measures (``export`` writes them) become ``spec.sla``."""
        names = {**{v: k for k, v in _SLA_DURATIONS.items()}, **{v: k for k, v in _SLA_NUMBERS.items()}}
        for i, prop in enumerate(properties):
            key = names.get(prop.get("property", ""))
            if key is None:
                continue
            value = prop.get("value")
            if key in _SLA_DURATIONS:
                unit = {"ms": "ms", "s": "s", "sec": "s", "m": "m", "min": "m", "h": "h", "hour": "h", "hours": "h",
                        "d": "d", "day": "d", "days": "d"}.get(str(prop.get("unit", "")).lower())
                value = f"{_number(value)}{unit}" if unit and isinstance(value, (int, float)) else value
                if key == "freshness" and isinstance(prop.get("element"), str):
                    self.sla["freshness_column"] = prop["element"].split(".")[-1]
                    self.origins["spec.sla.freshness_column"] = f"{path}[{i}].element"
            self.sla[key] = value
            self.origins[f"spec.sla.{key}"] = f"{path}[{i}].value"


def resolve_contract_ref(doc: dict[str, Any], base_dir: Path | None) -> tuple[dict[str, Any], Callable[[str], str], list[str]]:
    """``doc`` with its ``spec.contract_ref`` replaced by the ODCS file's schema and quality
    rules; a function that rewrites a descriptor problem's path into the ODCS file's; and the
    problems found reading the file. On a problem the document keeps its ``contract_ref``."""
    ref = doc["spec"]["contract_ref"]
    file, _, object_name = ref.partition("#")
    where = f"spec.contract_ref: {file}"
    if base_dir is None:  # a document without a file (a REST body): it must not make the gateway read host files
        return doc, _identity, [f"{where}: a contract_ref is resolved against the descriptor file's folder; register "
                                "the descriptor file with the CLI, or give the schema inline"]
    path = base_dir / file
    try:
        contract = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as err:
        return doc, _identity, [f"{where}: cannot read the ODCS contract: {err.strerror}"]
    except yaml.YAMLError as err:
        return doc, _identity, [f"{where}: not valid YAML: {err}"]
    problems = [f"{where}: {p}" for p in schema_problems(contract)]
    if problems:
        return doc, _identity, problems
    objects = contract.get("schema") or []
    names = [o.get("name") for o in objects]
    if object_name:
        index = names.index(object_name) if object_name in names else -1
        if index < 0:
            return doc, _identity, [f"{where}: no schema object '{object_name}' (it has: {', '.join(names) or 'none'})"]
    elif len(objects) == 1:
        index = 0
    else:
        return doc, _identity, [f"{where}: schema: {'no schema objects' if not objects else 'several schema objects'}; "
                                f"name one as {file}#<name> (it has: {', '.join(names) or 'none'})"]
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    imported = _Import(str(meta.get("domain", "")))
    imported.first_rule = len(doc["spec"].get("quality") or []) if isinstance(doc["spec"].get("quality"), list) else 0
    imported.object(objects[index], f"schema[{index}]")
    if "sla" not in doc["spec"]:
        imported.sla_properties(contract.get("slaProperties") or [], "slaProperties")
    if imported.problems:
        return doc, _identity, [f"{where}: {p}" for p in imported.problems]
    resolved = copy.deepcopy(doc)
    spec = resolved["spec"]
    del spec["contract_ref"]
    spec["schema"] = imported.columns
    if imported.quality:
        spec["quality"] = [*(spec.get("quality") or []), *imported.quality]
    if imported.sla:
        spec["sla"] = imported.sla
    return resolved, functools.partial(_locate, imported.origins, where), []


def _locate(origins: dict[str, str], where: str, problem: str) -> str:
    """``problem`` (``descriptor.path: message``) at the ODCS path it came from, if it did."""
    path, sep, message = problem.partition(": ")
    if not sep:
        return problem
    best = max((k for k in origins if path == k or path.startswith((k + ".", k + "["))), key=len, default=None)
    if best is None:
        return problem
    return f"{where}: {origins[best]}{path[len(best):]}: {message}"


def _identity(problem: str) -> str:
    return problem


def _sql_type(text: str) -> str | None:
    """A contract type for a SQL type name (``bigint``, ``numeric(12,2)``, ``varchar(20)``,
    ``timestamp with time zone``) or a contract type name; None when it is neither."""
    try:
        return parse_type(text).name
    except ValueError:
        pass
    try:
        data_type = exp.DataType.build(text, dialect="postgres")
    except (sqlglot.errors.SqlglotError, ValueError):
        return None
    kind = data_type.this.name
    if kind == "DECIMAL":
        params = [p.this.name if isinstance(p.this, exp.Literal) else p.name for p in data_type.expressions]
        return f"decimal({params[0]},{params[1] if len(params) > 1 else 0})" if params else None
    return _SQL_TYPES.get(kind)


def _must_be_zero(check: dict[str, Any]) -> bool:
    if "mustBe" in check:
        return check["mustBe"] == 0
    if "mustBeLessOrEqualTo" in check:
        return check["mustBeLessOrEqualTo"] == 0
    if "mustBeLessThan" in check:
        return check["mustBeLessThan"] == 1
    return False


def _sql_condition(query: str, column: str | None) -> str | None:
    """The row predicate of ``SELECT count(*) FROM <object> WHERE <condition>`` (the failing
    rows): NOT condition, in PostgreSQL SQL; None for any other query shape."""
    exported = _EXPORTED_QUERY.match(query.strip())
    if exported and _parses(exported.group(1)):
        return exported.group(1)  # our own export: the rule verbatim
    text = _PLACEHOLDERS.sub(lambda m: (column or "_col") if m.group(1) in ("property", "column", "field") else "_object", query)
    try:
        select = sqlglot.parse_one(text, read="postgres")
    except sqlglot.errors.SqlglotError:
        return None
    if not isinstance(select, exp.Select) or len(select.expressions) != 1 or not isinstance(select.expressions[0].unalias(), exp.Count):
        return None
    source = select.args.get("from_")
    if select.args.get("joins") or select.args.get("group") or not select.args.get("where") or source is None or not isinstance(source.this, exp.Table):
        return None
    condition = select.args["where"].this
    while isinstance(condition, exp.Paren):
        condition = condition.this
    passing = condition.this if isinstance(condition, exp.Not) else exp.Not(this=exp.Paren(this=condition))
    while isinstance(passing, exp.Paren):
        passing = passing.this
    return passing.sql(dialect="postgres")


def _parses(condition: str) -> bool:
    try:
        sqlglot.parse_one(condition, read="postgres")
    except sqlglot.errors.SqlglotError:
        return False
    return True


def _values(values: list[Any]) -> str:
    return ", ".join((exp.Literal.string(v) if isinstance(v, str) else exp.Literal.number(v)).sql("postgres") for v in values)


def _snake(text: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text).lower()).strip("_")
    return name if not name or name[0].isalpha() else f"q_{name}"


def _number(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --- export: descriptor -> ODCS document --------------------------------------------------------


def export(descriptor: Descriptor, status: str = "active") -> str:
    """``descriptor`` as an ODCS YAML document of ``api_version()``, validated against the
    package's JSON schema and its pydantic model (which must hold every field we write), in a
    reading order (identity, then schema, then team, SLA and meshgate's own properties)."""
    from open_data_contract_standard.model import OpenDataContractStandard

    document = export_document(descriptor, status)
    problems = schema_problems(document)
    modelled = OpenDataContractStandard.model_validate(document).model_dump(exclude_none=True, by_alias=True)
    if modelled != document:
        problems.append("the open-data-contract-standard model does not hold every field written")
    if problems:  # a bug in this module, never the user's: say exactly what
        raise ValueError("the ODCS export does not validate: " + "; ".join(problems))
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def export_document(d: Descriptor, status: str) -> dict[str, Any]:
    spec = d.raw.get("spec", {})
    obj: dict[str, Any] = {"name": d.name, "logicalType": "object"}
    if d.source.table:
        obj["physicalName"] = d.source.table
        obj["physicalType"] = "table"
    else:
        obj["physicalType"] = "view"
    if d.description:
        obj["description"] = d.description
    keys = [c.name for c in d.columns if c.primary_key]
    obj["properties"] = [_property(c, keys) for c in d.columns]
    quality = [_quality(rule) for rule in spec.get("quality") or []]
    if quality:
        obj["quality"] = quality
    document: dict[str, Any] = {
        "apiVersion": api_version(),
        "kind": "DataContract",
        "id": d.product_id,
        "name": d.name,
        "version": d.version,
        "status": status,
        "domain": d.domain,
    }
    if d.description:
        document["description"] = {"purpose": d.description}
    if d.tags:
        document["tags"] = list(d.tags)
    server = _server(d)
    if server:
        document["servers"] = [server]
    document["schema"] = [obj]
    document["team"] = {"name": d.owner, "members": [{"username": d.owner, "role": "owner"}]}
    sla = _sla(d.name, spec.get("sla") or {})
    if sla:
        document["slaProperties"] = sla
    custom = [{"property": "compatibility", "value": spec.get("compatibility", "backward"), "vendor": "meshgate"}]
    if "deprecation" in spec:
        custom.append({"property": "deprecationNoticeDays", "value": spec["deprecation"].get("notice_days"), "vendor": "meshgate"})
    document["customProperties"] = custom
    return document


def _property(column: Any, keys: list[str]) -> dict[str, Any]:
    t = column.type
    logical = {"string": "string", "binary": "string", "boolean": "boolean", "integer": "integer", "number": "number",
               "date": "date", "timestamp": "timestamp"}[t.family]
    prop: dict[str, Any] = {"name": column.name, "logicalType": logical, "physicalType": t.sql}
    options: dict[str, Any] = {}
    if t.name in ("int32", "int64"):
        options["format"] = "i32" if t.name == "int32" else "i64"
    elif t.name in ("float", "double"):
        options["format"] = "f32" if t.name == "float" else "f64"
    elif t.name == "timestamptz":
        options["timezone"] = True
    elif t.name == "binary":
        options["format"] = "binary"
    spec = column.spec
    if "pattern" in spec:
        options["pattern"] = spec["pattern"]
    for key, target in _BOUND_KEYS.items():
        if target in spec:
            options[key] = spec[target]
    if options:
        prop["logicalTypeOptions"] = options
    if column.description:
        prop["description"] = column.description
    if column.required:
        prop["required"] = True
    if column.primary_key:
        prop["primaryKey"] = True
        prop["primaryKeyPosition"] = keys.index(column.name) + 1
    if spec.get("unique"):
        prop["unique"] = True
    if "classification" in spec:
        prop["classification"] = spec["classification"]
    tags = list(spec.get("tags") or []) + (["pii"] if spec.get("pii") else [])
    if tags:
        prop["tags"] = tags
    if "enum" in spec:
        prop["enum"] = [{"value": v} for v in spec["enum"]]
    if "references" in spec:
        prop["relationships"] = [{"type": "foreignKey", "to": spec["references"]}]
    return prop


def _quality(rule: dict[str, Any]) -> dict[str, Any]:
    out = {"name": rule["name"], "type": "sql", "query": _COUNT_QUERY.replace("{rule}", rule["rule"]), "mustBe": 0,
           "unit": "rows", "severity": rule.get("severity", "error")}
    if rule.get("description"):
        out["description"] = rule["description"]
    return out


def _sla(object_name: str, sla: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, prop in _SLA_DURATIONS.items():
        if key in sla:
            match = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$", sla[key])
            assert match and DURATION.match(sla[key])
            item: dict[str, Any] = {"property": prop, "value": float(match.group(1)) if "." in match.group(1) else int(match.group(1)),
                                    "unit": match.group(2)}
            if key == "freshness" and "freshness_column" in sla:
                item["element"] = f"{object_name}.{sla['freshness_column']}"
            out.append(item)
    for key, prop in _SLA_NUMBERS.items():
        if key in sla:
            out.append({"property": prop, "value": sla[key], **({"unit": "percent"} if key != "quality_threshold" else {})})
    return out


def _server(d: Descriptor) -> dict[str, Any] | None:
    """Where the data lives, without credentials: host, port and database of a server (no user
    or password), the path of a file. A derived (mesh) product has no server of its own."""
    kind, uri = d.source.connector, d.source.uri
    if kind == "mesh":
        return None
    if kind == "postgres":
        parts = urlsplit(uri)
        schema = d.source.table.split(".")[0] if d.source.table and "." in d.source.table else "public"
        try:
            port: int | str = parts.port or 5432
        except ValueError:
            port = parts.netloc.rsplit(":", 1)[-1]
        return {"server": "source", "type": "postgres", "host": parts.hostname or "localhost", "port": port,
                "database": parts.path.lstrip("/") or "postgres", "schema": schema}
    if kind == "duckdb":
        return {"server": "source", "type": "duckdb", "database": uri}
    if kind == "parquet":
        return {"server": "source", "type": "local", "path": uri, "format": "parquet"}
    if kind == "sqlite":
        return {"server": "source", "type": "custom", "path": uri, "format": "sqlite"}
    parts = urlsplit(uri)
    host = parts.hostname or ""
    location = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    return {"server": "source", "type": "custom", "location": location, "format": kind}
