"""`sidrec eval` on a tiny trained model: the report's figures, validity and determinism."""

from __future__ import annotations

import json

import numpy as np

import pytest

from eval.config import EvalConfig
from eval.next_title import evaluate_model
from gen_fm.config import PretrainConfig
from gen_fm.train import pretrain
from sidrec.cli import main
from core.data import DataConfig
from core.sequences import SequenceConfig
from tests.tiny_folders import write_id_artifact


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    from core.data import load_data

    dc = DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=20)
    data = load_data(dc)
    root = tmp_path_factory.mktemp("eval")
    ids = write_id_artifact(root / "ids", list(data.catalog["item_id"]), (16, 16, 16, 4))
    config = PretrainConfig.from_preset("tiny", epochs=1, batch_size=64, num_user_buckets=8, val_users=4)
    return dc, pretrain(dc, SequenceConfig(max_history=20), ids.path, root / "run", config)


def test_report(model_dir, tmp_path):
    dc, path = model_dir
    out = tmp_path / "r.json"
    rep = evaluate_model(path, dc, EvalConfig(ks=(5, 10)), out=out, max_users=6, unconstrained_users=3)
    saved = json.loads(out.read_text())
    for key in (
        "recall@5",
        "ndcg@5",
        "recall@10",
        "ndcg@10",
        "invalid_rate",
        "num_users",
        "invalid_rate_unconstrained",
        "artifacts",
    ):
        assert key in saved
    assert rep["num_users"] == 6 and rep["num_beams"] >= 10
    assert rep["invalid_rate"] == 0.0
    assert 0.0 <= rep["invalid_rate_unconstrained"] <= 1.0
    assert rep["ndcg@10"] <= rep["recall@10"] and rep["recall@5"] <= rep["recall@10"]
    assert rep["artifacts"]["data_fingerprint"] and rep["artifacts"]["model_manifest"]
    again = evaluate_model(path, dc, EvalConfig(ks=(5, 10)), max_users=6, unconstrained_users=3)
    assert {k: again[k] for k in ("recall@10", "ndcg@10")} == {k: rep[k] for k in ("recall@10", "ndcg@10")}


def test_guards(model_dir, data_dir):
    dc, path = model_dir
    with pytest.raises(ValueError, match="narrower than K"):
        evaluate_model(path, dc, EvalConfig(ks=(5, 10)), num_beams=5, max_users=2)
    other = DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=21)
    with pytest.raises(ValueError, match="trained on other data"):
        evaluate_model(path, other, EvalConfig(), max_users=2)


def test_cli(model_dir, ml_slice_args, tmp_path, capsys):
    _, path = model_dir
    rc = main(
        ["eval", "--model", str(path), *ml_slice_args, "--eval-users", "3", "--out", str(tmp_path / "e.json")]
    )
    assert rc == 0
    assert "recall@10" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["num_users"] == 3


def decoded(gen, beams, histories, targets, heads=None):
    """A ``Decoded`` of given beams (and title-head lists) for the home-row arithmetic."""
    from eval.next_title import Decoded
    from gen_fm.decode import Recommendations

    recs = [Recommendations(list(b), [], [0.0] * len(b), 0) for b in beams]
    heads = None if heads is None else [Recommendations(list(h), [], [0.0] * len(h), 0) for h in heads]
    return Decoded(gen, None, None, histories, [], targets, recs, 0.0, None, heads)


def test_the_models_ranking_fuses_its_beam_with_its_title_head(tmp_path):
    """With a title weight chosen, the model's ranking is its beam fused with its title head: a
    target only the head ranks enters the top K, the history stays out of both, and without a
    chosen weight (or without a head) the ranking is the beam alone."""
    from gen_fm.co_engagement import CO_ENGAGEMENT_FILE, CoEngagement, load_co_engagement, save_co_engagement
    from eval.next_title import served_home_row

    save_co_engagement(
        tmp_path / CO_ENGAGEMENT_FILE,
        CoEngagement(np.full((40, 1), -1, dtype=np.int64), np.zeros((40, 1), dtype=np.int64), window=3),
    )

    class Gen:
        path = tmp_path
        chosen = None

        def co_engagement(self):
            return load_co_engagement(tmp_path / CO_ENGAGEMENT_FILE)

        def fusion(self):
            return self.chosen

    beams, heads = [list(range(10))], [[30, 31, 0]]  # the head's first title is the target
    g = Gen()
    alone = served_home_row(decoded(g, beams, [[]], [30], heads), (5,))
    assert alone["title_weight"] == 0 and alone["model_history_excluded"]["recall@5"] == 0
    assert alone["title_head_alone"]["recall@5"] == 1 and alone["beam_history_excluded"]["recall@5"] == 0
    g.chosen = {"fusion_k": 5, "fusion_weight": 0.0, "title_weight": 2.0}
    fused = served_home_row(decoded(g, beams, [[]], [30], heads), (5,))
    assert fused["title_weight"] == 2 and fused["model_history_excluded"]["recall@5"] == 1
    assert fused["recall@5"] == 1  # the home row with the counts off is the model's ranking
    without_head = served_home_row(decoded(g, beams, [[]], [30]), (5,))
    assert without_head["title_weight"] == 0 and "title_head_alone" not in without_head
    # the history never comes back through the head
    d = decoded(g, beams, [[30]], [31], heads)
    assert 30 not in d.ranked(2.0)[0] and d.ranked(2.0)[0][0] == 0


def test_home_row_fuses_the_beam_with_the_recent_titles_co_engaged_titles(tmp_path):
    """The served home row (``served_home_row``): a target only the co-engagement table knows is
    found by the fusion, the history's titles leave the beam as serving excludes them, and a member
    without history keeps the model's ranking."""
    import numpy as np

    from gen_fm.co_engagement import CO_ENGAGEMENT_FILE, CoEngagement, load_co_engagement, save_co_engagement
    from eval.next_title import served_home_row

    neighbours = np.full((30, 3), -1, dtype=np.int64)
    neighbours[7] = [20, 21, 22]  # title 7's most co-engaged titles
    save_co_engagement(
        tmp_path / CO_ENGAGEMENT_FILE, CoEngagement(neighbours, (neighbours >= 0).astype(np.int64), window=3)
    )

    class Gen:  # a model folder holding the table
        path = tmp_path

        def co_engagement(self):
            return load_co_engagement(tmp_path / CO_ENGAGEMENT_FILE)

        def fusion(self):  # none chosen: the defaults
            return None

    beams = [list(range(10)), list(range(10)), list(range(10))]  # the model's ranking: titles 0..9
    histories = [[3, 7], [7], []]  # newest titles 7, 7; the third member has no history
    targets = [20, 9, 5]
    rep = served_home_row(decoded(Gen(), beams, histories, targets), (5, 10))
    # member 0: 20 (co-engaged rank 1) ties the model's rank 1 and enters the top 10; member 1's
    # model hit at rank 10 (9th without title 7) is pushed out by 20, 21, 22; member 2 keeps the
    # model's list, 5 at rank 6
    assert rep["recall@10"] == pytest.approx(2 / 3) and rep["co_engagement"] == "the model folder"
    assert rep["co_engaged_alone"]["recall@10"] == pytest.approx(1 / 3)  # only member 0
    assert rep["members_with_co_engaged_titles"] == 2 and rep["history_excluded"]
    assert rep["model_history_excluded"]["recall@10"] == pytest.approx(2 / 3)  # 9 and 5
    # a history title in the beam gives its place to the next title: 6 moves from rank 6 to 5
    one = served_home_row(decoded(Gen(), [[1, 2, 3, 4, 5, 6]], [[1]], [6]), (5,))
    assert one["model_history_excluded"]["recall@5"] == one["recall@5"] == pytest.approx(1.0)
    assert {(g["fusion_k"], g["fusion_weight"]) for g in rep["fusion_grid"]} >= {(5, 1.0)}
    assert {(g["recent_titles"], g["recent_decay"]) for g in rep["recent_grid"]} >= {(5, 0.5)}
    assert 0 < rep["recall@10_se"] < 0.5


def test_fusion_weight_is_chosen_on_validation_and_read_by_eval_and_serving(model_dir, tmp_path):
    """``choose_fusion`` writes the validation's best weight into the folder; the served home row
    of ``sidrec eval`` and the Recommender both use it; an explicit serving config still wins."""
    import shutil

    from eval.next_title import choose_fusion
    from gen_fm.ranking import FUSION_WEIGHTS
    from gen_fm.model import FUSION_FILE, load_model
    from serving.recommender import Recommender

    dc, path = model_dir
    folder = tmp_path / "model"
    shutil.copytree(path, folder)
    with pytest.raises(ValueError, match="validation"):
        choose_fusion(folder, dc, EvalConfig(split="test"))
    fusion = choose_fusion(folder, dc, max_users=8)
    best = max(fusion["grid"], key=lambda g: (g["recall@10"], g["ndcg@10"]))
    assert fusion["fusion_weight"] == best["fusion_weight"]
    assert [g["fusion_weight"] for g in fusion["grid"]] == list(FUSION_WEIGHTS)
    assert 0.0 in FUSION_WEIGHTS  # the model alone is an allowed outcome
    gen = load_model(folder)  # the manifest lists the file and its hash verifies
    assert gen.fusion()["fusion_weight"] == fusion["fusion_weight"] and FUSION_FILE in gen.manifest["files"]
    rep = evaluate_model(folder, dc, EvalConfig(ks=(5, 10)), max_users=4, unconstrained_users=0)
    assert rep["home_row"]["fusion_weight"] == fusion["fusion_weight"]
    assert rep["home_row"]["fusion_source"].startswith("chosen on validation")
    rec = Recommender.from_pretrained(str(folder), backend="transformers")
    assert (rec.fusion_k, rec.fusion_weight) == (fusion["fusion_k"], fusion["fusion_weight"])
    rec = Recommender.from_pretrained(str(folder), backend="transformers", fusion_weight=3.0)
    assert rec.fusion_weight == 3.0
    # a folder without a choice serves the defaults
    assert load_model(path).fusion() is None
    assert Recommender.from_pretrained(str(path), backend="transformers").fusion_weight == 1.0


def test_member_ranks_of_the_model_pair_with_a_sasrec_of_the_same_members(model_dir, tmp_path):
    """The two pipelines name the same members and targets, so `sidrec compare` can pair them; the
    places reproduce the report's own figures."""
    from eval.baselines import run_baseline
    from eval.member_ranks import compare_member_ranks, read_member_ranks

    dc, path = model_dir
    rep = evaluate_model(
        path, dc, EvalConfig(ks=(5, 10)), unconstrained_users=0, ranks_out=tmp_path / "fm.json"
    )
    fm = read_member_ranks(tmp_path / "fm.json")
    assert set(fm["ranks"]) == {"served", "model", "co_engaged"} and len(fm["users"]) == rep["num_users"]
    hits = np.mean([0 <= r < 10 for r in fm["ranks"]["model"]])
    assert hits == pytest.approx(rep["home_row"]["model_history_excluded"]["recall@10"])
    tiny = dict(hidden=16, num_blocks=1, num_heads=1, dropout=0.1, batch_size=8, max_epochs=1)
    run_baseline(
        "sasrec-ce",
        dc,
        SequenceConfig(max_history=20),
        tmp_path / "s.json",
        ranks_out=tmp_path / "s-ranks.json",
        **tiny,
    )
    got = compare_member_ranks(
        f"{tmp_path / 'fm.json'}:model", f"{tmp_path / 's-ranks.json'}:history_excluded"
    )
    assert got["@10"]["members"] == rep["num_users"]
    assert got["@10"]["recall@10_a"] == pytest.approx(hits)
    with pytest.raises(SystemExit, match="name one as"):
        main(["compare", str(tmp_path / "fm.json"), str(tmp_path / "s-ranks.json")])
