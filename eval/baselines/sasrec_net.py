"""SASRec's network: its title rows, its self-attention blocks (the authors' or the foundation
model's Llama block) and its scores over the catalog; ``eval.baselines.sasrec`` trains it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# How a title is represented: one learned row ("id"), the sum of its semantic-ID codes' learned
# rows ("codes", what sidrec's foundation model reads), or both summed.
ITEMS = ("id", "codes", "both")
# The self-attention block: SASRec's own (learned positions, LayerNorm, ReLU MLP as wide as the
# model) or the foundation model's Llama block (RoPE, RMSNorm, SwiGLU MLP four times as wide), with
# dropout on its residual branches as ``gen_fm`` trains it.
BLOCKS = ("sasrec", "llama")
# Initialisation: the authors' (xavier-normal matrices, input rows scaled by sqrt(hidden)) or the
# foundation model's (transformers' Llama init: normal(0, 0.02) matrices, no input scale).
INITS = ("sasrec", "llama")
_INITIALISERS = {
    "sasrec": nn.init.xavier_normal_,
    # transformers' LlamaConfig().initializer_range, the std every matrix of the foundation model starts with
    "llama": lambda p: nn.init.normal_(p, std=0.02),
}


class SASRecBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = nn.MultiheadAttention(hidden, num_heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)  # (B, T, d)
        a, _ = self.attn(q, x, x, attn_mask=mask, need_weights=False)
        x = self.ffn_norm(q + a)
        return x + self.ffn(x)


class LlamaBlocks(nn.Module):
    """The foundation model's decoder layers (transformers' ``LlamaDecoderLayer``) behind SASRec's
    interface: RoPE positions, RMSNorm, SwiGLU MLP, attention dropout, and dropout on the attention
    and MLP outputs (Llama has none; ``gen_fm.model.residual_dropout`` adds it, as for the model)."""

    def __init__(self, hidden: int, num_blocks: int, num_heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        from transformers import LlamaConfig
        from transformers.models.llama import modeling_llama as llama

        # here, as transformers above: SASRec's own block does not load the foundation model's stack
        from gen_fm.model import residual_dropout

        config = LlamaConfig(
            vocab_size=1,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=num_blocks,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            head_dim=hidden // num_heads,
            max_position_embeddings=max_len,
            attention_dropout=dropout,
            bos_token_id=None,
            eos_token_id=None,
        )
        config._attn_implementation = "sdpa"
        self.layers = nn.ModuleList(llama.LlamaDecoderLayer(config, i) for i in range(num_blocks))
        self.rotary = llama.LlamaRotaryEmbedding(config)
        self.final_norm = llama.LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        residual_dropout(self.layers, dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        """`mask`: (B, T, T) True = may not attend; `pos`: (T,) position ids."""
        allowed = (~mask).unsqueeze(1)  # (B, 1, T, T) as sdpa reads a boolean mask
        rope = self.rotary(x, pos.expand(len(x), -1))
        for layer in self.layers:
            x = layer(x, attention_mask=allowed, position_embeddings=rope) * keep
        return self.final_norm(x)


class SASRec(nn.Module):
    """Causal self-attention over a member's recent titles; item 0 is padding, title row r is r + 1.

    `codes` ((num_items, L) int64, each level's codes offset into one shared range) and `items`
    choose the title representation: its own row, its codes' rows summed, or both summed."""

    def __init__(
        self,
        *,
        num_items: int,
        hidden: int,
        num_blocks: int,
        num_heads: int,
        dropout: float,
        max_len: int,
        items: str = "id",
        block: str = "sasrec",
        init: str = "sasrec",
        codes: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.num_items, self.max_len, self.num_heads = num_items, max_len, num_heads
        if (items != "id") != (codes is not None):
            raise ValueError(f"items {items!r}: codes are needed exactly when the representation uses them")
        self.items = items
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.code_emb = None
        if codes is not None:
            codes = torch.as_tensor(np.asarray(codes, dtype=np.int64))  # (N, L)
            if codes.shape[0] != num_items:
                raise ValueError(f"codes for {codes.shape[0]} titles, catalog of {num_items}")
            self.register_buffer("codes", codes, persistent=False)
            self.code_emb = nn.Embedding(int(codes.max()) + 1, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.llama = None
        if block == "llama":  # positions by RoPE inside the layers: no learned position rows
            self.llama = LlamaBlocks(hidden, num_blocks, num_heads, dropout, max_len)
        else:
            self.pos_emb = nn.Embedding(max_len, hidden)
            self.blocks = nn.ModuleList(SASRecBlock(hidden, num_heads, dropout) for _ in range(num_blocks))
            self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.input_scale = hidden**0.5 if init == "sasrec" else 1.0
        for p in self.parameters():
            if p.dim() > 1:
                _INITIALISERS[init](p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def item_matrix(self) -> torch.Tensor:
        """(N + 1, d) every title's row (row 0: padding, zeros)."""
        if self.code_emb is None:
            return self.item_emb.weight
        rows = self.code_emb(self.codes).sum(-2)  # (N, d)
        if self.items == "both":
            rows = rows + self.item_emb.weight[1:]
        return torch.cat([torch.zeros_like(rows[:1]), rows])

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded item indices -> (B, T, d) states; state t predicts item t + 1."""
        b, t = seq.shape
        if t > self.max_len:
            raise ValueError(f"window of {t} positions exceeds max_len {self.max_len}")
        keep = (seq != 0).unsqueeze(-1)  # (B, T, 1)
        pos = torch.arange(self.max_len - t, self.max_len, device=seq.device)  # (T,) right-aligned
        x = F.embedding(seq, self.item_matrix()) * self.input_scale  # (B, T, d)
        if self.llama is None:
            x = x + self.pos_emb(pos)
        x = self.emb_dropout(x) * keep
        # True = may not attend: future positions and padding (a padded query keeps itself, so no
        # row is fully masked; its output is zeroed anyway).
        causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).triu(1)  # (T, T)
        eye = torch.eye(t, dtype=torch.bool, device=seq.device)
        mask = causal | ((seq == 0).unsqueeze(1) & ~eye)  # (B, T, T)
        if self.llama is not None:
            return self.llama(x, mask, keep, pos)
        mask = mask.repeat_interleave(self.num_heads, dim=0)  # (B * heads, T, T)
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.final_norm(x)

    def all_item_scores(self, states: torch.Tensor) -> torch.Tensor:
        """(..., d) states -> (..., N) scores over catalog rows 0..N-1 (shared output embedding)."""
        return states @ self.item_matrix()[1:].T
