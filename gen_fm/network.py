"""The network a pretraining run trains: a fresh Llama or a parent's weights, with the title
embedding, the hidden-dropout hooks, the weight average and the auxiliary heads attached in the
order the training loop relies on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.artifacts import manifest_hash
from gen_fm.config import PretrainConfig
from gen_fm.model import add_hidden_dropout, build_model, load_model, sasrec_init
from gen_fm.objectives import HiddenStates, build_objectives
from gen_fm.titles import attach_title_embedding, extend_titles


# Fields of ``PretrainConfig.model`` that shape the weights: a run that starts from another
# model's weights (``init_from``) must agree with it on every one of them (the dropouts and the
# position headroom do not change a weight).
ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "rope_theta",
    "num_user_buckets",
    "history_tokens",
)


def load_init_weights(
    model: torch.nn.Module,
    init_from: str | Path,
    layout,
    config: PretrainConfig,
    sid_tokens: np.ndarray | None = None,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Copy an existing model folder's weights into `model` (a refresh fine-tune, not from scratch).

    The token layout must be identical: titles added to the ID map reuse the existing code tokens,
    so the code vocabulary never grows (a title-token parent gains title tokens for them, by their
    codes: `sid_tokens` are the new ID map's); a different layout means the IDs were rebuilt and
    the old embeddings would mean something else. Returns the parent's identity for the manifest
    and its own code rows for titles (``GenFM.title_code_rows``).
    """
    parent = load_model(init_from)
    own_rows = parent.title_code_rows()
    if sid_tokens is not None:  # titles added to the ID map since enter by their codes' rows
        parent.layout = extend_titles(parent.model, parent.layout, sid_tokens, own_rows)
    if parent.layout.to_json() != layout.to_json():
        raise ValueError(
            f"cannot start from {init_from}: its token layout ({parent.layout.vocab_size} "
            f"tokens, codebooks {parent.layout.codebook_sizes}) is not this run's "
            f"({layout.vocab_size} tokens, codebooks {layout.codebook_sizes}); new titles "
            f"must reuse the existing code tokens (assign them, do not rebuild the IDs)"
        )
    theirs, ours = parent.config.model, config.model
    changed = [f for f in ARCHITECTURE_FIELDS if getattr(theirs, f) != getattr(ours, f)]
    if changed:
        raise ValueError(
            f"cannot start from {init_from}: these fields differ from its config: "
            + ", ".join(f"model.{f} {getattr(theirs, f)} -> {getattr(ours, f)}" for f in changed)
        )
    model.load_state_dict(parent.model.state_dict(), strict=True)
    identity = {
        "model": str(init_from),
        "model_manifest": manifest_hash(init_from),
        "semantic_ids_map_version": parent.ids.version,
    }
    return identity, own_rows


@dataclass
class Network:
    """What ``build_network`` returns: the model to train and what hangs off it."""

    model: torch.nn.Module
    parent: dict[str, Any] | None  # the init_from folder's identity, for the manifest
    hidden: HiddenStates | None  # a title-token model's final hidden states, for its title loss
    ema: torch.nn.Module | None  # the averaged copy (``optim.ema_decay``), else None
    aux: torch.nn.Module | None  # the auxiliary objectives' heads, else None


def build_network(
    config: PretrainConfig,
    encoder,
    max_history: int,
    init_from: str | Path | None,
    device,
    *,
    ids,
    data,
    sid_rows: np.ndarray,
) -> Network:
    """The model a run trains. The title embedding is attached before the dropout hooks (so the
    composed rows are what dropout sees), the average copied before the auxiliary heads hook in.
    `ids`, `data` and `sid_rows` are what ``build_objectives`` reads."""
    model = build_model(config, encoder.layout, max_history)
    parent, parent_rows = (
        (None, None)
        if init_from is None
        else load_init_weights(model, init_from, encoder.layout, config, encoder.sid_tokens)
    )
    hidden = None
    if config.model.history_tokens == "titles":
        emb = attach_title_embedding(
            model,
            encoder.layout,
            encoder.sid_tokens,
            config.titles.identity_dropout,
            own_code_rows=config.titles.title_code_rows == "own",
            input_scale=config.model.hidden_size**0.5 if config.model.init == "sasrec" else 1.0,
        )
        if parent is not None:
            emb.identity_from_rows(parent_rows)
        elif config.model.init == "sasrec":
            sasrec_init(model, (encoder.layout.offsets[0], encoder.layout.code_end))
        hidden = HiddenStates()
        hidden.attach(model)
    spared = None
    if config.model.hidden_dropout_on == "trunk":  # the code tokens: offsets[0] up to code_end
        spared = (encoder.layout.offsets[0], encoder.layout.code_end)
    add_hidden_dropout(model, config.model.hidden_dropout, spared)
    ema = None
    if config.optim.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, device=device, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(config.optim.ema_decay)
        )
    aux = build_objectives(config, encoder.layout, ids, data, sid_rows)
    if aux is not None:
        aux.attach(model)
    return Network(model, parent, hidden, ema, aux)
