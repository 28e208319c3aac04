"""Round trips of the semantic-ID <-> token layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from semantic_ids.layout import SPECIAL_TOKENS, TokenLayout

sizes = st.lists(st.integers(1, 300), min_size=1, max_size=5).map(tuple)


@st.composite
def layout_and_sid(draw):
    cs = draw(sizes)
    sid = tuple(draw(st.integers(0, s - 1)) for s in cs)
    return TokenLayout(cs), sid


@given(layout_and_sid())
def test_sid_token_round_trip(ls):
    layout, sid = ls
    ids = layout.sid_to_ids(sid)
    assert layout.ids_to_sid(ids) == sid
    assert [layout.level_of(t) for t in ids] == list(range(len(sid)))
    assert layout.parse_sid_string(layout.sid_string(sid)) == sid
    vocab = layout.vocab()
    assert "".join(vocab[t] for t in ids) == layout.sid_string(sid)
    assert len(vocab) == layout.vocab_size == len(set(vocab))


def test_worked_example():
    layout = TokenLayout((4, 4, 2))
    assert layout.offsets == (5, 9, 13) and layout.vocab_size == 15
    assert layout.sid_to_ids((3, 0, 1)) == [8, 9, 14]
    assert layout.sid_string((3, 0, 1)) == "<a_3><b_0><c_1>"


def test_extra_tokens_append_without_moving_ids():
    base = TokenLayout((8, 8))
    more = base.with_extra(["<canvas_home>", "<v_0>"])
    assert more.sid_to_ids((7, 7)) == base.sid_to_ids((7, 7))
    assert more.extra_id("<canvas_home>") == base.vocab_size
    assert more.with_extra(["<canvas_home>"]).extra_tokens == more.extra_tokens
    assert more.level_of(more.extra_id("<v_0>")) is None
    assert TokenLayout.from_json(more.to_json()) == more


def test_bad_codes_are_rejected():
    layout = TokenLayout((4, 4))
    with pytest.raises(ValueError, match="out of range"):
        layout.sid_to_ids((4, 0))
    with pytest.raises(ValueError, match="has 2 codes"):
        layout.sid_to_ids((1,))
    with pytest.raises(ValueError, match="not a level-1 code"):
        layout.ids_to_sid([5, 5])
    with pytest.raises(ValueError, match="outside"):
        layout.sids_to_ids(np.array([[0, 9]]))
    with pytest.raises(ValueError, match="not a semantic ID string"):
        layout.parse_sid_string("<b_1><a_2>")
    with pytest.raises(ValueError, match="clash"):
        TokenLayout((4,), (SPECIAL_TOKENS[0],))
