"""What every quantizer is: a map into a latent space plus per-level codebooks ``(L, K, D)``.

Codes are assigned by greedy residual nearest-codeword search, one code path for building IDs and
for new titles, whatever the method that trained the codebooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch


class CodeShape(Protocol):
    """What a quantizer reads from the ID stage's config (``SemanticIDConfig`` has these): the
    shape of the codes, the seed, and the method's own options."""

    num_levels: int
    codebook_size: int
    seed: int
    quantizer_options: dict[str, Any]


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


class ResidualQuantizer(ABC):
    """The protocol of a quantizer method: train, map into the latent, give codebooks, persist.

    ``config_class`` is the method's own config dataclass, built from the ID config's
    ``quantizer_options``; the shape of the codes (levels, codebook size) and the seed are the ID
    stage's and come from that config itself (``CodeShape``).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, ids_config: CodeShape, input_dim: int) -> None:
        self.ids_config, self.input_dim = ids_config, input_dim
        self.config = self.config_class(**ids_config.quantizer_options)
        self.history: list[float] = []  # training loss per epoch, where the method has one

    @abstractmethod
    def fit(self, x: np.ndarray) -> "ResidualQuantizer":
        """Train on the catalog's fused embeddings ``(N, input_dim)``."""

    @property
    @abstractmethod
    def codebooks(self) -> torch.Tensor:
        """``(levels, codebook_size, latent_dim)``."""

    @abstractmethod
    def latent(self, x: np.ndarray) -> torch.Tensor:
        """The vectors the codebooks quantize, ``(N, latent_dim)``."""

    @abstractmethod
    def reconstruct(self, zq: torch.Tensor) -> torch.Tensor:
        """From a sum of codewords back to the input space (for the reconstruction error)."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that ``load_state`` restores (written as safetensors)."""

    @abstractmethod
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a trained quantizer; refuse a state that does not fit the config."""

    @classmethod
    def from_state(
        cls, ids_config: CodeShape, input_dim: int, state: dict[str, torch.Tensor]
    ) -> "ResidualQuantizer":
        q = cls(ids_config, input_dim)
        q.load_state(state)
        return q

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> Encoded:
        return residual_encode(self.latent(x), self.codebooks)

    @torch.no_grad()
    def reconstruction_mse(self, x: np.ndarray, codes: np.ndarray) -> float:
        recon = self.reconstruct(codes_to_latent(codes, self.codebooks))
        return float(((recon - torch.as_tensor(x, dtype=torch.float32)) ** 2).mean())

    def describe(self) -> dict[str, Any]:
        import dataclasses

        return {"name": self.name, **dataclasses.asdict(self.config)}
