"""The trie against a brute-force set of token paths: what it allows is exactly what leads to a permitted ID."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import TokenLayout
from semantic_ids.trie import PrefixTrie, Restriction

# database=None: no .hypothesis/ folder in the checkout; a failure prints its example anyway
SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def catalogs(draw) -> tuple[TokenLayout, np.ndarray]:
    """A layout (sometimes with extra tokens after the codes) and unique codes (N, L)."""
    L = draw(st.integers(1, 4))
    sizes = tuple(draw(st.integers(1, 4)) for _ in range(L))
    total = int(np.prod(sizes))
    n = draw(st.integers(1, min(total, 40)))
    flat = draw(st.lists(st.integers(0, total - 1), min_size=n, max_size=n, unique=True))
    codes = np.stack(np.unravel_index(np.array(flat), sizes), axis=1).astype(np.int64)  # (N, L)
    extra = ("<x>", "<y>") if draw(st.booleans()) else ()
    return TokenLayout(sizes, extra), codes


@st.composite
def restricted(draw) -> tuple[TokenLayout, np.ndarray, PrefixTrie, Restriction | None, set[int]]:
    """A catalog, its trie, a random restriction (none / exclude / allow / both) and its permitted rows."""
    layout, codes = draw(catalogs())
    n = len(codes)
    trie = PrefixTrie(codes, layout)
    rows = st.lists(st.integers(0, n - 1), max_size=n)
    kind = draw(st.sampled_from(["none", "exclude", "allow", "both", "narrowed"]))
    excl, allow = draw(rows), draw(rows)
    if kind == "none":
        return layout, codes, trie, None, set(range(n))
    if kind == "exclude":
        return layout, codes, trie, trie.restrict(exclude_rows=excl), set(range(n)) - set(excl)
    if kind == "allow":
        return layout, codes, trie, trie.restrict(allow_rows=allow), set(allow)
    if kind == "both":
        return layout, codes, trie, trie.restrict(excl, allow), set(allow) - set(excl)
    # narrowing twice = one restriction with the combined rows (how business rules stack on watched titles)
    more = draw(rows)
    view = trie.restrict(exclude_rows=excl).restrict(exclude_rows=more, allow_rows=allow or None)
    permitted = set(range(n)) - set(excl) - set(more)
    return layout, codes, trie, view, permitted & set(allow) if allow else permitted


def brute_next(paths: list[tuple[int, ...]], prefix: tuple[int, ...]) -> list[int]:
    d = len(prefix)
    return sorted({p[d] for p in paths if p[:d] == prefix})


def permitted_paths(layout: TokenLayout, codes: np.ndarray, permitted: set[int]) -> list[tuple[int, ...]]:
    tokens = layout.sids_to_ids(codes)
    return [tuple(int(t) for t in tokens[r]) for r in sorted(permitted)]


@SETTINGS
@given(restricted())
def test_every_path_is_a_permitted_id_and_every_permitted_id_is_reached(case) -> None:
    layout, codes, trie, view, permitted = case
    tokens = layout.sids_to_ids(codes)
    leaves: list[tuple[int, ...]] = []
    stack: list[tuple[int, ...]] = [()]
    while stack:  # depth-first walk using only allowed_next
        prefix = stack.pop()
        if len(prefix) == trie.sid_length:
            leaves.append(prefix)
            continue
        nxt = trie.allowed_next(list(prefix), view).tolist()
        assert nxt or (prefix == () and not permitted), f"dead prefix {prefix} was not pruned"
        stack += [prefix + (t,) for t in nxt]
    assert sorted(leaves) == sorted(permitted_paths(layout, codes, permitted))
    for leaf in leaves:
        row = trie.item_of(list(leaf))
        assert tuple(tokens[row]) == leaf and row in permitted
        assert (view.item_of(list(leaf)) if view is not None else row) == row
    if view is not None:
        assert view.num_permitted == len(permitted)
        assert set(np.flatnonzero(view.permits(np.arange(len(codes))))) == permitted
        for r in set(range(len(codes))) - permitted:
            assert view.item_of(tokens[r].tolist()) == -1


@SETTINGS
@given(restricted(), st.data())
def test_allowed_next_equals_brute_force(case, data) -> None:
    layout, codes, trie, view, permitted = case
    paths = permitted_paths(layout, codes, permitted)
    tokens = layout.sids_to_ids(codes)
    prefixes = {tuple(int(t) for t in row[:d]) for row in tokens for d in range(trie.sid_length)}
    for _ in range(10):  # plus arbitrary, mostly invalid, token prefixes
        d = data.draw(st.integers(0, trie.sid_length - 1))
        prefixes.add(tuple(data.draw(st.lists(st.integers(-1, layout.vocab_size), min_size=d, max_size=d))))
    for prefix in prefixes:
        assert trie.allowed_next(list(prefix), view).tolist() == brute_next(paths, prefix), prefix


@SETTINGS
@given(catalogs(), st.data())
def test_batched_mask_equals_allowed_next_per_row(catalog, data) -> None:
    """Rows of one batch with different restrictions (the decoding case) and mixed valid/invalid prefixes."""
    layout, codes = catalog
    n = len(codes)
    trie = PrefixTrie(codes, layout)
    rows = st.lists(st.integers(0, n - 1), max_size=n)
    views = [
        None,
        trie.restrict(exclude_rows=data.draw(rows)),
        trie.restrict(allow_rows=data.draw(rows)),
        trie.restrict(exclude_rows=range(n)),
    ]
    repeat = data.draw(st.integers(1, 3))
    tokens = layout.sids_to_ids(codes)
    d = data.draw(st.integers(0, trie.sid_length - 1))
    B = len(views) * repeat
    prefixes = torch.zeros((B, d), dtype=torch.long)  # (B, d)
    for b in range(B):
        if data.draw(st.booleans()):
            prefixes[b] = torch.from_numpy(tokens[data.draw(st.integers(0, n - 1)), :d])
        else:
            prefixes[b] = torch.tensor(
                data.draw(st.lists(st.integers(0, layout.vocab_size - 1), min_size=d, max_size=d)),
                dtype=torch.long,
            )
    vocab = layout.vocab_size + data.draw(st.integers(0, 3))
    mask = trie.allowed_mask(prefixes, vocab, trie.row_restrictions(views, repeat=repeat))
    plain = trie.allowed_mask(prefixes, vocab)
    assert mask.shape == (B, vocab) and mask.dtype == torch.bool
    for b in range(B):
        view = views[b // repeat]
        assert torch.nonzero(mask[b]).flatten().tolist() == trie.allowed_next(prefixes[b], view).tolist()
        assert torch.nonzero(plain[b]).flatten().tolist() == trie.allowed_next(prefixes[b]).tolist()
        if view is not None:  # one shared view gives the same row as the per-row form
            shared = view.allowed_mask(prefixes[b : b + 1], vocab)
            assert torch.equal(shared[0], mask[b])


@SETTINGS
@given(catalogs(), st.data())
def test_item_of_maps_ids_to_rows_and_rejects_the_rest(catalog, data) -> None:
    layout, codes = catalog
    trie = PrefixTrie(codes, layout)
    tokens = layout.sids_to_ids(codes)
    known = {tuple(int(t) for t in row): r for r, row in enumerate(tokens)}
    queries = [list(row) for row in tokens]
    queries += [
        data.draw(
            st.lists(
                st.integers(-2, layout.vocab_size + 2), min_size=trie.sid_length, max_size=trie.sid_length
            )
        )
        for _ in range(10)
    ]
    expected = [known.get(tuple(q), -1) for q in queries]
    assert [trie.item_of(q) for q in queries] == expected
    assert trie.items_of(torch.tensor(queries)).tolist() == expected
    assert trie.item_of(queries[0][:-1]) == -1  # wrong length is not an ID


def test_counts_and_shapes_on_the_layout_example() -> None:
    """The worked example of layout.py: (3,0,1) is tokens (8, 9, 14)."""
    layout = TokenLayout((4, 4, 2))
    trie = PrefixTrie(np.array([[3, 0, 1], [3, 0, 0], [0, 1, 1], [3, 2, 0]]), layout)
    assert trie.num_nodes == 1 + 2 + 3 + 4
    assert trie.leaf_count[0] == 4 and trie.item_of([8, 9, 14]) == 0
    assert trie.allowed_next([]).tolist() == [5, 8]
    view = trie.restrict(exclude_rows=[0, 1])  # both titles under (3, 0): that prefix must die
    assert view.allowed_next([8]).tolist() == [11]
    assert view.allowed_next([8, 9]).tolist() == []
    ids = SemanticIDs(["a", "b", "c", "d"], np.array([[3, 0, 1], [3, 0, 0], [0, 1, 1], [3, 2, 0]]), (4, 4, 2))
    assert PrefixTrie.from_ids(ids).item_of([5, 10, 14]) == 2


def test_exclusion_is_sparse_and_exact_at_scale() -> None:
    """10^5 titles, thousands excluded: the view stores O(excluded * L) nodes, and no excluded title
    is reachable by greedily following the batched mask along its own path."""
    rng = np.random.default_rng(0)
    layout = TokenLayout((64, 64, 64, 8))
    flat = rng.choice(64 * 64 * 64 * 8, size=100_000, replace=False)
    codes = np.stack(np.unravel_index(flat, layout.codebook_sizes), axis=1)
    trie = PrefixTrie(codes, layout)
    subtree = np.flatnonzero(codes[:, 0] == 7)  # a whole first-level branch
    excl = np.union1d(rng.choice(len(codes), 3000, replace=False), subtree)
    view = trie.restrict(exclude_rows=excl)
    assert len(view.nodes) <= len(excl) * (trie.sid_length + 1)
    assert layout.offsets[0] + 7 not in view.allowed_next([]).tolist()
    tokens = torch.from_numpy(layout.sids_to_ids(codes[excl]))  # (E, L)
    reachable = torch.ones(len(excl), dtype=torch.bool)
    for d in range(trie.sid_length):
        mask = view.allowed_mask(tokens[:, :d], layout.vocab_size)
        reachable &= mask[torch.arange(len(excl)), tokens[:, d]]
    assert not reachable.any()
    kept = np.setdiff1d(np.arange(len(codes)), excl)[:2000]
    ok = torch.ones(len(kept), dtype=torch.bool)
    kept_tokens = torch.from_numpy(layout.sids_to_ids(codes[kept]))
    for d in range(trie.sid_length):
        ok &= view.allowed_mask(kept_tokens[:, :d], layout.vocab_size)[
            torch.arange(len(kept)), kept_tokens[:, d]
        ]
    assert ok.all()


def test_bad_inputs_raise() -> None:
    layout = TokenLayout((2, 2))
    with pytest.raises(ValueError, match="not unique"):
        PrefixTrie(np.array([[0, 1], [0, 1]]), layout)
    with pytest.raises(ValueError):
        PrefixTrie(np.array([[0, 2]]), layout)  # code outside its codebook
    trie = PrefixTrie(np.array([[0, 1], [1, 0]]), layout)
    with pytest.raises(ValueError, match="item rows"):
        trie.restrict(exclude_rows=[2])
    with pytest.raises(ValueError, match="prefix length"):
        trie.allowed_next([5, 7])
    with pytest.raises(ValueError, match="vocab_size"):
        trie.allowed_mask(torch.zeros((1, 0), dtype=torch.long), 3)
