"""Canvases: what each product surface asks of the model, and its training and held-out examples.

Every canvas uses the one prompt format (``PromptEncoder.encode``): bos, member token, canvas token,
history, then for canvases that take one a context after ``<sep>``:

==========  ==========================================  ================  =============================
canvas      context after <sep>                         history           target
==========  ==========================================  ================  =============================
home        none                                        the member's      the next title
search      the query (``QueryEncoder``)                 the member's or   a title the query is about
                                                        none (anonymous)
t2t         the source title's semantic ID              none              a title a member engaged with
                                                                          right after the source
collection  the theme, a category as text               the member's      the next title in that theme
            (``QueryEncoder``)
==========  ==========================================  ================  =============================

Where the examples come from, and why nothing leaks into the held-out part:

- home, collection, t2t: training examples come only from members' training events
  (``Split.train_items``); held-out examples are the leave-one-out *test* targets, which neither the
  foundation model nor the adapter ever trained on.
- search: two kinds of real queries. Tags (MovieLens ``tags.csv``: a member typed this text about
  that title) with the member's history before the tag; the held-out part is a seeded share of the
  distinct (query, title) pairs, so no held-out pair is seen in training. Partial title words
  ("pari" -> a title containing "Paris"), anonymous, so lexical relevance is learned; the held-out
  part is a seeded share of the *titles*, so a held-out title is never a word-query target in
  training.

``mixture_examples`` turns the training examples of chosen canvases into pretraining rows
(``PretrainConfig.canvas_mix``), also removing each member's validation and test targets.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.ids import SemanticIDs
from sidrec.data import RecData
from sidrec.sequences import Split

# Words too common to be a search for a title.
_STOPWORDS = frozenset("""the and with from for that this your you are was were have has not but all
into over under about after before their there what when where which while will would could should
them they then than its it's his her our out new one two three edition version pack size ounce
ounces fluid piece count""".split())
_WORD = re.compile(r"[a-z][a-z']{3,}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _hash_fraction(*parts: object) -> float:
    """A stable number in [0, 1) per key: seeded held-out splits that do not depend on row order."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


class QueryEncoder:
    """Turns text (a search query, a collection theme) into prompt context tokens.

    Modes (``PromptTuningStageConfig.query_mode``):

    - ``anchors``: the full IDs of the ``num_anchors`` titles that best match the text: titles whose
      name contains it first (lexical), then by cosine of all-MiniLM-L6-v2 embeddings (semantic).
    - ``quantized``: the text's sentence embedding placed in the text block of the fused title
      embedding (other modalities zero) and encoded by the ID artifact's trained quantizer: one code
      per quantizer level, a point in the titles' own code space.

    Both read only the ID artifact (quantizer, embedder state, fused title embeddings), so a model
    folder's copy of it is all serving needs.
    """

    def __init__(self, ids_dir: str | Path, mode: str = "anchors", num_anchors: int = 3,
                 text_encoder=None) -> None:
        from semantic_ids.builder import load_quantizer
        from semantic_ids.embeddings import TextEncoder
        from safetensors.numpy import load_file

        if mode not in ("anchors", "quantized"):
            raise ValueError(f"unknown query mode {mode!r}")
        self.ids, self.quantizer, _, self.id_config = load_quantizer(ids_dir)
        if self.id_config.text_weight <= 0:
            raise ValueError(f"the ID artifact {ids_dir} has no text modality: text queries cannot be "
                             f"placed among its titles")
        self.mode, self.num_anchors = mode, num_anchors
        # `text_encoder`: anything with .encode(list[str]) -> (n, d) array, e.g. serving's in-memory
        # encoder (TextEncoder's disk cache suits a catalog, not a stream of queries)
        self.text = text_encoder or TextEncoder(self.id_config.text_model, self.id_config.text_batch_size)
        self.fused = load_file(str(Path(ids_dir) / "embeddings.safetensors"))["fused"]  # (N, D)
        self.layout = self.ids.layout
        self.sid_tokens = self.layout.sids_to_ids(self.ids.codes)  # (N, L)
        self.titles_lower = [(t or "").lower() for t in (self.ids.titles or [""] * self.ids.num_items)]
        self._text_dim: int | None = None

    def _embed(self, texts: list[str]) -> np.ndarray:
        vecs = _unit(self.text.encode(texts).astype(np.float32))  # (Q, d)
        self._text_dim = vecs.shape[1]
        return vecs

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Context tokens per text (code tokens of the model's layout)."""
        texts = [str(t).strip() for t in texts]
        if any(not t for t in texts):
            raise ValueError("a query or theme is empty")
        q = self._embed(texts)  # (Q, d)
        d = q.shape[1]
        if self.mode == "quantized":
            x = np.zeros((len(texts), self.fused.shape[1]), dtype=np.float32)  # (Q, D)
            x[:, :d] = q * np.float32(np.sqrt(self.id_config.text_weight))  # text block comes first
            codes = self.quantizer.encode(x).codes[:, : self.id_config.num_levels]  # (Q, levels)
            offsets = np.asarray(self.layout.offsets[: codes.shape[1]], dtype=np.int64)
            return (codes.astype(np.int64) + offsets).tolist()
        titles = _unit(self.fused[:, :d])  # (N, d): the text block of every title
        sims = titles @ q.T  # (N, Q)
        out = []
        for j, text in enumerate(texts):
            order = np.argsort(-sims[:, j], kind="stable")
            needle = text.lower()
            lexical = [i for i in order if needle in self.titles_lower[i]][: self.num_anchors]
            rest = [i for i in order[: self.num_anchors + len(lexical)] if i not in set(lexical)]
            rows = (lexical + rest)[: self.num_anchors]
            out.append(self.sid_tokens[rows].reshape(-1).tolist())
        return out


@dataclass
class CanvasExample:
    """One request of a canvas and the title that answers it (rows are ID-artifact rows)."""

    history: np.ndarray  # (h,) oldest first, capped; empty for anonymous requests
    target: int
    user: str | None = None
    context: list[int] | None = None  # tokens after <sep>
    text: str | None = None  # query or theme behind the context (search, collection)
    kind: str = ""  # "next", "tag", "word", "pair", "theme"
    source: int | None = None  # t2t source title

    def prompt(self, encoder: PromptEncoder, canvas: str, history: bool = True) -> list[int]:
        hist = self.history if history else np.zeros(0, dtype=np.int64)
        return encoder.encode(hist, canvas=canvas, user_id=self.user if history else None,
                              context=self.context)


@dataclass
class CanvasData:
    canvas: str
    train: list[CanvasExample]
    test: list[CanvasExample]
    info: dict = field(default_factory=dict)  # counts per kind, sources

    def training_pairs(self, encoder: PromptEncoder) -> list[tuple[list[int], list[int]]]:
        """(prompt, target code tokens) as ``prompt_tuning.adapter.train_adapter`` takes them."""
        return [(ex.prompt(encoder, self.canvas), encoder.sid_tokens[ex.target].tolist())
                for ex in self.train]


def _sample(examples: list, n: int | None, seed: int) -> list:
    if n is None or len(examples) <= n:
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return [examples[i] for i in keep]


def _next_title_examples(split: Split, sid_rows: np.ndarray, max_history: int) -> list[CanvasExample]:
    """Every (history, next title) position inside members' training events."""
    out = []
    for u in range(len(split.sequences)):
        items = to_sid_rows(split.train_items(u), sid_rows)
        user = split.sequences.user_ids[u]
        for j in range(1, len(items)):
            out.append(CanvasExample(items[max(0, j - max_history): j], int(items[j]), user, kind="next"))
    return out


def _test_examples(split: Split, sid_rows: np.ndarray) -> list[CanvasExample]:
    ex = split.examples("test")
    return [CanvasExample(to_sid_rows(h, sid_rows), int(to_sid_rows([t], sid_rows)[0]),
                          split.sequences.user_ids[u], kind="next")
            for u, h, t in zip(ex.users, ex.histories, ex.targets)]


def theme_of(categories: Sequence[Sequence[str]], min_titles: int) -> list[str | None]:
    """Per title: its rarest category with >= `min_titles` titles and on at most half the catalog
    (so "Beauty", on every Amazon Beauty title, is never a theme); None if it has none."""
    counts = Counter(c for cats in categories for c in set(cats))
    half = len(categories) / 2
    out = []
    for cats in categories:
        ok = [c for c in set(cats) if min_titles <= counts[c] <= half and "no genres" not in c]
        out.append(min(ok, key=lambda c: (counts[c], c)) if ok else None)
    return out


def build_canvas_data(canvas: str, data: RecData, split: Split, ids: SemanticIDs,
                      encoder: PromptEncoder, config: PromptTuningStageConfig,
                      queries: QueryEncoder | None = None) -> CanvasData:
    """Training and held-out examples of one canvas from a real dataset (see the module docstring)."""
    sid_rows = catalog_to_sid_rows(data, ids)
    H = split.max_history
    seed = config.seed
    if canvas in ("search", "collection") and queries is None:
        raise ValueError(f"the {canvas} canvas needs a QueryEncoder for its text context")
    info: dict = {}
    if canvas == "home":
        train, test = _next_title_examples(split, sid_rows, H), _test_examples(split, sid_rows)
    elif canvas == "t2t":
        train = []
        for ex in _next_title_examples(split, sid_rows, 1):
            src = int(ex.history[-1])
            if src != ex.target:
                train.append(CanvasExample(np.zeros(0, np.int64), ex.target, None, kind="pair", source=src))
        test = [CanvasExample(np.zeros(0, np.int64), ex.target, None, kind="pair",
                              source=int(ex.history[-1]))
                for ex in _test_examples(split, sid_rows) if len(ex.history) and ex.history[-1] != ex.target]
        for ex in train + test:
            ex.context = encoder.sid_tokens[ex.source].tolist()
    elif canvas == "collection":
        themes = theme_of(list(data.catalog["categories"]), config.min_theme_titles)
        row_theme = {int(sid_rows[r]): t for r, t in enumerate(themes) if sid_rows[r] >= 0}
        train = [ex for ex in _next_title_examples(split, sid_rows, H) if row_theme.get(ex.target)]
        test = [ex for ex in _test_examples(split, sid_rows) if row_theme.get(ex.target)]
        names = sorted({row_theme[ex.target] for ex in train + test})
        tokens = dict(zip(names, queries.encode(names)))
        for ex in train + test:
            ex.text, ex.kind = row_theme[ex.target], "theme"
            ex.context = tokens[ex.text]
        info["themes"] = len(names)
    elif canvas == "search":
        train, test = _search_examples(data, split, sid_rows, config)
        if not train or not test:
            raise ValueError(f"{data.name}: no search examples (no tags and no title words)")
        # sample before encoding: the query encoder embeds every distinct text
        train = _sample(train, config.max_train_examples, seed)
        test = _sample(test, config.max_eval_examples, seed + 1)
        texts = sorted({ex.text for ex in train + test})
        tokens = dict(zip(texts, queries.encode(texts)))
        for ex in train + test:
            ex.context = tokens[ex.text]
    else:
        raise ValueError(f"unknown canvas {canvas!r}")
    train = _sample(train, config.max_train_examples, seed)
    test = _sample(test, config.max_eval_examples, seed + 1)
    if not train or not test:
        raise ValueError(f"{data.name}: the {canvas} canvas has {len(train)} training and "
                         f"{len(test)} held-out examples; it needs both")
    info.update(canvas=canvas, dataset=data.name, train=len(train), test=len(test),
                train_kinds=dict(Counter(ex.kind for ex in train)),
                test_kinds=dict(Counter(ex.kind for ex in test)))
    return CanvasData(canvas, train, test, info)


def _search_examples(data: RecData, split: Split, sid_rows: np.ndarray,
                     config: PromptTuningStageConfig) -> tuple[list, list]:
    train: list[CanvasExample] = []
    test: list[CanvasExample] = []
    seed, frac, H = config.seed, config.eval_fraction, split.max_history
    # ---- tag queries: a member typed this about that title
    inter = data.interactions
    if "tag" in inter.column_names:
        tags = inter.filter(lambda k, t: k == "tag" and bool(t and t.strip()),
                            input_columns=["kind", "tag"])
        if len(tags):
            item_row = {iid: i for i, iid in enumerate(data.catalog["item_id"])}
            member = {u: i for i, u in enumerate(split.sequences.user_ids)}
            seqs = split.sequences
            for user, item, tag, ts in zip(tags["user_id"], tags["item_id"], tags["tag"], tags["timestamp"]):
                u, target = member.get(user), sid_rows[item_row[item]]
                if u is None or target < 0:
                    continue
                lo, hi = seqs.offsets[u], seqs.offsets[u + 1]
                before = seqs.item_index[lo:hi][(seqs.first_time[lo:hi] < ts)
                                                & (seqs.item_index[lo:hi] != item_row[item])]
                text = tag.strip().lower()
                ex = CanvasExample(to_sid_rows(before[-H:], sid_rows), int(target), user,
                                   text=text, kind="tag")
                (test if _hash_fraction(seed, "tag", text, item) < frac else train).append(ex)
    # ---- partial title words, anonymous: lexical relevance
    rng = np.random.default_rng(seed)
    for r, (item, title) in enumerate(zip(data.catalog["item_id"], data.catalog["title"])):
        if sid_rows[r] < 0:
            continue
        words = [w for w in _WORD.findall(title.lower()) if w not in _STOPWORDS]
        if not words:
            continue
        word = words[int(rng.integers(len(words)))]
        text = word[: int(rng.integers(4, len(word) + 1))]  # "pari" for "paris"
        ex = CanvasExample(np.zeros(0, np.int64), int(sid_rows[r]), None, text=text, kind="word")
        (test if _hash_fraction(seed, "word", item) < frac else train).append(ex)
    return train, test


def canvas_data_for(gen, data: RecData, split: Split, config: PromptTuningStageConfig) -> CanvasData:
    """``build_canvas_data`` for a loaded model (``gen_fm.model.GenFM``): its ID map and prompt
    encoder, and a ``QueryEncoder`` over its copy of the ID artifact when the canvas takes text."""
    queries = None
    if config.canvas in ("search", "collection"):
        queries = QueryEncoder(gen.path / "semantic_ids", config.query_mode, config.num_anchors)
    return build_canvas_data(config.canvas, data, split, gen.ids, gen.prompt_encoder(), config, queries)


def mixture_examples(data: RecData, split: Split, ids: SemanticIDs, ids_dir: str | Path,
                     encoder: PromptEncoder, canvases: Sequence[str], per_canvas: int,
                     seed: int = 0) -> tuple["datasets.Dataset", dict]:  # noqa: F821
    """Training examples of other canvases as pretraining rows (``gen_fm.dataset`` columns).

    Each row is a canvas prompt followed by the target's code tokens, with the loss on the target
    only. Only *training* examples are used, and on top of the canvases' own rules a member's
    validation and test targets are taken out of that member's examples (as targets and as history:
    a search tag may postdate them), so mixing canvases into pretraining leaks nothing into the
    next-title evaluation either. Returns the rows and counts per canvas.
    """
    import datasets

    from gen_fm.dataset import IGNORE, example_features

    sid_rows = catalog_to_sid_rows(data, ids)
    held: dict[str, set[int]] = {}  # member -> ID rows of their validation and test targets
    for name in ("valid", "test"):
        ex = split.examples(name)
        for u, t in zip(ex.users, to_sid_rows(ex.targets, sid_rows)):
            held.setdefault(split.sequences.user_ids[u], set()).add(int(t))
    member = {u: i for i, u in enumerate(split.sequences.user_ids)}
    queries = None
    if any(c in ("search", "collection") for c in canvases):
        queries = QueryEncoder(ids_dir)
    cols: dict[str, list] = {"input_ids": [], "labels": [], "member": []}
    info: dict = {}
    for canvas in canvases:
        # draw from every training example, then cap after the held-out filter
        config = PromptTuningStageConfig(canvas=canvas, max_train_examples=None, seed=seed)
        cd = build_canvas_data(canvas, data, split, ids, encoder, config, queries)
        kept = []
        for ex in cd.train:
            out = held.get(ex.user, set())  # anonymous examples (user None) hold nothing
            if ex.target in out:
                continue
            if out and len(ex.history):
                ex.history = ex.history[~np.isin(ex.history, list(out))]
            kept.append(ex)
        dropped = len(cd.train) - len(kept)
        kept = _sample(kept, per_canvas, seed)
        for ex in kept:
            prompt = ex.prompt(encoder, canvas)
            target = encoder.sid_tokens[ex.target].tolist()
            cols["input_ids"].append(prompt + target)
            cols["labels"].append([IGNORE] * len(prompt) + target)
            cols["member"].append(member.get(ex.user, -1))  # -1: anonymous
        info[canvas] = {"examples": len(kept), "kinds": dict(Counter(ex.kind for ex in kept)),
                        "dropped_held_out": dropped}
    return datasets.Dataset.from_dict(cols, features=example_features()), info


def pretraining_mixture(data: RecData, seq_config, ids_dir: str | Path, config
                        ) -> tuple["datasets.Dataset", dict]:  # noqa: F821
    """The rows ``gen_fm.train.pretrain(extra_rows=...)`` needs for ``config.canvas_mix``
    (a ``PretrainConfig``): the same split and prompt format the pretraining run builds."""
    from sidrec.sequences import build_sequences, leave_one_out

    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    ids = SemanticIDs.load(ids_dir)
    encoder = PromptEncoder.from_ids(ids, config.num_user_buckets)
    return mixture_examples(data, split, ids, ids_dir, encoder, config.canvas_mix,
                            config.canvas_mix_examples, config.seed)
