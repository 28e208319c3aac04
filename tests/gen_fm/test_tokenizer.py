"""Tokenizer round trips and the one prompt format."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from gen_fm.tokenizer import (
    CANVASES,
    PromptEncoder,
    build_tokenizer,
    canvas_token,
    check_tokenizer,
    model_layout,
    user_bucket,
    user_token,
)
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import BOS, EOS, PAD, SEP, UNK, TokenLayout

BASE = TokenLayout((8, 8, 4))
LAYOUT = model_layout(BASE, num_user_buckets=5)
TOK = build_tokenizer(LAYOUT)


def random_ids(n: int = 20, seed: int = 0) -> SemanticIDs:
    rng = np.random.default_rng(seed)
    flat = rng.choice(8 * 8 * 4, size=n, replace=False)
    codes = np.stack(np.unravel_index(flat, (8, 8, 4)), axis=1)
    return SemanticIDs([f"i{k}" for k in range(n)], codes, (8, 8, 4))


def test_model_layout_appends_without_moving_ids():
    assert LAYOUT.offsets == BASE.offsets and LAYOUT.code_end == BASE.code_end
    assert LAYOUT.vocab()[: BASE.vocab_size] == BASE.vocab()
    assert [LAYOUT.extra_id(canvas_token(c)) for c in CANVASES] == list(
        range(BASE.code_end, BASE.code_end + 4)
    )
    assert LAYOUT.extra_id(user_token(4)) == LAYOUT.vocab_size - 1
    assert model_layout(BASE, 0).vocab_size == BASE.vocab_size + len(CANVASES)
    with pytest.raises(ValueError):
        canvas_token("homepage")


def test_tokenizer_vocabulary_is_the_layout():
    assert TOK.get_vocab() == {t: i for i, t in enumerate(LAYOUT.vocab())}
    assert [TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id, TOK.sep_token_id, TOK.unk_token_id] == [
        PAD,
        BOS,
        EOS,
        SEP,
        UNK,
    ]
    assert len(TOK) == LAYOUT.vocab_size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, LAYOUT.vocab_size - 1), min_size=0, max_size=40))
def test_decode_encode_round_trip(ids):
    text = TOK.decode(ids)
    assert text == "".join(LAYOUT.vocab()[i] for i in ids)  # concatenated, no spaces
    assert TOK(text, add_special_tokens=False)["input_ids"] == ids


def test_whitespace_is_ignored_and_unknown_text_is_unk():
    assert TOK("<a_1> <b_2>\n<c_3>")["input_ids"] == TOK("<a_1><b_2><c_3>")["input_ids"]
    assert TOK("<a_1><z_9>xyz<b_0>")["input_ids"] == [BASE.offsets[0] + 1, UNK, UNK, BASE.offsets[1]]
    assert TOK("<a_8>")["input_ids"] == [UNK]  # beyond the level-0 codebook


def test_saved_tokenizer_reloads_with_auto_class(tmp_path):
    TOK.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    check_tokenizer(again, LAYOUT)
    text = "<bos><user_3><canvas_t2t><a_7><b_0><c_3>"
    assert again(text)["input_ids"] == TOK(text)["input_ids"]
    assert again.decode(again(text)["input_ids"]) == text
    assert again.decode(again(text)["input_ids"], skip_special_tokens=True) == text[len("<bos>") :]
    assert "token_type_ids" not in again(text)
    with pytest.raises(ValueError):
        check_tokenizer(again, model_layout(BASE, 6))


def test_prompt_format():
    ids = random_ids()
    enc = PromptEncoder.from_ids(ids, num_user_buckets=5)
    rows = [3, 0, 17]
    p = enc.encode(rows, canvas="search", user_id="42")
    L = BASE.sid_length
    assert p[0] == BOS
    assert p[1] == LAYOUT.extra_id(user_token(user_bucket("42", 5)))
    assert p[2] == LAYOUT.extra_id("<canvas_search>")
    assert p[3:] == [t for r in rows for t in BASE.sid_to_ids(ids.codes[r])]
    assert len(p) == enc.max_length(len(rows)) == 3 + len(rows) * L
    assert enc.decode_rows(p) == rows
    # the member token is optional: no buckets, or no member given
    assert PromptEncoder.from_ids(ids, 0).encode(rows, canvas="search", user_id="42") == [BOS] + p[2:]
    assert enc.encode(rows, canvas="search") == [BOS] + p[2:]
    assert enc.encode([], canvas="home") == [BOS, LAYOUT.extra_id("<canvas_home>")]
    assert TOK.decode(p).startswith("<bos><user_")
    with pytest.raises(ValueError):
        enc.encode(rows, canvas="nope")
    with pytest.raises(IndexError):
        enc.encode([len(ids.item_ids)])
    # a canvas context follows <sep>; it is not part of the history
    ctx = BASE.sid_to_ids(ids.codes[5])[:2]
    q = enc.encode(rows, canvas="search", user_id="42", context=ctx)
    assert q == p + [SEP] + ctx
    assert enc.decode_rows(q) == rows
    for bad in ([], [BOS], [LAYOUT.extra_id("<canvas_home>")]):
        with pytest.raises(ValueError, match="context"):
            enc.encode(rows, canvas="search", context=bad)


def test_user_bucket_is_stable_and_spread():
    # a golden value: changing the hash silently re-maps every member of every trained model
    assert user_bucket("42", 2000) == user_bucket("42", 2000) == 983
    buckets = {user_bucket(str(u), 50) for u in range(2000)}
    assert len(buckets) == 50 and all(0 <= b < 50 for b in buckets)
