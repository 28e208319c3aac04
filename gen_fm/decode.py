"""Top-K titles per prompt by beam search on a Hugging Face causal LM, constrained by the ID trie.

transformers' own beam search does the search (``generate(num_beams=...)``); this module only adds a
``LogitsProcessor`` over :class:`semantic_ids.trie.PrefixTrie`. That works in transformers 5.19
because its beam search applies processors to the *log-softmaxed* scores of every beam row before
ranking, and row ``r`` of the flattened beams belongs to prompt ``r // num_beams``; so the processor
can mask per prompt (each with its own excluded titles) and renormalise over the allowed set, and the
beam score is the sum of those renormalised log-probs (``length_penalty=0``). With
``num_beams >= number of titles`` the search is exhaustive (checked in the tests against teacher forcing).

Beam width < K is refused: published numbers computed that way are not comparable (notes/anchors.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from semantic_ids.layout import PAD, SPECIAL_TOKENS, TokenLayout
from semantic_ids.trie import PrefixTrie, Restriction, RowRestrictions

# HF beam search parks unused beam slots at -1e9; anything this low is not a real candidate.
_NOT_A_BEAM = -1e8


@dataclass(frozen=True)
class Recommendations:
    """Top-K titles for one prompt, best first (ties broken by item row, so runs are reproducible)."""

    rows: list[int]  # item rows into the SemanticIDs map; -1 for an invalid ID (unconstrained only)
    sids: list[tuple[int, ...]]  # codes per title; -1 where a token is not a code of that level
    scores: list[float]  # sum of the L token log-probs (renormalised over the allowed set if constrained)
    num_invalid: int  # beams that are not a valid ID (always 0 when constrained)


def renormalise(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(R, V) log-probs -> log-probs over the allowed tokens only; rows with nothing allowed are all -inf.

    Renormalising makes a title's score its probability *among valid IDs*, the quantity that the
    exhaustive reference and the vLLM backend (``processed_logprobs``) also report.
    """
    lse = torch.logsumexp(log_probs.masked_fill(~mask, float("-inf")), dim=-1, keepdim=True)  # (R, 1)
    # torch.where, not subtraction then fill: an all-masked row would give -inf - -inf = NaN
    return torch.where(mask, log_probs - lse, torch.full_like(log_probs, float("-inf")))


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every beam row to the trie children of its generated prefix (and its prompt's restriction)."""

    def __init__(
        self, trie: PrefixTrie, prompt_len: int, restrictions: RowRestrictions | Restriction | None = None
    ) -> None:
        self.trie = trie
        self.prompt_len = prompt_len  # padded prompt width: everything after it is the ID prefix
        self.restrictions = restrictions

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        prefixes = input_ids[:, self.prompt_len :]  # (rows, depth)
        mask = self.trie.allowed_mask(prefixes, scores.shape[-1], self.restrictions)  # (rows, V)
        return renormalise(scores, mask)


class CodeTokensOnly(LogitsProcessor):
    """Unconstrained decoding over code tokens: any code of any level, never a special, title or
    extra token (a title-token model's title rows are output logits too, and would win)."""

    def __init__(self, code_end: int) -> None:
        self.code_end = code_end

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        mask[len(SPECIAL_TOKENS) : self.code_end] = True
        return renormalise(scores, mask.expand_as(scores))


def left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (B, T) ids and attention mask, padded on the left so every row ends at the last column
    (a decoder-only model continues from the last position)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. <bos>)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, T)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _generation_config(trie: PrefixTrie, k: int, num_beams: int) -> GenerationConfig:
    """Plain beam search of exactly L tokens whose score is the raw log-prob sum.

    Set explicitly because unset fields are filled from the model's saved ``generation_config``;
    anything that would change beam scores (penalties, EOS stopping) is pinned here.
    """
    L = trie.sid_length
    return GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=k,
        do_sample=False,
        max_new_tokens=L,
        min_new_tokens=L,  # min_new_tokens bans EOS, so no beam stops short
        length_penalty=0.0,
        early_stopping=False,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        pad_token_id=PAD,
        output_scores=True,
        return_dict_in_generate=True,
        use_cache=True,
    )


def _shared_prompt_cache(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int
) -> DynamicCache | None:
    """KV cache of every prompt but its last token, computed once per prompt and copied per beam.

    ``generate`` copies the prompt ``num_beams`` times *before* its prefill, so the prompt would be
    encoded once per beam. Handing it this cache leaves it only the last prompt token to run
    (positions follow generate's own rule; the exhaustive-scoring test checks the result).
    """
    if input_ids.shape[1] < 2 or not isinstance(model, PreTrainedModel):
        return None  # e.g. a PEFT wrapper, whose forward injects its own virtual tokens
    mask = attention_mask[:, :-1]
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, T-1), as generate computes them
    cache = DynamicCache(config=model.config)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        **extra,
    )
    cache.batch_repeat_interleave(num_beams)  # (B * num_beams, ...), the row order generate uses
    return cache


def _sid_of(trie: PrefixTrie, tokens: list[int]) -> tuple[int, ...]:
    """Codes of a generated path; -1 for a token outside its level's range (invalid beams)."""
    out = []
    for level, (off, size) in enumerate(zip(trie.layout.offsets, trie.layout.codebook_sizes)):
        code = tokens[level] - off if level < len(tokens) else -1
        out.append(code if 0 <= code < size else -1)
    return tuple(out)


@torch.no_grad()
def _decode_batch(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    trie: PrefixTrie,
    k: int,
    num_beams: int,
    views: Sequence[Restriction | None] | None,
    constrained: bool,
) -> list[Recommendations]:
    device = model.device
    input_ids, attention_mask = left_pad(prompts, device)  # (B, T)
    B, T = input_ids.shape
    processors = LogitsProcessorList()
    if constrained:
        rr = None if views is None else trie.row_restrictions(views, repeat=num_beams).to(device)
        processors.append(TrieLogitsProcessor(trie, T, rr))
    else:
        processors.append(CodeTokensOnly(trie.layout.code_end))
    cache = _shared_prompt_cache(model, input_ids, attention_mask, num_beams)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        past_key_values=cache,
        generation_config=_generation_config(trie, k, num_beams),
        logits_processor=processors,
    )
    seqs = out.sequences[:, T:].reshape(B, k, -1).cpu()  # (B, k, <=L) generated tokens per beam
    scores = out.sequences_scores.reshape(B, k).float().cpu()  # (B, k)
    gen = seqs if seqs.shape[-1] == trie.sid_length else torch.full((B, k, trie.sid_length), -1)
    rows = trie.items_of(gen.reshape(B * k, -1)).reshape(B, k)  # (B, k) -1 where invalid
    result = []
    for b in range(B):
        cands = []
        for j in range(k):
            s, row = float(scores[b, j]), int(rows[b, j])
            if s <= _NOT_A_BEAM or s != s:
                continue  # an unused beam slot (fewer permitted titles than beams)
            if constrained and (
                row < 0 or (views is not None and views[b] is not None and views[b].item_of(gen[b, j]) < 0)
            ):
                raise RuntimeError(f"constrained beam search produced a forbidden path {gen[b, j].tolist()}")
            cands.append((s, row, gen[b, j].tolist()))
        cands.sort(key=lambda c: (-c[0], c[1] if c[1] >= 0 else 1 << 62, c[2]))
        if constrained and len({c[1] for c in cands}) != len(cands):
            raise RuntimeError("constrained beam search returned the same title twice")
        result.append(
            Recommendations(
                rows=[c[1] for c in cands],
                sids=[_sid_of(trie, c[2]) for c in cands],
                scores=[c[0] for c in cands],
                num_invalid=sum(c[1] < 0 for c in cands),
            )
        )
    return result


def title_tokens(layout: TokenLayout, num_items: int) -> np.ndarray | None:
    """(num_items,) the title token of every ID row in a model's layout, or None for a model that
    reads histories by their codes (a title-token model has one for every row, catalog updates too)."""
    ids = layout.title_ids(num_items)
    if ids is None or (ids < 0).any():
        return None
    return ids


@torch.no_grad()
def recommend_titles(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    trie: PrefixTrie,
    tokens: np.ndarray,
    n: int,
    views: Sequence[Restriction | None] | None = None,
    batch_size: int = 64,
) -> list[Recommendations]:
    """The title head: the top-`n` titles per prompt by the model's next-token logits over the
    title tokens (`tokens`: ``title_tokens`` of the model's layout; the tied title rows, trained by
    ``title_loss_weight``), renormalised over the titles ``views[i]`` permits. One forward pass per
    prompt; no beam."""
    if len(tokens) != trie.num_items:
        raise ValueError(f"{len(tokens)} title tokens for {trie.num_items} titles")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if views is not None and len(views) != len(prompts):
        raise ValueError(f"{len(views)} restrictions for {len(prompts)} prompts")
    was_training = model.training
    model.eval()
    rows = np.arange(trie.num_items)
    head = torch.as_tensor(tokens, device=model.device)
    out: list[Recommendations] = []
    try:
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = left_pad(prompts[start : start + batch_size], model.device)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) as generate's
            logits = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=1,
            ).logits
            scores = torch.log_softmax(logits[:, -1].float(), -1)[:, head]  # (B, num_items)
            for i in range(len(scores)):
                view = None if views is None else views[start + i]
                mask = torch.ones(len(rows), dtype=torch.bool)
                if view is not None:
                    mask = torch.from_numpy(view.permits(rows))
                s = renormalise(scores[i : i + 1].cpu(), mask[None])[0]  # (num_items,)
                top = torch.topk(s, min(n, int(mask.sum())))
                pairs = sorted(zip(top.values.tolist(), top.indices.tolist()), key=lambda c: (-c[0], c[1]))
                out.append(
                    Recommendations(
                        rows=[r for _, r in pairs],
                        sids=[tuple(int(c) for c in trie.codes[r]) for _, r in pairs],
                        scores=[v for v, _ in pairs],
                        num_invalid=0,
                    )
                )
        return out
    finally:
        model.train(was_training)


def recommend(
    model: PreTrainedModel,
    prompts: list[list[int]],
    trie: PrefixTrie,
    k: int,
    num_beams: int | None = None,
    exclude: list[list[int]] | None = None,
    constrained: bool = True,
    batch_size: int = 64,
    allow: list[list[int] | None] | None = None,
) -> list[Recommendations]:
    """Top-``k`` titles per prompt, by beam search over the L ID tokens.

    ``exclude[i]`` lists item rows prompt ``i`` must never get (watched titles, business rules);
    ``allow[i]`` (None = every title) the only rows it may get (a canvas context's candidate set).
    ``constrained=False`` runs the model without the trie (for the invalid-ID rate): every beam is
    kept, invalid ones with row -1, and scores are log-probs over the code tokens (any level's codes;
    never a special, title or extra token). A prompt whose permitted titles are fewer than ``k``
    gets fewer results.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_beams = k if num_beams is None else num_beams
    if num_beams < k:
        raise ValueError(
            f"num_beams ({num_beams}) must be >= k ({k}): beam search cannot return "
            f"more titles than it keeps beams"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name, lists in (("exclude", exclude), ("allow", allow)):
        if lists is not None:
            if len(lists) != len(prompts):
                raise ValueError(f"{name} has {len(lists)} lists for {len(prompts)} prompts")
            if not constrained:
                raise ValueError(f"{name} needs constrained=True: only the trie can enforce it")
    vocab = model.get_output_embeddings().weight.shape[0]
    if vocab < trie.layout.code_end:
        raise ValueError(
            f"model vocabulary ({vocab}) does not cover the code tokens ({trie.layout.code_end})"
        )
    was_training = model.training
    model.eval()
    try:
        results: list[Recommendations] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            views = None
            if exclude is not None or allow is not None:
                ex = exclude[start : start + batch_size] if exclude is not None else [()] * len(chunk)
                al = allow[start : start + batch_size] if allow is not None else [None] * len(chunk)
                views = [
                    trie.restrict(exclude_rows=e if len(e) else None, allow_rows=a)
                    if len(e) or a is not None
                    else None
                    for e, a in zip(ex, al)
                ]
            results += _decode_batch(model, chunk, trie, k, num_beams, views, constrained)
        return results
    finally:
        model.train(was_training)
