"""Tokenizer and prompts of the foundation model.

The vocabulary is the ID artifact's ``TokenLayout`` with the model's extra tokens appended (canvas
tokens, hashed member tokens, then one title token per ID-artifact row for models that read
histories one position per title), so token ids never depend on this module: ``TokenLayout`` owns
them. The Hugging Face tokenizer is a ``tokenizers`` WordLevel model over that vocabulary: it exists
so that vLLM and ``AutoTokenizer`` can read the model folder; training and decoding use token ids.

Every stage builds prompts with ``PromptEncoder.encode`` (bos, optional member token, canvas token,
then each title oldest first, as its L code tokens or, when the layout has title tokens, as its one
title token, then for canvases that take one a context after
``<sep>``: a query, a source title or a theme, as code tokens), so a model never sees two prompt
formats. What a canvas's context holds is defined in ``prompt_tuning.canvases``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import BOS, EOS, PAD, SEP, SPECIAL_TOKENS, UNK, TokenLayout, title_token

# The canvas TOKENS of the vocabulary (part of a trained model's token layout: never reorder).
# Canvases as product surfaces are specs registered in ``prompt_tuning.canvases``; each names the
# token its prompts carry, so a canvas added after pretraining reuses one of these.
CANVASES = ("home", "search", "t2t", "collection")
DEFAULT_CANVAS = "home"
# One token is "<...>"; anything else between tokens (other than whitespace) is one unknown token.
_TOKEN_PATTERN = r"<[^<>\s]*>|[^<>\s]+|[<>]"


def canvas_token(canvas: str) -> str:
    if canvas not in CANVASES:
        raise ValueError(f"unknown canvas {canvas!r}; choose one of {CANVASES}")
    return f"<canvas_{canvas}>"


def user_token(bucket: int) -> str:
    return f"<user_{int(bucket)}>"


def model_layout(base: TokenLayout, num_user_buckets: int, num_titles: int = 0) -> TokenLayout:
    """The ID layout plus canvas, member and (`num_titles` > 0) title tokens; existing ids do not move."""
    if num_user_buckets < 0 or num_titles < 0:
        raise ValueError(
            f"num_user_buckets and num_titles must be >= 0, got {num_user_buckets}, {num_titles}"
        )
    extra = [canvas_token(c) for c in CANVASES] + [user_token(b) for b in range(num_user_buckets)]
    return base.with_extra(extra + [title_token(r) for r in range(num_titles)])


def user_bucket(user_id: str, num_buckets: int) -> int:
    """Stable hash of a member id into [0, num_buckets) (Python's hash() is salted per process)."""
    if num_buckets < 1:
        raise ValueError("num_buckets must be >= 1")
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_buckets


def build_tokenizer(layout: TokenLayout) -> PreTrainedTokenizerFast:
    """WordLevel tokenizer whose ids are exactly ``layout.vocab()``; decode concatenates tokens."""
    vocab = {tok: i for i, tok in enumerate(layout.vocab())}
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK]))
    # Whitespace is ignored; "<a_3><b_0>" splits into "<a_3>", "<b_0>".
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(_TOKEN_PATTERN), behavior="isolated"),
        ]
    )
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS[PAD],
        bos_token=SPECIAL_TOKENS[BOS],
        eos_token=SPECIAL_TOKENS[EOS],
        sep_token=SPECIAL_TOKENS[SEP],
        unk_token=SPECIAL_TOKENS[UNK],
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",  # decoder-only generation pads on the left
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.sep_token_id, tok.unk_token_id]
    if ids != [PAD, BOS, EOS, SEP, UNK] or len(tok) != layout.vocab_size:
        raise RuntimeError(
            f"tokenizer ids disagree with the layout: specials {ids}, size {len(tok)} vs {layout.vocab_size}"
        )
    return tok


def check_tokenizer(tok: PreTrainedTokenizerFast, layout: TokenLayout) -> None:
    """Fail loudly when a saved tokenizer does not match the layout a model was trained with."""
    vocab = tok.get_vocab()
    want = layout.vocab()
    if len(vocab) != len(want) or any(vocab.get(t) != i for i, t in enumerate(want)):
        raise ValueError(
            f"tokenizer vocabulary ({len(vocab)} tokens) is not the model's token layout ({len(want)} tokens)"
        )


@dataclass(frozen=True)
class PromptEncoder:
    """Turns histories of ID-artifact rows into prompt token ids: the only prompt format."""

    # Model layout: the ID layout plus canvas and member tokens (see `model_layout`).
    layout: TokenLayout
    # (N, L) token ids of every title's semantic ID, rows in ID-artifact order.
    sid_tokens: np.ndarray
    # Member-token buckets; 0 = prompts carry no member token.
    num_user_buckets: int = 0
    _canvas_ids: dict = field(init=False, repr=False, compare=False)
    # (N,) title token of each row (-1: none yet), or None: histories are written as code tokens.
    title_ids: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sid = np.asarray(self.sid_tokens, dtype=np.int64)
        if sid.ndim != 2 or sid.shape[1] != self.layout.sid_length:
            raise ValueError(f"sid_tokens must be (N, {self.layout.sid_length}), got {sid.shape}")
        if sid.size and (sid.min() < len(SPECIAL_TOKENS) or sid.max() >= self.layout.code_end):
            raise ValueError("sid_tokens holds ids that are not code tokens")
        object.__setattr__(self, "sid_tokens", sid)
        object.__setattr__(self, "_canvas_ids", {c: self.layout.extra_id(canvas_token(c)) for c in CANVASES})
        if self.num_user_buckets:
            self.layout.extra_id(user_token(self.num_user_buckets - 1))  # raises if absent
        object.__setattr__(self, "title_ids", self.layout.title_ids(len(sid)))

    @classmethod
    def from_ids(
        cls,
        ids: SemanticIDs,
        num_user_buckets: int,
        layout: TokenLayout | None = None,
        title_tokens: bool = False,
    ) -> "PromptEncoder":
        """Encoder over an ID artifact; `layout` defaults to its layout plus the model tokens (and a
        title token per row with `title_tokens`)."""
        layout = layout or model_layout(ids.layout, num_user_buckets, ids.num_items if title_tokens else 0)
        return cls(layout, layout.sids_to_ids(ids.codes), num_user_buckets)

    @property
    def tokens_per_title(self) -> int:
        """Positions a history title takes: 1 with title tokens, else its L code tokens."""
        return 1 if self.title_ids is not None else self.layout.sid_length

    def history_tokens(self, rows: np.ndarray) -> list[int]:
        """The tokens of history titles (ID-artifact rows), oldest first."""
        if self.title_ids is None:
            return self.sid_tokens[rows].reshape(-1).tolist()  # (len(rows) * L,)
        out = self.title_ids[rows]  # (len(rows),)
        if (out < 0).any():
            raise ValueError(
                f"title rows {rows[out < 0][:5].tolist()} have no title token in this "
                f"model: add them to the model first (gen_fm.titles.extend_titles)"
            )
        return out.tolist()

    @property
    def max_prefix_length(self) -> int:
        """Most tokens before the first title: bos, a member token (when on), the canvas token."""
        return 2 + (1 if self.num_user_buckets else 0)

    def max_length(self, titles: int) -> int:
        """Longest prompt that holds `titles` titles."""
        return self.max_prefix_length + titles * self.tokens_per_title

    def encode(
        self,
        rows: Sequence[int] | np.ndarray,
        canvas: str = DEFAULT_CANVAS,
        user_id: str | None = None,
        context: Sequence[int] | None = None,
    ) -> list[int]:
        """bos, <user_b> (when buckets are on and a member is given), <canvas_c>, codes of each row,
        then, when `context` is given, <sep> and the context's code tokens (query, source title or
        theme of the canvas; next-title windows never have one, a canvas mixture's rows do)."""
        if canvas not in self._canvas_ids:
            raise ValueError(f"unknown canvas {canvas!r}; choose one of {CANVASES}")
        prefix = [BOS]
        if self.num_user_buckets and user_id is not None:
            prefix.append(self.layout.extra_id(user_token(user_bucket(user_id, self.num_user_buckets))))
        prefix.append(self._canvas_ids[canvas])
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.sid_tokens)):
            raise IndexError(f"history rows must be ID-artifact rows in [0, {len(self.sid_tokens)})")
        out = prefix + self.history_tokens(rows)
        if context is not None:
            context = [int(t) for t in context]
            if not context or any(self.layout.level_of(t) is None for t in context):
                raise ValueError("a prompt context must be a non-empty list of code tokens")
            out += [SEP] + context
        return out

    def decode_rows(self, token_ids: Sequence[int]) -> list[int]:
        """Inverse of `encode` for the title part: ID-artifact rows of the code tokens, in order."""
        token_ids = list(token_ids)
        if SEP in token_ids:  # the context after <sep> is not history
            token_ids = token_ids[: token_ids.index(SEP)]
        if self.title_ids is not None:
            index = self.__dict__.get("_title_index")
            if index is None:
                index = {int(t): r for r, t in enumerate(self.title_ids.tolist()) if t >= 0}
                object.__setattr__(self, "_title_index", index)
            return [index[int(t)] for t in token_ids if int(t) in index]
        codes = [t for t in token_ids if self.layout.level_of(int(t)) is not None]
        L = self.layout.sid_length
        if len(codes) % L:
            raise ValueError(f"{len(codes)} code tokens is not a whole number of {L}-token IDs")
        index = self.__dict__.get("_row_index")
        if index is None:  # built on first use only: serving never needs it
            index = {tuple(r): i for i, r in enumerate(self.sid_tokens.tolist())}
            object.__setattr__(self, "_row_index", index)
        return [index[tuple(int(t) for t in codes[i : i + L])] for i in range(0, len(codes), L)]
