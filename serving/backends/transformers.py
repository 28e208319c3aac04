"""The transformers backend: ``gen_fm.decode`` (HF beam search + the trie's logits processor), the
reference the other backends are checked against; it needs no vLLM."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gen_fm.decode import Recommendations, recommend, recommend_titles
from gen_fm.model import GenFM
from semantic_ids.trie import PrefixTrie, Restriction
from serving.config import ServingConfig

if TYPE_CHECKING:
    from serving.backends import Loras, Prompts, TitleTokens, Views


class TransformersBackend:
    """``gen_fm.decode.recommend`` and ``recommend_titles`` on the folder's own model (a ``Backend``)."""

    def __init__(
        self, folder: GenFM, trie: PrefixTrie, config: ServingConfig, loras: Loras, title_tokens: TitleTokens
    ) -> None:
        model = folder.model
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.engine.dtype, torch.float32)
        # canvas -> the model with that canvas's LoRA merged in: the same low-rank update vLLM applies
        # per request, with no PEFT in the decoding loop (these models are small enough to copy)
        merged = {c: merge_lora(model.eval(), path) for c, (path, _) in loras.items()}
        self.model = model.to(device=config.engine.device, dtype=dtype)
        self.merged = {c: m.to(device=config.engine.device, dtype=dtype) for c, m in merged.items()}
        self.trie = trie
        self.title_tokens = title_tokens
        self.batch_size = config.engine.max_batch

    def search(
        self, prompts: Prompts, k: int, num_beams: int, views: Views, lora: str | None = None
    ) -> list[Recommendations]:
        exclude = None
        if views is not None and any(v is not None for v in views):
            # decode.recommend takes exclusion lists; an allow-view is its complement
            exclude = [excluded_rows(v, self.trie.num_items) for v in views]
        model = self.model if lora is None else self.merged[lora]
        return recommend(
            model,
            [list(p) for p in prompts],
            self.trie,
            k=k,
            num_beams=num_beams,
            exclude=exclude,
            batch_size=self.batch_size,
        )

    def titles(
        self, prompts: Prompts, n: int, views: Views, lora: str | None = None
    ) -> list[Recommendations]:
        if self.title_tokens is None:
            raise ValueError("the title head needs a model trained with history_tokens 'titles'")
        model = self.model if lora is None else self.merged[lora]
        return recommend_titles(
            model, [list(p) for p in prompts], self.trie, self.title_tokens, n, views, self.batch_size
        )

    def failure(self) -> str | None:
        return None if self.model is not None else "the engine was closed"

    def close(self) -> None:
        self.model = None
        self.merged = {}


def merge_lora(model: Any, path: str | Path) -> Any:
    """A copy of ``model`` with the PEFT LoRA at ``path`` merged into its weights."""
    from peft import PeftModel  # only a folder with LoRA adapters needs peft here

    return PeftModel.from_pretrained(copy.deepcopy(model), str(path)).merge_and_unload().eval()


def excluded_rows(view: Restriction | None, num_items: int) -> list[int]:
    """Item rows a view forbids (the complement of an allow-list)."""
    if view is None:
        return []
    if view.mode == "exclude":
        return view.rows.tolist()
    return np.setdiff1d(np.arange(num_items), view.rows, assume_unique=True).tolist()
