"""Soft prompts as ordinary tokens: one servable model folder, no PEFT needed to run it.

A PEFT prompt-tuning adapter prepends its n soft-prompt vectors before the input embeddings (before
``<bos>`` too). Appending n rows ``<v_{canvas}_{i}>`` to the embedding matrix and starting the prompt
with their ids is the same computation, so vLLM or plain transformers serve every canvas from one
folder, choosing the canvas by the prompt's first tokens (notes/vllm.md, "Soft prompts").

Embeddings are tied, so the new rows are output logits too; the ID trie never allows them, so
constrained decoding cannot produce them. Existing token ids never move (``TokenLayout.with_extra``).

The folder is a ``gen_fm`` model folder (``gen_fm.model.load_model`` reads it) plus
``adapters.json`` (canvas -> virtual token ids); its manifest also names the base model and the
adapters it was built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from gen_fm.model import GenFM, load_model, save_model
from prompt_tuning.adapter import check_base, read_adapter
from sidrec.artifacts import (ArtifactError, atomic_dir, file_sha256, manifest_hash, read_json,
                              write_json)

ADAPTERS_FILE = "adapters.json"


def virtual_token(canvas: str, i: int) -> str:
    return f"<v_{canvas}_{i}>"


def export_adapters(model_dir: str | Path, adapter_dirs: Sequence[str | Path],
                    out_dir: str | Path) -> Path:
    """Write ``out_dir``: the base model with every adapter's soft prompt as virtual-token rows."""
    gen = load_model(model_dir)
    infos = [read_adapter(d) for d in adapter_dirs]
    canvases = [i.config.canvas for i in infos]
    if not infos or len(set(canvases)) != len(canvases):
        raise ValueError(f"need at least one adapter and one per canvas, got canvases {canvases}")
    for info in infos:
        check_base(info, gen)
    tokens = [virtual_token(i.config.canvas, j)
              for i in infos for j in range(i.config.num_virtual_tokens)]
    if any(t in gen.layout.extra_tokens for t in tokens):
        raise ArtifactError(f"{model_dir} already holds virtual tokens; export from the base model")
    layout = gen.layout.with_extra(tokens)
    model = gen.model
    model.resize_token_embeddings(layout.vocab_size, mean_resizing=False)
    weight = model.get_input_embeddings().weight  # (V + sum n, H)
    if model.get_output_embeddings().weight is not weight:
        raise RuntimeError("embeddings are no longer tied after resizing")
    mapping: dict[str, dict] = {}
    with torch.no_grad():
        for info in infos:
            c, n = info.config.canvas, info.config.num_virtual_tokens
            ids = [layout.extra_id(virtual_token(c, j)) for j in range(n)]
            weight[ids] = info.prompt.to(weight.dtype)
            mapping[c] = {"virtual_token_ids": ids, "adapter": manifest_hash(info.path)}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as stage:
        save_model(stage, model, layout, gen.ids, gen.config, gen.seq_config,
                   data_fingerprint=gen.manifest["data"]["fingerprint"],
                   dataset=gen.manifest["data"]["dataset"], training=gen.manifest["training"])
        write_json(stage / ADAPTERS_FILE, mapping)
        manifest = read_json(stage / "manifest.json")
        manifest["parents"]["base_model"] = manifest_hash(gen.path)
        manifest["parents"].update({f"adapter_{c}": m["adapter"] for c, m in mapping.items()})
        manifest["files"][ADAPTERS_FILE] = file_sha256(stage / ADAPTERS_FILE)
        write_json(stage / "manifest.json", manifest)
    return out_dir


def virtual_token_ids(gen: GenFM) -> dict[str, list[int]]:
    """Canvas -> virtual token ids of an exported folder (load it with ``load_model`` first)."""
    path = gen.path / ADAPTERS_FILE
    if not path.is_file():
        raise ArtifactError(f"{gen.path} holds no soft prompts ({ADAPTERS_FILE} is missing)")
    mapping = read_json(path)
    out = {c: [int(t) for t in m["virtual_token_ids"]] for c, m in mapping.items()}
    for c, ids in out.items():
        if [gen.layout.extra_id(virtual_token(c, j)) for j in range(len(ids))] != ids:
            raise ArtifactError(f"{path}: ids of canvas {c!r} disagree with the layout")
    return out


def with_soft_prompt(virtual: dict[str, list[int]], canvas: str, prompt: Sequence[int]) -> list[int]:
    """The exported model's prompt: the canvas's virtual tokens, then the usual prompt (from <bos>)."""
    if canvas not in virtual:
        raise KeyError(f"no soft prompt for canvas {canvas!r}; have {sorted(virtual)}")
    return virtual[canvas] + list(prompt)
