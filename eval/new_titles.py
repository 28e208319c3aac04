"""Judging a catalog refresh (``sidrec.refresh``): one model and ID map on the test split's members
whose target is a new title, and on those whose target is an old one.

The ID map decides both the prompts and the trie: history titles without an ID in it are dropped
from the prompt (counted) and a target without one cannot be recommended, which is exactly what a
model serving that map can do. So the old model with the old map scores 0 on new titles by
construction, as any TIGER-style model does on titles it has no ID for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from eval.machine import machine_info
from gen_fm.beams import JudgeConfig
from gen_fm.dataset import catalog_to_sid_rows
from gen_fm.decode import recommend
from gen_fm.titles import extend_titles
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.candidates import CandidateIndex, content_nearest
from semantic_ids.trie import PrefixTrie
from core.artifacts import write_json
from core.data import DataConfig, RecData, load_data
from core.metrics import ranking_metrics
from core.sequences import build_sequences, leave_one_out
from core.timeline import rolling_pool


VARIANTS = ("before", "old_model_new_trie", "after")
# Model-free references on the same members: the new titles most engaged in the fresh window's
# training events, and the new titles nearest the member's history by title-text embedding.
BASELINES = ("popular_new", "content_nearest_new")
GROUPS = ("new_titles", "old_titles")


def judge(
    parent, new_ids, refreshed, data: RecData, new_titles: set[str], config: JudgeConfig
) -> tuple[dict[str, dict[str, dict]], dict[str, int]]:
    """Metrics of the three variants on the test split's new-title and old-title targets."""

    if refreshed.seq_config != parent.seq_config:
        raise ValueError("the refreshed model was trained with another sequence config")
    split = leave_one_out(build_sequences(data, parent.seq_config), parent.seq_config)
    ex = split.examples("test")
    cat = list(data.catalog["item_id"])
    is_new = np.asarray([cat[t] in new_titles for t in ex.targets], dtype=bool)
    groups = {"new_titles": np.flatnonzero(is_new), "old_titles": np.flatnonzero(~is_new)}
    members = {g: len(m) for g, m in groups.items()}
    if config.eval_users is not None:
        groups = {g: m[: config.eval_users] for g, m in groups.items()}
    variants = {
        "before": (parent, parent.ids),
        "old_model_new_trie": (parent, new_ids),
        "after": (refreshed, refreshed.ids),
    }
    out: dict[str, dict[str, dict]] = {}
    for name, (gen, ids) in variants.items():
        out[name] = {
            g: score(gen, ids, data, split, ex, m, config, f"{name} / {g}") for g, m in groups.items()
        }
    out.update(baselines(new_ids, data, split, ex, groups, new_titles, config.ks))
    return out, members


def popular_new(
    train_rows: np.ndarray, new_rows: np.ndarray, histories: list[np.ndarray], k: int
) -> list[list[int]]:
    """Per history, the `k` new titles (catalog rows) with most training events (ties: lower
    row); titles of the history are left out."""
    size = int(max(new_rows.max(initial=-1), train_rows.max(initial=-1))) + 1
    counts = np.bincount(train_rows, minlength=size)
    order = new_rows[np.lexsort((new_rows, -counts[new_rows]))].tolist()  # most engaged first
    out = []
    for h in histories:
        seen = set(h.tolist())
        out.append([r for r in order if r not in seen][:k])
    return out


def content_nearest_new(
    vectors: np.ndarray, new_rows: np.ndarray, histories: list[np.ndarray], k: int
) -> list[list[int]]:
    """Per history, the `k` new titles whose vectors (unit rows, indexed by catalog row) are
    nearest the mean of the history's (``content_nearest``); an empty history gets none."""
    return [content_nearest(vectors, new_rows, h, k)[0] for h in histories]


def baselines(
    new_ids,
    data: RecData,
    split,
    ex,
    groups: dict[str, np.ndarray],
    new_titles: set[str],
    ks: tuple[int, ...],
) -> dict[str, dict[str, dict]]:
    """``BASELINES`` on the same members as the model variants, from the refreshed ID artifact's
    title-text embeddings and the training events (test events never count)."""

    cat = list(data.catalog["item_id"])
    new_rows = np.asarray(sorted(i for i, t in enumerate(cat) if t in new_titles), dtype=np.int64)
    _, train_rows = split.train_pairs()
    sid_rows = catalog_to_sid_rows(data, new_ids)
    try:
        text = CandidateIndex(new_ids.path).title_vecs  # (ID rows, d) unit title-text vectors
        vectors = np.zeros((len(cat), text.shape[1]), dtype=np.float32)
        vectors[sid_rows >= 0] = text[sid_rows[sid_rows >= 0]]
    except ValueError:  # IDs built without the text modality: no sentence embeddings to compare
        vectors = None
    k = max(ks)
    out: dict[str, dict[str, dict]] = {name: {} for name in BASELINES}
    for g, members in groups.items():
        hists = [np.asarray(ex.histories[i], dtype=np.int64) for i in members]
        targets = [cat[int(t)] for t in ex.targets[members]]
        for name in BASELINES:
            if name == "content_nearest_new" and vectors is None:
                out[name][g] = {
                    "num_users": len(members),
                    "skipped": "the IDs have no text modality",
                    **{f"{m}@{kk}": None for kk in ks for m in ("recall", "ndcg")},
                }
                continue
            ranked = (
                popular_new(np.asarray(train_rows), new_rows, hists, k)
                if name == "popular_new"
                else content_nearest_new(vectors, new_rows, hists, k)
            )
            if not len(members):
                out[name][g] = {
                    "num_users": 0,
                    **{f"{m}@{kk}": None for kk in ks for m in ("recall", "ndcg")},
                }
                continue
            m = ranking_metrics([[cat[r] for r in rows] for rows in ranked], targets, ks).to_dict()
            out[name][g] = m
    return out


def score(
    gen, ids, data: RecData, split, ex, members: np.ndarray, config: JudgeConfig, desc: str = "decoding"
) -> dict[str, Any]:
    """Recall/NDCG of `gen` for `members` of `ex`, prompts and trie both from the ID map `ids`.

    History titles without an ID in `ids` are dropped from the prompt (counted); a target without
    one cannot be recommended (a miss): that is what a model on that map can do.
    """

    if ids.codebook_sizes != gen.layout.codebook_sizes:
        raise ValueError(
            f"the ID map's codebooks {ids.codebook_sizes} are not the model's {gen.layout.codebook_sizes}"
        )
    cat = list(data.catalog["item_id"])
    targets = [cat[int(t)] for t in ex.targets[members]]
    result: dict[str, Any] = {
        "num_users": len(members),
        "targets_without_id": sum(t not in ids for t in targets),
    }
    if not len(members):
        return {
            **result,
            **{f"{m}@{k}": None for k in config.ks for m in ("recall", "ndcg")},
            "history_titles_without_id": 0,
        }
    # a title-token model meets titles added since it was trained: they enter by their codes (the
    # loaded model and its layout grow together)
    gen.layout = extend_titles(
        gen.model, gen.layout, gen.layout.sids_to_ids(ids.codes), gen.title_code_rows()
    )
    encoder = PromptEncoder.from_ids(ids, gen.config.model.num_user_buckets, gen.layout)
    sid_rows = catalog_to_sid_rows(data, ids)
    prompts, dropped = [], 0
    for i in members:
        rows = sid_rows[ex.histories[i]]
        dropped += int((rows < 0).sum())
        prompts.append(encoder.encode(rows[rows >= 0], user_id=split.sequences.user_ids[ex.users[i]]))
    trie = PrefixTrie.from_ids(ids)
    recs = []
    chunk = config.eval_batch_size * 4
    for start in tqdm(range(0, len(prompts), chunk), desc=desc, unit="chunk", leave=False):
        recs += recommend(
            gen.model,
            prompts[start : start + chunk],
            trie,
            k=config.k,
            num_beams=config.beams,
            batch_size=config.eval_batch_size,
        )
    ranked = [[ids.item_ids[r] for r in rec.rows] for rec in recs]
    metrics = ranking_metrics(ranked, targets, config.ks).to_dict()
    del metrics["num_users"]
    return {**result, **metrics, "history_titles_without_id": dropped}


def bench_new_title_pool(
    *,
    dataset: str,
    data_dir: str | None = None,
    cutoff_counts: tuple[int, ...] = (10, 20, 40, 80),
    low: float = 0.2,
    high: float = 0.98,
    out: str | None = None,
    command: str = "",
) -> dict[str, Any]:
    """How many members a rolling-cutoff new-title evaluation can pool on a dataset
    (``core.timeline.rolling_pool``): for each count of cutoffs spread evenly over the interaction
    times' quantiles [low, high], the (member, cutoff) pairs whose next title is new and the
    distinct members among them. Written to ``out`` (default
    ``results/refresh/<dataset>-new-title-pool.json``)."""

    data = load_data(DataConfig(data_dir=data_dir, dataset=dataset))
    rows = []
    for n in cutoff_counts:
        pools = rolling_pool(data, np.linspace(low, high, n))
        members = {m for p in pools for m in p.next_is_new}
        rows.append(
            {
                "cutoffs": n,
                "pairs_next_is_new": sum(len(p.next_is_new) for p in pools),
                "distinct_members_next_is_new": len(members),
                "mean_active_after_cutoff": float(np.mean([p.active_after for p in pools])),
                "mean_next_is_new_per_cutoff": float(np.mean([len(p.next_is_new) for p in pools])),
            }
        )
        print(
            f"{n:3d} cutoffs: {rows[-1]['pairs_next_is_new']:4d} (member, cutoff) pairs whose next "
            f"title is new, {len(members):3d} distinct members",
            flush=True,
        )
    report = {
        "kind": "new_title_pool",
        "dataset": data.name,
        "fingerprint": data.fingerprint,
        "members": int(len(set(data.interactions["user_id"]))),
        "quantile_range": [low, high],
        "rows": rows,
        "command": command,
        "machine": machine_info(),
    }
    path = Path(out or f"results/refresh/{data.name}-new-title-pool.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    print(f"wrote {path}")
    return report
