"""Adapters in one servable model folder: soft prompts as ordinary tokens, LoRAs beside them.

A PEFT prompt-tuning adapter prepends its n soft-prompt vectors before the input embeddings (before
``<bos>`` too). Appending n rows ``<v_{canvas}_{i}>`` to the embedding matrix and starting the prompt
with their ids is the same computation, so vLLM or plain transformers serve every canvas from one
folder, choosing the canvas by the prompt's first tokens (notes/vllm.md, "Soft prompts"). Embeddings
are tied, so the new rows are output logits too; the ID trie never allows them. Existing token ids
never move (``TokenLayout.with_extra``).

A canvas whose adapter is a LoRA (``PromptTuningStageConfig.adapter_method``) keeps its PEFT folder
under ``loras/<canvas>/``; vLLM applies it per request (``LoRARequest``), the transformers backend
through PEFT; its prompts carry no virtual tokens. The folder is a ``gen_fm`` model folder
(``gen_fm.model.load_model`` reads it) plus ``adapters.json`` (canvas -> method, virtual token ids or
LoRA folder, and the adapter's config); its manifest also names the base model and the adapters it
was built from."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from gen_fm.co_engagement import CoEngagement
from gen_fm.model import GenFM, load_model, save_model
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.layout import TokenLayout
from core.artifacts import ArtifactError, atomic_dir, file_sha256, manifest_hash, read_json, write_json

ADAPTERS_FILE = "adapters.json"
LORA_DIR = "loras"  # <folder>/loras/<canvas>/: a canvas's LoRA in PEFT's format


def virtual_token(canvas: str, i: int) -> str:
    return f"<v_{canvas}_{i}>"


def export_adapters(
    model_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    out_dir: str | Path,
    co_engagement: "CoEngagement | None" = None,
    title_tags: dict[str, list[str]] | None = None,
) -> Path:
    """Write ``out_dir``: the base model with every adapter's soft prompt as virtual-token rows.

    The base folder's co-engagement table and title tags travel with it; `co_engagement` and
    `title_tags` supply them for a base folder written before pretraining saved them
    (``prompt_tuning.train.co_engagement_for``, ``RecData.title_tags``)."""
    from prompt_tuning.adapter import check_base, read_adapter  # imports peft: export time only

    gen = load_model(model_dir)
    infos = [read_adapter(d) for d in adapter_dirs]
    canvases = [i.config.canvas for i in infos]
    if not infos or len(set(canvases)) != len(canvases):
        raise ValueError(f"need at least one adapter and one per canvas, got canvases {canvases}")
    for info in infos:
        check_base(info, gen)
    prompts = {i.config.canvas: i.prompt for i in infos if i.prompt is not None}
    loras = [i for i in infos if i.prompt is None]
    layout, model, virtual = attach_soft_prompts(gen, prompts)
    # the adapter's config travels with it: serving must build the context (query mode) as trained
    mapping = {
        i.config.canvas: {
            "adapter": manifest_hash(i.path),
            "method": i.method,
            "config": i.manifest["config"],
        }
        for i in infos
    }
    for c, ids in virtual.items():
        mapping[c]["virtual_token_ids"] = ids
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as stage:
        save_model(
            stage,
            model,
            layout,
            gen.ids,
            gen.config,
            gen.seq_config,
            data_fingerprint=gen.manifest["data"]["fingerprint"],
            dataset=gen.manifest["data"]["dataset"],
            training=gen.manifest["training"],
            data_end=gen.manifest["data"].get("time_end"),
            co_engagement=co_engagement if co_engagement is not None else gen.co_engagement(),
            title_tags=title_tags if title_tags is not None else gen.title_tags(),
            fusion=gen.fusion(),
        )
        lora_files = {}
        for info in loras:  # PEFT's LoRA folder as trained: vLLM and PEFT both load it as it is
            rel = f"{LORA_DIR}/{info.config.canvas}"
            (stage / rel).mkdir(parents=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(info.path / name, stage / rel / name)
                lora_files[f"{rel}/{name}"] = file_sha256(stage / rel / name)
            mapping[info.config.canvas].update(lora=rel, lora_rank=info.config.adapter.lora_rank)
        write_json(stage / ADAPTERS_FILE, mapping)
        manifest = read_json(stage / "manifest.json")
        manifest["files"].update(lora_files)
        manifest["parents"]["base_model"] = manifest_hash(gen.path)
        manifest["parents"].update({f"adapter_{c}": m["adapter"] for c, m in mapping.items()})
        manifest["files"][ADAPTERS_FILE] = file_sha256(stage / ADAPTERS_FILE)
        write_json(stage / "manifest.json", manifest)
    return out_dir


def attach_soft_prompts(
    gen: GenFM, prompts: dict[str, torch.Tensor]
) -> tuple["TokenLayout", torch.nn.Module, dict[str, list[int]]]:
    """Append each canvas's soft prompt ((n, H) rows) to ``gen.model``'s embeddings, in place.

    Returns the extended layout, the model and canvas -> virtual token ids. Evaluation uses this too,
    so an adapter is judged exactly as it is served.
    """
    tokens = [virtual_token(c, j) for c, p in prompts.items() for j in range(p.shape[0])]
    if any(t in gen.layout.extra_tokens for t in tokens):
        raise ArtifactError(f"{gen.path} already holds virtual tokens; export from the base model")
    layout = gen.layout.with_extra(tokens)
    model = gen.model
    model.resize_token_embeddings(layout.vocab_size, mean_resizing=False)
    weight = model.get_input_embeddings().weight  # (V + sum n, H)
    if model.get_output_embeddings().weight is not weight:
        raise RuntimeError("embeddings are no longer tied after resizing")
    virtual: dict[str, list[int]] = {}
    with torch.no_grad():
        for c, p in prompts.items():
            ids = [layout.extra_id(virtual_token(c, j)) for j in range(p.shape[0])]
            weight[ids] = p.detach().to(weight.dtype)
            virtual[c] = ids
    return layout, model, virtual


def as_served(
    model_dir: str | Path, adapter: torch.nn.Module, canvas: str
) -> tuple[torch.nn.Module, list[int]]:
    """A trained adapter as the server runs it, for judging: (model, prompt prefix). A soft prompt
    becomes virtual-token rows on a fresh copy of the base (prefix: their ids); a LoRA is merged
    into a copy of its weights (no prefix: vLLM applies the same low-rank update per request)."""
    import copy

    from prompt_tuning.adapter import is_lora  # imports peft: export time only

    if is_lora(adapter):
        return copy.deepcopy(adapter).merge_and_unload().eval(), []
    prompt = adapter.prompt_encoder["default"].embedding.weight.detach().clone()  # (n, H)
    _, served, virtual = attach_soft_prompts(load_model(model_dir), {canvas: prompt})
    return served, virtual[canvas]


def virtual_token_ids(gen: GenFM) -> dict[str, list[int]]:
    """Canvas -> virtual token ids of an exported folder (load it with ``load_model`` first)."""
    path = gen.path / ADAPTERS_FILE
    if not path.is_file():
        raise ArtifactError(f"{gen.path} holds no soft prompts ({ADAPTERS_FILE} is missing)")
    mapping = read_json(path)
    out = {
        c: [int(t) for t in m["virtual_token_ids"]] for c, m in mapping.items() if "virtual_token_ids" in m
    }
    for c, ids in out.items():
        if [gen.layout.extra_id(virtual_token(c, j)) for j in range(len(ids))] != ids:
            raise ArtifactError(f"{path}: ids of canvas {c!r} disagree with the layout")
    return out


def lora_adapters(gen: GenFM) -> dict[str, tuple[Path, int]]:
    """Canvas -> (LoRA folder, rank) of an exported folder; {} when it holds no LoRA."""
    path = gen.path / ADAPTERS_FILE
    if not path.is_file():
        return {}
    out = {}
    for c, m in read_json(path).items():
        if "lora" in m:
            folder = gen.path / m["lora"]
            if not (folder / "adapter_model.safetensors").is_file():
                raise ArtifactError(f"{path}: the {c!r} LoRA folder {folder} is missing")
            out[c] = (folder, int(m["lora_rank"]))
    return out


def adapter_configs(gen: GenFM) -> dict[str, "PromptTuningStageConfig"]:
    """Canvas -> the config its soft prompt was trained with, for an exported folder."""
    mapping = read_json(gen.path / ADAPTERS_FILE)
    return {c: PromptTuningStageConfig.from_json(m["config"]) for c, m in mapping.items() if "config" in m}


def with_soft_prompt(virtual: dict[str, list[int]], canvas: str, prompt: Sequence[int]) -> list[int]:
    """The exported model's prompt: the canvas's virtual tokens, then the usual prompt (from <bos>)."""
    if canvas not in virtual:
        raise KeyError(f"no soft prompt for canvas {canvas!r}; have {sorted(virtual)}")
    return virtual[canvas] + list(prompt)
