"""Schema evolution: is a new version of a data product safe for the consumers of an old one?

Rules are written for SQL consumers. Every difference between two versions is found once
(previous -> new) and judged in both directions:

- *backward* (the default): consumers of the previous version keep working on the new one.
  Dropping or renaming a column, narrowing a type, making a column required, adding a required
  column and removing an enum value break them; adding a nullable column or widening a type
  does not.
- *forward*: consumers written against the new version work on the previous one (the same
  rules, new -> previous: adding a column or widening a type breaks them).
- *full*: both. ``*_transitive`` checks against every earlier version instead of only the
  newest earlier one (``previous_versions``). *none*: differences are listed, nothing breaks.

Weakening governance (removing a ``pii`` tag, a mask or a row filter, lowering a
classification) is breaking in every mode but ``none``. A breaking change needs a new major
version (``problems``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from gateway.descriptor import COMPATIBILITY, Column, Descriptor

DEFAULT_MODE = "backward"
_CLASSIFICATION_RANK = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}
_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")
# Integer digits a type holds exactly, for widening into decimal(p,s).
_INT_DIGITS = {"int32": 10, "int64": 19}


@dataclass(frozen=True)
class Change:
    """One difference between two versions; ``breaking`` under the mode it was checked in."""

    path: str
    description: str
    breaking: bool
    governance: bool = False  # weakens governance: needs the admin role to publish
    against: str = ""  # the version this change was found against

    def __str__(self) -> str:
        mark = "BREAKING" if self.breaking else "ok"
        return f"[{mark}] {self.path}: {self.description}"


@dataclass(frozen=True)
class _Difference:
    path: str
    description: str
    breaks_backward: bool
    breaks_forward: bool
    governance: bool = False


def mode_of(descriptor: Descriptor) -> str:
    return descriptor.raw.get("spec", {}).get("compatibility", DEFAULT_MODE)


def check(previous: Descriptor, new: Descriptor, mode: str) -> list[Change]:
    """Every difference from ``previous`` to ``new``, marked breaking under ``mode``."""
    if mode not in COMPATIBILITY:
        raise ValueError(f"unknown compatibility mode '{mode}' (known: {', '.join(COMPATIBILITY)})")
    base = mode.removesuffix("_transitive")
    backward, forward = base in ("backward", "full"), base in ("forward", "full")
    changes = []
    for d in _differences(previous, new):
        breaking = (backward and d.breaks_backward) or (forward and d.breaks_forward)
        if d.governance and base != "none":
            breaking = True
        changes.append(Change(d.path, d.description, breaking, d.governance, previous.version))
    return changes


def previous_versions(new: Descriptor, registered: Iterable[Descriptor], mode: str) -> list[Descriptor]:
    """The versions ``new`` is checked against: the newest earlier one, or every earlier one
    (transitive modes), newest first."""
    earlier = sorted((d for d in registered if d.version_key < new.version_key), key=lambda d: d.version_key, reverse=True)
    return earlier if mode.endswith("_transitive") else earlier[:1]


def check_against(new: Descriptor, registered: Iterable[Descriptor], mode: str | None = None) -> list[Change]:
    """``check`` against each version ``new`` must stay compatible with, in ``new``'s mode."""
    mode = mode or mode_of(new)
    changes: list[Change] = []
    for previous in previous_versions(new, registered, mode):
        changes.extend(check(previous, new, mode))
    return changes


def problems(new: Descriptor, changes: Iterable[Change]) -> list[str]:
    """Breaking changes within one major version: each one a reason to refuse ``new``."""
    out = []
    for change in changes:
        if change.breaking and change.against and int(change.against.split(".")[0]) == new.major:
            out.append(
                f"{change.path}: {change.description} (breaking against {change.against}; "
                f"publish it as {new.major + 1}.0.0 or keep the change compatible)"
            )
    return out


# --- finding differences ----------------------------------------------------------------------


def _differences(old: Descriptor, new: Descriptor) -> list[_Difference]:
    out: list[_Difference] = []
    old_cols = {c.name: c for c in old.columns}
    new_cols = {c.name: c for c in new.columns}
    dropped = [c for c in old.columns if c.name not in new_cols]
    added = [c for c in new.columns if c.name not in old_cols]
    for c in dropped:
        renamed = [a.name for a in added if a.type == c.type]
        hint = f" (renamed to {renamed[0]}?)" if len(dropped) == 1 and len(renamed) == 1 else ""
        out.append(_Difference(f"spec.schema.{c.name}", f"column dropped{hint}", True, c.required))
    for c in added:
        kind = "required" if c.required else "nullable"
        out.append(_Difference(f"spec.schema.{c.name}", f"{kind} column added ({c.type.name})", c.required, True))
    for name, o in old_cols.items():
        n = new_cols.get(name)
        if n is not None:
            out.extend(_column_differences(o, n))
    out.extend(_governance_differences(old, new))
    if old.source != new.source:
        out.append(_Difference("spec.source", "source changed", False, False))
    return out


def _column_differences(old: Column, new: Column) -> list[_Difference]:
    path = f"spec.schema.{old.name}"
    out: list[_Difference] = []
    if old.type != new.type:
        wider, narrower = widens(old.type.name, new.type.name), widens(new.type.name, old.type.name)
        kind = "widened" if wider else "narrowed" if narrower else "changed"
        out.append(_Difference(f"{path}.type", f"type {kind} from {old.type.name} to {new.type.name}", not wider, not narrower))
    if old.required != new.required:
        if new.required:
            out.append(_Difference(f"{path}.required", "made required", True, False))
        else:
            out.append(_Difference(f"{path}.required", "made nullable", False, True))
    old_enum, new_enum = old.spec.get("enum"), new.spec.get("enum")
    if old_enum is None and new_enum is not None:
        out.append(_Difference(f"{path}.enum", f"values restricted to {_values(new_enum)}", True, False))
    elif old_enum is not None and new_enum is None:
        out.append(_Difference(f"{path}.enum", "value restriction removed", False, True))
    elif old_enum is not None and new_enum is not None:
        removed = [v for v in old_enum if v not in new_enum]
        added = [v for v in new_enum if v not in old_enum]
        if removed:
            out.append(_Difference(f"{path}.enum", f"value(s) removed: {_values(removed)}", True, False))
        if added:
            out.append(_Difference(f"{path}.enum", f"value(s) added: {_values(added)}", False, True))
    if old.primary_key != new.primary_key:
        out.append(_Difference(f"{path}.primary_key", "now part of the primary key" if new.primary_key else "no longer part of the primary key", False, False))
    for key in ("min", "max", "pattern", "references"):
        if old.spec.get(key) != new.spec.get(key):
            out.append(_Difference(f"{path}.{key}", f"{key} changed from {old.spec.get(key)!r} to {new.spec.get(key)!r}", False, False))
    if old.spec.get("pii") and not new.spec.get("pii"):
        out.append(_Difference(f"{path}.pii", "pii tag removed (weakens governance)", True, True, governance=True))
    elif new.spec.get("pii") and not old.spec.get("pii"):
        out.append(_Difference(f"{path}.pii", "pii tag added", False, False))
    old_class, new_class = old.spec.get("classification"), new.spec.get("classification")
    if old_class != new_class:
        lowered = _CLASSIFICATION_RANK.get(new_class or "public", 0) < _CLASSIFICATION_RANK.get(old_class or "public", 0)
        desc = f"classification changed from {old_class or 'none'} to {new_class or 'none'}"
        out.append(_Difference(f"{path}.classification", desc + (" (weakens governance)" if lowered else ""), lowered, lowered, governance=lowered))
    return out


def _governance_differences(old: Descriptor, new: Descriptor) -> list[_Difference]:
    out: list[_Difference] = []
    if "pii" in old.tags and "pii" not in new.tags:
        out.append(_Difference("metadata.tags", "pii tag removed (weakens governance)", True, True, governance=True))
    old_policies, new_policies = _policies(old), _policies(new)
    old_masks = {m.get("column"): m for m in old_policies.get("masks", [])}
    new_masks = {m.get("column"): m for m in new_policies.get("masks", [])}
    for column, mask in old_masks.items():
        if column not in new_masks:
            out.append(_Difference(f"spec.policies.masks.{column}", f"mask '{mask.get('mask')}' removed (weakens governance)", True, True, governance=True))
        elif new_masks[column] != mask:
            out.append(_Difference(f"spec.policies.masks.{column}", "mask changed", False, False))
    for column in new_masks.keys() - old_masks.keys():
        out.append(_Difference(f"spec.policies.masks.{column}", f"mask '{new_masks[column].get('mask')}' added", False, False))
    new_filters = [f.get("filter") for f in new_policies.get("row_filters", [])]
    for f in old_policies.get("row_filters", []):
        if f.get("filter") not in new_filters:
            out.append(_Difference("spec.policies.row_filters", f"row filter '{f.get('filter')}' removed (weakens governance)", True, True, governance=True))
    return out


def _policies(d: Descriptor) -> dict[str, Any]:
    policies = d.raw.get("spec", {}).get("policies") or {}
    return policies if isinstance(policies, dict) else {}


def _values(values: list[Any]) -> str:
    return ", ".join(map(str, values))


# --- types ------------------------------------------------------------------------------------


def widens(old: str, new: str) -> bool:
    """True when every value of contract type ``old`` is exactly a value of type ``new``."""
    if old == new:
        return True
    simple = {
        ("int32", "int64"), ("int32", "double"), ("float", "double"), ("date", "timestamp"),
        ("date", "timestamptz"), ("timestamp", "timestamptz"),
    }
    if (old, new) in simple:
        return True
    new_dec, old_dec = _DECIMAL.match(new), _DECIMAL.match(old)
    if new_dec:
        p, s = int(new_dec.group(1)), int(new_dec.group(2))
        if old in _INT_DIGITS:
            return p - s >= _INT_DIGITS[old]
        if old_dec:
            op, os_ = int(old_dec.group(1)), int(old_dec.group(2))
            return s >= os_ and p - s >= op - os_
    return False
