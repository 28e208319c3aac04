"""Train one canvas's soft prompt on a real dataset, judge it, save it: ``sidrec prompts train``.

The held-out judgement written into the adapter's manifest compares the adapter with the frozen base
on the same examples (the full fine-tuning comparison lives in ``eval.bench_canvases``, a benchmark).
Registry: ``find_adapters`` lists every adapter folder under a root (``sidrec prompts list``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactError, read_json
from core.data import DATA_DIR_ENV, RecData, detect_layout, load_data
from core.sequences import build_sequences, leave_one_out
from gen_fm.co_engagement import co_engagement_of_split
from gen_fm.dataset import catalog_to_sid_rows
from gen_fm.model import IDS_SUBDIR, load_model
from prompt_tuning.candidates import CandidateIndex
from prompt_tuning.canvases import CANVASES, canvas_data_for, get_canvas
from prompt_tuning.config import PromptTuningStageConfig
from prompt_tuning.evaluate import candidate_rows, evaluate_variant, row_attributes
from prompt_tuning.export import as_served
from semantic_ids.config import text_weight_of
from semantic_ids.trie import PrefixTrie


def canvas_setup(gen, data_config, config: PromptTuningStageConfig):
    """The dataset the model was trained on, its split and the canvas's examples (``data_config``:
    a ``DataConfig``, or data already loaded)."""
    data, split = model_split(gen, data_config)
    return data, split, canvas_data_for(gen, data, split, config)


def co_engagement_for(gen, data, split):
    """The model folder's co-engagement table, or the same table counted from its split for a
    folder written before pretraining saved one."""
    table = gen.co_engagement()
    if table is None:
        table = co_engagement_of_split(split, catalog_to_sid_rows(data, gen.ids), gen.ids.num_items)
    return table


def candidate_index_for(gen, data, split, stage_config, config=None, title_tags: bool = True):
    """The ``CandidateIndex`` a canvas is trained and judged inside, as serving builds it
    (`config`: a ``CandidateConfig``, default its defaults), except that its title tags come from
    `data` without the (tag, title) pairs any canvas holds out under `stage_config` (a
    ``PromptTuningStageConfig``: its seed and eval_fraction; ``CanvasSpec.holds_out_tag``);
    `title_tags` False: no tags at all (an ablation)."""
    rules = [spec.holds_out_tag for spec in CANVASES.values() if spec.holds_out_tag is not None]
    tags = (
        data.title_tags(lambda tag, item: any(rule(stage_config, tag, item) for rule in rules))
        if title_tags
        else None
    )
    return CandidateIndex(
        Path(gen.path) / IDS_SUBDIR,
        config=config,
        co_engagement=co_engagement_for(gen, data, split),
        tags=tags,
    )


def model_split(gen, data_config):
    """The dataset a model was trained on (checked by fingerprint) and its leave-one-out split."""
    if isinstance(data_config, RecData):
        data = data_config
    elif data_config.dataset is None:  # a folder of datasets: take the one the model was trained on
        import dataclasses
        import os

        base = Path(data_config.data_dir or os.environ.get(DATA_DIR_ENV, "."))
        if detect_layout(base) is None:
            data_config = dataclasses.replace(data_config, dataset=gen.manifest["data"]["dataset"])
    if not isinstance(data_config, RecData):
        data = load_data(data_config)
    if data.fingerprint != gen.manifest["data"]["fingerprint"]:
        raise ValueError(
            f"{gen.path} was trained on other data ({gen.manifest['data']['dataset']}) "
            f"than {data.path}: canvas examples must come from the model's own split"
        )
    return data, leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)


def train_canvas(
    model_dir: str | Path,
    data_config,
    out_dir: str | Path,
    config: PromptTuningStageConfig,
    evaluate: bool = True,
) -> Path:
    # imports peft: training only (eval and serving use this module's helpers without it)
    from prompt_tuning.adapter import check_trainable, save_adapter, train_adapter

    check_trainable(config)  # before any data is read
    gen = load_model(model_dir)
    data, split, cd = canvas_setup(gen, data_config, config)
    encoder = gen.prompt_encoder()
    pairs = cd.training_pairs(encoder)
    print(
        f"{config.canvas}: {len(pairs):,} training and {len(cd.test):,} held-out examples "
        f"({cd.info['train_kinds']})",
        flush=True,
    )
    index = None
    # served inside its candidate sets: trained there, judged there (the index only when needed).
    # IDs without the text modality have no content neighbours: serving then decodes a title
    # context over the whole catalog (with a warning), and so the adapter is trained and judged.
    if get_canvas(config.canvas).candidates is not None and (config.training.train_in_candidates or evaluate):
        if text_weight_of(gen.ids.manifest) > 0:
            index = candidate_index_for(gen, data, split, config)
        else:
            print(
                f"{config.canvas}: these IDs have no text modality, so no candidate sets: trained "
                f"and judged over the whole catalog, as served",
                flush=True,
            )
    allow = candidate_rows(cd, index, cd.train) if config.training.train_in_candidates else None
    t0 = time.perf_counter()
    model = train_adapter(gen, pairs, config, allow)
    training: dict[str, Any] = {
        "examples": cd.info,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "in_candidates": allow is not None,
        "method": config.adapter_method,
    }
    if evaluate:
        base = load_model(model_dir)
        trie = PrefixTrie(base.ids.codes, encoder.layout)
        titles, cats = row_attributes(base, data)
        common = dict(data=cd, encoder=encoder, trie=trie, titles_lower=titles, row_categories=cats)
        training["heldout"] = {"base": evaluate_variant(base.model, **common)}
        served, prefix = as_served(model_dir, model, config.canvas)
        training["heldout"]["adapter"] = evaluate_variant(served, prefix=prefix, **common)
        held_allow = candidate_rows(cd, index)
        if held_allow is not None:  # as served: the answer chosen inside the context's titles
            training["heldout"]["base_candidates"] = evaluate_variant(base.model, allow=held_allow, **common)
            training["heldout"]["adapter_candidates"] = evaluate_variant(
                served, prefix=prefix, allow=held_allow, **common
            )
        for name, m in training["heldout"].items():
            print(f"  held-out {name:18s} R@10 {m['recall@10']:.4f}  N@10 {m['ndcg@10']:.4f}", flush=True)
    out = save_adapter(out_dir, model, gen, config, training=training)
    print(f"adapter written to {out}")
    return out


def find_adapters(root: str | Path) -> list[dict[str, Any]]:
    """Every adapter folder under `root` (and `root` itself), with what its manifest says."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    rows = []
    for manifest in sorted(root.rglob("manifest.json")):
        try:
            m = read_json(manifest)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{manifest} cannot be read: {e}") from e
        if m.get("kind") != "prompt_adapter":
            continue
        held = m.get("training", {}).get("heldout", {})
        rows.append(
            {
                "path": str(manifest.parent),
                "canvas": m.get("canvas"),
                "base_model": m.get("parents", {}).get("gen_fm", "")[:12],
                "method": m.get("method", "soft_prompt"),
                "virtual_tokens": m.get("num_virtual_tokens"),
                "trainable_parameters": m.get("trainable_parameters"),
                "adapter_recall@10": held.get("adapter", {}).get("recall@10"),
                "base_recall@10": held.get("base", {}).get("recall@10"),
                "created": m.get("created"),
            }
        )
    return rows
