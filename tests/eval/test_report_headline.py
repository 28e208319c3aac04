"""The report's headline on tiny results folders: the home row parsed apart from the experiment
rows, the rule that picks a dataset's headline file, our best SASRec and the anchor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval.published import PUBLISHED
from eval.report_headline import ANCHOR, headline
from eval.report_parsers import load_results
from eval.report_results import parse_home_row


def _figures(recall: float, ndcg: float) -> dict:
    return {
        "recall@5": recall / 2,
        "recall@10": recall,
        "ndcg@5": ndcg / 2,
        "ndcg@10": ndcg,
        "recall@5_se": 0.001,
        "recall@10_se": round(recall / 10, 6),
    }


def write_gen_fm(
    root: Path,
    stem: str,
    served: float,
    *,
    dataset: str = "amazon-beauty",
    split: str = "test",
    fusion_source: str | None = "chosen on validation (the model folder)",
    title_head: bool = True,
) -> Path:
    """A `sidrec eval` results file holding a home row (the beam's own figures are lower)."""
    home = {
        **_figures(served, served / 2),
        "fusion_k": 5,
        "fusion_weight": 2.0,
        "recent_titles": 5,
        "history_excluded": True,
        "model_history_excluded": _figures(0.06, 0.03),
        "co_engaged_alone": _figures(0.07, 0.04),
        "fusion_grid": [{"fusion_k": 1, "fusion_weight": 1.0, **_figures(0.01, 0.01)}],
    }
    if fusion_source is not None:
        home["fusion_source"] = fusion_source
    if title_head:
        home |= {
            "title_weight": 4.0,
            "beam_history_excluded": _figures(0.05, 0.02),
            "title_head_alone": _figures(0.055, 0.025),
        }
    path = root / "gen_fm" / f"{dataset}-{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {"benchmark": "gen_fm", "dataset": dataset, "split": split, "num_users": 400, "home_row": home}
    path.write_text(json.dumps(d | _figures(0.04, 0.02) | {"parameters": 1000}))
    return path


def write_baseline(
    root: Path, stem: str, recall: float, *, excluded: float | None, dataset: str = "amazon-beauty"
):
    """A `sidrec baseline` results file, with history-excluded figures when ``excluded`` is given."""

    def split(r: float) -> dict:
        return {
            s: {"recall@5": r / 2, "ndcg@5": r / 4, "recall@10": r, "ndcg@10": r / 2}
            for s in ("valid", "test")
        }

    d = {
        "kind": "baseline",
        "baseline": stem.split("-", 1)[0] if stem.startswith("popular") else "sasrec-ce",
        "dataset": dataset,
        "num_users": {"valid": 400, "test": 400},
        "metrics": split(recall),
        "params": 10,
        "eval_config": {"split": "test"},
    }
    if excluded is not None:
        d["history_excluded"] = split(excluded)
    path = root / "baselines" / f"{dataset}-{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def tiny_results(root: Path) -> Path:
    """Two candidate files (the headline serves 0.09), one not scored as served, one on valid."""
    write_gen_fm(root, "titles", 0.09)
    write_gen_fm(root, "codes", 0.08, title_head=False)
    write_gen_fm(root, "old-fixed-weight", 0.20, fusion_source=None)  # higher, but fixed weight
    write_gen_fm(root, "titles-valid", 0.30, split="valid")
    write_baseline(root, "sasrec-ce-both", 0.09, excluded=0.10)
    write_baseline(root, "sasrec-ce", 0.095, excluded=0.094)
    write_baseline(root, "sasrec-noexcl", 0.5, excluded=None)  # no history-excluded figures
    write_baseline(root, "popular", 0.01, excluded=0.9)  # not SASRec
    return root


def test_parse_home_row(tmp_path):
    d = json.loads(write_gen_fm(tmp_path, "titles", 0.09).read_text())
    h = parse_home_row(d, "results/gen_fm/x.json")
    assert list(h.parts) == ["model", "beam", "title_head", "counts", "served"]
    assert h.parts["served"]["recall@10"] == 0.09 and h.parts["served"]["recall@10_se"] == 0.009
    assert h.parts["counts"]["ndcg@10"] == 0.04 and h.parts["beam"]["recall@10"] == 0.05
    assert (h.as_served, h.members, h.title_weight, h.fusion_weight, h.split) == (True, 400, 4.0, 2.0, "test")
    assert parse_home_row({"dataset": "x", "recall@10": 0.1}, "n") is None  # written before the home row
    d["home_row"]["fusion_source"] = "defaults"
    assert not parse_home_row(d, "n").as_served
    d["home_row"]["co_engaged_alone"]["recall@10"] = "high"
    with pytest.raises(ValueError, match="counts recall@10"):
        parse_home_row(d, "n")


def test_home_rows_apart_from_experiments(tmp_path):
    res = load_results(tiny_results(tmp_path / "results"))
    assert not res.skipped
    assert len(res.home_rows) == 4
    ours = [r for r in res.retrieval if r.group == "ours"]
    assert len(ours) == 4 and all(r.metrics["recall@10"] == 0.04 for r in ours)  # the beam, not the home row
    both = next(r for r in res.retrieval if r.source.endswith("sasrec-ce-both.json"))
    assert both.history_excluded["recall@10"] == 0.10 and both.members == 400


def test_headline_rows(tmp_path):
    res = load_results(tiny_results(tmp_path / "results"))
    head = headline(res.home_rows, res.retrieval, "amazon-beauty")
    assert head.chosen.source == "results/gen_fm/amazon-beauty-titles.json"
    assert head.candidates == 2  # the fixed-weight and the valid-split files are not candidates
    assert [r.kind for r in head.rows] == [
        "model",
        "beam",
        "title_head",
        "counts",
        "served",
        "sasrec",
        "anchor",
    ]
    rows = {r.kind: r for r in head.rows}
    assert (rows["served"].recall, rows["served"].ndcg, rows["served"].se) == (0.09, 0.045, 0.009)
    assert rows["served"].key == "home_row" and rows["counts"].key == "home_row.co_engaged_alone"
    assert (rows["model"].recall, rows["counts"].recall) == (0.06, 0.07)
    assert "title weight 4" in rows["model"].label and "fusion weight 2" in rows["served"].label
    # our best SASRec by its history-excluded recall, its standard error computed over its members
    sasrec = rows["sasrec"]
    assert sasrec.source == "results/baselines/amazon-beauty-sasrec-ce-both.json"
    assert (sasrec.recall, sasrec.key, sasrec.se_computed) == (0.10, "history_excluded.test", True)
    assert sasrec.se == pytest.approx(math.sqrt(0.1 * 0.9 / 400))
    anchor = PUBLISHED["amazon-beauty"][ANCHOR]
    assert (rows["anchor"].recall, rows["anchor"].source) == (anchor["recall@10"], anchor["source"])


def test_headline_without_title_head_or_anchor(tmp_path):
    root = tmp_path / "results"
    write_gen_fm(root, "codes", 0.08, dataset="ml-latest-small", title_head=False)
    write_gen_fm(root, "codes-again", 0.08, dataset="ml-latest-small", title_head=False)  # a tie
    write_baseline(root, "sasrec", 0.07, excluded=None, dataset="ml-latest-small")
    res = load_results(root)
    head = headline(res.home_rows, res.retrieval, "ml-latest-small")
    assert head.chosen.source == "results/gen_fm/ml-latest-small-codes-again.json"  # ties: by name
    assert [r.kind for r in head.rows] == ["model", "counts", "served", "sasrec"]
    assert "history not excluded" in head.rows[-1].label and head.rows[-1].recall == 0.07
    empty = headline([], res.retrieval, "nowhere")
    assert (empty.rows, empty.chosen, empty.candidates) == ((), None, 0)
