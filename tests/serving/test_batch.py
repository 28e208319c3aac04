"""Batch lists (``serving.batch``): the server's answers for every member, resumable, refusing bad jobs."""

from __future__ import annotations

import pytest

from serving.batch import BatchConfig, member_histories, read_lists, run_batch
from serving.recommender import Recommender

RULES = {"exclude_titles": ["tt003"]}


@pytest.fixture(scope="module")
def world(tiny_model_dir, tiny_catalog_dir, tmp_path_factory):
    from core.data import load_data

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREC_CACHE_DIR", str(tmp_path_factory.mktemp("batch_cache")))
        data = load_data(data_dir=str(tiny_catalog_dir))
    rec = Recommender.from_pretrained(tiny_model_dir, backend="transformers", num_beams=6, max_k=6)
    yield rec, data
    rec.close()


def test_batch_lists_are_the_servers_answers_for_every_member(world, tmp_path) -> None:
    rec, data = world
    manifest = run_batch(
        rec, data, BatchConfig(k=5, rules=RULES, shard_size=3), tmp_path / "b", progress=False
    )
    table = read_lists(tmp_path / "b").to_pylist()
    users, hists = member_histories(data, rec.ids, rec.seq_config)
    assert manifest["members"] == len(users) == 4 and manifest["lists"] == 4 and manifest["shards"] == 2
    for u, h in zip(users, hists):
        want = rec.recommend(h, k=5, user_id=u, rules=RULES)
        got = sorted((r for r in table if r["user_id"] == u), key=lambda r: r["rank"])
        assert [r["item_id"] for r in got] == [x.item_id for x in want]
        assert [r["rank"] for r in got] == list(range(1, len(want) + 1))
        assert "tt003" not in {r["item_id"] for r in got} and not set(h) & {r["item_id"] for r in got}


def test_a_killed_job_resumes_from_its_shards(world, tmp_path) -> None:
    rec, data = world
    config = BatchConfig(k=4, shard_size=1)
    out = tmp_path / "b"
    run_batch(rec, data, config, out, progress=False)
    first = read_lists(out).to_pylist()
    (out / "part-00002.parquet").unlink()  # as if killed before the third shard was written
    (out / "part-00003.parquet").unlink()
    again = run_batch(rec, data, config, out, progress=False)
    assert again["shards_resumed"] == 2 and read_lists(out).to_pylist() == first


def test_bad_jobs_are_refused_with_a_clear_error(world, tmp_path) -> None:
    rec, data = world
    run_batch(rec, data, BatchConfig(k=3), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="another batch job"):
        run_batch(rec, data, BatchConfig(k=4), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="needs contexts"):
        BatchConfig(canvas="search")
    with pytest.raises(ValueError, match="takes no contexts"):
        BatchConfig(canvas="home", contexts=("x",))
    with pytest.raises(ValueError, match="k and shard_size"):
        BatchConfig(k=0)


@pytest.mark.slow  # a local Ray and two actors each loading a model: minutes on 2 busy cores
def test_the_ray_pipeline_writes_the_local_loops_lists_and_resumes_them(world, tmp_path) -> None:
    """Ray Data in a local Ray: the same shards as the local loop, and each resumes the other
    (``pip install -e '.[ray]'``; skipped without Ray)."""
    ray = pytest.importorskip("ray")
    from serving.batch import run_batch_ray

    rec, data = world
    config = BatchConfig(k=5, rules=RULES, shard_size=1)
    serving = dict(backend="transformers", num_beams=6, max_k=6)
    local = run_batch(rec, data, config, tmp_path / "local", progress=False)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        m = run_batch_ray(
            rec.config.model_dir, serving, data, config, tmp_path / "ray", workers=2, progress=False
        )
        assert m["engine"]["name"] == "ray" and m["lists"] == local["lists"] == 4
        assert m["rows"] == local["rows"] and m["shards_resumed"] == 0
        assert read_lists(tmp_path / "ray").to_pylist() == read_lists(tmp_path / "local").to_pylist()
        (tmp_path / "local" / "part-00001.parquet").unlink()  # a killed local job, finished by Ray
        again = run_batch_ray(rec.config.model_dir, serving, data, config, tmp_path / "local", progress=False)
        assert again["shards_resumed"] == 3
        assert read_lists(tmp_path / "local").to_pylist() == read_lists(tmp_path / "ray").to_pylist()
        with pytest.raises(ValueError, match="workers"):
            run_batch_ray(rec.config.model_dir, serving, data, config, tmp_path / "x", workers=0)
    finally:
        ray.shutdown()
