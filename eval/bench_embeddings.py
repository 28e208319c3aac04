"""Do the model's embeddings carry signal? Two probes against the content embedding the IDs came from.

1. **Neighbours vs co-engagement:** for every title engaged by at least ``--min-members`` members in
   training, its 10 nearest titles (cosine) by the model's title embedding, by the content embedding
   (the ID artifact's title-text block) and at random; the share of them among the title's 50 most
   co-engaged titles (members who engaged with both, training events only).
2. **Next-category probe:** a logistic regression (scikit-learn, 5-fold cross-validation) predicting
   the theme (rarest category on >= 20 titles, as the collection canvas uses) of each
   member's held-out test title from the member embedding (the model's,
   on the test history) against the mean content embedding of the same history; accuracy of each
   and of the majority class.

    sidrec bench embeddings --model runs/ml/model --out results/embeddings/ml-latest-small.json
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from core.artifacts import write_json
from core.data import DataConfig, load_data
from core.sequences import build_sequences, leave_one_out
from eval.machine import machine_info
from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from prompt_tuning.candidates import CandidateIndex
from prompt_tuning.canvases import theme_of
from serving.embeddings import ModelEmbeddings


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def co_engagement_top(histories: list[np.ndarray], n_titles: int, top: int) -> dict[int, set[int]]:
    """title row -> its ``top`` most co-engaged title rows (members who engaged with both)."""
    from scipy.sparse import csr_matrix

    rows = np.concatenate([np.full(len(h), u) for u, h in enumerate(histories)])
    cols = np.concatenate(histories)
    m = csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(histories), n_titles))
    m.data[:] = 1.0  # engaged or not
    co = (m.T @ m).tocsr()  # (N, N) members in common
    out = {}
    for t in range(n_titles):
        start, end = co.indptr[t], co.indptr[t + 1]
        cand, counts = co.indices[start:end], co.data[start:end]
        keep = cand != t
        cand, counts = cand[keep], counts[keep]
        if len(cand):
            out[t] = set(cand[np.argsort(-counts, kind="stable")[:top]].tolist())
    return out


def neighbour_hits(vecs: np.ndarray, queries: list[int], truth: dict[int, set[int]], k: int = 10) -> float:
    u = _unit(vecs)
    hits = []
    for start in range(0, len(queries), 512):
        q = queries[start : start + 512]
        sims = u[q] @ u.T  # (B, N)
        sims[np.arange(len(q)), q] = -np.inf
        nn = np.argpartition(-sims, k, axis=1)[:, :k]
        hits += [len(set(row.tolist()) & truth[t]) / k for t, row in zip(q, nn)]
    return float(np.mean(hits))


def bench_embeddings(
    *,
    model: str,
    out: str,
    data_dir: str | None = None,
    min_members: int = 20,
    max_members: int = 5000,
    pooling: str = "last",
    command: str = "",
) -> dict:
    """Both probes (see the module docstring); writes ``out`` and returns the report.

    ``min_members``: a title is judged in probe 1 if at least this many members engaged with it;
    ``max_members``: members in the category probe; ``pooling``: ``serving.embeddings.POOLINGS``;
    ``command``: the command line recorded in the report.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    t0 = time.perf_counter()
    emb = ModelEmbeddings(model, pooling=pooling)
    gen = emb.gen
    data = load_data(DataConfig(data_dir=data_dir, dataset=gen.manifest["data"]["dataset"]))
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    sid_rows = catalog_to_sid_rows(data, gen.ids)
    N = gen.ids.num_items
    train_hists = [
        to_sid_rows(
            split.sequences.items(u)[:-2] if split.evaluable[u] else split.sequences.items(u), sid_rows
        )
        for u in range(len(split.sequences))
    ]
    # 1. neighbours against co-engagement
    truth = co_engagement_top(train_hists, N, 50)
    popular = Counter(np.concatenate(train_hists).tolist())
    queries = [t for t, c in popular.items() if c >= min_members and t in truth]
    model_titles = emb.titles()
    index = CandidateIndex(gen.path / "semantic_ids")
    content = index.title_vecs
    rng = np.random.default_rng(0)
    nn = {
        "model_title_embedding": neighbour_hits(model_titles, queries, truth),
        "content_embedding": neighbour_hits(content, queries, truth),
        "random": neighbour_hits(rng.normal(size=(N, 16)).astype(np.float32), queries, truth),
    }
    # 2. next-category probe on the test examples
    ex = split.examples("test")
    cats = dict(zip(data.catalog["item_id"], data.catalog["categories"]))
    # each title's collection theme: its rarest category with >= 20 titles, on at most half of them
    themes = theme_of([cats.get(i, []) for i in gen.ids.item_ids], 20)
    target_rows = [int(sid_rows[ex.targets[i]]) for i in range(len(ex.users))]
    keep = [i for i in range(len(ex.users)) if themes[target_rows[i]]][:max_members]
    hists = [to_sid_rows(ex.histories[i], sid_rows) for i in keep]
    labels = [themes[target_rows[i]] for i in keep]
    member = emb.members([[gen.ids.item_ids[r] for r in h] for h in hists])
    content_mean = np.stack([content[h].mean(axis=0) for h in hists])
    common = Counter(labels)
    labels_kept = [lab if common[lab] >= 10 else "(other)" for lab in labels]
    y = np.asarray(labels_kept)
    probe = {}
    for name, x in (("model_member_embedding", member), ("content_mean_of_history", content_mean)):
        clf = LogisticRegression(max_iter=2000, C=1.0)
        probe[name] = float(cross_val_score(clf, x, y, cv=5, scoring="accuracy").mean())
    probe["majority_class"] = float(Counter(labels_kept).most_common(1)[0][1] / len(labels_kept))
    report = {
        "benchmark": "embeddings",
        "dataset": data.name,
        "model": model,
        "dim": emb.dim,
        "pooling": pooling,
        "neighbours": {
            "titles_judged": len(queries),
            "k": 10,
            "truth": "50 most co-engaged",
            "share_co_engaged": nn,
        },
        "next_category_probe": {
            "members": len(keep),
            "classes": int(len(set(labels_kept))),
            "accuracy_5fold": probe,
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "command": command,
        "data_fingerprint": data.fingerprint,
        "machine": machine_info(),
    }
    write_json(out, report)
    print(
        f"neighbours in the 50 most co-engaged (k=10, {len(queries)} titles): "
        + ", ".join(f"{k} {v:.3f}" for k, v in nn.items())
    )
    print(
        f"next-category probe ({len(keep)} members, {report['next_category_probe']['classes']} classes): "
        + ", ".join(f"{k} {v:.3f}" for k, v in probe.items())
    )
    return report
