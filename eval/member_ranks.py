"""Each member's outcome on a split, kept so that two rankers can be compared member by member.

``sidrec eval --ranks-out`` and ``sidrec baseline --ranks-out`` write one file each: the members
(their user ids), their held-out targets (item ids) and, for every ranking the run judged, the
0-based place of the target in it (-1 = not in the list). ``sidrec compare A:model B:history_excluded``
reads two such files, checks they judged the same members against the same targets on the same
data, and reports the paired difference with its standard error (``core.metrics.paired_difference``).
A side may name several runs of one ranker, joined by commas (``fm-seed0.json:model,fm-seed1.json:model``):
each member's score is then its mean over the runs, and the runs' own figures and their spread are
kept beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.artifacts import read_json, write_json

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
    twice = len(d["users"]) - len(set(d["users"]))
    if twice:
        raise ValueError(f"{path} lists {twice} member(s) more than once: one row per member")
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


def _side(spec: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """A side of a comparison: one FILE[:NAME], several joined by commas, or a list of them."""
    specs = [x for part in ([spec] if isinstance(spec, str) else spec) for x in part.split(",")]
    if not specs or any(not x.strip() for x in specs):
        raise ValueError(f"empty ranking in {spec!r}: give FILE[:RANKING], several joined by commas")
    return [(p, n or None) for p, _, n in (x.strip().partition(":") for x in specs)]


def side_label(side: dict[str, Any]) -> str:
    """A comparison side as people read it: FILE:RANKING, or each run's joined by commas."""
    return ",".join(f"{r['file']}:{r['ranking']}" for r in side.get("runs", [side]))


def compare_member_ranks(
    a: str | Sequence[str], b: str | Sequence[str], ks: Sequence[int] = (10,)
) -> dict[str, Any]:
    """The paired comparison of ranker `a` with ranker `b`, each one run (FILE or FILE:NAME) or
    several runs of it (such as seeds; joined by commas), every run judged on the same members
    against the same targets. A member's score on a side is its mean over that side's runs."""
    # here, not at the top: core.metrics loads torch, and the report reads these files without it
    from core.metrics import paired_difference, validate_ks

    ks = validate_ks(ks)
    sides = [_side(a), _side(b)]
    first_path = sides[0][0][0]
    first = read_member_ranks(first_path)
    at = {u: i for i, u in enumerate(first["users"])}
    out_sides, places = [], []
    for side in sides:
        runs, rows = [], []
        for path, name in side:
            d = first if path == first_path else read_member_ranks(path)
            for field in ("dataset", "split", "data_fingerprint"):
                if d[field] != first[field]:
                    raise ValueError(
                        f"{first_path} and {path} judged different {field}s: {first[field]!r} and {d[field]!r}"
                    )
            missing = [u for u in d["users"] if u not in at]
            if missing or len(d["users"]) != len(at):
                raise ValueError(
                    f"{first_path} and {path} judged different members ({len(at)} and {len(d['users'])}; "
                    f"{len(missing)} of the second not in the first"
                    + (f", e.g. {missing[0]!r})" if missing else ")")
                )
            order = np.asarray([at[u] for u in d["users"]], dtype=np.int64)
            if any(first["targets"][j] != t for j, t in zip(order, d["targets"])):
                raise ValueError(f"{first_path} and {path} hold different targets for the same members")
            too_long = [k for k in ks if k > d["list_length"]]
            if too_long:
                raise ValueError(
                    f"K {too_long} is longer than the lists judged in {path} ({d['list_length']})"
                )
            ranking, r = _ranking(d, name, path)
            row = np.empty_like(r)
            row[order] = r  # in the first file's member order
            rows.append(row)
            runs.append({"file": path, "ranking": ranking, "source": d["source"]})
        if len({(Path(r["file"]).resolve(), r["ranking"]) for r in runs}) != len(runs):
            raise ValueError(f"a run is named twice in {[(r['file'], r['ranking']) for r in runs]}")
        places.append(np.stack(rows))
        # a one-run side keeps its file, ranking and source at the top, as a single run's always has
        out_sides.append(runs[0] if len(runs) == 1 else {"runs": runs})
    return {
        "kind": COMPARISON_KIND,
        "a": out_sides[0],
        "b": out_sides[1],
        "dataset": first["dataset"],
        "split": first["split"],
        **{f"@{k}": paired_difference(places[0], places[1], k) for k in ks},
    }
