"""Per-request business rules, applied while decoding (never a post-filter that shortens the list).

A rule set (:class:`Rules`, JSON shape in its docstring) compiles against the model's ID map and an
optional catalog attribute table (:func:`compile_rules`) into a :class:`RuleMask`: rows to exclude
plus an optional allow-list. Both backends stack it onto the request's trie
:class:`~semantic_ids.trie.Restriction` (``RuleMask.narrow``), so the beam never enters a forbidden
branch and the scores stay renormalised over what the request permits. Attributes (``categories``,
``year``) come from the catalog of the data the IDs were built from, loaded at start-up
(:func:`load_attributes`); an unknown attribute or value is an error (a typo such as "Horor" must not
let every horror film through), strings match case-insensitively, and year bounds keep only titles
whose year is known. Diversity is a constraint across beams, which the trie cannot express: it is the
beam search's final selection, greedy over ``k * diversity_widen`` beams, repeated with twice the beam
up to ``max_k * diversity_widen`` (``Recommender.run``); when even the widest beam holds too few
groups, the request gets fewer than ``k`` titles and ``reason`` says so. With an attribute as
``group_by``, a title counts in every group it belongs to; titles with no value share "unknown"."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.data import DataConfig, load_data
from semantic_ids.ids import SemanticIDs
from semantic_ids.trie import PrefixTrie, Restriction

YEAR = "year"  # the attribute min_year/max_year bound
SID_PREFIX = "sid_prefix"  # diversity by the first `prefix_length` codes of the semantic ID
_RULE_KEYS = (
    "exclude_titles",
    "allow_titles",
    "exclude_attributes",
    "require_attributes",
    "min_year",
    "max_year",
    "diversity",
)
_UNKNOWN_GROUP = ("<unknown>",)


class RuleError(ValueError):
    """A rule set is malformed or names something the model or catalog does not have."""


def _norm(value: Any) -> Any:
    """Match key of an attribute value: strings case-insensitively, numbers as themselves."""
    return value.casefold() if isinstance(value, str) else value


def _strict_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{what} must be an integer, got {value!r}")
    return value


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RuleError(f"{what} must be a list of title id strings, got {value!r}")
    return tuple(value)


def _value_map(value: Any, what: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(value, Mapping):
        raise RuleError(f"{what} must be an object of attribute -> list of values, got {value!r}")
    out = {}
    for name, vals in value.items():
        if (
            not isinstance(vals, (list, tuple))
            or not vals
            or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in vals)
        ):
            raise RuleError(f"{what}[{name!r}] must be a non-empty list of strings or numbers, got {vals!r}")
        out[str(name)] = tuple(vals)
    return out


@dataclass(frozen=True)
class Diversity:
    """At most ``max_per_group`` returned titles per group (see the module doc: beam-limited)."""

    max_per_group: int
    group_by: str = SID_PREFIX  # "sid_prefix" or a catalog attribute name ("categories")
    prefix_length: int = 1  # codes that form a group when group_by == "sid_prefix"

    @classmethod
    def from_dict(cls, obj: Any) -> "Diversity":
        if not isinstance(obj, Mapping):
            raise RuleError(f"diversity must be an object, got {obj!r}")
        unknown = sorted(set(obj) - {"max_per_group", "group_by", "prefix_length"})
        if unknown:
            raise RuleError(
                f"unknown diversity field(s) {unknown}; valid: max_per_group, group_by, prefix_length"
            )
        if "max_per_group" not in obj:
            raise RuleError("diversity needs max_per_group")
        m = _strict_int(obj["max_per_group"], "diversity.max_per_group")
        p = _strict_int(obj.get("prefix_length", 1), "diversity.prefix_length")
        group_by = obj.get("group_by", SID_PREFIX)
        if not isinstance(group_by, str) or not group_by:
            raise RuleError(f"diversity.group_by must be 'sid_prefix' or an attribute name, got {group_by!r}")
        if m < 1 or p < 1:
            raise RuleError("diversity.max_per_group and diversity.prefix_length must be >= 1")
        return cls(m, group_by, p)


@dataclass(frozen=True)
class Rules:
    """One request's business rules; empty by default. JSON shape (:meth:`from_dict`)::

        {"exclude_titles": ["tt1"], "allow_titles": [...],             # title lists
         "exclude_attributes": {"categories": ["Horror"]},              # drop titles having any value
         "require_attributes": {"categories": ["Comedy", "Drama"]},     # keep titles having one of them
         "min_year": 1980, "max_year": 1990,                            # bounds on the "year" attribute
         "diversity": {"max_per_group": 2, "group_by": "sid_prefix", "prefix_length": 1}}

    Every malformed or unknown key is a :class:`RuleError` naming it.
    """

    exclude_titles: tuple[str, ...] = ()
    allow_titles: tuple[str, ...] | None = None
    exclude_attributes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    require_attributes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    min_year: int | None = None
    max_year: int | None = None
    diversity: Diversity | None = None

    @classmethod
    def from_dict(cls, obj: "Rules | Mapping[str, Any] | None") -> "Rules":
        """Validate a JSON object; every malformed or unknown key is a :class:`RuleError` naming it."""
        if obj is None:
            return cls()
        if isinstance(obj, Rules):
            return obj
        if not isinstance(obj, Mapping):
            raise RuleError(f"rules must be an object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_RULE_KEYS))
        if unknown:
            raise RuleError(f"unknown rule(s) {unknown}; valid: {list(_RULE_KEYS)}")
        years = {k: None if obj.get(k) is None else _strict_int(obj[k], k) for k in ("min_year", "max_year")}
        if None not in years.values() and years["min_year"] > years["max_year"]:
            raise RuleError(f"min_year {years['min_year']} is after max_year {years['max_year']}")
        return cls(
            exclude_titles=_str_list(obj.get("exclude_titles") or [], "exclude_titles"),
            allow_titles=None
            if obj.get("allow_titles") is None
            else _str_list(obj["allow_titles"], "allow_titles"),
            exclude_attributes=_value_map(obj.get("exclude_attributes") or {}, "exclude_attributes"),
            require_attributes=_value_map(obj.get("require_attributes") or {}, "require_attributes"),
            diversity=None if obj.get("diversity") is None else Diversity.from_dict(obj["diversity"]),
            **years,
        )

    @property
    def is_empty(self) -> bool:
        return self == Rules()


class AttributeTable:
    """Catalog attributes of the model's titles, one tuple of values per ID-map row (empty = unknown).

    Built once at start-up; rules then cost one dictionary lookup per value (an inverted index).
    """

    def __init__(
        self,
        num_items: int,
        values: Mapping[str, Sequence[tuple[Any, ...]]],
        source: str = "",
        matched: int | None = None,
    ) -> None:
        self.num_items = num_items
        self.source = source  # where the table came from (for /health and errors)
        self.matched = num_items if matched is None else matched  # titles found in the catalog
        self._values = {name: list(v) for name, v in values.items()}
        self._index: dict[str, dict[Any, np.ndarray]] = {}
        self._numbers: dict[str, np.ndarray] = {}  # filled on first use of a range rule
        self._shown: dict[str, dict[Any, Any]] = {}  # match key -> a value as spelt in the catalog
        for name, per_row in self._values.items():
            if len(per_row) != num_items:
                raise ValueError(f"attribute {name!r} has {len(per_row)} rows for {num_items} titles")
            rows: dict[Any, list[int]] = {}
            for r, vals in enumerate(per_row):
                for v in vals:
                    rows.setdefault(_norm(v), []).append(r)
                    self._shown.setdefault(name, {}).setdefault(_norm(v), v)
            self._index[name] = {k: np.unique(np.asarray(v, dtype=np.int64)) for k, v in rows.items()}

    @classmethod
    def from_records(
        cls, item_ids: Sequence[str], records: Mapping[str, Mapping[str, Any]], source: str = ""
    ) -> "AttributeTable":
        """``records[item_id][attribute]`` -> table over ``item_ids``; a list value is multi-valued,
        ``None`` or a missing title is unknown."""
        names = sorted({a for rec in records.values() for a in rec if a not in ("item_id", "title")})
        values: dict[str, list[tuple[Any, ...]]] = {n: [] for n in names}
        matched = 0
        for iid in item_ids:
            rec = records.get(iid)
            matched += rec is not None
            for n in names:
                v = None if rec is None else rec.get(n)
                vals = tuple(v) if isinstance(v, (list, tuple)) else (() if v is None else (v,))
                values[n].append(tuple(x for x in vals if x is not None and x != ""))
        return cls(len(item_ids), values, source, matched)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._values)

    def values_of(self, name: str, row: int) -> tuple[Any, ...]:
        return self._values[self._check(name)][row]

    def rows_with(self, name: str, values: Sequence[Any]) -> np.ndarray:
        """Rows having any of ``values`` (an unknown value is a :class:`RuleError`)."""
        index = self._index[self._check(name)]
        missing = [v for v in values if _norm(v) not in index]
        if missing:
            known = sorted(self._shown[name].values(), key=str)
            shown = ", ".join(repr(v) for v in known[:12]) + (" ..." if len(known) > 12 else "")
            raise RuleError(f"no title has {name} = {', '.join(repr(v) for v in missing)} (values: {shown})")
        return np.unique(np.concatenate([index[_norm(v)] for v in values]))

    def numbers(self, name: str) -> np.ndarray:
        """(N,) the attribute as one number per title, NaN where unknown (for range rules; cached,
        read-only)."""
        if name not in self._numbers:
            out = np.full(self.num_items, np.nan)
            for r, vals in enumerate(self._values[self._check(name)]):
                nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if nums:
                    out[r] = float(nums[0])
            out.setflags(write=False)
            self._numbers[name] = out
        return self._numbers[name]

    def groups(self, name: str, rows: Sequence[int]) -> list[tuple[Any, ...]]:
        per_row = self._values[self._check(name)]
        return [tuple(_norm(v) for v in per_row[r]) or _UNKNOWN_GROUP for r in rows]

    def _check(self, name: str) -> str:
        if name not in self._values:
            raise RuleError(
                f"unknown attribute {name!r}; this catalog has {list(self.names) or 'none'}"
                + ("" if self.names else " (start the server with --data to load one)")
            )
        if name not in self._index or not self._index[name]:
            raise RuleError(f"attribute {name!r} is unknown for every title of this catalog")
        return name


def load_attributes(ids: SemanticIDs, data_dir: str | None, dataset: str | None = None) -> AttributeTable:
    """Attributes of ``ids``'s titles from the data directory the IDs were built from (``core.data``)."""
    data = load_data(DataConfig(data_dir=data_dir, dataset=dataset))
    cat = data.catalog
    columns = [c for c in cat.column_names if c not in ("item_id", "title")]
    records = {
        iid: dict(zip(columns, vals)) for iid, *vals in zip(cat["item_id"], *(cat[c] for c in columns))
    }
    table = AttributeTable.from_records(ids.item_ids, records, source=str(data.path))
    if table.matched == 0:
        raise ValueError(
            f"none of the model's {ids.num_items} titles is in the catalog of {data.path}: "
            f"is it the dataset the model was trained on (--dataset)?"
        )
    return table


def title_rows(ids: SemanticIDs, titles: Sequence[str] | None, what: str) -> list[int]:
    """ID-map rows of title ids; unknown ones raise naming them (a silently dropped title changes results)."""
    if titles is None:
        return []
    if isinstance(titles, str):
        raise ValueError(f"{what} must be a list of title ids, got the string {titles!r}")
    unknown = [t for t in titles if t not in ids]
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(
            f"{len(unknown)} unknown title id(s) in {what}: {shown} (titles without a "
            f"semantic ID must be assigned one first: `sidrec ids assign`)"
        )
    return [ids.index_of(t) for t in titles]


@dataclass(frozen=True)
class DiversityCap:
    """The final-selection rule: greedy by score, at most ``max_per_group`` titles per group."""

    max_per_group: int
    label: str  # for reasons: "first code", "categories", ...
    group_keys: Any  # Callable[[Sequence[int]], list[tuple]]: the tuple of groups of each item row

    def select(self, rows: Sequence[int], k: int) -> list[int]:
        """Indices into ``rows`` (best first) of the titles kept: at most ``k``, cap respected."""
        counts: dict[Any, int] = {}
        kept = []
        for i, groups in enumerate(self.group_keys(list(rows))):
            if len(kept) == k:
                break
            if all(counts.get(g, 0) < self.max_per_group for g in groups):
                kept.append(i)
                for g in groups:
                    counts[g] = counts.get(g, 0) + 1
        return kept


@dataclass(frozen=True)
class RuleMask:
    """A compiled rule set: what the trie must forbid, and the diversity cap of the final selection."""

    exclude_rows: np.ndarray  # rows the rules forbid
    allow_rows: np.ndarray | None  # rows the rules permit at most (None: no allow-list)
    cap: DiversityCap | None
    applied: tuple[str, ...]  # rules that narrowed the catalogue (named in reasons)

    def narrow(self, trie: PrefixTrie, view: Restriction | None) -> Restriction | None:
        """Stack the rules onto a request's restriction (None = nothing restricted yet)."""
        if not len(self.exclude_rows) and self.allow_rows is None:
            return view
        base = view if view is not None else trie
        return base.restrict(exclude_rows=self.exclude_rows, allow_rows=self.allow_rows)


def compile_rules(
    rules: Rules | Mapping[str, Any] | None, ids: SemanticIDs, attributes: AttributeTable | None
) -> RuleMask:
    """Rows each rule forbids or permits, checked against the ID map and the attribute table."""
    rules = Rules.from_dict(rules)
    n = ids.num_items
    table = attributes if attributes is not None else AttributeTable(n, {})
    excl: list[np.ndarray] = [np.asarray(title_rows(ids, rules.exclude_titles, "exclude_titles"), np.int64)]
    allow: np.ndarray | None = None
    applied = ["exclude_titles"] if rules.exclude_titles else []
    if rules.allow_titles is not None:
        allow = np.unique(np.asarray(title_rows(ids, rules.allow_titles, "allow_titles"), np.int64))
        applied.append("allow_titles")
    for name, values in rules.exclude_attributes.items():
        excl.append(table.rows_with(name, values))
    if rules.exclude_attributes:
        applied.append("exclude_attributes")
    for name, values in rules.require_attributes.items():
        rows = table.rows_with(name, values)
        allow = rows if allow is None else np.intersect1d(allow, rows, assume_unique=True)
    if rules.require_attributes:
        applied.append("require_attributes")
    if rules.min_year is not None or rules.max_year is not None:
        year = table.numbers(YEAR)  # raises when the catalog has no years
        lo = -math.inf if rules.min_year is None else rules.min_year
        hi = math.inf if rules.max_year is None else rules.max_year
        excl.append(np.flatnonzero(~((year >= lo) & (year <= hi))))  # NaN (unknown year) fails both
        applied += [k for k in ("min_year", "max_year") if getattr(rules, k) is not None]
    cap = None
    if rules.diversity is not None:
        cap = _cap(rules.diversity, ids, table)
        applied.append("diversity")
    exclude_rows = np.unique(np.concatenate(excl)) if excl else np.zeros(0, np.int64)
    return RuleMask(exclude_rows.astype(np.int64), allow, cap, tuple(applied))


def _cap(d: Diversity, ids: SemanticIDs, table: AttributeTable) -> DiversityCap:
    if d.group_by == SID_PREFIX:
        if d.prefix_length > ids.sid_length:
            raise RuleError(
                f"diversity.prefix_length {d.prefix_length} exceeds the {ids.sid_length} "
                f"codes of a semantic ID"
            )
        codes = ids.codes[:, : d.prefix_length]
        label = "first code" if d.prefix_length == 1 else f"first {d.prefix_length} codes"
        # one group per title: its code prefix
        return DiversityCap(d.max_per_group, label, lambda rows: [(tuple(codes[r].tolist()),) for r in rows])
    table._check(d.group_by)  # unknown attribute: an error now, not at selection time
    return DiversityCap(d.max_per_group, d.group_by, lambda rows: table.groups(d.group_by, rows))


__all__ = [
    "AttributeTable",
    "Diversity",
    "DiversityCap",
    "RuleError",
    "RuleMask",
    "Rules",
    "compile_rules",
    "load_attributes",
    "title_rows",
]
