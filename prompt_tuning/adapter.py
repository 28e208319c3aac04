"""An adapter per canvas on a frozen foundation model, saved in PEFT's format: a soft prompt (PEFT
prompt tuning) or a LoRA (PEFT LoRA on every attention and MLP projection), as the canvas's config
says (``PromptTuningStageConfig.adapter_method``).

The adapter folder is PEFT's own (``adapter_config.json`` + ``adapter_model.safetensors``, loadable
by ``PeftModel.from_pretrained``) plus ``manifest.json``: kind ``prompt_adapter``, the
``PromptTuningStageConfig``, the canvas, the manifest hash of the model folder it was trained on
(the loader refuses any other base), the trainable parameter count and the payload hashes.

PEFT prepends the virtual tokens before everything, ``<bos>`` included, so a soft prompt is the same
computation as the prompt ``[v_0 .. v_{n-1}] + PromptEncoder.encode(...)`` (see ``export.py``). A LoRA
is served as it is saved: vLLM loads PEFT LoRA folders per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from safetensors.torch import load_file
from tqdm.auto import tqdm

from core.artifacts import (
    ArtifactError,
    atomic_dir,
    file_sha256,
    make_manifest,
    manifest_hash,
    read_manifest,
    require_files,
    write_json,
)
from gen_fm.model import GenFM
from gen_fm.tokenizer import canvas_token
from prompt_tuning.canvases import get_canvas
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.layout import PAD
from semantic_ids.trie import PrefixTrie, Restriction

KIND = "prompt_adapter"
BASE_PARENT = "gen_fm"
_PAYLOAD = ["adapter_config.json", "adapter_model.safetensors"]
_PROMPT_KEY = "prompt_embeddings"  # PEFT's key for the soft prompt in adapter_model.safetensors

Example = tuple[list[int], list[int]]  # (prompt token ids, the target title's L code token ids)
# The Llama projections a LoRA adapts: every one vLLM's LoRA support covers for Llama.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_trainable(config: PromptTuningStageConfig) -> None:
    """A clear error for a canvas served without an adapter (its spec's ``adapter="none"``)."""
    if config.adapter_method == "none":
        raise ValueError(
            f"the {config.canvas} canvas is served by the frozen model (its spec's "
            f"adapter='none': no adapter measured for it beat that beyond noise); to train one "
            f"anyway, set method=soft_prompt or method=lora"
        )


def wrap(gen: GenFM, config: PromptTuningStageConfig) -> PeftModel:
    """A fresh adapter (the config's method) on ``gen.model``; every base weight is frozen (in place)."""
    check_trainable(config)
    if config.adapter_method == "lora":
        return _wrap_lora(gen, config)
    n = config.adapter.num_virtual_tokens
    if n > gen.config.model.position_headroom:
        raise ValueError(
            f"{n} virtual tokens do not fit the model's position headroom ({gen.config.model.position_headroom})"
        )
    for p in gen.model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(config.seed)
    peft_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.RANDOM
    )
    model = get_peft_model(gen.model, peft_config)
    words = gen.model.get_input_embeddings().weight  # (V, H)
    prompt = model.prompt_encoder["default"].embedding.weight  # (n, H)
    with torch.no_grad():
        if config.adapter.init == "canvas_token":
            token = canvas_token(get_canvas(config.canvas).token)  # the token its prompts carry
            prompt.copy_(words[gen.layout.extra_id(token)].expand_as(prompt))
        else:  # PEFT's N(0, 1) is far larger than the scale of a trained embedding row
            prompt.normal_(0.0, float(words.std()))
    hidden = gen.model.config.hidden_size
    trainable = trainable_parameters(model)
    if trainable != n * hidden:
        raise RuntimeError(
            f"{trainable} trainable parameters, expected {n} x {hidden}: a base weight is not frozen"
        )
    return model


def _wrap_lora(gen: GenFM, config: PromptTuningStageConfig) -> PeftModel:
    for p in gen.model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(config.seed)  # LoRA's A matrices start random (B at zero: the base at first)
    peft_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.adapter.lora_rank,
        lora_alpha=2 * config.adapter.lora_rank,
        lora_dropout=0.05,
        target_modules=list(LORA_TARGETS),
    )
    model = get_peft_model(gen.model, peft_config)
    if any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n):
        raise RuntimeError("a base weight is trainable under the LoRA")
    return model


def is_lora(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel) and isinstance(model.peft_config["default"], LoraConfig)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _batch(examples: Sequence[Example], sid_length: int) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + target ids, attention mask, and labels on the target tokens only."""
    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), width), PAD, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)  # (B, T)
    for i, (prompt, target) in enumerate(examples):
        if len(target) != sid_length or not prompt:
            raise ValueError(
                f"an example needs a non-empty prompt and {sid_length} target tokens, "
                f"got {len(prompt)} and {len(target)}"
            )
        seq = list(prompt) + list(target)
        ids[i, : len(seq)] = torch.as_tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(prompt) : len(seq)] = torch.as_tensor(list(target))
    return ids, mask, labels


def _nll(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    inside: "CandidateMasks | None" = None,
    views: Sequence["Restriction | None"] = (),
) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over the labelled positions, and their count. With `inside` and a
    view per example (None: unrestricted), each target code's softmax runs over the codes that
    lead to one of that example's permitted titles only."""
    T = ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -T:]  # (B, T, V): drop virtual rows
    target = labels[:, 1:]  # (B, T-1)
    scores = logits[:, :-1].float()  # (B, T-1, V)
    if inside is not None and any(v is not None for v in views):
        scores = scores.masked_fill(~inside.mask(target, views, scores.shape[-1]), float("-inf"))
    loss = F.cross_entropy(
        scores.reshape(-1, scores.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, int((target != -100).sum())


class CandidateMasks:
    """Which code tokens each target position may take inside an example's candidate set.

    The masks come from the prefix trie's restricted views (``PrefixTrie.restrict``), the same
    views the constrained decoder serves with, so training and serving agree on what is eligible.
    """

    def __init__(self, trie: "PrefixTrie") -> None:
        self.trie = trie
        self._views: dict[int, tuple[list[int], "Restriction"]] = {}

    def view(self, rows: Sequence[int] | None, target: int) -> "Restriction | None":
        """The trie narrowed to `rows` plus the target (None: no candidate set)."""
        if rows is None:
            return None
        key = id(rows)  # canvases share one list per distinct context (a theme's titles)
        if key not in self._views:
            self._views[key] = (rows, self.trie.restrict(allow_rows=rows))  # keeps `rows` alive
        view = self._views[key][1]
        if not view.permits(np.array([target]))[0]:  # a target outside its context's matches
            view = self.trie.restrict(allow_rows=np.union1d(view.rows, [target]))
        return view

    def mask(self, target: torch.Tensor, views: Sequence["Restriction | None"], vocab: int) -> torch.Tensor:
        """(B, T-1) shifted labels -> (B, T-1, vocab) bool: True where a token may score."""
        L = self.trie.sid_length
        allowed = torch.ones(*target.shape, vocab, dtype=torch.bool)  # (B, T-1, V)
        rows = [i for i, v in enumerate(views) if v is not None]
        first = torch.stack([torch.nonzero(target[i] != -100)[0, 0] for i in rows])  # (R,)
        codes = torch.stack([target[i, first[j] : first[j] + L] for j, i in enumerate(rows)])  # (R, L)
        restriction = self.trie.row_restrictions([views[i] for i in rows])
        idx = torch.as_tensor(rows)
        for d in range(L):
            allowed[idx, first + d] = self.trie.allowed_mask(codes[:, :d], vocab, restriction)
        return allowed


@torch.no_grad()
def adapter_loss(
    model: torch.nn.Module, examples: Sequence[Example], sid_length: int, batch_size: int = 64
) -> float:
    """Mean NLL per target code token (the training objective), with or without a soft prompt."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for s in range(0, len(examples), batch_size):
            loss, n = _nll(model, *_batch(examples[s : s + batch_size], sid_length))
            total, count = total + float(loss), count + n
    finally:
        model.train(was_training)
    return total / max(count, 1)


def train_adapter(
    gen: GenFM,
    examples: Sequence[Example],
    config: PromptTuningStageConfig,
    allow: Sequence[Sequence[int] | None] | None = None,
) -> PeftModel:
    """Train one canvas's soft prompt; the loss is on the target's L code tokens only.

    The base stays in eval mode (no attention dropout): it is frozen, and the soft prompt should
    learn against the same network that will serve it. `allow` (one entry per example, None = the
    whole catalog): the candidate rows each example's softmax is restricted to
    (``config.training.train_in_candidates``; see ``CandidateMasks``).
    """
    if not examples:
        raise ValueError("no training examples")
    L = gen.layout.sid_length
    longest = max(len(p) for p, _ in examples) + L + config.adapter.num_virtual_tokens
    if longest > gen.model.config.max_position_embeddings:
        raise ValueError(
            f"an example needs {longest} positions; the model has {gen.model.config.max_position_embeddings}"
        )
    model = wrap(gen, config)
    if is_lora(model):  # the LoRA's own dropout (and the base's) regularise it, as in fine-tuning
        model.train()
        _fit(
            model,
            examples,
            config,
            config.training.lora_lr,
            L,
            f"LoRA {config.canvas}",
            _restrictions(gen, examples, allow),
        )
        return model.eval()
    model.eval()
    _fit(
        model,
        examples,
        config,
        config.training.lr,
        L,
        f"soft prompt {config.canvas}",
        _restrictions(gen, examples, allow),
    )
    return model


def _restrictions(gen: GenFM, examples: Sequence[Example], allow) -> tuple | None:
    """(CandidateMasks, one trie view per example) when `allow` restricts any example."""
    if allow is None or all(a is None for a in allow):
        return None
    if len(allow) != len(examples):
        raise ValueError(f"allow has {len(allow)} entries for {len(examples)} examples")
    trie = PrefixTrie(gen.ids.codes, gen.layout)
    inside = CandidateMasks(trie)
    views = [inside.view(a, trie.item_of(target)) for a, (_, target) in zip(allow, examples)]
    return inside, views


def train_full(gen: GenFM, examples: Sequence[Example], config: PromptTuningStageConfig) -> torch.nn.Module:
    """The baseline an adapter is judged against: every weight of ``gen.model`` trained (in place)
    on the same examples, loss and schedule, at ``config.training.full_finetune_lr``."""
    if not examples:
        raise ValueError("no training examples")
    model = gen.model
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    torch.manual_seed(config.seed)
    _fit(
        model,
        examples,
        config,
        config.training.full_finetune_lr,
        gen.layout.sid_length,
        f"full fine-tune {config.canvas}",
    )
    return model.eval()


def _fit(
    model: torch.nn.Module,
    examples: Sequence[Example],
    config: PromptTuningStageConfig,
    lr: float,
    sid_length: int,
    desc: str,
    restrictions: tuple | None = None,
) -> None:
    """AdamW over the model's trainable parameters, seeded shuffles, `config.training.epochs` passes;
    `restrictions` = (CandidateMasks, a view per example): softmaxes inside candidate sets."""
    inside, views = restrictions if restrictions is not None else (None, None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen_rng = torch.Generator().manual_seed(config.seed)
    bar = tqdm(
        total=config.training.epochs * math.ceil(len(examples) / config.training.batch_size),
        leave=False,
        desc=desc,
    )
    for _ in range(config.training.epochs):
        order = torch.randperm(len(examples), generator=gen_rng).tolist()
        for s in range(0, len(order), config.training.batch_size):
            chunk = order[s : s + config.training.batch_size]
            loss, n = _nll(
                model,
                *_batch([examples[i] for i in chunk], sid_length),
                inside=inside,
                views=[views[i] for i in chunk] if views is not None else (),
            )
            opt.zero_grad(set_to_none=True)
            (loss / n).backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()) / max(n, 1):.4f}")
    bar.close()


def save_adapter(
    out_dir: str | Path,
    model: PeftModel,
    gen: GenFM,
    config: PromptTuningStageConfig,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write PEFT's adapter files + manifest.json atomically."""
    trainable = trainable_parameters(model)
    method = config.adapter_method
    if is_lora(model) != (method == "lora"):
        raise ValueError(f"the config says {method}, the model holds another kind of adapter")
    if (
        method == "soft_prompt"
        and model.peft_config["default"].num_virtual_tokens != config.adapter.num_virtual_tokens
    ):
        raise ValueError("the model's soft prompt is not the size the config says")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        manifest = make_manifest(
            KIND,
            config,
            parents={BASE_PARENT: manifest_hash(gen.path)},
            canvas=config.canvas,
            method=method,
            num_virtual_tokens=config.adapter.num_virtual_tokens if method == "soft_prompt" else 0,
            hidden_size=gen.model.config.hidden_size,
            trainable_parameters=trainable,
            training=training or {},
            files={name: file_sha256(stage / name) for name in _PAYLOAD},
        )
        write_json(stage / "manifest.json", manifest)
    return out_dir


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter folder read without a model: what export needs."""

    config: PromptTuningStageConfig
    base_hash: str  # manifest hash of the model folder it was trained on
    prompt: torch.Tensor | None  # (num_virtual_tokens, hidden) soft prompt; None for a LoRA
    manifest: dict[str, Any]
    path: Path

    @property
    def method(self) -> str:
        return self.manifest.get("method", "soft_prompt")


def read_adapter(path: str | Path) -> AdapterInfo:
    path = Path(path)
    manifest = read_manifest(path, KIND)
    require_files(path, _PAYLOAD)
    for key in ("parents", "files", "canvas"):
        if key not in manifest:
            raise ArtifactError(f"{path}/manifest.json has no '{key}'")
    for name, digest in manifest["files"].items():
        if file_sha256(path / name) != digest:
            raise ArtifactError(f"{path}/{name} does not match the hash in manifest.json")
    config = PromptTuningStageConfig.from_json(manifest["config"])
    if manifest.get("method", "soft_prompt") == "lora":
        return AdapterInfo(
            config=config,
            base_hash=manifest["parents"][BASE_PARENT],
            prompt=None,
            manifest=manifest,
            path=path,
        )
    prompt = load_file(path / "adapter_model.safetensors")[_PROMPT_KEY]  # (n, H)
    if prompt.shape[0] != config.adapter.num_virtual_tokens:
        raise ArtifactError(
            f"{path}: soft prompt has {prompt.shape[0]} rows, config says {config.adapter.num_virtual_tokens}"
        )
    return AdapterInfo(
        config=config, base_hash=manifest["parents"][BASE_PARENT], prompt=prompt, manifest=manifest, path=path
    )


def check_base(info: AdapterInfo, gen: GenFM) -> None:
    base = manifest_hash(gen.path)
    if info.base_hash != base:
        raise ArtifactError(
            f"adapter {info.path} was trained on model {info.base_hash[:12]}, not on {gen.path} ({base[:12]})"
        )
    if info.prompt is not None and info.prompt.shape[1] != gen.model.config.hidden_size:
        raise ArtifactError(
            f"adapter {info.path} has width {info.prompt.shape[1]}, the model {gen.model.config.hidden_size}"
        )


def load_adapter(gen: GenFM, path: str | Path) -> PeftModel:
    """The adapter on ``gen.model`` (inference mode); refuses an adapter of another base model."""
    check_base(read_adapter(path), gen)
    for p in gen.model.parameters():
        p.requires_grad_(False)
    return PeftModel.from_pretrained(gen.model, str(path)).eval()
