"""Constrained beam search on a tiny random Llama: valid, permitted, exact, batch-invariant, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gen_fm.decode import Recommendations, recommend
from semantic_ids.layout import BOS, EOS, PAD, TokenLayout
from semantic_ids.trie import PrefixTrie

LAYOUT = TokenLayout((3, 3, 3, 2))  # 54 possible IDs, 20 used: prefixes share branches at every level
NUM_ITEMS = 20


@pytest.fixture(scope="module")
def setup() -> tuple[LlamaForCausalLM, PrefixTrie, np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(0)
    flat = rng.choice(int(np.prod(LAYOUT.codebook_sizes)), NUM_ITEMS, replace=False)
    codes = np.stack(np.unravel_index(flat, LAYOUT.codebook_sizes), axis=1)  # (20, 4)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=LAYOUT.vocab_size,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=0.1,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config).eval()
    tokens = LAYOUT.sids_to_ids(codes)
    prompts = [[BOS] + tokens[rng.choice(NUM_ITEMS, n, replace=False)].ravel().tolist() for n in (0, 3, 2, 5)]
    # the first prompt is <bos> alone: decoding with no cached prompt prefix is covered too
    return model, PrefixTrie(codes, LAYOUT), codes, prompts


def exhaustive(
    model: LlamaForCausalLM, prompt: list[int], codes: np.ndarray, permitted: set[int]
) -> np.ndarray:
    """Score of every permitted title by teacher forcing: sum over positions of the log-prob renormalised
    over the tokens that lead to a permitted title (brute force, no trie); -inf for the others."""
    tokens = LAYOUT.sids_to_ids(codes)  # (N, L)
    inp = torch.tensor([prompt + row[:-1].tolist() for row in tokens])  # (N, T + L - 1)
    with torch.no_grad():
        logp = model(inp).logits.log_softmax(-1)[:, len(prompt) - 1 :]  # (N, L, V)
    scores = np.full(len(codes), -np.inf)
    for i in sorted(permitted):
        total = 0.0
        for d in range(tokens.shape[1]):
            allowed = sorted({int(tokens[j, d]) for j in permitted if (tokens[j, :d] == tokens[i, :d]).all()})
            total += float(logp[i, d, tokens[i, d]] - torch.logsumexp(logp[i, d, allowed], 0))
        scores[i] = total
    return scores


def assert_same_ranking(rec: Recommendations, ref: np.ndarray, k: int) -> None:
    order = sorted(np.flatnonzero(np.isfinite(ref)), key=lambda i: (-ref[i], i))[:k]
    assert len(rec.rows) == len(order)
    np.testing.assert_allclose(rec.scores, ref[rec.rows], atol=1e-4)
    for got, want in zip(rec.rows, order):  # same order, up to genuine ties
        assert got == want or abs(ref[got] - ref[want]) < 1e-5, (rec.rows, order)


def test_outputs_are_distinct_valid_ids(setup) -> None:
    model, trie, codes, prompts = setup
    for rec in recommend(model, prompts, trie, k=8, num_beams=8):
        assert len(rec.rows) == 8 and len(set(rec.rows)) == 8 and rec.num_invalid == 0
        assert all(0 <= r < NUM_ITEMS for r in rec.rows)
        assert rec.sids == [tuple(int(c) for c in codes[r]) for r in rec.rows]
        assert rec.scores == sorted(rec.scores, reverse=True) and all(s <= 0 for s in rec.scores)


@pytest.mark.parametrize("with_exclusions", [False, True])
def test_wide_beam_equals_exhaustive_scoring(setup, with_exclusions: bool) -> None:
    """num_beams >= catalog size makes beam search exact: same titles, order and scores."""
    model, trie, codes, prompts = setup
    k = 8
    exclude = None
    if with_exclusions:  # each prompt loses its own current best titles, plus a few others
        plain = recommend(model, prompts, trie, k=3, num_beams=NUM_ITEMS)
        exclude = [rec.rows[:2] + [i, (i + 7) % NUM_ITEMS] for i, rec in enumerate(plain)]
    recs = recommend(model, prompts, trie, k=k, num_beams=NUM_ITEMS, exclude=exclude)
    for i, (prompt, rec) in enumerate(zip(prompts, recs)):
        permitted = set(range(NUM_ITEMS)) - set(exclude[i] if exclude else [])
        assert not set(rec.rows) & set(exclude[i] if exclude else [])
        assert_same_ranking(rec, exhaustive(model, prompt, codes, permitted), k)


def test_excluded_titles_never_appear_even_when_few_remain(setup) -> None:
    model, trie, codes, prompts = setup
    keep = [[3, 11, 17], [0], [5, 6, 7, 8, 9, 10], []]  # what each prompt is still allowed
    exclude = [sorted(set(range(NUM_ITEMS)) - set(kp)) for kp in keep]
    recs = recommend(model, prompts, trie, k=5, num_beams=6, exclude=exclude)
    for kp, rec in zip(keep, recs):
        assert set(rec.rows) <= set(kp) and len(rec.rows) == min(5, len(kp))
        assert len(set(rec.rows)) == len(rec.rows)


def test_batched_left_padded_equals_one_prompt_at_a_time(setup) -> None:
    model, trie, codes, prompts = setup
    exclude = [[0, 1], [], [2], [3, 4, 5]]
    batched = recommend(model, prompts, trie, k=6, num_beams=10, exclude=exclude, batch_size=3)
    for prompt, excl, rec in zip(prompts, exclude, batched):
        single = recommend(model, [prompt], trie, k=6, num_beams=10, exclude=[excl])[0]
        assert single.rows == rec.rows and single.sids == rec.sids
        np.testing.assert_allclose(single.scores, rec.scores, atol=1e-5)


def test_deterministic_across_runs(setup) -> None:
    model, trie, codes, prompts = setup
    assert recommend(model, prompts, trie, k=5, num_beams=7) == recommend(
        model, prompts, trie, k=5, num_beams=7
    )


def test_unconstrained_reports_invalid_beams(setup) -> None:
    """Without the trie a random model mostly writes non-IDs; each is reported, not silently dropped."""
    model, trie, codes, prompts = setup
    known = {tuple(int(c) for c in row): r for r, row in enumerate(codes)}
    recs = recommend(model, prompts, trie, k=10, num_beams=10, constrained=False)
    assert sum(rec.num_invalid for rec in recs) > 0
    for rec in recs:
        assert len(rec.rows) == 10 and rec.num_invalid == sum(r < 0 for r in rec.rows)
        assert rec.scores == sorted(rec.scores, reverse=True)
        for row, sid in zip(rec.rows, rec.sids):
            assert len(sid) == LAYOUT.sid_length and row == known.get(sid, -1)


def test_bad_arguments_raise(setup) -> None:
    model, trie, codes, prompts = setup
    with pytest.raises(ValueError, match="num_beams"):
        recommend(model, prompts, trie, k=5, num_beams=4)
    with pytest.raises(ValueError, match="constrained"):
        recommend(model, prompts, trie, k=2, exclude=[[0]] * len(prompts), constrained=False)
    with pytest.raises(ValueError, match="exclude"):
        recommend(model, prompts, trie, k=2, exclude=[[0]])
    with pytest.raises(ValueError, match="prompt"):
        recommend(model, [[]], trie, k=2)
