"""A canvas's context as a candidate set: the titles a request may be answered with.

The model ranks; the context decides what is eligible. Serving narrows the constrained decoder's
trie to these rows (the same restriction business rules use), so a "Western" collection holds only
Westerns and a "star wars" search only titles about the query, ranked by the member's history.
- collection (``for_theme``): a theme naming a catalog category gives all its titles; a free-text
  theme the titles matching its words in titles and tags, filled from the fused ranking, or, when
  none matches, the titles nearest to its sentence embedding;
- title to title (``for_source``): the source's most co-engaged titles (``gen_fm.co_engagement``),
  then its nearest titles by title-text embedding, which fill in where co-engagement is thin;
- search (``for_query``): BM25 (``bm25s``) over title, category and tag words, unknown words expanded
  by prefix, fused by reciprocal rank with the sentence-embedding match (title text and tags).
Everything is read from the ID artifact folder (titles, fused embeddings, embedder state), so a
model folder's copy of it is all serving needs; per-title categories come from the embeddings'
metadata block, so an artifact built without the metadata modality has no catalog themes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gen_fm.ranking import fusion_scores
from semantic_ids.config import SemanticIDConfig
from semantic_ids.embeddings import TextEncoder
from semantic_ids.ids import SemanticIDs
from prompt_tuning.candidate_config import CandidateConfig

# the metadata block: multi-hot categories, then a one-hot decade 1900s..2030s (semantic_ids.embeddings)
_DECADES = 14
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Candidates:
    """The rows a context makes eligible and how they were found (shown to the caller)."""

    rows: np.ndarray  # (n,) int64 ID-artifact rows, best match first
    how: str  # e.g. "catalog theme 'Western': 167 titles"


def fuse_ranks(
    model_rows: list[int], order_rows: list[int], k: int, fusion_k: int, weight: float
) -> list[int]:
    """The first `k` titles of ``fusion_scores``."""
    return list(fusion_scores(model_rows, order_rows, fusion_k, weight))[:k]


def fuse_all(
    model_rows: list[list[int]], orders: list[list[int]], k: int, config: CandidateConfig | None = None
) -> list[list[int]]:
    """``fuse_ranks`` per member with ``config``'s constants (default: ``CandidateConfig()``, the
    served ones): what the evaluations of fused rows share."""
    cc = config or CandidateConfig()
    return [
        fuse_ranks(list(m), list(o), k, cc.fusion_k, cc.fusion_weight) for m, o in zip(model_rows, orders)
    ]


def with_fresh(ranked: list[int], fresh: list[int], k: int, share: float, fresh_rows: set[int]) -> list[int]:
    """The first `k` titles of `ranked` with ``int(share * k)`` slots given to the first titles of
    `fresh` (all in `fresh_rows`, the titles that count as fresh). The other slots take `ranked`'s
    titles that are not fresh, so at most that many fresh titles show and none twice. The fresh
    slots sit in the middle of each of the k/n equal blocks of the row (k=10: 6th; two: 3rd and 8th)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"fresh share must be in [0, 1], got {share}")
    n = int(share * k + 1e-9)
    picked = [r for r in dict.fromkeys(fresh) if r in fresh_rows][:n]
    out = [r for r in ranked if r not in fresh_rows][: k - len(picked)]
    for i, r in enumerate(picked):
        out.insert(min(((2 * i + 1) * k) // (2 * n), len(out)), r)
    return out[:k]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN  # the BM25 library's English list ("in", "the", ...)

    return frozenset(STOPWORDS_EN)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def content_vectors(ids_dir: str | Path) -> np.ndarray:
    """(N, D) unit content vectors of an ID artifact's titles (the embeddings its quantizer encoded)."""
    from safetensors.numpy import load_file

    return _unit(load_file(str(Path(ids_dir) / "embeddings.safetensors"))["fused"].astype(np.float32))


def content_nearest(
    vectors: np.ndarray, rows: np.ndarray, history: Sequence[int], k: int
) -> tuple[list[int], list[float]]:
    """The `k` of `rows` (not in `history`) whose unit `vectors` are nearest the mean of the
    history's, with their cosine similarities (ties: lower row); an empty history gets none."""
    history = np.asarray(history, dtype=np.int64)
    if not len(history):
        return [], []
    rows = np.setdiff1d(np.asarray(rows, dtype=np.int64), history)
    sims = vectors[rows] @ vectors[history].mean(axis=0)
    order = np.lexsort((rows, -sims))[:k]
    return rows[order].tolist(), sims[order].tolist()


class _LexicalField:
    """One BM25 index (``bm25s``) over one document per title, with prefix expansion of unknown
    query words ("pari" -> "paris") from its own vocabulary."""

    def __init__(self, docs: list[list[str]], stop: frozenset[str], expansions: int) -> None:
        import bm25s

        self.stop, self.expansions = stop, expansions
        self.words = [frozenset(d) for d in docs]
        self.bm25 = bm25s.BM25()
        self.bm25.index(docs, show_progress=False)
        self.vocab = sorted({w for d in docs for w in d})
        self.vocab_set = set(self.vocab)
        self.df: dict[str, int] = {}
        for d in self.words:
            for w in d:
                self.df[w] = self.df.get(w, 0) + 1

    def groups(self, query: str) -> list[list[str]]:
        """Per query word (stopwords left out): itself if the vocabulary has it, else the
        vocabulary words it begins, most common first ([] when none)."""
        out: list[list[str]] = []
        for w in words(query):
            if w in self.stop:
                continue
            if w in self.vocab_set:
                out.append([w])
                continue
            lo = np.searchsorted(self.vocab, w)
            hits = []
            for v in self.vocab[lo:]:
                if not v.startswith(w):
                    break
                hits.append(v)
            hits.sort(key=lambda v: -self.df[v])
            out.append(hits[: self.expansions])
        return out

    def scores(self, groups: list[list[str]]) -> np.ndarray:
        """(N,) BM25 score of every title for the expanded query; 0 = no word in common."""
        terms = [v for g in groups for v in g]
        if not terms:
            return np.zeros(len(self.words), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(terms), dtype=np.float32)

    def strong(self, query: str, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        """(scores, strong mask): for a query of several words the titles holding every one of
        them ("tom hanks" is not any Tom), else those scoring at least `cutoff` of the best; an
        all-False mask when nothing matches (or no title holds every word of several)."""
        groups = self.groups(query)
        lex = self.scores(groups)
        hits = np.flatnonzero(lex > 0)
        mask = np.zeros(lex.shape, dtype=bool)
        if not hits.size:
            return lex, mask
        if len(groups) > 1:
            sets = [set(g) for g in groups]
            for r in hits.tolist():
                mask[r] = all(g & self.words[r] for g in sets)
            return lex, mask
        return lex, lex >= cutoff * lex.max()


class CandidateIndex:
    """Candidate sets for search queries and collection themes over one ID artifact."""

    def __init__(
        self,
        ids_dir: str | Path,
        text_encoder: Any = None,
        config: CandidateConfig | None = None,
        co_engagement: Any = None,
        tags: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`co_engagement`: the model's ``gen_fm.co_engagement.CoEngagement`` (None: a source's
        neighbourhood is its content neighbours alone, and ``for_source`` says so); `tags`: item_id
        -> what members wrote about it (``GenFM.title_tags``; None: titles and categories only)."""
        from safetensors.numpy import load_file

        ids_dir = Path(ids_dir)
        self.config = config or CandidateConfig()
        self.ids = SemanticIDs.load(ids_dir)
        if co_engagement is not None and co_engagement.num_items != self.ids.num_items:
            raise ValueError(
                f"the co-engagement table covers {co_engagement.num_items} titles, the "
                f"ID artifact {ids_dir} {self.ids.num_items}"
            )
        self.co_engagement = co_engagement
        id_config = SemanticIDConfig.from_dict(self.ids.manifest["config"])
        if id_config.modalities.text_weight <= 0:
            raise ValueError(
                f"the ID artifact {ids_dir} has no text modality: queries and themes "
                f"cannot be matched to its titles"
            )
        embedder = json.loads((ids_dir / "embedder.json").read_text())
        fused = load_file(str(ids_dir / "embeddings.safetensors"))["fused"]  # (N, D)
        self.categories: list[str] = list(embedder.get("categories") or [])
        meta = len(self.categories) + _DECADES if id_config.modalities.metadata_weight > 0 else 0
        collab = (
            id_config.modalities.collaborative_dim if id_config.modalities.collaborative_weight > 0 else 0
        )
        user = int(embedder.get("user_dim") or 0) if id_config.modalities.user_vectors else 0
        text_dim = fused.shape[1] - meta - collab - user
        self.title_vecs = _unit(fused[:, :text_dim].astype(np.float32))  # (N, d) title text block
        # per-row categories and the inverted index of each (lower-cased name -> rows)
        self.row_categories: list[list[str]] = [[] for _ in range(self.ids.num_items)]
        self._theme_rows: dict[str, np.ndarray] = {}
        if meta:
            hot = fused[:, text_dim : text_dim + len(self.categories)] > 0  # (N, C)
            for j, name in enumerate(self.categories):
                rows = np.flatnonzero(hot[:, j]).astype(np.int64)
                self._theme_rows[name.lower()] = rows
                for r in rows:
                    self.row_categories[r].append(name)
        self.text = text_encoder or TextEncoder(id_config.text.text_model, id_config.text.text_batch_size)
        titles = self.ids.titles or [""] * self.ids.num_items
        # per-row tags (titles the artifact does not hold are ignored: a tag file may be older)
        self.row_tags: list[list[str]] = [[] for _ in range(self.ids.num_items)]
        for item, item_tags in (tags or {}).items():
            if item in self.ids:
                self.row_tags[self.ids.index_of(item)] = [str(t) for t in item_tags]
        self._tag_vecs: tuple[np.ndarray, np.ndarray] | None = None  # (rows, unit vectors), lazily
        # documents: title and category words (a query for "horror" finds horror titles), and a
        # second field adding what members tagged the title with, which answers the queries the
        # titles cannot (see ``for_query``). Stopwords are left out of documents and queries
        # ("in netflix queue" is not about "in").
        self._stop = _stopwords()
        docs = [
            [w for w in words(t or "") + [w for c in cats for w in words(c)] if w not in self._stop]
            for t, cats in zip(titles, self.row_categories)
        ]
        self._fields = [_LexicalField(docs, self._stop, self.config.prefix_expansions)]
        if any(self.row_tags):  # a second field only where there are tags: self._has_tags
            self._fields.append(
                _LexicalField(
                    [
                        d + [w for tag in row_tags for w in words(tag) if w not in self._stop]
                        for d, row_tags in zip(docs, self.row_tags)
                    ],
                    self._stop,
                    self.config.prefix_expansions,
                )
            )

    @property
    def _has_tags(self) -> bool:
        return len(self._fields) > 1

    # ------------------------------------------------------------------ themes
    def is_catalog_theme(self, theme: str) -> bool:
        return theme.strip().lower() in self._theme_rows

    def for_theme(self, theme: str) -> Candidates:
        """Titles inside a collection theme (see the module doc)."""
        key = theme.strip().lower()
        if not key:
            raise ValueError("the theme is empty")
        rows = self._theme_rows.get(key)
        if rows is not None:
            name = self.categories[[c.lower() for c in self.categories].index(key)]
            return Candidates(rows, f"catalog theme {name!r}: {len(rows)} titles")
        n = self.config.theme_candidates
        semantic = self._semantic_order(theme)
        rows, rest, where = self._matches(theme, semantic, n, titles_first=False)
        if rows:  # the words members use for it ("heist") find its titles better than the embedding
            matched = len(rows)
            rows += rest[: max(0, min(self.config.theme_fill, n) - matched)]
            filled = (
                f", then {len(rows) - matched} nearest by BM25 and embedding" if len(rows) > matched else ""
            )
            return Candidates(
                np.asarray(rows, dtype=np.int64),
                f"free-text theme {theme.strip()!r} (not a catalog category): the "
                f"{matched} titles matching it in {where}{filled}",
            )
        return Candidates(
            semantic[:n],
            f"free-text theme {theme.strip()!r} (not a catalog category, "
            f"no title matches its words): its {n} nearest titles by "
            f"sentence embedding",
        )

    # ------------------------------------------------------------------ titles
    def for_title(self, row: int, n: int) -> np.ndarray:
        """The `n` titles nearest to title `row` by title-text embedding (itself left out)."""
        if not 0 <= row < self.ids.num_items:
            raise ValueError(f"title row {row} is not in the ID artifact ({self.ids.num_items} titles)")
        sims = self.title_vecs @ self.title_vecs[row]  # (N,)
        order = np.argsort(-sims, kind="stable")
        return order[order != row][:n].astype(np.int64)

    def for_source(self, row: int) -> Candidates:
        """A t2t source title's neighbourhood (see the module doc), the source left out."""
        n = self.config.source_candidates
        name = (self.ids.titles[row] if self.ids.titles else None) or self.ids.item_ids[row]
        together = (
            []
            if self.co_engagement is None
            else [r for r in self.co_engagement.of(row, n // 2).tolist() if r != row]
        )
        seen = set(together) | {row}
        content = [r for r in self.for_title(row, n).tolist() if r not in seen][: n - len(together)]
        if self.co_engagement is None:
            why = "no co-engagement table in the model folder: "
        elif not together:
            why = "never watched with another title in training: "
        else:
            why = f"{len(together)} most often paired with it, then "
        return Candidates(
            np.asarray(together + content, dtype=np.int64),
            f"source {name!r}: {why}{len(content)} nearest by title text",
        )

    # ------------------------------------------------------------------ search
    def expand(self, query: str) -> list[str]:
        """Query words in the title vocabulary; an unknown word becomes the words it begins."""
        return [v for g in self._fields[0].groups(query) for v in g]

    def for_query(self, query: str) -> Candidates:
        """The best ``search_candidates`` titles for a query: its strong lexical matches (see
        ``_matches``), best first by BM25 fused with the embedding match, filled from that fused
        ranking up to ``min_candidates``. No lexical match at all: the embedding match alone, and
        the description says so."""
        if not query.strip():
            raise ValueError("the query is empty")
        n = self.config.search_candidates
        semantic = self._semantic_order(query)
        rows, rest, where = self._matches(query, semantic, n)
        if not rows:
            return Candidates(
                semantic[:n],
                f"query {query.strip()!r}: no title shares a word with "
                f"it{' (title, category or tag)' if self._has_tags else ''}; "
                f"its {n} nearest titles by sentence embedding",
            )
        strong = len(rows)
        rows += rest[: max(0, min(self.config.min_candidates, n) - len(rows))]
        return Candidates(
            np.asarray(rows, dtype=np.int64),
            f"query {query.strip()!r}: {len(rows)} titles ({strong} matching it in "
            f"{where}; BM25 fused with sentence-embedding similarity)",
        )

    def _matches(
        self, text: str, semantic: np.ndarray, n: int, titles_first: bool = True
    ) -> tuple[list[int], list[int], str]:
        """(strong lexical matches, at most `n`, then the other fused rows; where they matched).

        `titles_first` False (collection themes, sets rather than lookups): one word is matched in
        titles, categories and tags together.

        Strong matches: for one word, among title and category words when any title holds it (a
        word query finds the titles that hold it, as without tags; a word that is no title word
        but a tag, "twist", also gets its tagged titles beside the titles it begins a word of),
        else among tags ("atmospheric": what members wrote answers what titles cannot); for several
        words, the titles holding all of them in their title, categories or tags ("time travel",
        "tom hanks": not every Tom), else those scoring at least ``lexical_cutoff`` of the best over
        everything. Each list is ordered by BM25 fused by reciprocal rank with the embedding match
        (``semantic``); every strong match is kept, also one that neither ranking's head holds."""
        cutoff, k = self.config.lexical_cutoff, self.config.rrf_k
        titles, widest = self._fields[0], self._fields[-1]
        query_words = [w for w in words(text) if w not in self._stop]
        several = len(widest.groups(text)) > 1
        field = widest if several or not titles_first else titles
        lex, strong = field.strong(text, cutoff)
        if (
            field is titles
            and self._has_tags
            and len(query_words) == 1
            and query_words[0] not in titles.vocab_set
            and query_words[0] in widest.vocab_set
        ):  # a tag word, not a title word: both
            tag_lex, tag_strong = widest.strong(text, cutoff)
            lex, strong, field = lex + tag_lex, strong | tag_strong, widest
        if not strong.any() and field is not widest:
            field = widest
            lex, strong = widest.strong(text, cutoff)
        if not strong.any():  # several words that no title holds together: the best partial matches
            field = widest
            lex = widest.scores(widest.groups(text))
            strong = lex >= cutoff * lex.max() if (lex > 0).any() else strong
        where = "its title" if field is titles else "its title or tags"
        hits = np.flatnonzero(lex > 0)
        if not hits.size:
            return [], [], where
        lexical = hits[np.argsort(-lex[hits], kind="stable")]
        fused: dict[int, float] = {int(r): 0.0 for r in np.flatnonzero(strong)}  # every strong row
        for ranking in (lexical[: 4 * n], semantic[: 4 * n]):  # reciprocal rank fusion
            for rank, r in enumerate(ranking.tolist()):
                fused[r] = fused.get(r, 0.0) + 1.0 / (k + rank + 1)
        order = sorted(fused, key=lambda r: (-fused[r], -lex[r], r))
        return [r for r in order if strong[r]][:n], [r for r in order if not strong[r]], where

    # ------------------------------------------------------------------ helpers
    def _semantic_order(self, text: str) -> np.ndarray:
        """Every row, most similar to `text` first: the better of title-text and tag similarity."""
        q = _unit(np.asarray(self.text.encode([text.strip()]), dtype=np.float32))[0]  # (d,)
        if q.shape[0] != self.title_vecs.shape[1]:
            raise ValueError(
                f"the text encoder gives {q.shape[0]}-d vectors, the ID artifact's "
                f"title text block is {self.title_vecs.shape[1]}-d"
            )
        sims = self.title_vecs @ q  # (N,)
        rows, vecs = self._tag_vectors()
        if rows.size:
            sims[rows] = np.maximum(sims[rows], vecs @ q)
        return np.argsort(-sims, kind="stable").astype(np.int64)

    def _tag_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows with tags, their tags' joined text embedded), built on first use."""
        if self._tag_vecs is None:
            rows = np.asarray([r for r, t in enumerate(self.row_tags) if t], dtype=np.int64)
            vecs = np.zeros((0, self.title_vecs.shape[1]), dtype=np.float32)
            if rows.size:
                texts = [", ".join(self.row_tags[r]) for r in rows.tolist()]
                vecs = _unit(np.asarray(self.text.encode(texts), dtype=np.float32))
            self._tag_vecs = (rows, vecs)
        return self._tag_vecs


__all__ = [
    "CandidateIndex",
    "Candidates",
    "fuse_all",
    "fuse_ranks",
    "words",
]
