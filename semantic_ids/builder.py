"""Build an ID artifact from a dataset, and give titles that arrive later their IDs without retraining."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from semantic_ids.config import SemanticIDConfig
from semantic_ids.embeddings import Embedder
from semantic_ids.ids import KIND, SemanticIDs
from semantic_ids.quantizers import Encoded, ResidualQuantizer, quantizer_class
from core.artifacts import atomic_dir, make_manifest, read_json, require_files, write_json
from core.data import RecData
from core.sequences import SequenceConfig, build_sequences, leave_one_out


def assign_dedup(
    enc: Encoded, dedup_size: int, taken: dict[tuple, int] | None = None
) -> tuple[np.ndarray, int]:
    """Append the disambiguation code, spilling titles of a full group into the next-nearest last code.

    Titles closest to their codeword claim slots first (stable order), so a group keeps its most
    typical members and outliers move to a neighbouring code. `taken` holds group sizes already used
    (existing titles when assigning new ones) and is updated in place. Returns (N, L+1) codes and the
    number of titles that spilled.
    """
    taken = {} if taken is None else taken
    n, levels = enc.codes.shape
    out = np.zeros((n, levels + 1), dtype=np.int64)
    spilled = 0
    for i in np.argsort(enc.last_distance, kind="stable"):
        head = tuple(int(c) for c in enc.codes[i, :-1])
        options = (head + (int(last),) for last in enc.last_candidates[i])
        key = _first_free(options, taken, dedup_size)
        if key is None:  # the whole prefix is full: nearest free path anywhere
            for width in (256, 4096):
                key = _first_free(enc.ranked_paths(i, width), taken, dedup_size)
                if key is not None:
                    break
        if key is None:
            raise RuntimeError(
                f"no free semantic ID near title {i}: more titles than "
                f"codebook_size**num_levels * dedup_size can hold nearby; raise "
                f"dedup_size or codebook_size"
            )
        spilled += key != tuple(int(c) for c in enc.codes[i])
        out[i, :levels] = key
        out[i, levels] = taken.get(key, 0)
        taken[key] = out[i, levels] + 1
    return out, spilled


def _first_free(options, taken: dict, dedup_size: int) -> tuple | None:
    for key in options:
        if taken.get(key, 0) < dedup_size:
            return key
    return None


def code_stats(codes: np.ndarray, config: SemanticIDConfig) -> dict:
    """Collisions of the semantic codes and per-level use of each codebook."""
    sem = codes[:, :-1]
    _, inverse, counts = np.unique(sem, axis=0, return_inverse=True, return_counts=True)
    group = counts[inverse.ravel()]
    levels = []
    for lv in range(sem.shape[1]):
        c = np.bincount(sem[:, lv], minlength=config.codes.codebook_size)
        p = c[c > 0] / c.sum()
        levels.append(
            {
                "level": lv,
                "codebook_utilization": float((c > 0).mean()),
                "perplexity": float(np.exp(-(p * np.log(p)).sum())),
                "largest_code_share": float(c.max() / c.sum()),
            }
        )
    return {
        "num_items": int(len(codes)),
        "sid_length": int(codes.shape[1]),
        "unique_ids": bool(len(np.unique(codes, axis=0)) == len(codes)),
        "collision_rate": float((group > 1).mean()),
        "max_collision_group": int(counts.max()),
        "dedup_codes_used": int(codes[:, -1].max()) + 1,
        "codebook_utilization": [lv["codebook_utilization"] for lv in levels],
        "perplexity": [lv["perplexity"] for lv in levels],
        "levels": levels,
    }


def build_ids(
    data: RecData, config: SemanticIDConfig, out: str | Path, seq_config: SequenceConfig | None = None
) -> SemanticIDs:
    """Embed every catalog title, train the quantizer, assign unique IDs, write the artifact."""
    torch.manual_seed(config.codes.seed)
    seq_config = seq_config or SequenceConfig()
    t0 = time.perf_counter()
    pairs = None
    if config.modalities.collaborative_weight > 0:
        split = leave_one_out(build_sequences(data, seq_config), seq_config)
        pairs = split.train_pairs()  # training events only: no valid/test leakage
    embedder = Embedder.fit(config, data.catalog, pairs)
    x, emb_report = embedder.transform(data.catalog)
    t_embed = time.perf_counter() - t0

    t1 = time.perf_counter()
    quantizer = quantizer_class(config.codes.quantizer)(config.codes, x.shape[1]).fit(x)
    enc = quantizer.encode(x)
    codes, spilled = assign_dedup(enc, config.codes.dedup_size)
    t_quant = time.perf_counter() - t1

    stats = code_stats(codes, config)
    stats.update(
        reconstruction_mse=quantizer.reconstruction_mse(x, codes[:, :-1]),
        spilled_to_neighbour_code=spilled,
        embedding_dims=emb_report.dims,
        cold_collaborative=emb_report.cold_collaborative,
        missing_user_vectors=emb_report.missing_user_vectors,
        seconds={"embedding": round(t_embed, 2), "quantizer": round(t_quant, 2)},
        final_train_loss=quantizer.history[-1] if quantizer.history else None,
    )
    ids = SemanticIDs(
        list(data.catalog["item_id"]), codes, config.codes.codebook_sizes, titles=list(data.catalog["title"])
    )
    _write(out, ids, config, quantizer, embedder, x, stats, data, map_version=1, parent=None)
    return SemanticIDs.load(out)


def _write(
    out,
    ids: SemanticIDs,
    config,
    quantizer: ResidualQuantizer,
    embedder: Embedder,
    x: np.ndarray,
    stats: dict,
    data: RecData,
    map_version: int,
    parent: dict | None,
) -> None:
    emb_meta, emb_tensors = embedder.state()
    manifest = make_manifest(
        KIND,
        config,
        parents={"data": data.fingerprint},
        dataset=data.name,
        data_report=data.report.to_json(),
        map_version=map_version,
        codebook_sizes=list(config.codes.codebook_sizes),
        input_dim=int(x.shape[1]),
        quantizer_kind=config.codes.quantizer,
        quantizer=quantizer.describe(),
        history=parent,
    )
    with atomic_dir(out) as stage:
        save_file(quantizer.state_dict(), str(stage / "quantizer.safetensors"))
        save_file({"fused": torch.as_tensor(x).contiguous()}, str(stage / "embeddings.safetensors"))
        if emb_tensors:
            save_file(
                {k: torch.as_tensor(v) for k, v in emb_tensors.items()}, str(stage / "embedder.safetensors")
            )
        write_json(stage / "embedder.json", emb_meta)
        write_json(stage / "stats.json", stats)
        ids.write_map(stage)
        write_json(stage / "manifest.json", manifest)


def load_quantizer(path: str | Path) -> tuple[SemanticIDs, ResidualQuantizer, Embedder, SemanticIDConfig]:
    ids = SemanticIDs.load(path)
    path = Path(path)
    require_files(path, ["quantizer.safetensors", "embedder.json", "embeddings.safetensors"])
    config = SemanticIDConfig.from_dict(ids.manifest["config"])
    state = load_file(str(path / "quantizer.safetensors"))
    quantizer = quantizer_class(config.codes.quantizer).from_state(
        config.codes, ids.manifest["input_dim"], state
    )
    tensors = {}
    if (path / "embedder.safetensors").is_file():
        tensors = {k: v.numpy() for k, v in load_file(str(path / "embedder.safetensors")).items()}
    embedder = Embedder.from_state(config, read_json(path / "embedder.json"), tensors)
    return ids, quantizer, embedder, config


def assign_new(
    ids_dir: str | Path, data: RecData, out: str | Path | None = None
) -> tuple[SemanticIDs, list[str]]:
    """Give every catalog title without an ID a unique one from its content; existing IDs never move.

    The quantizer and embedder are the trained ones (no retraining). The map is written as a new
    version, to `out` or in place (atomically either way). Returns the artifact and the new ids.
    """
    ids, quantizer, embedder, config = load_quantizer(ids_dir)
    new_rows = [i for i, iid in enumerate(data.catalog["item_id"]) if iid not in ids]
    if not new_rows:
        return ids, []
    new_cat = data.catalog.select(new_rows)
    x_new, _ = embedder.transform(new_cat)
    if x_new.shape[1] != ids.manifest["input_dim"]:
        raise ValueError(
            f"new titles embed to {x_new.shape[1]} dims, the quantizer expects {ids.manifest['input_dim']}"
        )
    taken: dict[tuple, int] = {}
    for c in ids.codes:
        key = tuple(int(v) for v in c[:-1])
        taken[key] = max(taken.get(key, 0), int(c[-1]) + 1)
    new_codes, spilled = assign_dedup(quantizer.encode(x_new), config.codes.dedup_size, taken)
    all_codes = np.concatenate([ids.codes, new_codes])
    merged = SemanticIDs(
        ids.item_ids + list(new_cat["item_id"]),
        all_codes,
        config.codes.codebook_sizes,
        titles=(ids.titles or [""] * ids.num_items) + list(new_cat["title"]),
    )
    stats = code_stats(all_codes, config)
    old_stats = ids.stats()
    stats.update(
        reconstruction_mse=old_stats.get("reconstruction_mse"),
        new_titles=len(new_rows),
        new_titles_spilled=spilled,
        built_from_stats=old_stats,
    )
    x_old = load_file(str(Path(ids_dir) / "embeddings.safetensors"))["fused"].numpy()
    history = {
        "previous_version": ids.version,
        "previous_manifest": ids.manifest.get("created"),
        "new_titles": len(new_rows),
    }
    target = Path(out) if out is not None else Path(ids_dir)
    _write(
        target,
        merged,
        config,
        quantizer,
        embedder,
        np.concatenate([x_old, x_new]),
        stats,
        data,
        map_version=ids.version + 1,
        parent=history,
    )
    return SemanticIDs.load(target), list(new_cat["item_id"])
