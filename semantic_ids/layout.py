"""The one place that decides how semantic IDs become token ids (and back).

Vocabulary order, fixed so that appending never moves what a trained model already knows:

    [special tokens][level-0 codes][level-1 codes]...[last-level codes][extra tokens ...]

- special tokens: ``<pad> <bos> <eos> <sep> <unk>`` (ids 0..4);
- code tokens: level ``l`` code ``c`` is the string ``<{letter(l)}_{c}>`` with id
  ``offsets[l] + c``; every level has its own range, as in TIGER, so a token says which position
  of the ID it is (``<a_12><b_7><c_200><d_0>`` is one title);
- extra tokens: canvas, member and title tokens (``<title_{row}>``: one per ID-artifact row, for
  models that read histories one position per title) and soft-prompt virtual tokens, in order.

Worked example with ``codebook_sizes=(4, 4, 2)``: offsets are (5, 9, 13), vocab size 15; the ID
(3, 0, 1) is tokens (8, 9, 14) = ``<a_3><b_0><c_1>``."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>", "<unk>")
PAD, BOS, EOS, SEP, UNK = range(len(SPECIAL_TOKENS))


def title_token(row: int) -> str:
    """The extra token that stands for ID-artifact row `row` in a history."""
    return f"<title_{int(row)}>"


def level_letter(level: int) -> str:
    letters = string.ascii_lowercase
    if level < 26:
        return letters[level]
    return letters[level // 26 - 1] + letters[level % 26]


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of semantic-ID codes and of the extra tokens that follow them."""

    # Codes per ID position, the disambiguation position included (its capacity, not its use).
    codebook_sizes: tuple[int, ...]
    # Tokens appended after the code ranges (canvases, context, virtual tokens), in id order.
    extra_tokens: tuple[str, ...] = ()
    _extra_index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codebook_sizes", tuple(int(s) for s in self.codebook_sizes))
        object.__setattr__(self, "extra_tokens", tuple(self.extra_tokens))
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(f"codebook_sizes must be positive, got {self.codebook_sizes}")
        if len(set(self.extra_tokens)) != len(self.extra_tokens):
            raise ValueError("extra_tokens must be distinct")
        clash = set(self.extra_tokens) & set(SPECIAL_TOKENS)
        if clash:
            raise ValueError(f"extra tokens clash with special tokens: {sorted(clash)}")
        object.__setattr__(
            self, "_extra_index", {t: self.code_end + i for i, t in enumerate(self.extra_tokens)}
        )

    @property
    def sid_length(self) -> int:
        return len(self.codebook_sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(
            len(SPECIAL_TOKENS) + int(x) for x in np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]])
        )

    @property
    def code_end(self) -> int:
        """One past the last code token id."""
        return len(SPECIAL_TOKENS) + sum(self.codebook_sizes)

    @property
    def vocab_size(self) -> int:
        return self.code_end + len(self.extra_tokens)

    def with_extra(self, tokens: Sequence[str]) -> "TokenLayout":
        """A layout with more extra tokens appended; every existing id is unchanged."""
        new = [t for t in tokens if t not in self._extra_index]
        return TokenLayout(self.codebook_sizes, self.extra_tokens + tuple(new))

    def extra_id(self, token: str) -> int:
        try:
            return self._extra_index[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the layout's extra tokens") from None

    def title_ids(self, num_rows: int) -> np.ndarray | None:
        """(num_rows,) token id of each row's title token, -1 for a row without one (a title added
        after the model was trained); None when the layout has no title tokens at all."""
        if title_token(0) not in self._extra_index:
            return None
        get = self._extra_index.get
        return np.fromiter((get(title_token(r), -1) for r in range(num_rows)), dtype=np.int64, count=num_rows)

    def code_token(self, level: int, code: int) -> str:
        self._check(level, code)
        return f"<{level_letter(level)}_{code}>"

    def vocab(self) -> list[str]:
        """All token strings in id order."""
        out = list(SPECIAL_TOKENS)
        for level, size in enumerate(self.codebook_sizes):
            out += [f"<{level_letter(level)}_{c}>" for c in range(size)]
        return out + list(self.extra_tokens)

    def sid_to_ids(self, sid: Sequence[int]) -> list[int]:
        if len(sid) != self.sid_length:
            raise ValueError(f"a semantic ID has {self.sid_length} codes, got {len(sid)}: {tuple(sid)}")
        for level, code in enumerate(sid):
            self._check(level, int(code))
        return [o + int(c) for o, c in zip(self.offsets, sid)]

    def sids_to_ids(self, sids: np.ndarray) -> np.ndarray:
        """(N, L) codes -> (N, L) token ids, vectorised."""
        sids = np.asarray(sids, dtype=np.int64)
        if sids.ndim != 2 or sids.shape[1] != self.sid_length:
            raise ValueError(f"expected (N, {self.sid_length}) codes, got shape {sids.shape}")
        if (sids < 0).any() or (sids >= np.asarray(self.codebook_sizes)).any():
            raise ValueError("a code is outside its level's codebook")
        return sids + np.asarray(self.offsets, dtype=np.int64)

    def ids_to_sid(self, ids: Sequence[int]) -> tuple[int, ...]:
        if len(ids) != self.sid_length:
            raise ValueError(f"a semantic ID has {self.sid_length} tokens, got {len(ids)}")
        sid = []
        for level, (o, t) in enumerate(zip(self.offsets, ids)):
            code = int(t) - o
            if not 0 <= code < self.codebook_sizes[level]:
                raise ValueError(f"token id {t} is not a level-{level} code token")
            sid.append(code)
        return tuple(sid)

    def level_of(self, token_id: int) -> int | None:
        """ID position of a code token id, or None for special and extra tokens."""
        for level, (o, s) in enumerate(zip(self.offsets, self.codebook_sizes)):
            if o <= token_id < o + s:
                return level
        return None

    def sid_string(self, sid: Sequence[int]) -> str:
        return "".join(self.code_token(lv, int(c)) for lv, c in enumerate(sid))

    def parse_sid_string(self, text: str) -> tuple[int, ...]:
        """``"<a_3><b_0><c_1>"`` -> (3, 0, 1)."""
        parts = [p for p in text.replace(" ", "").split(">") if p]
        sid = []
        for level, part in enumerate(parts):
            prefix = f"<{level_letter(level)}_"
            if not part.startswith(prefix) or not part[len(prefix) :].isdigit():
                raise ValueError(f"{text!r} is not a semantic ID string (at {part + '>'!r})")
            sid.append(int(part[len(prefix) :]))
        if len(sid) != self.sid_length:
            raise ValueError(f"{text!r} has {len(sid)} codes, expected {self.sid_length}")
        for level, code in enumerate(sid):
            self._check(level, code)
        return tuple(sid)

    def to_json(self) -> dict:
        return {
            "codebook_sizes": list(self.codebook_sizes),
            "extra_tokens": list(self.extra_tokens),
            "special_tokens": list(SPECIAL_TOKENS),
        }

    @classmethod
    def from_json(cls, obj: dict) -> "TokenLayout":
        if tuple(obj.get("special_tokens", SPECIAL_TOKENS)) != SPECIAL_TOKENS:
            raise ValueError("layout was written with different special tokens")
        return cls(tuple(obj["codebook_sizes"]), tuple(obj.get("extra_tokens", ())))

    def _check(self, level: int, code: int) -> None:
        if not 0 <= level < self.sid_length:
            raise ValueError(f"level {level} out of range 0..{self.sid_length - 1}")
        if not 0 <= code < self.codebook_sizes[level]:
            raise ValueError(
                f"code {code} out of range for level {level} (size {self.codebook_sizes[level]})"
            )
