"""Each member's outcome on a split, kept so that two rankers can be compared member by member.

``sidrec eval --ranks-out`` and ``sidrec baseline --ranks-out`` write one file each: the members
(their user ids), their held-out targets (item ids) and, for every ranking the run judged, the
0-based place of the target in it (-1 = not in the list). ``sidrec compare A:model B:history_excluded``
reads two such files, checks they judged the same members against the same targets on the same
data, and reports the paired difference with its standard error (``core.metrics.paired_difference``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.artifacts import read_json, write_json
from core.metrics import paired_difference, validate_ks

KIND = "member_ranks"
COMPARISON_KIND = "paired_comparison"  # what ``compare_member_ranks`` returns (a results file's kind)
SCHEMA = 1


def member_ranks_file(
    path: str | Path,
    *,
    ranks: dict[str, np.ndarray],
    users: Sequence[Any],
    targets: Sequence[str],
    dataset: str,
    split: str,
    data_fingerprint: str,
    list_length: int,
    source: dict[str, Any],
) -> None:
    """Write the file (atomically). `ranks`: ranking name -> (n,) target places; `list_length`: how
    long each judged list was (K of the largest figure it can give); `source`: what ranked them."""
    n = len(users)
    if len(targets) != n or not ranks or any(len(r) != n for r in ranks.values()):
        raise ValueError(
            f"{n} members, {len(targets)} targets and rankings of {[len(r) for r in ranks.values()]}"
        )
    write_json(
        path,
        {
            "kind": KIND,
            "schema": SCHEMA,
            "dataset": dataset,
            "split": split,
            "data_fingerprint": data_fingerprint,
            "list_length": int(list_length),
            "source": source,
            "users": [str(u) for u in users],
            "targets": [str(t) for t in targets],
            "ranks": {name: [int(x) for x in r] for name, r in ranks.items()},
        },
    )


def read_member_ranks(path: str | Path) -> dict[str, Any]:
    d = read_json(path)
    if d.get("kind") != KIND:
        raise ValueError(
            f"{path} is not a member-ranks file (kind {d.get('kind')!r}): write one with --ranks-out"
        )
    return d


def _ranking(d: dict[str, Any], name: str | None, path: str) -> tuple[str, np.ndarray]:
    names = list(d["ranks"])
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{path} holds rankings {names}: name one as {path}:NAME")
        name = names[0]
    if name not in d["ranks"]:
        raise ValueError(f"{path} has no ranking {name!r}; it holds {names}")
    return name, np.asarray(d["ranks"][name], dtype=np.int64)


def compare_member_ranks(a: str, b: str, ks: Sequence[int] = (10,)) -> dict[str, Any]:
    """The paired comparison of ranking `a` with ranking `b`, each given as FILE or FILE:NAME."""
    ks = validate_ks(ks)
    (pa, _, na), (pb, _, nb) = (s.partition(":") for s in (a, b))
    da, db = read_member_ranks(pa), read_member_ranks(pb)
    for field in ("dataset", "split", "data_fingerprint"):
        if da[field] != db[field]:
            raise ValueError(f"{pa} and {pb} judged different {field}s: {da[field]!r} and {db[field]!r}")
    name_a, ra = _ranking(da, na or None, pa)
    name_b, rb = _ranking(db, nb or None, pb)
    at_b = {u: i for i, u in enumerate(db["users"])}
    missing = [u for u in da["users"] if u not in at_b]
    if missing or len(at_b) != len(da["users"]):
        raise ValueError(
            f"{pa} and {pb} judged different members ({len(da['users'])} and {len(db['users'])}; "
            f"{len(missing)} of the first not in the second)"
        )
    order = np.asarray([at_b[u] for u in da["users"]], dtype=np.int64)
    if [db["targets"][i] for i in order] != da["targets"]:
        raise ValueError(f"{pa} and {pb} hold different targets for the same members")
    too_long = [k for k in ks if k > min(da["list_length"], db["list_length"])]
    if too_long:
        raise ValueError(
            f"K {too_long} is longer than the lists judged ({da['list_length']}, {db['list_length']})"
        )
    return {
        "kind": COMPARISON_KIND,
        "a": {"file": pa, "ranking": name_a, "source": da["source"]},
        "b": {"file": pb, "ranking": name_b, "source": db["source"]},
        "dataset": da["dataset"],
        "split": da["split"],
        **{f"@{k}": paired_difference(ra, rb[order], k) for k in ks},
    }
