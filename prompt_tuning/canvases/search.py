"""The search canvas: the member's history (or none: anonymous), then the query after ``<sep>``; the
target is a title the query is about.

Two kinds of real queries, and why nothing held out leaks into training:
- tags (MovieLens ``tags.csv``: a member typed this text about that title), with the member's
  history before the tag; the held-out part is a seeded share of the distinct (query, title) pairs,
  so no held-out pair is seen in training, nor in the tags of the candidate index the canvas is
  trained and judged inside (``holds_out_tag``; served, the index holds every tag);
- partial title words ("pari" -> a title containing "Paris"), anonymous, so lexical relevance is
  learned; the held-out part is a seeded share of the *titles*, so a held-out title is never a
  word-query target in training.
Queries are lower-cased (served ones too). Served, the query's titles are the candidates
(``CandidateIndex.for_query``). Its own metrics: relevance per query kind (a word query's results
hold the word; a tag's were tagged with it by some member, or hold its words in their title and
categories) and how much the member's history moves the results of tag queries."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from gen_fm.dataset import to_sid_rows
from prompt_tuning.candidates import words
from prompt_tuning.canvases.base import CanvasContext, CanvasExample, CanvasSource, CanvasSpec
from prompt_tuning.canvases.base import ExampleContext, Examples, hash_fraction, sample_examples

# Words too common to be a search for a title.
_STOPWORDS = frozenset(
    """the and with from for that this your you are was were have has not but all
into over under about after before their there what when where which while will would could should
them they then than its it's his her our out new one two three edition version pack size ounce
ounces fluid piece count""".split()
)
_WORD = re.compile(r"[a-z][a-z']{3,}")


def build_examples(src: CanvasSource) -> Examples:
    data, config = src.data, src.config
    train, test = _search_examples(src)
    if not train or not test:
        raise ValueError(f"{data.name}: no search examples (no tags and no title words)")
    # sample before encoding: the query encoder embeds every distinct text
    train = sample_examples(train, config.canvas_data.max_train_examples, config.seed)
    test = sample_examples(test, config.canvas_data.max_eval_examples, config.seed + 1)
    texts = sorted({ex.text for ex in train + test})
    tokens = dict(zip(texts, src.queries.encode(texts)))
    for ex in train + test:
        ex.context = tokens[ex.text]
    return Examples(train, test, {})


def _search_examples(src: CanvasSource) -> tuple[list, list]:
    data, split, sid_rows, config = src.data, src.split, src.sid_rows, src.config
    train: list[CanvasExample] = []
    test: list[CanvasExample] = []
    seed, frac, H = config.seed, config.canvas_data.eval_fraction, split.max_history
    # ---- tag queries: a member typed this about that title
    inter = data.interactions
    if "tag" in inter.column_names:
        tags = inter.filter(lambda k, t: k == "tag" and bool(t and t.strip()), input_columns=["kind", "tag"])
        if len(tags):
            item_row = {iid: i for i, iid in enumerate(data.catalog["item_id"])}
            member = {u: i for i, u in enumerate(split.sequences.user_ids)}
            seqs = split.sequences
            tagged: dict[str, set[int]] = {}  # tag -> rows any member tagged with it (judgement)
            for item, item_tags in data.title_tags().items():
                for tag in item_tags:
                    if sid_rows[item_row[item]] >= 0:
                        tagged.setdefault(tag, set()).add(int(sid_rows[item_row[item]]))
            for user, item, tag, ts in zip(tags["user_id"], tags["item_id"], tags["tag"], tags["timestamp"]):
                u, target = member.get(user), sid_rows[item_row[item]]
                if u is None or target < 0:
                    continue
                lo, hi = seqs.offsets[u], seqs.offsets[u + 1]
                before = seqs.item_index[lo:hi][
                    (seqs.first_time[lo:hi] < ts) & (seqs.item_index[lo:hi] != item_row[item])
                ]
                text = tag.strip().lower()
                ex = CanvasExample(
                    to_sid_rows(before[-H:], sid_rows),
                    int(target),
                    user,
                    text=text,
                    kind="tag",
                    relevant=frozenset(tagged[text]),
                )
                (test if holds_out_tag(config, text, item) else train).append(ex)
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
        (test if hash_fraction(seed, "word", item) < frac else train).append(ex)
    return train, test


def holds_out_tag(config, text: str, item: str) -> bool:
    """A seeded share (``eval_fraction``) of the distinct (tag, title) pairs is held out, a tag
    keyed by its words: "bad-ass" and "bad ass" on one title are held out together, or one would
    answer the other through the index (it matches words)."""
    return hash_fraction(config.seed, "tag", " ".join(words(text)), item) < config.canvas_data.eval_fraction


def candidates(index, query: str):
    """BM25 over titles, categories and members' tags fused with the sentence-embedding match
    (``CandidateIndex.for_query``)."""
    return index.for_query(query)


def metrics(
    data,
    ranked: list[list[int]],
    *,
    titles_lower,
    row_categories,
    k: int,
    ranked_anonymous: list[list[int]] | None = None,
) -> dict[str, Any]:
    """``lexical_relevance_<kind>``: the share of the top-K whose title contains the query text;
    ``relevance_<kind>`` and ``relevance``: the share of the top-K about the query (a word query:
    the title contains it; a tag: some member tagged the title with it, or its title and
    categories hold every word of it), per kind and over every held-out query (0 for a query
    answered with nothing); ``personalisation_shift_tag``: 1 - overlap of the top-K with and
    without the history (tags)."""
    out: dict[str, Any] = {}
    about: list[float] = []
    for kind in sorted({ex.kind for ex in data.test}):
        shares = [
            np.mean([ex.text in titles_lower[r] for r in rows[:k]]) if rows else 0.0
            for ex, rows in zip(data.test, ranked)
            if ex.kind == kind
        ]
        out[f"lexical_relevance_{kind}"] = float(np.mean(shares)) if shares else None
        judged = [
            np.mean([_about(ex, r, titles_lower, row_categories) for r in rows[:k]]) if rows else 0.0
            for ex, rows in zip(data.test, ranked)
            if ex.kind == kind
        ]
        out[f"relevance_{kind}"] = float(np.mean(judged)) if judged else None
        about += judged
    out["relevance"] = float(np.mean(about)) if about else None
    if ranked_anonymous is not None:
        moved = [
            1.0 - len(set(a[:k]) & set(b[:k])) / k
            for ex, a, b in zip(data.test, ranked, ranked_anonymous)
            if ex.kind == "tag" and len(ex.history)
        ]
        out["personalisation_shift_tag"] = float(np.mean(moved)) if moved else None
    return out


def _about(ex, row: int, titles_lower, row_categories) -> bool:
    """Is title `row` about the query of `ex` (``metrics``' relevance judgement)?"""
    if ex.kind != "tag":
        return ex.text in titles_lower[row]
    if row in ex.relevant:
        return True
    want = [w for w in words(ex.text) if len(w) > 2 and w not in _STOPWORDS]
    have = set(words(titles_lower[row])) | {w for c in row_categories[row] for w in words(c.lower())}
    return bool(want) and all(w in have for w in want)


def example_context(data, ids, history_rows: list[int], user: str) -> ExampleContext:
    """A real tag (the member's own if any, else the one the most members wrote: "atmospheric",
    not one member's "in netflix queue"), else a title word as typed."""
    tags = [
        (u, t.strip().lower())
        for u, t, k in zip(data.interactions["user_id"], data.interactions["tag"], data.interactions["kind"])
        if k == "tag" and t
    ]
    own = [t for u, t in tags if u == user]
    if own:
        query = own[-1]
    elif tags:
        writers = Counter(t for _, t in set(tags))  # distinct members per tag
        uses = Counter(t for _, t in tags)
        query = min(writers, key=lambda t: (-writers[t], -uses[t], t))
    else:  # no tags in this dataset: a word of a title the member knows, as typed ("pari")
        words = [w for r in history_rows for w in _WORD.findall((ids.titles[r] or "").lower()) if len(w) >= 5]
        query = words[-1][:5] if words else "gift"
    return ExampleContext(query, f"search '{query}'")


SPEC = CanvasSpec(
    name="search",
    token="search",
    build_examples=build_examples,
    context=CanvasContext("query", "text", "the query text", lowercase=True),
    candidates=candidates,
    anonymous_kinds=("tag",),
    metrics=metrics,
    example_context=example_context,
    holds_out_tag=holds_out_tag,
)
