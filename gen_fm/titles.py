"""Title identity beside the semantic codes: one history position per title.

A model trained with ``PretrainConfig.history_tokens = "titles"`` reads each history title as one
title token ``<title_{row}>`` whose embedding is the sum of its L code embeddings plus a learned
identity row. The codes carry what the title is (so similar titles start close, and a new title
has a meaningful embedding at once); the identity lets the model memorise what members do with
this very title. The output stays code tokens under the trie.

During training the title rows are computed (:class:`TitleEmbedding`); before the model folder is
written they are baked into the plain embedding matrix (:func:`bake_title_embeddings`), so the
folder is a standard ``LlamaForCausalLM`` that vLLM and transformers load as it is. A title added
after training gets the row its codes give, with no identity (:func:`extend_titles`). Written by
hand: the composition is a few lines of torch, and no library composes embedding rows of a Hugging
Face model from other rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from semantic_ids.layout import TokenLayout, title_token


def title_block(layout: TokenLayout, num_titles: int) -> int:
    """Token id of ``<title_0>``; the block of `num_titles` title tokens must be contiguous."""
    ids = layout.title_ids(num_titles)
    if ids is None or (ids < 0).any():
        raise ValueError(f"the layout has no title token for each of the {num_titles} titles")
    start = int(ids[0])
    if not np.array_equal(ids, start + np.arange(num_titles)):
        raise ValueError("the layout's title tokens are not one contiguous block")
    return start


class TitleEmbedding(nn.Module):
    """The model's token embedding, with title rows composed: codes' rows summed + identity."""

    def __init__(
        self,
        base: nn.Embedding,
        sid_tokens: np.ndarray,
        start: int,
        identity_dropout: float = 0.0,
        own_code_rows: bool = False,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.base = base  # (V, H), tied to the output layer; its title rows are unused in training
        # every input row is read times this (SASRec's sqrt(width)); the output rows are not
        self.input_scale = float(input_scale)
        # (N, L) code token ids: a plain attribute, not a buffer (weight averaging lerps buffers)
        self.codes = torch.as_tensor(np.asarray(sid_tokens), dtype=torch.long)
        self.start, self.num_titles = int(start), int(self.codes.shape[0])
        self.identity = nn.Embedding(self.num_titles, base.embedding_dim)  # (N, H)
        nn.init.normal_(self.identity.weight, std=0.02)
        self.identity_dropout = float(identity_dropout)
        # a title's code rows: the base's (shared with the code tokens) or a table of their own
        self.code_rows: nn.Embedding | None = None
        if own_code_rows:
            self.code_rows = nn.Embedding(int(self.codes.max()) + 1, base.embedding_dim)
            with torch.no_grad():  # starts where the shared rows start
                self.code_rows.weight.copy_(base.weight[: self.code_rows.num_embeddings])

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def _codes(self) -> torch.Tensor:
        if self.codes.device != self.base.weight.device:
            self.codes = self.codes.to(self.base.weight.device)
        return self.codes

    def code_sum(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., H) the sum of each title's code rows, from (..., L) code token ids."""
        rows = self.base if self.code_rows is None else self.code_rows
        return rows(codes).sum(-2)

    def title_matrix(self) -> torch.Tensor:
        """(N, H) every title's row as the model reads it."""
        return self.code_sum(self._codes()) + self.identity.weight

    @torch.no_grad()
    def identity_from_rows(self, code_rows: torch.Tensor | None = None) -> None:
        """Set each identity so the composed row equals the base's current title row (a model
        folder's baked rows, when training starts from one); `code_rows`: that folder's own code
        rows for titles, which this model's own table starts from."""
        if code_rows is not None and self.code_rows is not None:  # baked: times the input scale
            self.code_rows.weight.copy_(code_rows.to(self.code_rows.weight) / self.input_scale)
        rows = self.base.weight[self.start : self.start + self.num_titles]
        self.identity.weight.copy_(rows - self.code_sum(self._codes()))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = input_ids - self.start  # (B, T)
        is_title = (rows >= 0) & (rows < self.num_titles)  # (B, T)
        out = self.base(torch.where(is_title, 0, input_ids))  # (B, T, H)
        if not bool(is_title.any()):
            return out * self.input_scale
        r = rows[is_title]  # (n,)
        ident = self.identity(r)  # (n, H)
        if self.training and self.identity_dropout > 0:
            # a title whose identity is dropped enters by its codes alone, as a new title does
            keep = torch.rand(len(r), 1, device=ident.device) >= self.identity_dropout
            ident = ident * keep
        composed = self.code_sum(self._codes()[r]) + ident  # (n, H)
        return out.masked_scatter(is_title[..., None], composed.to(out.dtype)) * self.input_scale


def attach_title_embedding(
    model,
    layout: TokenLayout,
    sid_tokens: np.ndarray,
    identity_dropout: float = 0.0,
    own_code_rows: bool = False,
    input_scale: float = 1.0,
) -> TitleEmbedding:
    """Replace the model's input embedding by a :class:`TitleEmbedding` over it (training only).

    With an `input_scale` the model's weights are first put in the scaled form (:func:`unbake_scale`:
    embedding rows divided by it, the final norm's gain multiplied), so the function it computes is
    the one it computed before."""
    base = model.get_input_embeddings()
    if isinstance(base, TitleEmbedding):
        return base
    start = title_block(layout, len(sid_tokens))
    unbake_scale(model, input_scale)
    emb = TitleEmbedding(base, sid_tokens, start, identity_dropout, own_code_rows, input_scale)
    model.model.embed_tokens = emb
    return emb


@torch.no_grad()
def unbake_scale(model, scale: float) -> None:
    """A plain Llama's weights in the form a title embedding reading its rows times `scale`
    computes the same function with: embedding rows / scale, final norm gain * scale (in place)."""
    if scale != 1.0:
        model.get_input_embeddings().weight.div_(scale)
        model.model.norm.weight.mul_(scale)


@torch.no_grad()
def sync_title_rows(model) -> None:
    """Write every title's composed row into the plain embedding's title rows, which training never
    reads, so the tied output layer scores titles as the trained model does (in place)."""
    emb = model.get_input_embeddings()
    if isinstance(emb, TitleEmbedding):
        emb.base.weight[emb.start : emb.start + emb.num_titles] = emb.title_matrix().to(emb.base.weight.dtype)


@torch.no_grad()
def bake_title_embeddings(model) -> torch.Tensor | None:
    """Write every title's composed row into the plain embedding and drop the wrapper (in place).
    Returns the model's own code rows for titles (a copy), None where they are the embedding's."""
    emb = model.get_input_embeddings()
    if not isinstance(emb, TitleEmbedding):
        return None
    sync_title_rows(model)
    model.model.embed_tokens = emb.base
    if model.get_output_embeddings().weight is not emb.base.weight:
        raise RuntimeError("input and output embeddings are no longer tied")
    # the input scale into the rows, and out of the tied output through the final norm's gain
    unbake_scale(model, 1.0 / emb.input_scale)
    return None if emb.code_rows is None else emb.code_rows.weight.detach().float() * emb.input_scale


@torch.no_grad()
def extend_titles(
    model, layout: TokenLayout, sid_tokens: np.ndarray, code_rows: torch.Tensor | None = None
) -> TokenLayout:
    """Give rows without a title token one, whose embedding is the sum of its codes' rows (no
    identity: nothing was learned about it yet): the model's own code rows for titles where it
    has them (`code_rows`, ``GenFM.title_code_rows``), else the embedding's. Returns the extended
    layout; the model's embedding grows in place. Rows must be appended in ID-artifact order. A
    code-token model reads every title by its codes already: its layout comes back unchanged."""
    sid_tokens = np.asarray(sid_tokens, dtype=np.int64)
    have = layout.title_ids(len(sid_tokens))
    new = np.flatnonzero(have < 0) if have is not None else []
    if not len(new):
        return layout
    layout = layout.with_extra([title_token(r) for r in new])
    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    model.resize_token_embeddings(layout.vocab_size, mean_resizing=False)
    weight = model.get_input_embeddings().weight
    codes = torch.as_tensor(sid_tokens[new], device=weight.device)  # (n, L)
    rows = weight if code_rows is None else code_rows.to(weight)
    weight[old:] = rows[codes].sum(-2)
    return layout
