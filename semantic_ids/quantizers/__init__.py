"""Quantizers that turn fused title embeddings into residual codes, chosen by name.

Each method lives in one file with its own config dataclass and registers here with one line.
``SemanticIDConfig.quantizer`` names the method; ``SemanticIDConfig.quantizer_options`` overrides its
config (``--set quantizer_options.epochs=100``). Every method satisfies ``ResidualQuantizer``: once
trained it is a map into a latent space plus per-level codebooks, and codes are assigned by the
shared greedy residual search (``base.residual_encode``), for the catalog and for new titles alike.

To add a method: a new file with a ``ResidualQuantizer`` subclass, and a line in ``QUANTIZERS``.
"""

from __future__ import annotations

from semantic_ids.quantizers.base import Encoded, ResidualQuantizer, codes_to_latent, residual_encode
from semantic_ids.quantizers.rqkmeans import RQKMeans
from semantic_ids.quantizers.rqvae import RQVAEQuantizer

QUANTIZERS: dict[str, type[ResidualQuantizer]] = {
    "rqkmeans": RQKMeans,  # residual k-means on the fused embedding (the default)
    "rqvae": RQVAEQuantizer,  # TIGER's RQ-VAE (vector-quantize-pytorch ResidualVQ)
}


def quantizer_class(name: str) -> type[ResidualQuantizer]:
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise ValueError(f"unknown quantizer {name!r}; known: {', '.join(sorted(QUANTIZERS))}") from None


__all__ = [
    "QUANTIZERS",
    "Encoded",
    "ResidualQuantizer",
    "codes_to_latent",
    "quantizer_class",
    "residual_encode",
]
