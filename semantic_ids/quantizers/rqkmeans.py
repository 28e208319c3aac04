"""RQ-KMeans: k-means on the fused embedding, then on the residuals, one level at a time.

No learned encoder: the latent is the embedding itself, so the first code is a balanced cell of
the content space. Nothing is trained by gradient descent, so it builds IDs quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from semantic_ids.quantizers.base import ResidualQuantizer


@dataclass(frozen=True)
class RQKMeansConfig:
    kmeans_iters: int = 20  # Lloyd iterations per level (scikit-learn KMeans, one init)

    def __post_init__(self) -> None:
        if self.kmeans_iters < 1:
            raise ValueError("kmeans_iters must be >= 1")


class RQKMeans(ResidualQuantizer):
    name = "rqkmeans"
    config_class = RQKMeansConfig

    def __init__(self, ids_config, input_dim: int) -> None:
        super().__init__(ids_config, input_dim)
        self._codebooks: torch.Tensor | None = None

    def fit(self, x: np.ndarray) -> "RQKMeans":
        from sklearn.cluster import KMeans

        shape = self.ids_config
        residual, books = np.asarray(x, dtype=np.float64), []
        for level in tqdm(range(shape.num_levels), desc="rq-kmeans levels"):
            k = min(shape.codebook_size, len(residual))
            km = KMeans(
                n_clusters=k, n_init=1, max_iter=self.config.kmeans_iters, random_state=shape.seed + level
            ).fit(residual)
            centers = km.cluster_centers_
            if k < shape.codebook_size:  # tiny catalogs: pad with unreachable codewords
                far = np.full((shape.codebook_size - k, centers.shape[1]), 1e6)
                centers = np.concatenate([centers, far])
            books.append(centers)
            residual = residual - centers[km.labels_]
        self._codebooks = torch.as_tensor(np.stack(books), dtype=torch.float32)
        return self

    @property
    def codebooks(self) -> torch.Tensor:
        if self._codebooks is None:
            raise RuntimeError("RQ-KMeans is not trained: call fit() or load a state")
        return self._codebooks

    def latent(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32)

    def reconstruct(self, zq: torch.Tensor) -> torch.Tensor:
        return zq

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"codebooks": self.codebooks.contiguous()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if "codebooks" not in state:
            raise ValueError("RQ-KMeans state has no 'codebooks'")
        books = state["codebooks"]
        want = (self.ids_config.num_levels, self.ids_config.codebook_size, self.input_dim)
        if tuple(books.shape) != want:
            raise ValueError(f"RQ-KMeans codebooks are {tuple(books.shape)}, the config needs {want}")
        self._codebooks = books
