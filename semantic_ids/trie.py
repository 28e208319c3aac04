"""The prefix trie over valid semantic IDs behind every constrained decoder in the project.

The transformers logits processor (``gen_fm.decode``) and the vLLM beam loop (``serving``) are thin
adapters over it. It works in token-id space, answers a whole batch of beams in a few vectorised torch
ops and is narrowed per request (watched titles, allow-lists, rules) without copying; string tries
(marisa, datrie) answer one prefix at a time and grammar compilers (xgrammar, outlines) are too slow to
rebuild per request for 10^5..10^6 titles, hence a trie written by hand.

Layout (arrays, no Python objects per node): nodes are numbered breadth-first and, inside a depth,
sorted by (parent, token), so node ``n``'s children are the contiguous ids from ``first_child[n]`` and
``node_key[n] = parent(n) * stride + token(n)`` is strictly increasing: descending by a token is one
``searchsorted`` for any number of (node, token) pairs. A :class:`Restriction` never copies the trie:
it marks dead only the ancestors whose every leaf is excluded (at most E * L nodes), or alive those of
an allow-list's leaves; a batch of beams with their own restrictions is one ``searchsorted`` over the
concatenated (view, node) keys (:class:`RowRestrictions`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import TokenLayout


def _as_rows(rows: Sequence[int] | np.ndarray | torch.Tensor | None, num_items: int) -> np.ndarray:
    """Item rows as a sorted, unique int64 array; out-of-range rows are a caller bug, so they raise."""
    if rows is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    arr = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
    if arr.size and (arr[0] < 0 or arr[-1] >= num_items):
        raise ValueError(f"item rows must lie in 0..{num_items - 1}, got {arr[0]}..{arr[-1]}")
    return arr


class PrefixTrie:
    """All valid semantic IDs as token-id paths; pure and immutable once built."""

    def __init__(self, codes: np.ndarray, layout: TokenLayout) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise ValueError(f"codes must be a non-empty (N, L) array, got shape {codes.shape}")
        self.layout = layout
        self.codes = codes  # (N, L) each item row's semantic ID
        self.num_items, self.sid_length = codes.shape
        self.stride = layout.code_end  # every code token id is < stride
        tokens = layout.sids_to_ids(codes)  # (N, L); validates codes against the layout
        order = np.lexsort(tokens.T[::-1])  # rows sorted lexicographically by their token path
        st = tokens[order]  # (N, L)
        if self.num_items > 1 and not (np.diff(st, axis=0) != 0).any(axis=1).all():
            raise ValueError("semantic IDs are not unique: two rows share an ID")

        L, N = self.sid_length, self.num_items
        path_sorted = np.zeros((N, L + 1), dtype=np.int64)  # node id at each depth, root = 0
        keys = [np.array([-1], dtype=np.int64)]  # node_key per depth; root has no parent
        parents = [np.zeros(0, dtype=np.int64)]
        next_id = 1
        new = np.zeros(N, dtype=bool)  # (N,) does this row's length-d prefix differ from the previous row's?
        new[0] = True
        for d in range(1, L + 1):
            new[1:] |= st[1:, d - 1] != st[:-1, d - 1]  # a new depth-d node starts at each such row
            rank = np.cumsum(new) - 1  # (N,) index of each row's depth-d node within the depth
            path_sorted[:, d] = next_id + rank
            parent = path_sorted[new, d - 1]  # (n_d,)
            keys.append(parent * self.stride + st[new, d - 1])
            parents.append(parent)
            next_id += int(new.sum())
        self.num_nodes = next_id
        node_key = np.concatenate(keys)  # (num_nodes,) strictly increasing
        parent = np.concatenate([np.array([-1], dtype=np.int64)] + parents[1:])
        num_children = np.bincount(parent[1:], minlength=next_id).astype(np.int64)
        first_child = np.searchsorted(parent[1:], np.arange(next_id), side="left") + 1
        leaf_count = np.zeros(next_id, dtype=np.int64)  # titles below each node
        for d in range(L + 1):
            leaf_count += np.bincount(path_sorted[:, d], minlength=next_id)

        item_path = np.empty_like(path_sorted)  # (N, L+1) node path of each item row
        item_path[order] = path_sorted
        self.leaf_start = int(path_sorted[0, L])  # leaves are the last, contiguous block of ids
        leaf_item = np.empty(N, dtype=np.int64)  # (N,) leaf index -> item row
        leaf_item[path_sorted[:, L] - self.leaf_start] = order

        self.node_key = torch.from_numpy(node_key)
        self.first_child = torch.from_numpy(first_child.astype(np.int64))
        self.num_children = torch.from_numpy(num_children)
        self.leaf_count = torch.from_numpy(leaf_count)
        self.item_path = torch.from_numpy(item_path)
        self.leaf_item = torch.from_numpy(leaf_item)
        self._np = {
            "node_key": node_key,
            "first_child": first_child,
            "num_children": num_children,
            "leaf_count": leaf_count,
            "item_path": item_path,
            "leaf_item": leaf_item,
        }
        self._search_steps = int(num_children.max()).bit_length()  # binary-search steps per level
        self._device_cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_ids(cls, ids: "SemanticIDs") -> "PrefixTrie":
        """The trie of an ID artifact (``SemanticIDs.load(dir)``); rows are its item rows."""
        return cls(ids.codes, ids.layout)

    # ------------------------------------------------------------------ helpers
    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Trie arrays on ``device``, copied once per device (masks are built where the logits live)."""
        device = torch.device(device)
        if device not in self._device_cache:
            self._device_cache[device] = {
                k: getattr(self, k).to(device)
                for k in ("node_key", "first_child", "num_children", "leaf_item")
            }
        return self._device_cache[device]

    def nodes_of(self, prefixes: torch.Tensor) -> torch.Tensor:
        """(B, d) token-id prefixes -> (B,) node ids, -1 where the prefix is not in the trie.

        Each step is a binary search bounded to the node's own children (<= log2(max fan-out)
        gathers over B), not a search of the whole key table.
        """
        arr = self._on(prefixes.device)
        key_table, fc, nc = arr["node_key"], arr["first_child"], arr["num_children"]
        B, d = prefixes.shape
        node = torch.zeros(B, dtype=torch.long, device=prefixes.device)  # (B,) all at the root
        for j in range(d):
            tok = prefixes[:, j].long()
            ok = (node >= 0) & (tok >= 0) & (tok < self.stride)
            safe = node.clamp(min=0)
            key = safe * self.stride + tok.clamp(0, self.stride - 1)  # (B,)
            lo, hi = fc[safe], fc[safe] + nc[safe]  # (B,) children range [lo, hi)
            for _ in range(self._search_steps):
                mid = (lo + hi) // 2
                right = (lo < hi) & (key_table[mid.clamp(max=self.num_nodes - 1)] < key)
                lo = torch.where(right, mid + 1, lo)
                hi = torch.where(right, hi, mid)
            found = key_table[lo.clamp(max=self.num_nodes - 1)] == key
            node = torch.where(ok & found & (lo < fc[safe] + nc[safe]), lo, torch.full_like(lo, -1))
        return node

    def _node_of(self, prefix: Sequence[int]) -> int:
        """Scalar reference walk (numpy), deliberately separate from the batched torch path."""
        node = 0
        for tok in prefix:
            tok = int(tok)
            if not 0 <= tok < self.stride:
                return -1
            lo = int(self._np["first_child"][node])
            hi = lo + int(self._np["num_children"][node])
            j = lo + int(np.searchsorted(self._np["node_key"][lo:hi], node * self.stride + tok))
            if j >= hi or self._np["node_key"][j] != node * self.stride + tok:
                return -1
            node = j
        return node

    # ------------------------------------------------------------------ queries
    def allowed_next(
        self, prefix: Sequence[int] | torch.Tensor, restriction: "Restriction | None" = None
    ) -> torch.Tensor:
        """Token ids that may follow ``prefix`` (length 0..L-1); empty if the prefix is dead or invalid."""
        if isinstance(prefix, torch.Tensor):
            prefix = prefix.tolist()
        if len(prefix) >= self.sid_length:
            raise ValueError(f"prefix length must be < {self.sid_length}, got {len(prefix)}")
        node = self._node_of(prefix)
        if node < 0 or (restriction is not None and not restriction._alive_np(np.array([node]))[0]):
            return torch.zeros(0, dtype=torch.long)
        lo = int(self._np["first_child"][node])
        children = np.arange(lo, lo + int(self._np["num_children"][node]))
        if restriction is not None:
            children = children[restriction._alive_np(children)]
        return torch.from_numpy(self._np["node_key"][children] - node * self.stride)

    def allowed_mask(
        self,
        prefixes: torch.Tensor,
        vocab_size: int,
        restriction: "Restriction | RowRestrictions | None" = None,
    ) -> torch.Tensor:
        """(B, d) same-depth prefixes -> (B, vocab_size) bool mask of allowed next tokens.

        One call per decoding step for every beam of every request; ``restriction`` is one view shared
        by all rows or a :class:`RowRestrictions` giving each row its own.
        """
        B, d = prefixes.shape
        if d >= self.sid_length:
            raise ValueError(f"prefix length must be < {self.sid_length}, got {d}")
        if vocab_size < self.stride:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the code range ({self.stride})")
        device = prefixes.device
        arr = self._on(device)
        node = self.nodes_of(prefixes)  # (B,)
        rv = None if restriction is None else _rows_view(restriction, B)
        view = (
            torch.zeros(B, dtype=torch.long, device=device)
            if rv is None
            else torch.arange(B, device=device) // rv.repeat
        )  # (B,) restriction view of each row
        # beams of one request often share a prefix (all of them at depth 0): build each distinct
        # (view, node) row once, then expand
        pair, inverse = torch.unique(view * (self.num_nodes + 1) + node + 1, return_inverse=True)
        u_view, u_node = pair // (self.num_nodes + 1), pair % (self.num_nodes + 1) - 1  # (U,)
        ok = u_node >= 0
        safe = u_node.clamp(min=0)
        if rv is not None:
            ok &= rv.alive(u_view, safe)
        counts = torch.where(ok, arr["num_children"][safe], torch.zeros_like(safe))  # (U,)
        row_of = torch.repeat_interleave(torch.arange(len(pair), device=device), counts)  # (C,)
        starts = torch.cumsum(counts, 0) - counts  # (U,)
        child = (
            arr["first_child"][safe][row_of] + torch.arange(row_of.numel(), device=device) - starts[row_of]
        )  # (C,) child node ids
        if rv is not None:
            keep = rv.alive(u_view[row_of], child)
            row_of, child = row_of[keep], child[keep]
        token = arr["node_key"][child] - safe[row_of] * self.stride  # (C,)
        u_mask = torch.zeros(len(pair), vocab_size, dtype=torch.bool, device=device)  # (U, vocab)
        u_mask[row_of, token] = True
        mask = u_mask[inverse]  # (B, vocab)
        return mask

    def items_of(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B,) item rows, -1 where the path is not a valid ID."""
        if token_ids.shape[-1] != self.sid_length:
            return torch.full(token_ids.shape[:1], -1, dtype=torch.long, device=token_ids.device)
        node = self.nodes_of(token_ids)
        leaf_item = self._on(token_ids.device)["leaf_item"]
        idx = (node - self.leaf_start).clamp(min=0)
        return torch.where(node >= self.leaf_start, leaf_item[idx], torch.full_like(node, -1))

    def item_of(self, token_ids: Sequence[int] | torch.Tensor) -> int:
        """Item row of one full ID path, or -1 (wrong length, unknown ID)."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        if len(token_ids) != self.sid_length:
            return -1
        node = self._node_of(token_ids)
        return int(self._np["leaf_item"][node - self.leaf_start]) if node >= self.leaf_start else -1

    def restrict(
        self,
        exclude_rows: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        allow_rows: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> "Restriction":
        """A per-request view permitting ``allow_rows`` (default: all) minus ``exclude_rows``.

        Business rules plug in the same way: union their forbidden rows into ``exclude_rows``, or narrow
        an existing view with :meth:`Restriction.restrict`.
        """
        excl = _as_rows(exclude_rows, self.num_items)
        if allow_rows is None:
            return Restriction._build(self, "exclude", excl)
        allow = _as_rows(allow_rows, self.num_items)
        return Restriction._build(self, "allow", np.setdiff1d(allow, excl, assume_unique=True))

    def row_restrictions(self, views: Sequence["Restriction | None"], repeat: int = 1) -> "RowRestrictions":
        """Per-row restrictions for a batch whose row ``r`` belongs to request ``r // repeat`` (beams)."""
        return RowRestrictions._build(self, views, repeat)


@dataclass(frozen=True, eq=False)
class Restriction:
    """A trie narrowed to a set of permitted item rows, stored sparsely (never a copy of the trie).

    ``mode == "exclude"``: ``rows`` are the excluded rows and ``nodes`` the dead nodes (every leaf below
    excluded). ``mode == "allow"``: ``rows`` are the permitted rows and ``nodes`` their ancestors.
    ``nodes`` is sorted, so membership is a ``searchsorted``.
    """

    trie: PrefixTrie
    mode: str
    rows: np.ndarray  # sorted unique item rows (excluded or permitted, see mode)
    nodes: np.ndarray  # sorted unique node ids (dead or alive, see mode)
    _nodes_t: torch.Tensor = field(repr=False)

    @classmethod
    def _build(cls, trie: PrefixTrie, mode: str, rows: np.ndarray) -> "Restriction":
        paths = trie._np["item_path"][rows]  # (R, L+1)
        if mode == "allow":
            nodes = np.unique(paths)  # ancestors of the permitted leaves, root included if any
        else:
            uniq, cnt = np.unique(paths, return_counts=True)
            nodes = uniq[cnt == trie._np["leaf_count"][uniq]]  # count-based: nothing permitted below
        return cls(trie, mode, rows, nodes, torch.from_numpy(nodes))

    @property
    def num_permitted(self) -> int:
        return len(self.rows) if self.mode == "allow" else self.trie.num_items - len(self.rows)

    def permits(self, item_rows: np.ndarray) -> np.ndarray:
        """Boolean per item row: may this title be returned?"""
        item_rows = np.asarray(item_rows, dtype=np.int64)
        idx = np.searchsorted(self.rows, item_rows).clip(max=max(len(self.rows) - 1, 0))
        found = (self.rows[idx] == item_rows) if len(self.rows) else np.zeros(item_rows.shape, bool)
        return found if self.mode == "allow" else ~found

    def restrict(
        self,
        exclude_rows: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        allow_rows: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> "Restriction":
        """Narrow further (e.g. watched titles, then a canvas's business rules); never widens."""
        n = self.trie.num_items
        excl = _as_rows(exclude_rows, n)
        if self.mode == "exclude" and allow_rows is None:
            return Restriction._build(self.trie, "exclude", np.union1d(self.rows, excl))
        base = self.rows if self.mode == "allow" else np.setdiff1d(np.arange(n), self.rows)
        if allow_rows is not None:
            base = np.intersect1d(base, _as_rows(allow_rows, n), assume_unique=True)
        return Restriction._build(self.trie, "allow", np.setdiff1d(base, excl, assume_unique=True))

    def _alive_np(self, nodes: np.ndarray) -> np.ndarray:
        found = np.isin(nodes, self.nodes)
        return found if self.mode == "allow" else ~found

    def allowed_next(self, prefix: Sequence[int] | torch.Tensor) -> torch.Tensor:
        return self.trie.allowed_next(prefix, self)

    def allowed_mask(self, prefixes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        return self.trie.allowed_mask(prefixes, vocab_size, self)

    def item_of(self, token_ids: Sequence[int] | torch.Tensor) -> int:
        """Item row of a full path if this view permits it, else -1."""
        row = self.trie.item_of(token_ids)
        return row if row >= 0 and bool(self.permits(np.array([row]))[0]) else -1


@dataclass(frozen=True, eq=False)
class RowRestrictions:
    """Restrictions for every row of a decoding batch, answered in one vectorised lookup.

    Keys ``view * num_nodes + node`` of all views are concatenated in sorted order; a row whose view is
    ``None`` is an exclude-view with nothing excluded.
    """

    keys: torch.Tensor  # (sum of |nodes|,) sorted
    is_allow: torch.Tensor  # (V,) bool, one per view
    repeat: int  # row r of the batch uses view r // repeat
    num_nodes: int

    @classmethod
    def _build(cls, trie: PrefixTrie, views: Sequence[Restriction | None], repeat: int) -> "RowRestrictions":
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        keys, allow = [], []
        for i, v in enumerate(views):
            if v is not None and v.trie is not trie:
                raise ValueError("a restriction was built on another trie")
            allow.append(v is not None and v.mode == "allow")
            if v is not None and len(v.nodes):
                keys.append(v._nodes_t + i * trie.num_nodes)
        keys_t = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long)
        return cls(keys_t, torch.tensor(allow, dtype=torch.bool), repeat, trie.num_nodes)

    def to(self, device: torch.device | str) -> "RowRestrictions":
        return RowRestrictions(self.keys.to(device), self.is_allow.to(device), self.repeat, self.num_nodes)

    def alive(self, view: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """(C,) view indices and (C,) node ids -> (C,) bool: does that view keep that node?"""
        keys, is_allow = self.keys.to(view.device), self.is_allow.to(view.device)
        if view.numel() and int(view.max()) >= len(is_allow):
            raise ValueError(f"batch has {int(view.max()) + 1} requests but {len(is_allow)} views")
        q = view * self.num_nodes + nodes
        if keys.numel():
            idx = torch.searchsorted(keys, q).clamp(max=keys.numel() - 1)
            found = keys[idx] == q
        else:
            found = torch.zeros_like(q, dtype=torch.bool)
        return torch.where(is_allow[view], found, ~found)


def _rows_view(restriction: Restriction | RowRestrictions, batch: int) -> RowRestrictions:
    """One shared view behaves as a RowRestrictions whose every row maps to view 0."""
    if isinstance(restriction, RowRestrictions):
        return restriction
    return restriction.trie.row_restrictions([restriction], repeat=max(batch, 1))
