"""Residual quantizers that turn fused title embeddings into codes: RQ-VAE and residual k-means.

Both reduce to the same two things once trained: a map into a latent space (an MLP encoder for the
RQ-VAE, the identity for RQ-KMeans) and per-level codebooks ``(L, K, D)``. Codes are then assigned by
greedy residual nearest-codeword search, one code path for building IDs and for new titles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from semantic_ids.config import SemanticIDConfig


@dataclass
class Encoded:
    codes: np.ndarray  # (N, L) semantic codes
    last_candidates: np.ndarray  # (N, C) last-level codes, nearest first (C = codebook size)
    last_distance: np.ndarray  # (N,) distance of the residual to its nearest last-level code
    latent: torch.Tensor  # (N, D) what was quantized
    codebooks: torch.Tensor  # (L, K, D)

    def ranked_paths(self, i: int, width: int) -> list[tuple[int, ...]]:
        """Code tuples for title i, nearest reconstruction first, from a residual beam search.

        Used only when a title's own prefix is full (many titles with identical content), so that
        every title still gets the nearest free ID instead of an error.
        """
        books = self.codebooks
        paths = torch.zeros(1, 0, dtype=torch.long)  # (B, level)
        resid = self.latent[i][None]  # (B, D)
        for level in range(books.shape[0]):
            d = ((resid[:, None, :] - books[level][None]) ** 2).sum(-1)  # (B, K)
            flat = d.flatten()
            top = torch.argsort(flat, stable=True)[:width]
            b, c = top // books.shape[1], top % books.shape[1]
            paths = torch.cat([paths[b], c[:, None]], dim=1)
            resid = resid[b] - books[level][c]
        return [tuple(int(x) for x in p) for p in paths]


def residual_encode(z: torch.Tensor, codebooks: torch.Tensor) -> Encoded:
    """Greedy residual assignment; the last level is also ranked so a full slot can spill over."""
    residual = z.clone()  # (N, D)
    codes = []
    num_levels = codebooks.shape[0]
    for level in range(num_levels):
        dist = torch.cdist(residual, codebooks[level])  # (N, K)
        code = dist.argmin(dim=1)
        if level == num_levels - 1:
            order = torch.argsort(dist, dim=1, stable=True)
            last = dist.gather(1, code[:, None]).squeeze(1)
        codes.append(code)
        residual = residual - codebooks[level][code]
    return Encoded(torch.stack(codes, 1).numpy(), order.numpy(), last.numpy(), z, codebooks)


def codes_to_latent(codes: np.ndarray, codebooks: torch.Tensor) -> torch.Tensor:
    idx = torch.as_tensor(codes, dtype=torch.long)
    return sum(codebooks[lv][idx[:, lv]] for lv in range(codebooks.shape[0]))  # (N, D)


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """TIGER's RQ-VAE: MLP encoder -> ResidualVQ (k-means init, dead-code replacement) -> MLP decoder."""

    def __init__(self, input_dim: int, config: SemanticIDConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ

        dims = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.rvq = ResidualVQ(dim=config.latent_dim, num_quantizers=config.num_levels,
                              codebook_size=config.codebook_size, kmeans_init=True,
                              kmeans_iters=config.kmeans_iters,
                              threshold_ema_dead_code=config.dead_code_threshold, decay=0.99)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        zq, _, commit = self.rvq(z)
        return self.decoder(zq), commit.sum()

    @property
    def codebooks(self) -> torch.Tensor:
        return self.rvq.codebooks.detach()  # (L, K, latent_dim)


class Quantizer:
    """A trained residual quantizer of either kind, with one encode path and one state format."""

    def __init__(self, kind: str, config: SemanticIDConfig, input_dim: int) -> None:
        self.kind, self.config, self.input_dim = kind, config, input_dim
        self.model = RQVAE(input_dim, config) if kind == "rqvae" else None
        self._codebooks: torch.Tensor | None = None  # RQ-KMeans only
        self.history: list[float] = []

    # ------------------------------------------------------------------ training
    def fit(self, x: np.ndarray) -> "Quantizer":
        torch.manual_seed(self.config.seed)
        xt = torch.as_tensor(x, dtype=torch.float32)
        if self.kind == "rqkmeans":
            self._fit_kmeans(xt)
        else:
            self._fit_rqvae(xt)
        return self

    def _fit_kmeans(self, x: torch.Tensor) -> None:
        from sklearn.cluster import KMeans

        residual, books = x.numpy().astype(np.float64), []
        for level in tqdm(range(self.config.num_levels), desc="rq-kmeans levels"):
            k = min(self.config.codebook_size, len(residual))
            km = KMeans(n_clusters=k, n_init=1, max_iter=max(self.config.kmeans_iters, 1),
                        random_state=self.config.seed + level).fit(residual)
            centers = km.cluster_centers_
            if k < self.config.codebook_size:  # tiny catalogs: pad with unreachable codewords
                far = np.full((self.config.codebook_size - k, centers.shape[1]), 1e6)
                centers = np.concatenate([centers, far])
            books.append(centers)
            residual = residual - centers[km.labels_]
        self._codebooks = torch.as_tensor(np.stack(books), dtype=torch.float32)

    def _fit_rqvae(self, x: torch.Tensor) -> None:
        cfg, model = self.config, self.model
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        model.train()
        bar = tqdm(range(cfg.epochs), desc="rq-vae epochs")
        for _ in bar:
            perm = torch.randperm(len(x), generator=gen)
            total, n = 0.0, 0
            for start in range(0, len(x), cfg.batch_size):
                batch = x[perm[start: start + cfg.batch_size]]
                recon, commit = model(batch)
                loss = nn.functional.mse_loss(recon, batch) + cfg.commitment_weight * commit
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch)
                n += len(batch)
            self.history.append(total / n)
            bar.set_postfix(loss=f"{total / n:.4f}")
        model.eval()

    # ------------------------------------------------------------------ using it
    @property
    def codebooks(self) -> torch.Tensor:
        return self.model.codebooks if self.model is not None else self._codebooks

    @torch.no_grad()
    def latent(self, x: np.ndarray) -> torch.Tensor:
        xt = torch.as_tensor(x, dtype=torch.float32)
        return self.model.encoder(xt) if self.model is not None else xt

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> Encoded:
        return residual_encode(self.latent(x), self.codebooks)

    @torch.no_grad()
    def reconstruction_mse(self, x: np.ndarray, codes: np.ndarray) -> float:
        zq = codes_to_latent(codes, self.codebooks)
        recon = self.model.decoder(zq) if self.model is not None else zq
        return float(((recon - torch.as_tensor(x, dtype=torch.float32)) ** 2).mean())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.model is not None:
            return {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        return {"codebooks": self._codebooks.contiguous()}

    @classmethod
    def from_state(cls, kind: str, config: SemanticIDConfig, input_dim: int,
                   state: dict[str, torch.Tensor]) -> "Quantizer":
        q = cls(kind, config, input_dim)
        if q.model is not None:
            missing, unexpected = q.model.load_state_dict(state, strict=False)
            real_missing = [m for m in missing if "initted" not in m]
            if real_missing or unexpected:
                raise ValueError(f"quantizer weights do not match the config: missing {real_missing}, "
                                 f"unexpected {unexpected}")
            q.model.eval()
        else:
            if "codebooks" not in state:
                raise ValueError("RQ-KMeans state has no 'codebooks'")
            q._codebooks = state["codebooks"]
        return q
