"""Validation during pretraining: a fixed sample of members' validation transitions, judged by
trie-constrained beam search on every process's share, the sums reduced over processes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.metrics import metrics_from_ranks, target_ranks
from core.sequences import Split
from gen_fm.config import PretrainConfig
from gen_fm.dataset import to_sid_rows
from gen_fm.decode import recommend
from gen_fm.tokenizer import PromptEncoder


@dataclass
class ValidationSet:
    prompts: list[list[int]]
    targets: np.ndarray  # (N,) ID-artifact rows


def validation_set(
    split: Split, sid_rows: np.ndarray, encoder: PromptEncoder, config: PretrainConfig
) -> ValidationSet:
    """A fixed sample of members' validation histories (drawn once with the seed)."""
    ex = split.examples("valid")
    idx = np.arange(len(ex.users))
    if config.val_users is not None and config.val_users < len(idx):
        idx = np.sort(np.random.default_rng(config.seed).choice(len(idx), config.val_users, replace=False))
    prompts = [
        encoder.encode(to_sid_rows(ex.histories[i], sid_rows), user_id=split.sequences.user_ids[ex.users[i]])
        for i in idx
    ]
    return ValidationSet(prompts, to_sid_rows(ex.targets[idx], sid_rows))


@torch.no_grad()
def evaluate(accelerator, model, val: ValidationSet, trie, config: PretrainConfig) -> dict[str, float]:
    """Constrained beam search on this process's share of the sample; sums reduced over processes."""
    rank, world = accelerator.process_index, accelerator.num_processes
    prompts, targets = val.prompts[rank::world], val.targets[rank::world]
    k = config.eval_k
    sums = torch.zeros(3, dtype=torch.float64)  # (3,) recall sum, ndcg sum, members
    if prompts:
        recs = recommend(
            accelerator.unwrap_model(model),
            prompts,
            trie,
            k=k,
            num_beams=config.beams,
            constrained=True,
            batch_size=config.eval_batch_size,
        )
        m = metrics_from_ranks(target_ranks([r.rows for r in recs], targets.tolist()), (k,))
        sums += torch.tensor(
            [m.recall[k] * len(prompts), m.ndcg[k] * len(prompts), len(prompts)], dtype=torch.float64
        )
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    n = max(float(sums[2]), 1.0)
    return {f"recall@{k}": float(sums[0]) / n, f"ndcg@{k}": float(sums[1]) / n}
