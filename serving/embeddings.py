"""Member and title embeddings from the foundation model, for other teams' models and for retrieval.

- **Member:** the decoder's last hidden state (after the final norm) at the position where it
  predicts the member's next title: the home prompt of the member's latest ``max_history`` titles.
- **Title:** the same state for a history of that one title: "a member who just engaged with X".
  Both live in one space (the state the LM head reads), so a member's nearest titles by inner
  product are a retrieval the model itself would broadly agree with; the content embedding the IDs
  were built from is a different space and stays in the ID artifact.

``ModelEmbeddings`` is the Python API (histories given at request time); ``export_embeddings``
writes every member and title of a dataset to Parquet (``members.parquet``: ``user_id``,
``embedding``; ``titles.parquet``: ``item_id``, ``title``, ``embedding``) with a manifest naming the
model, and a faiss inner-product index over the unit-normalised title vectors (``titles.faiss``,
row i = ``titles.parquet`` row i). The folder is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import atomic_dir, manifest_hash, write_json
from gen_fm.decode import left_pad
from gen_fm.model import check_device, load_model
from serving.batch import member_histories
from serving.ray_data import ray_map, start_ray

EMBEDDINGS_MANIFEST = "manifest.json"
# "last": the state at the position that predicts the next title; "mean": the mean of the last
# layer's states over the prompt's real tokens.
POOLINGS = ("last", "mean")


class ModelEmbeddings:
    """Hidden-state embeddings of one model folder (see the module doc)."""

    def __init__(
        self, model_dir: str | Path, device: str = "cpu", batch_size: int = 256, pooling: str = "last"
    ) -> None:
        import torch

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        check_device(device)
        self.gen = load_model(model_dir)
        self.model = self.gen.model.to(device).eval()
        self.encoder = self.gen.prompt_encoder()
        self.ids = self.gen.ids
        self.max_history = self.gen.seq_config.max_history
        self.device, self.batch_size = torch.device(device), batch_size
        self.dim = int(self.model.config.hidden_size)

    def members(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, H) float32: one vector per history (title ids, oldest first; the latest
        ``max_history`` are read). An unknown title id is an error naming it."""
        prompts = []
        for i, hist in enumerate(histories):
            missing = [t for t in hist if t not in self.ids]
            if missing:
                raise KeyError(f"history {i}: unknown title id(s) {missing[:5]}")
            if not hist:
                raise ValueError(f"history {i} is empty: a member embedding needs at least one title")
            rows = np.asarray([self.ids.index_of(t) for t in hist][-self.max_history :], dtype=np.int64)
            prompts.append(self.encoder.encode(rows, canvas="home"))
        return self._last_states(prompts)

    def titles(self, item_ids: Sequence[str] | None = None) -> np.ndarray:
        """(n, H) float32: one vector per title (every title of the ID artifact by default)."""
        item_ids = list(self.ids.item_ids) if item_ids is None else list(item_ids)
        return self.members([[t] for t in item_ids])

    def _last_states(self, prompts: list[list[int]]) -> np.ndarray:
        import torch

        out = np.zeros((len(prompts), self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                ids, mask = left_pad(prompts[start : start + self.batch_size], self.device)  # (B, T)
                pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens from 0
                h = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True
                ).hidden_states[-1]  # (B, T, H), normed
                if self.pooling == "last":
                    v = h[:, -1]
                else:
                    m = mask.unsqueeze(-1).to(h.dtype)
                    v = (h * m).sum(1) / m.sum(1).clamp(min=1)
                out[start : start + len(ids)] = v.float().cpu().numpy()
        return out


def _ray_vectors(
    model_dir: str | Path, device: str, batch_size: int, histories: dict[str, list], workers: int
) -> dict[str, np.ndarray]:
    """The vectors of each named list of histories, computed as a Ray Data pipeline: blocks of
    whole batches (so every batch is the one the local loop forms: the same vectors) mapped by
    `workers` actors that each hold a ``ModelEmbeddings``."""
    import ray
    import torch

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start_ray()
    block = batch_size * max(1, 4096 // batch_size)
    items = [{"name": n, "start": s} for n, h in histories.items() for s in range(0, len(h), block)]
    ref, model, threads = ray.put(histories), str(model_dir), torch.get_num_threads()

    class Embedder:  # one per actor: the model is loaded once and reused for its blocks
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(threads)  # the driver's: the same float sums as the local loop
            self.emb = ModelEmbeddings(model, device, batch_size)
            self.histories = ray.get(ref)

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, list] = {"name": [], "start": [], "vectors": []}
            for name, start in zip(batch["name"].tolist(), batch["start"].tolist()):
                vecs = self.emb.members(self.histories[name][start : start + block])
                out["name"].append(name)
                out["start"].append(start)
                out["vectors"].append(vecs.tobytes())
            return out

    rows = ray_map(items, Embedder, workers)
    out: dict[str, np.ndarray] = {}
    for name, h in histories.items():
        parts = sorted((r for r in rows if r["name"] == name), key=lambda r: r["start"])
        vecs = [np.frombuffer(r["vectors"], dtype=np.float32) for r in parts]
        flat = np.concatenate(vecs) if vecs else np.zeros(0, np.float32)
        out[name] = flat.reshape(len(h), -1) if len(h) else np.zeros((0, 0), np.float32)
    return out


def export_embeddings(
    model_dir: str | Path,
    data,
    out_dir: str | Path,
    device: str = "cpu",
    batch_size: int = 256,
    max_users: int | None = None,
    engine: str = "local",
    workers: int = 1,
) -> dict[str, Any]:
    """Every member's and title's embedding to Parquet, plus a faiss index over the titles.

    ``engine="ray"`` computes the vectors as a Ray Data pipeline of ``workers`` actors (a local
    Ray unless ``RAY_ADDRESS`` names a cluster); the files are the same as the local loop's."""
    import time

    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    t0 = time.perf_counter()
    emb = ModelEmbeddings(model_dir, device, batch_size)
    users, hists = member_histories(data, emb.ids, emb.gen.seq_config, max_users)
    if engine == "ray":
        vecs = _ray_vectors(
            model_dir,
            device,
            batch_size,
            {"members": hists, "titles": [[t] for t in emb.ids.item_ids]},
            workers,
        )
        members, titles = vecs["members"], vecs["titles"]
    else:
        members = emb.members(hists)
        titles = emb.titles()
    seconds = time.perf_counter() - t0
    unit = titles / np.maximum(np.linalg.norm(titles, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit.astype(np.float32))
    manifest = {
        "kind": "embeddings",
        "model": str(model_dir),
        "model_manifest": manifest_hash(model_dir),
        "dataset": data.name,
        "data_fingerprint": data.fingerprint,
        "dim": emb.dim,
        "members": len(users),
        "titles": len(titles),
        "seconds": round(seconds, 2),
        "engine": {"name": engine, **({"workers": workers} if engine == "ray" else {})},
        "member_vector": "last hidden state (final norm) of the home prompt of the latest "
        f"{emb.max_history} titles",
        "title_vector": "the same for a one-title history",
        "faiss_index": "titles.faiss: IndexFlatIP over unit-normalised title vectors",
    }
    with atomic_dir(out_dir) as stage:
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array(users, pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(members.reshape(-1)), emb.dim),
                }
            ),
            stage / "members.parquet",
        )
        pq.write_table(
            pa.table(
                {
                    "item_id": pa.array(list(emb.ids.item_ids), pa.string()),
                    "title": pa.array(list(emb.ids.titles or [None] * len(titles)), pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(titles.reshape(-1)), emb.dim),
                }
            ),
            stage / "titles.parquet",
        )
        faiss.write_index(index, str(stage / "titles.faiss"))
        write_json(stage / EMBEDDINGS_MANIFEST, manifest)
    return manifest


def read_embeddings(out_dir: str | Path, which: str = "titles") -> tuple[list[str], np.ndarray]:
    """(keys, (n, H) array) of an exported ``members`` or ``titles`` table."""
    import pyarrow.parquet as pq

    if which not in ("members", "titles"):
        raise ValueError(f"which must be 'members' or 'titles', got {which!r}")
    t = pq.read_table(Path(out_dir) / f"{which}.parquet")
    key = "user_id" if which == "members" else "item_id"
    col = t.column("embedding").combine_chunks()
    dim = col.type.list_size
    return t.column(key).to_pylist(), col.flatten().to_numpy().reshape(-1, dim)


__all__ = ["EMBEDDINGS_MANIFEST", "ModelEmbeddings", "export_embeddings", "read_embeddings"]
