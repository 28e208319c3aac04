"""The recipes a config starts from: the presets' sizes and the depth and dropouts set from the data.

``PretrainConfig.from_preset`` reads ``PRESETS``; ``PretrainConfig.for_data`` fills the model fields a
config leaves unset (``DATA_SHAPE_FIELDS``) with ``shape_for_data``. Nothing here imports the config,
so the recipes can be read, and changed, apart from the dataclasses that check them.
"""

from __future__ import annotations

from typing import Any

# Presets: overrides of the dataclass defaults, nothing else. `tiny` and `small` set sizes only
# (`small` leaves its depth to the data); `base` and `large` are the GPU recipes, chosen on
# amazon-beauty with code-token histories: their size with the dropouts, learning rate, epochs and
# history augmentation that tested best for it (augmentation helps these sizes, not `small`). Head
# size stays 32 or more (vLLM needs a head size >= 32 that is a multiple of 16).
_GPU_AUGMENT: dict[str, Any] = dict(item_dropout=0.1, window_jitter=True)


def _gpu_dropouts(hidden_dropout: float) -> dict[str, Any]:
    """The GPU recipes' dropouts as they were measured: attention 0.1, the hidden one everywhere."""
    return dict(dropout=0.1, hidden_dropout=hidden_dropout, hidden_dropout_on="all")


PRESETS: dict[str, dict[str, Any]] = {
    # Tests: a few thousand weights per layer, runs in seconds on CPU.
    "tiny": dict(model=dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, dropout=0.1)),
    # TIGER's width (128), the size that trains on a CPU; its depth from the data (``shape_for_data``:
    # TIGER's 4 layers on dense histories, SASRec's 2 on sparse ones).
    "small": dict(model=dict(hidden_size=128, num_heads=4, intermediate_size=512)),
    # Twice the width, six layers (6.5M weights): too slow for a CPU, so a GPU recipe.
    "base": dict(
        model=dict(hidden_size=256, num_layers=6, num_heads=8, intermediate_size=1024, **_gpu_dropouts(0.15)),
        optim=dict(lr=1e-3, epochs=30),
        augment=_GPU_AUGMENT,
    ),
    # 512 wide x 8 layers (34M weights): the largest GPU recipe.
    "large": dict(
        model=dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048, **_gpu_dropouts(0.2)),
        optim=dict(lr=5e-4, epochs=30),
        augment=_GPU_AUGMENT,
    ),
}


# The model's depth and dropouts when the config leaves them unset (None), from how many events a
# member has. Sparse histories are memorised without strong dropout, dense ones train too slowly with
# it; SASRec's published recipe splits datasets the same way (2 blocks, dropout 0.5 on the sparse
# Amazon and Steam sets, 0.2 on MovieLens-1M). A members' median of rolled-up events below this is
# sparse: 5-core shopping sets fall below it, MovieLens (which keeps members with 20 ratings or
# more) never does.
SPARSE_EVENTS_PER_MEMBER = 20
# Dense histories: the small preset's depth, transformers' usual attention dropout, no hidden dropout.
DENSE_SHAPE: dict[str, Any] = dict(num_layers=4, dropout=0.1, hidden_dropout=0.0, hidden_dropout_on="all")
# Sparse histories of title tokens: SASRec's depth and dropouts, the hidden dropout on the trunk only
# (the code-token branches that train the beam's later codes stay without it).
SPARSE_TITLE_SHAPE: dict[str, Any] = dict(
    num_layers=2, dropout=0.5, hidden_dropout=0.5, hidden_dropout_on="trunk"
)
# Sparse histories of code tokens (no trunk to confine the dropout to): a milder hidden dropout.
SPARSE_CODE_SHAPE: dict[str, Any] = {**DENSE_SHAPE, "hidden_dropout": 0.3}
# The ModelShape fields a config may leave to the data (``shape_for_data``).
DATA_SHAPE_FIELDS = tuple(DENSE_SHAPE)


def shape_for_data(median_events: float, history_tokens: str) -> dict[str, Any]:
    """The depth and dropouts a run leaves to the data, from the members' median number of
    rolled-up events and how history titles enter the model."""
    if median_events >= SPARSE_EVENTS_PER_MEMBER:
        return dict(DENSE_SHAPE)
    return dict(SPARSE_TITLE_SHAPE if history_tokens == "titles" else SPARSE_CODE_SHAPE)
