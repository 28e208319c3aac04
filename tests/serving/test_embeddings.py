"""Member and title embeddings (``serving.embeddings``): shapes, keys, determinism, API = export."""

from __future__ import annotations

import numpy as np
import pytest

from serving.batch import member_histories
from serving.embeddings import ModelEmbeddings, export_embeddings, read_embeddings


@pytest.fixture(scope="module")
def data(tiny_catalog_dir, tmp_path_factory):
    from core.data import load_data

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREC_CACHE_DIR", str(tmp_path_factory.mktemp("emb_cache")))
        return load_data(data_dir=str(tiny_catalog_dir))


def test_export_matches_the_api_and_is_deterministic(tiny_model_dir, data, tmp_path) -> None:
    import faiss

    m = export_embeddings(tiny_model_dir, data, tmp_path / "e", batch_size=3)
    emb = ModelEmbeddings(tiny_model_dir, batch_size=5)
    users, hists = member_histories(data, emb.ids, emb.gen.seq_config)
    keys, members = read_embeddings(tmp_path / "e", "members")
    assert keys == users and members.shape == (len(users), emb.dim) == (m["members"], m["dim"])
    np.testing.assert_allclose(members, emb.members(hists), atol=1e-5)  # batch size does not matter
    titles_keys, titles = read_embeddings(tmp_path / "e", "titles")
    assert titles_keys == list(emb.ids.item_ids) and titles.shape == (emb.ids.num_items, emb.dim)
    np.testing.assert_allclose(titles[[3, 7]], emb.titles(["tt003", "tt007"]), atol=1e-5)
    # left padding does not change a history's vector: alone or next to a longer one
    np.testing.assert_allclose(
        emb.members([hists[0][-2:]])[0], emb.members([hists[0][-2:], hists[1]])[0], atol=1e-5
    )
    index = faiss.read_index(str(tmp_path / "e" / "titles.faiss"))
    unit = titles / np.linalg.norm(titles, axis=1, keepdims=True)
    _, nn = index.search(unit[:2].astype(np.float32), 1)
    assert nn[:, 0].tolist() == [0, 1]  # each title is its own nearest
    export_embeddings(tiny_model_dir, data, tmp_path / "e2", batch_size=7)
    np.testing.assert_allclose(read_embeddings(tmp_path / "e2", "members")[1], members, atol=1e-6)


def test_bad_input_is_named(tiny_model_dir) -> None:
    emb = ModelEmbeddings(tiny_model_dir)
    with pytest.raises(KeyError, match="unknown title id"):
        emb.members([["tt001", "nope"]])
    with pytest.raises(ValueError, match="empty"):
        emb.members([[]])
    with pytest.raises(ValueError, match="pooling"):
        ModelEmbeddings(tiny_model_dir, pooling="max")


@pytest.mark.slow  # a local Ray and model-loading actors: minutes on 2 busy cores
def test_the_ray_export_writes_the_local_exports_vectors(tiny_model_dir, data, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    local = export_embeddings(tiny_model_dir, data, tmp_path / "local", batch_size=3)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        m = export_embeddings(tiny_model_dir, data, tmp_path / "ray", batch_size=3, engine="ray", workers=2)
    finally:
        ray.shutdown()
    assert m["engine"] == {"name": "ray", "workers": 2} and local["engine"] == {"name": "local"}
    for which in ("members", "titles"):
        keys, vecs = read_embeddings(tmp_path / "ray", which)
        want_keys, want = read_embeddings(tmp_path / "local", which)
        assert keys == want_keys and np.array_equal(vecs, want)  # same batches, same sums
    with pytest.raises(ValueError, match="engine"):
        export_embeddings(tiny_model_dir, data, tmp_path / "x", engine="spark")
