"""Training-only auxiliary objectives: multi-token prediction and a next-title category target.

Both read the decoder's final (normed) hidden states, caught by a forward hook on the Llama's last
norm, and add small heads that exist during pretraining only: the saved model stays a plain
``LlamaForCausalLM`` that vLLM serves (no library adds such heads without changing the model class).

- **Multi-token prediction** (Gloeckle et al., 2024; DeepSeek-V3): head ``k`` (k = 1..mtp_tokens)
  predicts, from position t, the token ``k + 1`` ahead, through a residual MLP and the tied output
  embeddings, so position t plans the rest of the next title's ID, not just its next code.
- **Category target**: at the position that predicts a title's first code, a linear head predicts
  that title's catalog categories (genres on MovieLens, the category path on Amazon), a soft-target
  cross-entropy over the category vocabulary (a title's labels share the probability mass), so the
  hidden state carries what kind of title comes next, as auxiliary category losses do in
  sequential recommenders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import RecData
from gen_fm.config import PretrainConfig
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import TokenLayout

IGNORE = -100


def category_vocabulary(
    categories: Sequence[Sequence[str]], min_titles: int, max_share: float = 0.5
) -> list[str]:
    """Labels on at least `min_titles` titles and at most `max_share` of them (a label every title
    has, such as Amazon's root "Beauty", says nothing), sorted for a stable order."""
    counts = Counter(c for cats in categories for c in set(cats))
    n = max(len(categories), 1)
    return sorted(c for c, k in counts.items() if k >= min_titles and k / n <= max_share)


def category_targets(categories: Sequence[Sequence[str]], vocab: Sequence[str]) -> torch.Tensor:
    """(num_titles, C) float: each title's labels in `vocab` share 1 (all zeros: no label)."""
    index = {c: i for i, c in enumerate(vocab)}
    out = torch.zeros(len(categories), len(vocab))
    for row, cats in enumerate(categories):
        hits = sorted({index[c] for c in cats if c in index})
        if hits:
            out[row, hits] = 1.0 / len(hits)
    return out


class HiddenStates:
    """Catches the final normed hidden states of every forward of a Llama (a forward hook on its
    last norm), for losses computed outside the model's own head."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def attach(self, llama: nn.Module):
        """Start catching; returns the hook handle."""
        return llama.model.norm.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.value = output

    def take(self) -> torch.Tensor:
        h, self.value = self.value, None
        if h is None:
            raise RuntimeError("no hidden states caught: attach, then run the model first")
        return h


class AuxiliaryObjectives(nn.Module):
    """The training-only heads and their losses.

    Use: ``aux.attach(llama)`` once; after each forward of the Llama, ``aux(labels,
    output_embeddings)`` returns the summed loss of each objective (``counts(labels)`` their
    targets). The losses are the module's forward so that a distributed wrapper syncs the heads. `title_categories` is ``(num_ID_rows, C)``
    from ``category_targets`` over the ID artifact's rows (None: no category target); `codes` the
    ID artifact's ``(num_ID_rows, L)`` codes, to recognise which title a label span names.
    """

    def __init__(
        self,
        hidden_size: int,
        layout: TokenLayout,
        mtp_tokens: int,
        codes: np.ndarray | None = None,
        title_categories: torch.Tensor | None = None,
        mtp_weight: float = 1.0,
        category_weight: float = 1.0,
    ):
        super().__init__()
        self.layout = layout
        self.mtp_tokens = int(mtp_tokens)
        # residual MLP per extra depth, then an RMSNorm, then the tied output embeddings
        self.mtp = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            for _ in range(self.mtp_tokens)
        )
        self.mtp_norm = nn.ModuleList(nn.RMSNorm(hidden_size, eps=1e-6) for _ in range(self.mtp_tokens))
        self.category = None
        if title_categories is not None:
            if codes is None or len(codes) != len(title_categories):
                raise ValueError("the category target needs the ID codes of every category row")
            self.category = nn.Linear(hidden_size, title_categories.shape[1])
            self.register_buffer("title_categories", title_categories.float(), persistent=False)
            keys = torch.as_tensor(self._keys(np.asarray(codes, dtype=np.int64)))
            order = torch.argsort(keys)
            self.register_buffer("sorted_keys", keys[order], persistent=False)
            self.register_buffer("key_rows", order, persistent=False)
        self.caught = HiddenStates()
        # weight of each objective against the next-token loss, in the order of `names`
        self.weights = {
            **{f"mtp_{k + 2}": float(mtp_weight) for k in range(self.mtp_tokens)},
            **({"category": float(category_weight)} if self.category is not None else {}),
        }

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """One int64 per ID (mixed radix over the codebook sizes)."""
        key = np.zeros(codes.shape[0], dtype=np.int64)
        for level, size in enumerate(self.layout.codebook_sizes):
            key = key * size + codes[:, level]
        return key

    def attach(self, llama: nn.Module):
        """Catch the final normed hidden states of every forward; returns the hook handle."""
        return self.caught.attach(llama)

    @property
    def _hidden(self) -> torch.Tensor | None:
        return self.caught.value

    @_hidden.setter
    def _hidden(self, value: torch.Tensor | None) -> None:
        self.caught.value = value

    def category_positions(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, position) of each prediction of a title's first code whose title has labels,
        and (N,) the ID rows of those titles."""
        L = self.layout.sid_length
        B, T = labels.shape
        lo, size0 = self.layout.offsets[0], self.layout.codebook_sizes[0]
        nxt = F.pad(labels[:, 1:], (0, 1), value=IGNORE)  # (B, T): token t+1
        starts = (nxt >= lo) & (nxt < lo + size0)
        b, t = torch.nonzero(starts, as_tuple=True)
        keep = t + L < T  # the whole ID (labels t+1..t+L) is inside the row
        b, t = b[keep], t[keep]
        span = labels[b[:, None], t[:, None] + 1 + torch.arange(L, device=labels.device)]  # (N, L)
        codes = span - torch.as_tensor(self.layout.offsets, device=labels.device)
        key = torch.zeros(len(b), dtype=torch.long, device=labels.device)
        for level, size in enumerate(self.layout.codebook_sizes):
            key = key * size + codes[:, level]
        pos = torch.searchsorted(self.sorted_keys, key).clamp(max=len(self.sorted_keys) - 1)
        found = self.sorted_keys[pos] == key
        rows = self.key_rows[pos]
        found &= self.title_categories[rows].sum(-1) > 0
        return (b[found], t[found]), rows[found]

    def counts(self, labels: torch.Tensor) -> dict[str, int]:
        """Targets per objective in a batch (to normalise over an accumulation group)."""
        out = {f"mtp_{k + 2}": int((labels[:, 2 + k :] != IGNORE).sum()) for k in range(self.mtp_tokens)}
        if self.category is not None:
            out["category"] = len(self.category_positions(labels)[1])
        return out

    def forward(self, labels: torch.Tensor, output_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summed loss of each objective over the last forward's batch (labels as for the LM)."""
        h = self.caught.take()
        out: dict[str, torch.Tensor] = {}
        for k in range(self.mtp_tokens):
            shift = 2 + k  # token t + shift is predicted at t
            target = F.pad(labels[:, shift:], (0, shift), value=IGNORE)  # (B, T)
            sel = target != IGNORE
            z = h[sel]  # (N, H)
            z = self.mtp_norm[k](z + self.mtp[k](z))
            logits = F.linear(z, output_embeddings)  # (N, V)
            out[f"mtp_{k + 2}"] = F.cross_entropy(logits.float(), target[sel], reduction="sum")
        if self.category is not None:
            (b, t), rows = self.category_positions(labels)
            logits = self.category(h[b, t]).float()  # (N, C)
            soft = self.title_categories[rows]  # (N, C)
            out["category"] = -(soft * F.log_softmax(logits, -1)).sum()
        return out


def build_objectives(config: PretrainConfig, layout, ids: SemanticIDs, data: RecData, sid_rows: np.ndarray):
    """The training-only heads the config asks for (``gen_fm.objectives``), or None."""
    o = config.objectives
    if not o.mtp_tokens and not o.category_weight:
        return None
    title_categories = None
    if o.category_weight:
        cats: list[list[str]] = [[] for _ in range(ids.num_items)]  # by ID-artifact row
        for row, labels in zip(sid_rows.tolist(), data.catalog["categories"]):
            if row >= 0:
                cats[row] = list(labels or [])
        vocab = category_vocabulary([c for c in cats if c], o.category_min_titles)
        if not vocab:
            raise ValueError(
                f"category_weight {o.category_weight}: the catalog of "
                f"{data.name} has no category on >= {o.category_min_titles} "
                f"titles (and on at most half of them) to predict"
            )
        title_categories = category_targets(cats, vocab)
    return AuxiliaryObjectives(
        config.model.hidden_size,
        layout,
        o.mtp_tokens,
        ids.codes,
        title_categories,
        o.mtp_weight,
        o.category_weight,
    )
