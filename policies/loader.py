"""Reading a ``--policies DIR``: ``global/*.yaml`` and ``domains/<domain>/*.yaml``.

Policy files are validated strictly on load, every problem reported at once with its file and
line (``policies/global/access.yaml:12: access[0].effect: 'alow' is not one of allow, deny``),
and compiled to the rule types of ``policies/rules.py``. Nothing in a file is executed: row
filters and custom masks are parsed as SQL and checked to be expressions over the product's own
columns. The file format:

```yaml
description: what these rules are for
lists:                                  # named value lists, referenced as {list: name}
  restricted_regions: [CN, RU]
roles:                                  # role inheritance (global files only)
  - {role: data_scientist, inherits: [analyst]}
  - {role: steward, inherits: [owner], domain: customers}
access:
  - id: pii-trained-readers             # unique in the file; the policy id is <file>#<id>
    effect: allow                       # allow | deny
    description: principals with pii_training may read pii products
    roles: [analyst]                    # default: any principal
    actions: [read]                     # read | manage | weaken_governance | "*"; default read
    products: [customers.*]             # "*", "<domain>.*", "<domain>.<name>"; default all
    when: {tags_any: [pii], tags_none: [restricted]}   # the product's tags
    principal: {pii_training: true}     # attribute = value, value list, or {list: name}
    unless: {zone: EU}                  # exemption by attributes (all must match)
    unless_roles: [auditor]             # exemption by role
    if_attribute_missing: deny          # deny rules: deny (default, fail closed) | ignore
masks:
  - {id: pii-columns, columns: {pii: true}, mask: redact, mask_non_text: "null",
     unless: {pii_training: true}}      # columns: pii, classification, names, tags_any
row_filters:
  - {id: own-region, products: [sales.orders], filter: "region = {user.region}"}
aggregates:
  - {id: small-groups, when: {tags_any: [pii]}, min_group_size: 5}
```
A domain file may only govern its own domain (``products`` default to ``<domain>.*``) and may
not declare roles or redefine a global list: it can narrow what the global layer allows, never
widen it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import sqlglot
import yaml
from sqlglot import exp
from sqlglot.errors import SqlglotError

from policies.conditions import AttributeTest, Condition, normal
from policies.decision import MASK_KINDS
from policies.row_filters import FilterError, filter_references
from policies.rules import (
    ACTIONS,
    AccessRule,
    AggregateRule,
    ColumnSelector,
    MaskRule,
    PolicySet,
    RoleLink,
    RowFilterRule,
)

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RULE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SUFFIXES = (".yaml", ".yml")

Path_ = tuple[Any, ...]  # a position in a document: keys and list indexes


class PolicyError(ValueError):
    """One or more policy files are invalid; ``problems`` are ``file:line: where: what`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid policy files:\n  " + "\n  ".join(problems))


def policy_files(directory: Path) -> list[tuple[Path, str, str | None]]:
    """``(path, layer, domain)`` for every policy file, in load order (sorted by path)."""
    found: list[tuple[Path, str, str | None]] = []
    global_dir = directory / "global"
    if global_dir.is_dir():
        found += [(p, "global", None) for p in sorted(global_dir.iterdir()) if _is_policy_file(p)]
    domains_dir = directory / "domains"
    if domains_dir.is_dir():
        for domain_dir in sorted(p for p in domains_dir.iterdir() if p.is_dir()):
            found += [(p, "domain", domain_dir.name) for p in sorted(domain_dir.iterdir()) if _is_policy_file(p)]
    return found


def signature(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """A cheap fingerprint of the policy files (names, mtimes, sizes, inodes) for reloads."""
    entries: list[tuple[str, int, int, int]] = []
    for folder in _policy_folders(directory):
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    if entry.name.endswith(SUFFIXES) and not entry.name.startswith("."):
                        st = entry.stat()
                        entries.append((entry.path, st.st_mtime_ns, st.st_size, st.st_ino))
        except FileNotFoundError:
            continue
    entries.sort()
    return tuple(entries)


def load_policy_set(directory: Path) -> PolicySet:
    """Read, validate and compile every policy file under ``directory``.

    Raises ``PolicyError`` listing every problem in every file; nothing is half-loaded.
    """
    if not directory.is_dir():
        raise PolicyError([f"{directory}: not a directory (expected global/ and domains/<domain>/ inside)"])
    problems: list[str] = []
    stray = [p for p in directory.iterdir() if _is_policy_file(p)]
    problems += [f"{p}:1: policy files belong under global/ or domains/<domain>/; this one is not loaded" for p in stray]
    domains_dir = directory / "domains"
    if domains_dir.is_dir():
        for entry in sorted(domains_dir.iterdir()):
            if entry.is_dir() and not NAME.match(entry.name):
                problems.append(f"{entry}:1: '{entry.name}' is not a domain name ([a-z][a-z0-9_]*)")
            elif _is_policy_file(entry):
                problems.append(f"{entry}:1: domain policy files belong in domains/<domain>/; this one is not loaded")

    documents = [_Document.read(path, directory, layer, domain) for path, layer, domain in policy_files(directory)]
    global_lists: dict[str, frozenset[str]] = {}
    for doc in documents:
        if doc.layer == "global":
            doc.collect_lists(global_lists, {})
    domain_lists: dict[str, dict[str, frozenset[str]]] = {}
    for doc in documents:
        if doc.layer == "domain":
            doc.collect_lists(domain_lists.setdefault(doc.domain or "", {}), global_lists)
    compiled = PolicySet(files=tuple(doc.rel for doc in documents))
    parts: dict[str, list[Any]] = {"access": [], "masks": [], "row_filters": [], "aggregates": [], "roles": []}
    for doc in documents:
        lists = {**global_lists, **domain_lists.get(doc.domain or "", {})}
        doc.compile(lists, parts)
        problems += doc.problems
    if problems:
        raise PolicyError(problems)
    return PolicySet(
        access=tuple(parts["access"]),
        masks=tuple(parts["masks"]),
        row_filters=tuple(parts["row_filters"]),
        aggregates=tuple(parts["aggregates"]),
        roles=tuple(parts["roles"]),
        files=compiled.files,
    )


def _is_policy_file(path: Path) -> bool:
    return path.suffix in SUFFIXES and path.is_file() and not path.name.startswith(".")


def _policy_folders(directory: Path) -> list[Path]:
    folders = [directory, directory / "global", directory / "domains"]
    try:
        with os.scandir(directory / "domains") as scan:
            folders += [Path(e.path) for e in scan if e.is_dir()]
    except FileNotFoundError:
        pass
    return folders


# --- one file ---------------------------------------------------------------------------------

_TOP_KEYS = ("description", "lists", "roles", "access", "masks", "row_filters", "aggregates")
_COMMON = ("id", "description", "products", "when", "unless", "unless_roles")
_RULE_KEYS = {
    "access": _COMMON + ("effect", "roles", "actions", "principal", "if_attribute_missing"),
    "masks": _COMMON + ("columns", "mask", "mask_non_text", "expression"),
    "row_filters": _COMMON + ("filter",),
    "aggregates": _COMMON + ("min_group_size",),
}
_REQUIRED = {
    "access": ("id", "effect"),
    "masks": ("id", "columns", "mask"),
    "row_filters": ("id", "filter"),
    "aggregates": ("id", "min_group_size"),
}


@dataclass
class _Document:
    """A parsed policy file with the line of every key and list item, and its problems."""

    path: Path
    rel: str  # "global/access.yaml": the prefix of its rule ids
    layer: str
    domain: str | None
    data: Any = None
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, root: Path, layer: str, domain: str | None) -> "_Document":
        doc = cls(path, path.relative_to(root).as_posix(), layer, domain)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            doc.problems.append(f"{path}:1: cannot read: {err}")
            return doc
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                doc._index(node, ())
                doc.data = loader.construct_document(node)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark else 1
            doc.problems.append(f"{path}:{line}: not valid YAML: {err.problem or err.context}")
        except yaml.YAMLError as err:
            doc.problems.append(f"{path}:1: not valid YAML: {err}")
        finally:
            loader.dispose()
        return doc

    def _index(self, node: yaml.Node, at: Path_) -> None:
        self.lines.setdefault(at, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    self.problem(at + (key,), "duplicate key", line=key_node.start_mark.line + 1)
                seen.add(key)
                self.lines[at + (key,)] = key_node.start_mark.line + 1
                self._index(value_node, at + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, at + (i,))

    def problem(self, at: Path_, message: str, line: int | None = None) -> None:
        if line is None:
            line = 1
            for n in range(len(at), -1, -1):
                if at[:n] in self.lines:
                    line = self.lines[at[:n]]
                    break
        where = dotted_path(at)
        self.problems.append(f"{self.path}:{line}: {where + ': ' if where else ''}{message}")

    # -- lists, pass 1 --

    def collect_lists(self, into: dict[str, frozenset[str]], outer: dict[str, frozenset[str]]) -> None:
        if not isinstance(self.data, dict) or "lists" not in self.data:
            return
        lists = self.data["lists"]
        if not isinstance(lists, dict):
            self.problem(("lists",), f"expected a mapping of name to values, got {_kind(lists)}")
            return
        for name, values in lists.items():
            at = ("lists", name)
            if not isinstance(name, str) or not NAME.match(name):
                self.problem(at, "a list name matches [a-z][a-z0-9_]*")
            elif name in outer:
                self.problem(at, f"list '{name}' is defined by the global policies; a domain cannot redefine it")
            elif name in into:
                self.problem(at, f"list '{name}' is defined twice")
            elif not isinstance(values, list) or not values or not all(_is_scalar(v) for v in values):
                self.problem(at, "expected a non-empty list of values")
            else:
                into[name] = frozenset(normal(v) for v in values)

    # -- rules, pass 2 --

    def compile(self, lists: dict[str, frozenset[str]], parts: dict[str, list[Any]]) -> None:
        data = self.data
        if data is None:
            return  # an empty file (or one that failed to parse: its problem is recorded)
        if not isinstance(data, dict):
            self.problem((), f"expected a mapping with keys {', '.join(_TOP_KEYS)}, got {_kind(data)}")
            return
        for key in data:
            if key not in _TOP_KEYS:
                self.problem((key,), f"unknown key (allowed: {', '.join(_TOP_KEYS)})")
        if "description" in data and not isinstance(data["description"], str):
            self.problem(("description",), "expected text")
        if "roles" in data:
            if self.layer != "global":
                self.problem(("roles",), "role inheritance is declared in global files only (a domain cannot widen)")
            else:
                parts["roles"] += self._roles(data["roles"])
        ids: set[str] = set()
        for section in ("access", "masks", "row_filters", "aggregates"):
            items = data.get(section)
            if items is None:
                continue
            if not isinstance(items, list):
                self.problem((section,), f"expected a list of rules, got {_kind(items)}")
                continue
            for i, item in enumerate(items):
                at = (section, i)
                if not isinstance(item, dict):
                    self.problem(at, f"expected a rule (a mapping), got {_kind(item)}")
                    continue
                before = len(self.problems)
                self._keys(item, at, _RULE_KEYS[section], _REQUIRED[section])
                rule_id = item.get("id")
                if isinstance(rule_id, str) and RULE_ID.match(rule_id):
                    if rule_id in ids:
                        self.problem(at + ("id",), f"duplicate rule id '{rule_id}' in this file")
                    ids.add(rule_id)
                elif "id" in item:
                    self.problem(at + ("id",), "a rule id matches [a-z0-9][a-z0-9_-]*")
                rule = getattr(self, f"_{section}")(item, at, lists)
                if rule is not None and len(self.problems) == before:
                    parts[section].append(rule)

    def _rule_id(self, item: dict[str, Any]) -> str:
        return f"{self.rel}#{item.get('id')}"

    def _keys(self, item: dict[str, Any], at: Path_, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
        for key in item:
            if key not in allowed:
                self.problem(at + (key,), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in item:
                self.problem(at, f"'{key}' is required")

    def _roles(self, roles: Any) -> list[RoleLink]:
        if not isinstance(roles, list):
            self.problem(("roles",), f"expected a list, got {_kind(roles)}")
            return []
        links: list[RoleLink] = []
        for i, item in enumerate(roles):
            at = ("roles", i)
            if not isinstance(item, dict):
                self.problem(at, "expected {role: R, inherits: [R2, ...], domain: D}")
                continue
            self._keys(item, at, ("role", "inherits", "domain"), ("role", "inherits"))
            role = self._string(item, at, "role")
            parents = self._strings(item, at, "inherits")
            domain = item.get("domain", "*")
            if domain != "*" and not (isinstance(domain, str) and NAME.match(domain)):
                self.problem(at + ("domain",), "expected a domain name or '*'")
                continue
            if role and parents:
                if "admin" in parents:
                    self.problem(at + ("inherits",), "no role may inherit admin; give principals the admin role itself")
                    continue
                links += [RoleLink(role, parent, domain, f"{self.rel}#roles[{i}]") for parent in parents]
        return links

    def _condition(self, item: dict[str, Any], at: Path_, lists: dict[str, frozenset[str]], deny: bool = False) -> Condition:
        when = item.get("when", {})
        tags_any: frozenset[str] = frozenset()
        tags_none: frozenset[str] = frozenset()
        if not isinstance(when, dict):
            self.problem(at + ("when",), f"expected a mapping with tags_any / tags_none, got {_kind(when)}")
        else:
            self._keys(when, at + ("when",), ("tags_any", "tags_none"), ())
            tags_any = frozenset(self._strings(when, at + ("when",), "tags_any"))
            tags_none = frozenset(self._strings(when, at + ("when",), "tags_none"))
        missing = item.get("if_attribute_missing", "deny")
        if missing not in ("deny", "ignore"):
            self.problem(at + ("if_attribute_missing",), f"'{missing}' is not one of deny, ignore")
        elif "if_attribute_missing" in item and not deny:
            self.problem(at + ("if_attribute_missing",), "only deny rules choose this (an allow rule never applies on a missing attribute)")
        return Condition(
            rule=self._rule_id(item),
            tags_any=tags_any,
            tags_none=tags_none,
            principal=self._attributes(item, at, "principal", lists),
            unless=self._attributes(item, at, "unless", lists),
            unless_roles=frozenset(self._strings(item, at, "unless_roles")),
            deny_if_missing=deny and missing == "deny",
        )

    def _attributes(self, item: dict[str, Any], at: Path_, key: str, lists: dict[str, frozenset[str]]) -> tuple[AttributeTest, ...]:
        conditions = item.get(key)
        if conditions is None:
            return ()
        at = at + (key,)
        if not isinstance(conditions, dict) or not conditions:
            self.problem(at, "expected a mapping of attribute to value, value list or {list: name}")
            return ()
        tests: list[AttributeTest] = []
        for name, value in conditions.items():
            where = at + (name,)
            if not isinstance(name, str) or not ATTRIBUTE.match(name):
                self.problem(where, "an attribute name matches [A-Za-z_][A-Za-z0-9_]*")
            elif _is_scalar(value):
                tests.append(AttributeTest(name, frozenset({normal(value)})))
            elif isinstance(value, list) and value and all(_is_scalar(v) for v in value):
                tests.append(AttributeTest(name, frozenset(normal(v) for v in value)))
            elif isinstance(value, dict) and list(value) == ["list"]:
                if value["list"] in lists:
                    tests.append(AttributeTest(name, lists[value["list"]]))
                else:
                    known = ", ".join(sorted(lists)) or "none defined"
                    self.problem(where + ("list",), f"no list '{value['list']}' (known: {known})")
            else:
                self.problem(where, "expected a value, a non-empty list of values or {list: name}")
        return tuple(tests)

    def _products(self, item: dict[str, Any], at: Path_) -> tuple[str, ...]:
        if "products" not in item:
            return (f"{self.domain}.*",) if self.layer == "domain" else ("*",)
        patterns: list[str] = []
        for i, pattern in enumerate(self._strings(item, at, "products")):
            where = at + ("products", i)
            domain, dot, name = pattern.partition(".")
            if self.layer == "domain":
                if pattern == "*":
                    pattern = f"{self.domain}.*"
                elif not dot:
                    domain, dot, name, pattern = self.domain or "", ".", pattern, f"{self.domain}.{pattern}"
                if domain != self.domain:
                    self.problem(where, f"'{pattern}': a policy of domain '{self.domain}' governs only its own products")
                    continue
            if pattern == "*" or (NAME.match(domain) and (name == "*" or NAME.match(name)) and dot):
                patterns.append(pattern)
            else:
                self.problem(where, f"'{pattern}' is not '*', '<domain>.*' or '<domain>.<name>'")
        if not patterns and "products" in item:
            self.problem(at + ("products",), "needs at least one product pattern")
        return tuple(patterns)

    def _access(self, item: dict[str, Any], at: Path_, lists: dict[str, frozenset[str]]) -> AccessRule:
        effect = item.get("effect")
        if effect not in ("allow", "deny"):
            if "effect" in item:
                self.problem(at + ("effect",), f"'{effect}' is not one of allow, deny")
            effect = "deny"  # keep checking the rest; the file is rejected anyway
        actions = tuple(self._strings(item, at, "actions")) if "actions" in item else ("read",)
        for i, action in enumerate(actions):
            if action != "*" and action not in ACTIONS:
                self.problem(at + ("actions", i), f"'{action}' is not one of {', '.join(ACTIONS)}, *")
        roles = tuple(self._strings(item, at, "roles")) if "roles" in item else ("*",)
        for key, values in (("roles", roles), ("actions", actions)):
            if not values and isinstance(item.get(key), list):
                self.problem(at + (key,), "needs at least one entry (leave it out for the default)")
        return AccessRule(
            id=self._rule_id(item),
            layer=self.layer,
            domain=self.domain or "*",
            effect=effect,
            roles=roles,
            actions=actions,
            products=self._products(item, at),
            condition=self._condition(item, at, lists, deny=effect == "deny"),
            description=self._text(item, at),
            line=self.lines.get(at, 0),
        )

    def _masks(self, item: dict[str, Any], at: Path_, lists: dict[str, frozenset[str]]) -> MaskRule | None:
        kinds: dict[str, str | None] = {}
        for key in ("mask", "mask_non_text"):
            if key in item:
                kind = "null" if item[key] is None else item[key]  # `mask: null` is YAML's null
                if kind not in MASK_KINDS:
                    self.problem(at + (key,), f"'{kind}' is not one of {', '.join(MASK_KINDS)}")
                kinds[key] = kind
        expression = item.get("expression")
        if "custom" in kinds.values():
            if not isinstance(expression, str):
                self.problem(at + ("expression",), "a custom mask needs an expression using {column}")
            else:
                self._custom_expression(expression, at + ("expression",))
        elif "expression" in item:
            self.problem(at + ("expression",), "only a custom mask takes an expression")
        return MaskRule(
            id=self._rule_id(item),
            layer=self.layer,
            products=self._products(item, at),
            condition=self._condition(item, at, lists),
            columns=self._selector(item.get("columns"), at + ("columns",)),
            mask=kinds.get("mask") or "redact",
            mask_non_text=kinds.get("mask_non_text"),
            expression=expression if isinstance(expression, str) else None,
            description=self._text(item, at),
            line=self.lines.get(at, 0),
        )

    def _row_filters(self, item: dict[str, Any], at: Path_, lists: dict[str, frozenset[str]]) -> RowFilterRule | None:
        text = item.get("filter")
        if not isinstance(text, str) or not text.strip():
            self.problem(at + ("filter",), "expected SQL predicate text")
            return None
        try:
            filter_references(text)
        except FilterError as err:
            self.problem(at + ("filter",), str(err))
        return RowFilterRule(
            id=self._rule_id(item),
            layer=self.layer,
            products=self._products(item, at),
            condition=self._condition(item, at, lists),
            filter=text,
            description=self._text(item, at),
            line=self.lines.get(at, 0),
        )

    def _aggregates(self, item: dict[str, Any], at: Path_, lists: dict[str, frozenset[str]]) -> AggregateRule | None:
        size = item.get("min_group_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            self.problem(at + ("min_group_size",), "expected a whole number of at least 2")
            return None
        return AggregateRule(
            id=self._rule_id(item),
            layer=self.layer,
            products=self._products(item, at),
            condition=self._condition(item, at, lists),
            min_group_size=size,
            description=self._text(item, at),
            line=self.lines.get(at, 0),
        )

    def _selector(self, value: Any, at: Path_) -> ColumnSelector:
        if not isinstance(value, dict) or not value:
            self.problem(at, "expected a column selector: pii, classification, names and/or tags_any")
            return ColumnSelector(names=frozenset({"\0"}))  # matches nothing; the file is rejected anyway
        self._keys(value, at, ("pii", "classification", "names", "tags_any"), ())
        pii = value.get("pii")
        if pii is not None and not isinstance(pii, bool):
            self.problem(at + ("pii",), "expected true or false")
        classification = value.get("classification", [])
        if isinstance(classification, str):
            classification = [classification]
        if not isinstance(classification, list) or not all(isinstance(c, str) for c in classification):
            self.problem(at + ("classification",), "expected a classification or a list of them")
            classification = []
        return ColumnSelector(
            pii=pii if isinstance(pii, bool) else None,
            classification=frozenset(classification),
            names=frozenset(self._strings(value, at, "names")),
            tags_any=frozenset(self._strings(value, at, "tags_any")),
        )

    def _custom_expression(self, text: str, at: Path_) -> None:
        if "{column}" not in text:
            self.problem(at, "a custom mask expression refers to the column as {column}")
            return
        try:
            parsed = sqlglot.parse(text.replace("{column}", '"masked_column"'), read="postgres")
        except SqlglotError as err:
            self.problem(at, f"does not parse: {str(err).splitlines()[0]}")
            return
        if len(parsed) != 1 or parsed[0] is None or parsed[0].find(exp.Select, exp.Table, exp.Star):
            self.problem(at, "must be one expression of the column (no queries or tables)")

    def _text(self, item: dict[str, Any], at: Path_) -> str:
        text = item.get("description", "")
        if not isinstance(text, str):
            self.problem(at + ("description",), "expected text")
            return ""
        return text

    def _string(self, item: dict[str, Any], at: Path_, key: str) -> str | None:
        value = item.get(key)
        if not isinstance(value, str) or not value:
            self.problem(at + (key,), "expected a name")
            return None
        return value

    def _strings(self, item: dict[str, Any], at: Path_, key: str) -> list[str]:
        value = item.get(key, [])
        if isinstance(value, str):
            self.problem(at + (key,), f"expected a list, like [{value}]")
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(at + (key,), "expected a list of names")
            return []
        return value


def dotted_path(at: Iterable[str | int]) -> str:
    """``access[0].effect`` from ("access", 0, "effect"): how every file error names its place."""
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
