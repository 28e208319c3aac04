"""`sidrec catalog update` on a real slice: titles a tiny title-token model never saw get IDs, rows
and empty co-engagement rows, and every canvas serves them in the slots kept for fresh titles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.artifacts import read_manifest
from core.data import DataConfig, load_data
from core.sequences import SequenceConfig
from eval.unseen_titles import hold_out
from gen_fm.config import PretrainConfig
from gen_fm.model import load_model
from gen_fm.train import pretrain
from prompt_tuning.candidates import CandidateIndex
from prompt_tuning.canvases import canvas_names, get_canvas
from semantic_ids.builder import build_ids
from semantic_ids.config import SemanticIDConfig
from serving.recommender import Recommender
from sidrec.catalog import update_catalog
from sidrec.cli import main
from tests.prompt_tuning.conftest import ID_CONFIG, _write_slice


@pytest.fixture(scope="module")
def updated(data_dir, tmp_path_factory):
    """A model trained without a fifth of a tagged slice's test-target titles (text-bearing IDs, so
    queries and themes find titles), then the catalog update."""
    root = tmp_path_factory.mktemp("catalog")
    data = load_data(DataConfig(data_dir=str(_write_slice(data_dir / "ml-latest-small", root / "ml"))))
    seq = SequenceConfig(max_history=8)
    held = hold_out(data, seq, 0.2, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_ids(held.seen, SemanticIDConfig.create(**ID_CONFIG), root / "ids", seq)
        config = PretrainConfig.from_preset("tiny", epochs=1, eval_every=0, history_tokens="titles")
        model = pretrain(held.data, seq, root / "ids", root / "run", config)
        report = update_catalog(model, held.data, root / "updated")
    finally:
        torch.set_num_threads(threads)
    cat = list(data.catalog["item_id"])
    return model, root / "updated", report, [cat[r] for r in held.unseen], held.data


def test_new_titles_get_ids_rows_and_a_record_of_what_was_trained(updated) -> None:
    model_dir, out, report, unseen, _ = updated
    old, new = load_model(model_dir), load_model(out)  # load_model checks every hash
    assert report["added_titles"] == len(unseen) == new.ids.num_items - old.ids.num_items
    assert set(unseen) <= set(new.ids.item_ids)
    assert new.ids.item_ids[: old.ids.num_items] == old.ids.item_ids
    assert (new.ids.codes[: old.ids.num_items] == old.ids.codes).all()  # old IDs never move
    assert new.layout.vocab_size == old.layout.vocab_size + len(unseen)  # one title token each
    assert new.co_engagement().num_items == new.ids.num_items
    assert new.co_engagement().of(new.ids.num_items - 1).size == 0
    assert read_manifest(out)["catalog"]["trained_titles"] == old.ids.num_items


@pytest.mark.parametrize("source", ["content", "model"])
def test_every_canvas_serves_a_new_title_in_its_fresh_slots(updated, source) -> None:
    _, out, _, unseen, data = updated
    rec = Recommender.from_pretrained(str(out), backend="transformers", fresh_share=0.2, fresh_source=source)
    new = load_model(out)
    index = CandidateIndex(new.ids.path)
    fresh_row = new.ids.index_of(unseen[0])
    nearest_old = next(
        int(r) for r in np.argsort(-(index.title_vecs @ index.title_vecs[fresh_row])) if r < rec.fresh_rows[0]
    )
    categories = dict(zip(data.catalog["item_id"], data.catalog["categories"]))
    context = {
        "query": new.ids.title(unseen[0]),
        "source": new.ids.item_ids[nearest_old],
        "theme": categories[unseen[0]][0],
    }
    history = [t for t in new.ids.item_ids[:5]]
    for canvas in canvas_names():
        field = get_canvas(canvas).context_field
        res = rec.recommend(history, canvas, k=10, **({field: context[field]} if field else {}))
        fresh = [r.item_id for r in res if r.fresh]
        assert 1 <= len(fresh) <= 2, (canvas, [r.item_id for r in res])
        assert set(fresh) <= set(unseen) and len({r.item_id for r in res}) == len(res)
        assert not {r.item_id for r in res if not r.fresh} & set(unseen)  # only the kept slots hold them
    plain = rec.recommend(history, "home", k=10, fresh_share=0.0)
    assert not any(r.fresh for r in plain) and not {r.item_id for r in plain} & set(unseen)
    with pytest.raises(ValueError, match="fresh_share"):
        rec.recommend(history, "home", k=10, fresh_share=1.5)
    cold = rec.recommend([], "home", k=10)  # no history to compare by content: the model's search
    assert sum(r.fresh for r in cold) == 2
    rec.close()


def test_content_slots_hold_the_fresh_titles_nearest_the_history(updated) -> None:
    _, out, _, unseen, _ = updated
    rec = Recommender.from_pretrained(str(out), backend="transformers", fresh_share=0.1)
    history = list(rec.ids.item_ids[:5])
    got = [r for r in rec.recommend(history, "home", k=10) if r.fresh]
    vec = rec._content
    rows = [rec.ids.index_of(t) for t in unseen]
    q = vec[[rec.ids.index_of(t) for t in history]].mean(axis=0)
    best = rows[int(np.argmax(vec[rows] @ q))]
    assert [r.item_id for r in got] == [rec.ids.item_ids[best]]
    with pytest.raises(ValueError, match="fresh_source"):
        Recommender.from_pretrained(str(out), backend="transformers", fresh_source="popular")
    rec.close()


def test_clear_errors(updated, tmp_path, capsys) -> None:
    model_dir, out, _, _, data = updated
    with pytest.raises(ValueError, match="no new titles"):
        update_catalog(out, data, tmp_path / "again")  # every title has an ID now
    with pytest.raises(ValueError, match="beside the served one"):
        update_catalog(model_dir, data, model_dir)
    assert not (tmp_path / "again").exists()
    argv = [
        "catalog",
        "update",
        "--model",
        str(out),
        "--data",
        str(data.path.parent),
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(argv) != 0
    said = capsys.readouterr()
    assert "no new titles" in said.out + said.err


@pytest.mark.vllm
def test_vllm_serves_the_updated_folder_as_transformers_does(updated) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[serving]')")
    _, out, _, unseen, _ = updated
    common = dict(num_beams=10, max_k=10, fresh_share=0.2, fresh_source="model")  # the fresh search
    hf = Recommender.from_pretrained(str(out), backend="transformers", **common)
    vl = Recommender.from_pretrained(
        str(out), backend="vllm", enforce_eager=True, kv_cache_gib=0.25, **common
    )
    try:
        history = list(hf.ids.item_ids[:5])
        for res_vl, res_hf in zip(
            vl.recommend_batch([{"history": history}, {"history": history[:2], "canvas": "t2t"}]),
            hf.recommend_batch([{"history": history}, {"history": history[:2], "canvas": "t2t"}]),
        ):
            assert [(r.item_id, r.fresh) for r in res_vl] == [(r.item_id, r.fresh) for r in res_hf]
            assert {r.item_id for r in res_vl if r.fresh} <= set(unseen)
    finally:
        vl.close()
        hf.close()
