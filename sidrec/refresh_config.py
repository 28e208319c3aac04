"""What a catalog refresh (``sidrec.refresh``) is configured by: ``RefreshConfig`` (the fine-tune's
recipe over the parent model's, its fresh events, the prompts retrained, the judge and the
simulation's old world) and the ``--since`` forms that set its fresh events."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from core.overrides import merged, nest_keys, override, overrides_of
from gen_fm.beams import JudgeConfig
from gen_fm.config import PretrainConfig
from prompt_tuning.canvases import canvas_names
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.config import SemanticIDConfig
from sidrec.quickstart import prompts_default


def _old_world_pretrain() -> PretrainConfig:
    """The quickstart's recipe for 8 epochs, validated on 300 members (simulation only)."""
    return PretrainConfig.from_preset(
        "small",
        optim=dict(epochs=8, lr=2e-3, batch_size=64),
        validation=dict(judge=dict(eval_users=300), eval_every=1, patience=0),
    )


# The fine-tune's recipe, as overrides of the parent model's PretrainConfig (whose architecture,
# regularisation and batch size it keeps): a few epochs (the model already knows the old titles)
# at half of pretraining's peak learning rate (the old weights are a good start) with a longer
# warm-up; every epoch validated on 300 members and the best kept, no early stop. The seed draws
# the data order, the validation sample and the replayed events.
FINETUNE: dict[str, Any] = {
    "seed": 0,
    "optim": {"epochs": 3, "lr": 1e-3, "warmup_ratio": 0.1, "max_steps": None},
    "validation": {"judge": {"eval_users": 300}, "eval_every": 1, "patience": 0},
}


@dataclass(frozen=True)
class RefreshConfig:
    """How a refresh fine-tunes and judges; the simulation-only fields build the old world's model."""

    # ---- fine-tune (from the model's weights, on the full data's training sequences) ---------
    # Overrides of the parent's PretrainConfig, merged over ``FINETUNE`` (so the field holds the
    # whole recipe): ``--set finetune.optim.epochs=5``, or by a field's unique name
    # ``--set finetune.lr=0.002``; ``finetune.batch_size`` (default: the parent's). Validation
    # uses ``judge.k`` and ``judge.num_beams`` below. (``--set epochs=5`` alone names the
    # fine-tune's, the old world's and the prompts' epochs: refused, naming the three paths.)
    finetune: dict[str, Any] = overrides_of(PretrainConfig)
    # Events at or after this time (unix seconds) are fresh: the loss is on them (and on the replayed
    # share of the rest). None = just after the newest event of the data the model was built from
    # (its manifest's data.time_end), or every training event for a model folder without one or data
    # without timestamps. --simulate uses its cutoff.
    fresh_since: int | None = None
    # False: with fresh_since unset, fine-tune on every training event (ignore the manifest's time).
    since_from_model: bool = True
    replay: float = 0.2  # share of the older events kept as targets, so old titles are rehearsed

    # ---- soft prompts (retrained on the refreshed model, exported with it: out/prompts/served) ---
    # Canvases whose soft prompts are trained on the refreshed model and exported with it, so the
    # refresh ends with a servable folder; () = none (the refreshed model folder alone). A list or a
    # comma-separated string, e.g. "home,search,t2t,collection".
    canvases: tuple[str, ...] = ()
    # The prompt-tuning config of those prompts (the quickstart's; ``--set prompts.epochs=5``).
    prompts: PromptTuningStageConfig = field(default_factory=prompts_default)

    # ---- evaluation (full data, test split, split into new-title and old-title targets) -------
    # K, the beam, members per group (eval_users) and batch: ``--set judge.k=20`` (by its path: the
    # pretrain configs' validation has a judge too).
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    # ---- simulation only (--simulate): the old world and its model -------------------------------
    # Share of the titles that have interactions held out as "new": the newest by first interaction.
    new_title_share: float = 0.05
    # The old world's IDs and pretraining (the quickstart's recipe, 8 epochs, validation on 300
    # members); ``--set ids.quantizer=rqvae``, ``--set pretrain.epochs=12``.
    ids: SemanticIDConfig = field(default_factory=SemanticIDConfig)
    pretrain: PretrainConfig = field(default_factory=_old_world_pretrain)

    def __post_init__(self) -> None:
        CANVASES = canvas_names()  # the registry: built-in canvases and any registered since

        raw = self.canvases.split(",") if isinstance(self.canvases, str) else self.canvases
        object.__setattr__(self, "canvases", tuple(c.strip() for c in raw if c.strip()))
        unknown = [c for c in self.canvases if c not in CANVASES]
        if unknown or len(set(self.canvases)) != len(self.canvases):
            raise ValueError(f"canvases {list(self.canvases)}: each at most once, from {CANVASES}")
        if not 0.0 < self.new_title_share < 1.0:
            raise ValueError(f"new_title_share must be in (0, 1), got {self.new_title_share}")
        object.__setattr__(self, "judge", JudgeConfig.of(self.judge))
        self._check_finetune()
        if not 0.0 <= self.replay <= 1.0:
            raise ValueError(f"replay must be in [0, 1], got {self.replay}")

    def _check_finetune(self) -> None:
        """``finetune`` merged over the recipe, its keys placed (``lr`` -> ``optim.lr``) and each
        concern's values checked here; what spans concerns (and the architecture, which must be the
        parent's) is checked when it is applied to the parent's config (``finetune_config``)."""
        over = nest_keys(PretrainConfig, merged(FINETUNE, self.finetune), "RefreshConfig.finetune")
        judge = over.get("validation", {}).get("judge", {})
        fixed = [f"validation.judge.{k}" for k in ("k", "num_beams") if k in judge]
        if fixed:
            raise ValueError(
                f"finetune {fixed}: the fine-tune validates at the refresh's judge.k and judge.num_beams"
            )
        defaults = PretrainConfig()
        for key, value in over.items():
            concern = getattr(defaults, key)
            if dataclasses.is_dataclass(concern):
                override(concern, value)
        object.__setattr__(self, "finetune", over)


def parse_since(value: str) -> dict:
    """--since: unix seconds, an ISO date/time (UTC), or "all" (fine-tune on every event)."""
    from datetime import datetime, timezone

    if value.strip().lower() == "all":
        return {"fresh_since": None, "since_from_model": False}
    if value.strip().lstrip("-").isdigit():
        return {"fresh_since": int(value)}
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"--since {value!r}: give unix seconds, an ISO date such as 2018-09-01, or 'all'"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return {"fresh_since": int(when.timestamp())}


def resolve_since(
    config: RefreshConfig, parent_manifest: dict, has_time: bool
) -> tuple[RefreshConfig, str | None]:
    """``fresh_since`` read from the parent model's manifest when the config leaves it unset: events
    after the newest one the model was built from are fresh. Returns the config and what was done."""
    if config.fresh_since is not None or not config.since_from_model or not has_time:
        return config, None
    end = (parent_manifest.get("data") or {}).get("time_end")
    if end is None:
        return config, (
            "the model folder does not record when its data ended (built before "
            "data.time_end existed): fine-tuning on every training event"
        )
    since = int(end) + 1
    return dataclasses.replace(config, fresh_since=since), (
        f"fresh events: after {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(int(end)))} UTC, the "
        f"newest event of the data the model was built from (its manifest)"
    )
