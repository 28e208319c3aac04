"""Validation during pretraining: a fixed sample of members' validation transitions, judged by
the model's ranking on every process's share, the sums reduced over processes. The ranking is the
trie-constrained beam, or, for a model trained with the title loss, the beam fused with the title
head at the best of ``FUSION_WEIGHTS`` (the weight ``choose_fusion`` picks again after training);
with ``validation.judge_by`` "title_head", the title head alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.metrics import metrics_from_ranks, target_ranks
from core.sequences import Split
from gen_fm.config import PretrainConfig
from gen_fm.dataset import to_sid_rows
from gen_fm.decode import recommend, recommend_titles, title_tokens
from gen_fm.ranking import FUSION_WEIGHTS, beam_with_head
from gen_fm.titles import sync_title_rows
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
    n = config.validation.judge.eval_users
    if n is not None and n < len(idx):
        idx = np.sort(np.random.default_rng(config.seed).choice(len(idx), n, replace=False))
    prompts = [
        encoder.encode(to_sid_rows(ex.histories[i], sid_rows), user_id=split.sequences.user_ids[ex.users[i]])
        for i in idx
    ]
    return ValidationSet(prompts, to_sid_rows(ex.targets[idx], sid_rows))


@torch.no_grad()
def evaluate(accelerator, model, val: ValidationSet, trie, config: PretrainConfig) -> dict[str, float]:
    """The model's ranking on this process's share of the sample; sums reduced over processes.
    With a title head: ``recall@K`` / ``ndcg@K`` at the best title weight (``title_weight``), and
    the beam's own as ``beam_recall@K`` / ``beam_ndcg@K``; judged by the title head alone
    (``validation.judge_by``), the head's own."""
    rank, world = accelerator.process_index, accelerator.num_processes
    prompts, targets = val.prompts[rank::world], val.targets[rank::world]
    v = config.validation.judge
    k = v.k
    net = accelerator.unwrap_model(model)
    tokens = title_tokens(trie.layout, trie.num_items) if config.titles.title_loss_weight else None
    by_head = config.validation.judge_by == "title_head"
    weights = FUSION_WEIGHTS if tokens is not None and not by_head else (0.0,)
    sums = torch.zeros(2 * len(weights) + 1, dtype=torch.float64)  # recall, ndcg per weight; members
    if prompts:
        for i, ranked in enumerate(_rankings(net, prompts, trie, tokens, weights, by_head, v)):
            m = metrics_from_ranks(target_ranks(ranked, targets.tolist()), (k,))
            sums[2 * i : 2 * i + 2] += torch.tensor([m.recall[k], m.ndcg[k]], dtype=torch.float64) * len(
                prompts
            )
        sums[-1] += len(prompts)
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    n = max(float(sums[-1]), 1.0)
    per = [(float(sums[2 * i]) / n, float(sums[2 * i + 1]) / n) for i in range(len(weights))]
    best = max(range(len(weights)), key=lambda i: per[i])
    out = {f"recall@{k}": per[best][0], f"ndcg@{k}": per[best][1]}
    if tokens is not None and not by_head:
        out.update(
            {"title_weight": weights[best], f"beam_recall@{k}": per[0][0], f"beam_ndcg@{k}": per[0][1]}
        )
    return out


def _rankings(net, prompts, trie, tokens, weights, by_head: bool, v) -> list[list[list[int]]]:
    """Each weight's top-K rows per prompt: the beam fused with the title head at that weight (0:
    the beam alone), or with `by_head` the title head's own."""
    if tokens is not None:
        sync_title_rows(net)  # the output layer's title rows as the model composes them
    if by_head:
        heads = recommend_titles(net, prompts, trie, tokens, v.k, batch_size=v.eval_batch_size)
        return [[h.rows for h in heads]]
    recs = recommend(
        net, prompts, trie, k=v.k, num_beams=v.beams, constrained=True, batch_size=v.eval_batch_size
    )
    beams = [r.rows for r in recs]
    heads = None
    if tokens is not None:
        heads = recommend_titles(net, prompts, trie, tokens, v.beams, batch_size=v.eval_batch_size)
    return [
        beams if w == 0 else [list(beam_with_head(b, h.rows, w))[: v.k] for b, h in zip(beams, heads)]
        for w in weights
    ]
