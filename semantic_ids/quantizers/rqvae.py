"""TIGER's RQ-VAE: MLP encoder -> ResidualVQ (k-means init, dead-code replacement) -> MLP decoder.

The residual vector quantizer is vector-quantize-pytorch's ``ResidualVQ``; only the encoder/decoder
MLPs and the training loop are written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from semantic_ids.quantizers.base import ResidualQuantizer


@dataclass(frozen=True)
class RQVAEConfig:
    latent_dim: int = 32  # latent the codes quantize (TIGER: 32)
    hidden_dims: tuple[int, ...] = (512, 256, 128)  # encoder; the decoder mirrors it
    epochs: int = 150  # epochs over the catalog (enough for the loss to plateau)
    batch_size: int = 1024
    lr: float = 1e-3
    commitment_weight: float = 0.25
    kmeans_iters: int = 20  # k-means initialisation of the codebooks
    dead_code_threshold: float = 2.0  # codes used less than this (EMA) are re-seeded

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.latent_dim < 1:
            raise ValueError("epochs, batch_size, lr and latent_dim must be positive")


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, input_dim: int, config: RQVAEConfig, num_levels: int, codebook_size: int) -> None:
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ

        dims = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.rvq = ResidualVQ(
            dim=config.latent_dim,
            num_quantizers=num_levels,
            codebook_size=codebook_size,
            kmeans_init=True,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.dead_code_threshold,
            decay=0.99,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        zq, _, commit = self.rvq(z)
        return self.decoder(zq), commit.sum()


class RQVAEQuantizer(ResidualQuantizer):
    name = "rqvae"
    config_class = RQVAEConfig

    def __init__(self, ids_config, input_dim: int) -> None:
        super().__init__(ids_config, input_dim)
        self.model = RQVAE(input_dim, self.config, ids_config.num_levels, ids_config.codebook_size)

    def fit(self, x: np.ndarray) -> "RQVAEQuantizer":
        cfg, model = self.config, self.model
        torch.manual_seed(self.ids_config.seed)
        x = torch.as_tensor(x, dtype=torch.float32)
        gen = torch.Generator().manual_seed(self.ids_config.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        model.train()
        bar = tqdm(range(cfg.epochs), desc="rq-vae epochs")
        for _ in bar:
            perm = torch.randperm(len(x), generator=gen)
            total, n = 0.0, 0
            for start in range(0, len(x), cfg.batch_size):
                batch = x[perm[start : start + cfg.batch_size]]
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
        return self

    @property
    def codebooks(self) -> torch.Tensor:
        return self.model.rvq.codebooks.detach()  # (L, K, latent_dim)

    @torch.no_grad()
    def latent(self, x: np.ndarray) -> torch.Tensor:
        return self.model.encoder(torch.as_tensor(x, dtype=torch.float32))

    @torch.no_grad()
    def reconstruct(self, zq: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(zq)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        real_missing = [m for m in missing if "initted" not in m]
        if real_missing or unexpected:
            raise ValueError(
                f"quantizer weights do not match the config: missing {real_missing}, unexpected {unexpected}"
            )
        self.model.eval()
