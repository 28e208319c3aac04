"""Building ID artifacts on real slices: uniqueness, stats, map round trip, new titles, atomic writes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from semantic_ids.builder import assign_new, build_ids
from semantic_ids.config import SemanticIDConfig
from semantic_ids.ids import SemanticIDs
from core.artifacts import ArtifactError

# Real modalities that need no sentence encoder: genres + decade and collaborative factors.
FAST = dict(text_weight=0.0, metadata_weight=1.0, collaborative_weight=1.0, codebook_size=32, dedup_size=64)
# Each quantizer's own options, small enough for a test.
OPTIONS = {
    "rqkmeans": {"kmeans_iters": 5},
    "rqvae": {"epochs": 4, "kmeans_iters": 5, "hidden_dims": (64,), "latent_dim": 16},
}


def _config(quantizer: str, **overrides) -> SemanticIDConfig:
    return SemanticIDConfig.create(
        quantizer=quantizer, quantizer_options=OPTIONS[quantizer], **{**FAST, **overrides}
    )


STATS_KEYS = {
    "num_items",
    "sid_length",
    "collision_rate",
    "max_collision_group",
    "codebook_utilization",
    "perplexity",
    "reconstruction_mse",
}


@pytest.mark.parametrize("quantizer", ["rqkmeans", "rqvae"])
def test_build_unique_ids_and_stats(ml_small, tmp_path, quantizer):
    config = _config(quantizer)
    ids = build_ids(ml_small, config, tmp_path / "ids")
    assert ids.num_items == ml_small.catalog.num_rows
    assert ids.sid_length == 4 and ids.codebook_sizes == (32, 32, 32, 64)
    assert len({tuple(c) for c in ids.codes}) == ids.num_items  # unique for 100% of titles
    stats = ids.stats()
    assert STATS_KEYS <= set(stats) and stats["unique_ids"]
    assert len(stats["perplexity"]) == 3 and all(0 < u <= 1 for u in stats["codebook_utilization"])
    # collisions are measured on the codes before the disambiguation position
    sem = {tuple(c[:-1]) for c in ids.codes}
    assert (len(sem) < ids.num_items) == (stats["collision_rate"] > 0)
    manifest = json.loads((tmp_path / "ids" / "manifest.json").read_text())
    assert manifest["kind"] == "semantic_ids" and manifest["parents"]["data"] == ml_small.fingerprint
    assert manifest["config"]["codes"]["quantizer"] == quantizer


def test_map_round_trip(ml_small, tmp_path):
    ids = build_ids(ml_small, _config("rqkmeans"), tmp_path / "ids")
    again = SemanticIDs.load(tmp_path / "ids")
    assert again.item_ids == ids.item_ids and np.array_equal(again.codes, ids.codes)
    for iid in ids.item_ids[:50]:
        assert ids.item_for_sid(ids.sid(iid)) == iid
    assert ids.title("1") == "Toy Story (1995)"
    with pytest.raises(KeyError, match="has no semantic ID"):
        ids.sid("not-a-title")


def test_deterministic(ml_small, tmp_path):
    config = _config("rqvae")
    a = build_ids(ml_small, config, tmp_path / "a")
    b = build_ids(ml_small, config, tmp_path / "b")
    assert np.array_equal(a.codes, b.codes)


def test_new_titles_get_ids_without_moving_old_ones(ml_small, tmp_path):
    config = _config("rqvae", collaborative_weight=0.0)
    old_catalog = ml_small.catalog.select(range(9000))
    old = build_ids(dataclasses.replace(ml_small, catalog=old_catalog), config, tmp_path / "ids")
    new, added = assign_new(tmp_path / "ids", ml_small, tmp_path / "ids-v2")
    assert len(added) == ml_small.catalog.num_rows - 9000
    assert new.version == old.version + 1
    assert np.array_equal(new.codes[: old.num_items], old.codes)
    assert len({tuple(c) for c in new.codes}) == new.num_items
    assert new.stats()["new_titles"] == len(added)
    # the original artifact is untouched, and assigning again finds nothing new
    assert SemanticIDs.load(tmp_path / "ids").num_items == 9000
    again, none = assign_new(tmp_path / "ids-v2", ml_small)
    assert none == [] and again.version == new.version


def test_failed_build_keeps_previous_artifact(ml_small, tmp_path, monkeypatch):
    out = tmp_path / "ids"
    good = build_ids(ml_small, _config("rqkmeans"), out)
    import semantic_ids.builder as builder

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder, "code_stats", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_ids(ml_small, _config("rqkmeans"), out)
    assert np.array_equal(SemanticIDs.load(out).codes, good.codes)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ids.")]


def test_overflow_spills_to_neighbour_code(ml_small, tmp_path):
    # metadata-only MovieLens IDs collide a lot (same genres and decade); a tiny dedup forces spills
    config = _config("rqkmeans", collaborative_weight=0.0, dedup_size=4)
    ids = build_ids(ml_small, config, tmp_path / "ids")
    stats = ids.stats()
    assert stats["spilled_to_neighbour_code"] > 0
    assert stats["max_collision_group"] <= 4 and ids.codes[:, -1].max() < 4


def test_loader_rejects_other_artifacts(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        SemanticIDs.load(tmp_path / "x")


def test_config_validation():
    with pytest.raises(ValueError, match="unknown quantizer 'pq'; known: rqkmeans, rqvae"):
        SemanticIDConfig.create(quantizer="pq")
    with pytest.raises(ValueError, match="unknown rqkmeans option"):
        SemanticIDConfig.create(quantizer="rqkmeans", quantizer_options={"latent_dim": 8})
    with pytest.raises(ValueError, match="nothing to quantize"):
        SemanticIDConfig.create(text_weight=0, metadata_weight=0, collaborative_weight=0)
    with pytest.raises(ValueError, match=">= 0"):
        SemanticIDConfig.create(metadata_weight=-1)


@pytest.mark.slow
def test_real_text_encoder(beauty_small, tmp_path):
    from semantic_ids.embeddings import TextEncoder

    enc = TextEncoder()
    titles = list(beauty_small.catalog["title"][:64])
    a = enc.encode(titles)
    b = enc.encode(titles)  # second call is served from the disk cache
    assert a.shape == (64, 384) and np.allclose(a, b)
    # similar products are nearer than unrelated ones
    sims = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    assert sims[0, 1] > sims[0, 2]  # two OPI nail polishes vs. a BB cream


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_user_vectors_modality(ml_small, tmp_path, fmt):
    rng = np.random.default_rng(0)
    item_ids = list(ml_small.catalog["item_id"])[:5000]  # the rest has no vector: counted, zeros
    vecs = rng.normal(size=(len(item_ids), 8)).astype(np.float32)
    path = tmp_path / f"vectors.{fmt}"
    if fmt == "npz":
        np.savez(path, item_ids=np.array(item_ids), vectors=vecs)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"item_id": item_ids, "vector": vecs.tolist()}), path)
    config = _config("rqkmeans", user_vectors=str(path))
    stats = build_ids(ml_small, config, tmp_path / "ids").stats()
    assert stats["embedding_dims"]["user_vectors"] == 8
    assert stats["missing_user_vectors"] == ml_small.catalog.num_rows - 5000


def test_user_vectors_bad_file(ml_small, tmp_path):
    bad = tmp_path / "v.npz"
    np.savez(bad, ids=np.array(["1"]), vectors=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="'item_ids' and 'vectors'"):
        build_ids(ml_small, _config("rqkmeans", user_vectors=str(bad)), tmp_path / "ids")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_ids(
            ml_small, _config("rqkmeans", user_vectors=str(tmp_path / "no.npz"), **FAST), tmp_path / "ids"
        )


def test_each_quantizer_has_its_own_config_from_the_registry():
    from semantic_ids.quantizers import QUANTIZERS
    from semantic_ids.quantizers.rqkmeans import RQKMeansConfig
    from semantic_ids.quantizers.rqvae import RQVAEConfig

    assert set(QUANTIZERS) == {"rqkmeans", "rqvae"}
    assert SemanticIDConfig().codes.quantizer_config() == RQKMeansConfig()
    vae = SemanticIDConfig.create(quantizer="rqvae", quantizer_options={"epochs": 3}).codes.quantizer_config()
    assert vae == RQVAEConfig(epochs=3)


def test_a_manifest_written_before_the_registry_still_loads():
    """Old artifacts carry the RQ-VAE/RQ-KMeans fields flat; they become the method's options."""
    flat = {
        "quantizer": "rqvae",
        "codebook_size": 32,
        "epochs": 7,
        "latent_dim": 16,
        "hidden_dims": [64],
        "kmeans_iters": 5,
        "removed_field": 1,
    }
    config = SemanticIDConfig.from_dict(flat)
    assert config.codes.codebook_size == 32
    assert config.codes.quantizer_options == {
        "epochs": 7,
        "latent_dim": 16,
        "hidden_dims": [64],
        "kmeans_iters": 5,
    }
    km = SemanticIDConfig.from_dict({**flat, "quantizer": "rqkmeans"})
    assert km.codes.quantizer_options == {"kmeans_iters": 5}


def test_a_quantizer_added_in_one_file_and_a_registry_line_builds_ids(ml_small, tmp_path, monkeypatch):
    """Residual codes over a random projection, defined here alone: the builder reaches it by name."""
    from dataclasses import dataclass

    import torch

    from semantic_ids import quantizers
    from semantic_ids.builder import load_quantizer
    from semantic_ids.quantizers import ResidualQuantizer

    @dataclass(frozen=True)
    class ProjectedConfig:
        dim: int = 8

    class Projected(ResidualQuantizer):
        name, config_class = "projected", ProjectedConfig

        def fit(self, x):
            gen = torch.Generator().manual_seed(0)
            self.proj = torch.randn(x.shape[1], self.config.dim, generator=gen)
            residual, books = self.latent(x), []
            for _ in range(self.ids_config.num_levels):  # codewords: residuals of random titles
                book = residual[torch.randperm(len(residual), generator=gen)[: self.ids_config.codebook_size]]
                books.append(book)
                residual = residual - book[torch.cdist(residual, book).argmin(1)]
            self.books = torch.stack(books)
            return self

        @property
        def codebooks(self):
            return self.books

        def latent(self, x):
            return torch.as_tensor(x, dtype=torch.float32) @ self.proj

        def reconstruct(self, zq):
            return zq @ torch.linalg.pinv(self.proj)

        def state_dict(self):
            return {"proj": self.proj.contiguous(), "books": self.books.contiguous()}

        def load_state(self, state):
            self.proj, self.books = state["proj"], state["books"]

    monkeypatch.setitem(quantizers.QUANTIZERS, "projected", Projected)
    config = SemanticIDConfig.create(quantizer="projected", quantizer_options={"dim": 8}, **FAST)
    ids = build_ids(ml_small, config, tmp_path / "ids")
    assert len({tuple(c) for c in ids.codes}) == ids.num_items
    assert ids.manifest["quantizer"] == {"name": "projected", "dim": 8}
    _, loaded, _, _ = load_quantizer(tmp_path / "ids")
    assert isinstance(loaded, Projected) and torch.equal(loaded.books, ids_books(tmp_path / "ids"))


def ids_books(path):
    from safetensors.torch import load_file

    return load_file(str(path / "quantizer.safetensors"))["books"]


def test_the_config_is_grouped_and_flat_manifests_read_back():
    """``SemanticIDConfig`` holds one group per concern (text, modalities, codes); the flat config
    every ID artifact written before the grouping holds reads back as the same config."""
    from semantic_ids.config import recorded_config, text_weight_of

    assert [f.name for f in dataclasses.fields(SemanticIDConfig)] == ["text", "modalities", "codes"]
    flat = {
        "text_model": "bundled", "text_template": "{title} ({year})", "text_batch_size": 64,
        "text_weight": 1.0, "metadata_weight": 0.0, "collaborative_weight": 0.5, "user_vectors": None,
        "user_vectors_weight": 1.0, "max_categories": 512, "collaborative_dim": 32,
        "quantizer": "rqkmeans", "quantizer_options": {"kmeans_iters": 5}, "num_levels": 2,
        "codebook_size": 16, "dedup_size": 8, "seed": 3,
    }  # fmt: skip
    config = SemanticIDConfig.from_dict(flat)
    assert config == SemanticIDConfig.create(**flat)
    assert config.text.text_batch_size == 64 and config.modalities.collaborative_dim == 32
    assert config.codes.seed == 3
    assert SemanticIDConfig.from_dict(dataclasses.asdict(config)) == config  # the grouped form too
    assert config.codes.codebook_sizes == (16, 16, 8)
    assert recorded_config({"config": flat}) == config and recorded_config({}) is None
    assert text_weight_of({"config": {**flat, "text_weight": 0.0}}) == 0.0 and text_weight_of({}) == 0.0
    assert text_weight_of({"config": dataclasses.asdict(config)}) == 1.0
