"""The one config of the foundation-model stage, grouped by concern.

``PretrainConfig`` holds one small frozen dataclass per concern, each validating its own fields:
what the model *is* (``model``), the title-token options (``titles``), the auxiliary objectives,
the augmentation, the optimisation, the validation and the checkpoints; plus the preset name and
the seed. Checks that span concerns stay in ``PretrainConfig``. Presets (``gen_fm.recipes``) hold
only overrides, nested the same way (``PretrainConfig.from_preset("small",
optim={"lr": 5e-4})``; explicit overrides win). Every field name is unique across the concerns, so
a name alone also finds its field (``from_preset("small", lr=5e-4)``, ``--set lr=0.0005``), and the
flat config that model folders written before the grouping hold reads back as it is
(``PretrainConfig.from_dict``). The history length is not declared here: it comes from the
``SequenceConfig`` the model is trained with, and the token layout from the ID artifact (both
recorded in the model's manifest).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.artifacts import jsonable
from core.checks import at_least, in_unit_interval, one_of
from core.overrides import build_config, override, renamed_fields
from gen_fm.beams import JudgeConfig
from gen_fm.recipes import DATA_SHAPE_FIELDS, PRESETS, shape_for_data

SCHEDULES = ("cosine", "linear", "constant")
# How a history title is written in the prompt (``gen_fm.titles``): its L code tokens, or one title
# token whose embedding is its codes' embeddings summed plus a learned identity.
HISTORY_TOKENS = ("codes", "titles")
# Where the hidden dropout acts (``ModelShape.hidden_dropout_on``): every position, or the trunk only.
HIDDEN_DROPOUT_ON = ("all", "trunk")
# How a model trained from scratch starts (``ModelShape.init``): transformers' Llama init, or SASRec's.
INITS = ("llama", "sasrec")
# The choices above that only a title-token model can change from their first value (or leave unset).
DEFAULT_SHAPE_CHOICES = {"hidden_dropout_on": HIDDEN_DROPOUT_ON[0], "init": INITS[0]}
# What judges a validated epoch (``Validation.judge_by``): the model's ranking, or its title head alone.
JUDGES = ("ranking", "title_head")
# Which code rows a title-token row sums (``TitleOptions.title_code_rows``).
TITLE_CODE_ROWS = ("shared", "own")
# How the saved weights are chosen among the validated epochs (``gen_fm.selection``).
SELECTIONS = ("within-se", "best", "last")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
# Fields (by path) that may differ between a run and the run it resumes (they do not change the weights).
RESUMABLE_CHANGES = frozenset(
    {
        "optim.max_steps",
        "checkpoints.checkpoint_every_steps",
        "checkpoints.keep_checkpoints",
        "validation.judge.eval_batch_size",
    }
)


@dataclass(frozen=True)
class ModelShape:
    """What the model is: its size, positions and prompt vocabulary (a preset fills the sizes)."""

    hidden_size: int = 128  # width of the residual stream
    num_layers: int | None = None  # decoder layers; None = from the data (``gen_fm.recipes.shape_for_data``)
    num_heads: int = 4  # attention heads; hidden_size / num_heads is the head size
    num_kv_heads: int | None = None  # grouped-query heads; None = num_heads (plain multi-head)
    intermediate_size: int = 512  # SwiGLU MLP width
    # Attention dropout: the only dropout standard Llama has (keeps the model loadable by vLLM).
    dropout: float | None = None
    # Residual-branch and embedding dropout (GPT-2/T5 style), applied by training-time forward hooks
    # (``gen_fm.model.add_hidden_dropout``): the saved model stays a plain Llama. 0 = off.
    hidden_dropout: float | None = None
    # Where the hidden dropout applies: "all" positions, or "trunk" only (the prefix and the history
    # titles of a title-token model, whose states the title head scores); the code-token branches
    # that train the beam's later codes then train without it.
    hidden_dropout_on: str | None = None
    # num_layers, dropout, hidden_dropout and hidden_dropout_on left None are set from the data
    # (``gen_fm.recipes.shape_for_data``) when training starts (``PretrainConfig.for_data``) and written as values.
    rope_theta: float = 10_000.0  # RoPE base
    # Positions beyond the longest training sequence ((max_history + 1) * L + 3): room for
    # soft-prompt virtual tokens and context tokens added by later stages.
    position_headroom: int = 64
    # Hashed member tokens <user_0>..<user_{n-1}> (TIGER uses 2,000); 0 = no member token. Off by
    # default: the token lets the model memorise members' training contexts, which costs test recall.
    num_user_buckets: int = 0
    # How history titles enter the model: "codes" (L code tokens each) or "titles" (one title
    # token each: codes' embeddings summed plus a learned identity; ``gen_fm.titles``).
    history_tokens: str = "codes"
    # How training starts and reads the input rows: "llama" (normal(0, 0.02) matrices) or "sasrec"
    # (xavier-normal matrices, input rows read times sqrt(hidden_size) while training; at export
    # the factor is baked into the rows and the final norm's gain divided by it, so the folder
    # stays a plain Llama computing the same function). "sasrec" needs title tokens.
    init: str = "llama"

    def __post_init__(self) -> None:
        one_of(HISTORY_TOKENS, history_tokens=self.history_tokens)
        if self.hidden_dropout_on is not None:
            one_of(HIDDEN_DROPOUT_ON, hidden_dropout_on=self.hidden_dropout_on)
        one_of(INITS, init=self.init)
        # both act through the title tokens (the trunk's positions; the title embedding's input scale)
        for name, value in (("hidden_dropout_on", self.hidden_dropout_on), ("init", self.init)):
            if value not in (None, DEFAULT_SHAPE_CHOICES[name]) and self.history_tokens != "titles":
                raise ValueError(f"{name} {value!r} needs history_tokens 'titles' (a trunk of title tokens)")
        at_least(
            1,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
        )
        if self.num_layers is not None:
            at_least(1, num_layers=self.num_layers)
        at_least(0, num_user_buckets=self.num_user_buckets, position_headroom=self.position_headroom)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.head_dim < 32 or self.head_dim % 16:
            raise ValueError(
                f"head size {self.head_dim} (hidden_size / num_heads): vLLM needs a "
                f"multiple of 16 that is >= 32 (32, 64, 80, ...)"
            )
        kv = self.kv_heads
        if kv < 1 or self.num_heads % kv:
            raise ValueError(f"num_kv_heads {kv} must divide num_heads {self.num_heads}")
        for name in ("dropout", "hidden_dropout"):
            if getattr(self, name) is not None:
                in_unit_interval(**{name: getattr(self, name)})
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")

    @property
    def left_to_data(self) -> tuple[str, ...]:
        """The fields left unset, to be set from the data (``PretrainConfig.for_data``)."""
        return tuple(n for n in DATA_SHAPE_FIELDS if getattr(self, n) is None)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads


@dataclass(frozen=True)
class TitleOptions:
    """Title-token training (``model.history_tokens`` "titles" only)."""

    # Chance that a history title enters training by its codes alone (its identity dropped), as a
    # title added after training does.
    identity_dropout: float = 0.0
    # Weight of a full-softmax loss over all titles at every history position (the title rows of
    # the tied output layer score the next title, as SASRec does); 0 = codes only.
    title_loss_weight: float = 0.0
    # Which code rows a title's row sums: "shared" (the code tokens' own embedding rows, which the
    # code-token loss also trains as output classes) or "own" (a separate table of code rows for
    # title composition, saved beside the weights so a new title's row can be composed from it).
    title_code_rows: str = "shared"
    # Weight of the code-token loss (what the beam decodes with) against the title loss; 0 trains the
    # title head alone, leaving the beam untrained (a diagnostic: what the code loss costs the head).
    code_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        in_unit_interval(identity_dropout=self.identity_dropout)
        one_of(TITLE_CODE_ROWS, title_code_rows=self.title_code_rows)
        at_least(0, title_loss_weight=self.title_loss_weight, code_loss_weight=self.code_loss_weight)
        if not self.code_loss_weight and not self.title_loss_weight:
            raise ValueError("code_loss_weight and title_loss_weight are both 0: nothing to train")


@dataclass(frozen=True)
class AuxObjectives:
    """Auxiliary objectives: training-only heads (``gen_fm.objectives``); the saved model stays a plain Llama."""

    # Multi-token prediction: extra heads predict the tokens 2..1+mtp_tokens ahead of every
    # position; 0 = off. Weighted by mtp_weight against the next-token loss.
    mtp_tokens: int = 0
    mtp_weight: float = 0.5
    # Next-title category target: a head predicts the catalog categories (genres, category path) of
    # the title about to be generated; 0 = off. Labels on fewer than category_min_titles titles, or
    # on more than half of them, are left out.
    category_weight: float = 0.0
    category_min_titles: int = 5

    def __post_init__(self) -> None:
        at_least(
            0, mtp_tokens=self.mtp_tokens, mtp_weight=self.mtp_weight, category_weight=self.category_weight
        )
        at_least(1, category_min_titles=self.category_min_titles)


@dataclass(frozen=True)
class Augmentation:
    """What the training rows are beyond the plain windows: re-drawn each epoch, and the canvas mixture."""

    # Chance that a title is left out of a member's sequence for one epoch (neither context nor
    # target then), so the model cannot learn members' exact training contexts. 0 = off. Re-drawn
    # every epoch from the seed, on training events only (as is the jitter).
    item_dropout: float = 0.0
    # Shift the window boundaries of members longer than one window by a random phase each epoch.
    window_jitter: bool = False
    # Label smoothing of the next-token cross-entropy (0 = off).
    label_smoothing: float = 0.0
    # Canvases (besides home) whose training examples (``prompt_tuning.canvases``: training events
    # only, held-out targets filtered out) are mixed into pretraining, so the foundation model learns
    # to read their contexts after <sep> (query, source title, theme) before any soft prompt is
    # trained. () = next-title windows only. A list or a comma-separated string.
    canvas_mix: tuple[str, ...] = ()
    canvas_mix_examples: int = 2000  # examples per mixed canvas (one seeded sample for the run)

    def __post_init__(self) -> None:
        mix = self.canvas_mix.split(",") if isinstance(self.canvas_mix, str) else self.canvas_mix
        object.__setattr__(self, "canvas_mix", tuple(c.strip() for c in mix if c.strip()))
        if self.canvas_mix:
            from gen_fm.tokenizer import CANVASES  # transformers: only when a mixture is asked for

            mixable = [c for c in CANVASES if c != "home"]  # home is the windows themselves
            if any(c not in mixable for c in self.canvas_mix) or len(set(self.canvas_mix)) != len(
                self.canvas_mix
            ):
                raise ValueError(
                    f"canvas_mix {list(self.canvas_mix)}: each canvas at most once, from {mixable}"
                )
        if self.canvas_mix_examples < 1:
            raise ValueError(f"canvas_mix_examples must be >= 1, got {self.canvas_mix_examples}")
        in_unit_interval(item_dropout=self.item_dropout, label_smoothing=self.label_smoothing)


@dataclass(frozen=True)
class Optimisation:
    """How the weights are fitted: AdamW, its schedule, batches, weight averaging and the run's length."""

    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not on norms)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    schedule: str = "cosine"  # learning-rate decay after warmup: cosine, linear or constant
    warmup_ratio: float = 0.05  # share of all optimizer steps spent warming up linearly
    batch_size: int = 256  # windows per device per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    # Exponential moving average of the weights, updated after every optimizer step with this
    # decay (0.995: about the last 200 steps); validation judges, and the model folder keeps, the
    # averaged weights, the raw ones being validated beside them (``raw_recall@K`` in the
    # history). Averaging smooths the epoch-to-epoch swings that make one run land far from
    # another. 0 = off.
    ema_decay: float = 0.0
    epochs: int = 50  # the budget the learning-rate schedule spans (warm-up, then decay)
    # Stop after this many optimizer steps in all (smoke runs, throughput); None = run all epochs.
    # The schedule still spans `epochs`, so a stopped run can be resumed to the same end point.
    max_steps: int | None = None
    # accelerate mixed precision: no, bf16, fp16, or auto = bf16 where the training device multiplies
    # bf16 natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX), else no; resolved when training
    # starts (``PretrainConfig.for_machine``) and recorded so in the model folder. The saved weights
    # are float32 either way.
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        at_least(1, batch_size=self.batch_size, grad_accum=self.grad_accum, epochs=self.epochs)
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        in_unit_interval(warmup_ratio=self.warmup_ratio, ema_decay=self.ema_decay)
        one_of(SCHEDULES, schedule=self.schedule)
        one_of(MIXED_PRECISION, mixed_precision=self.mixed_precision)
        at_least(0, max_grad_norm=self.max_grad_norm)
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")


@dataclass(frozen=True)
class Validation:
    """Validation during training, which epoch's weights are kept, and early stopping."""

    eval_every: int = 1  # validate every N epochs; 0 = never (the last weights are kept)
    # Validate only after this share of the epochs (early epochs of a decaying schedule are never
    # chosen; skipping them saves decoding time). The last epoch is always validated.
    eval_from: float = 0.0
    # The validation sample's judge: K, the beam, members and batch (``gen_fm.beams.JudgeConfig``).
    # 5,000 members (drawn once with the seed; None = all) keep one standard error of Recall@10
    # under a tenth of it where recall is above ~0.02, so the choice between epochs is not decided
    # by noise. The final `sidrec eval` always uses every member.
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(eval_users=5000))
    # Which validated epoch's weights are kept: "within-se" = the latest epoch whose Recall@K is
    # within one standard error of the best (differences below the noise go to the longer-trained
    # weights), "best" = the highest Recall@K (NDCG breaks ties), "last" = the last epoch.
    selection: str = "within-se"
    # What judges an epoch: "ranking" (the model's ranking: its beam, fused with the title head
    # when it has one) or "title_head" (the title head alone: one forward per member and no beam, so
    # cheap enough to judge every validation member, ``judge.eval_users=None``).
    judge_by: str = "ranking"
    # Validations without a better Recall@K before stopping; 0 = never stop (the default: the
    # schedule spans a fixed budget, and a noisy validation sample can stop a run far too early).
    patience: int = 0

    # Names these settings had before ``judge`` held them (old commands and model folders read).
    RENAMED: ClassVar[dict[str, str]] = {"eval_k": "judge.k", "val_users": "judge.eval_users"}

    def __post_init__(self) -> None:
        at_least(0, eval_every=self.eval_every, patience=self.patience)
        in_unit_interval(eval_from=self.eval_from)
        one_of(SELECTIONS, selection=self.selection)
        one_of(JUDGES, judge_by=self.judge_by)
        object.__setattr__(self, "judge", JudgeConfig.of(self.judge))


@dataclass(frozen=True)
class Checkpoints:
    """Step checkpoints of a run (``gen_fm.checkpoints``), so that an interrupted run resumes."""

    checkpoint_every_steps: int = 1000  # also one at the end of every epoch; 0 = epochs only
    keep_checkpoints: int = 2  # most recent step checkpoints kept (the best weights always are)

    def __post_init__(self) -> None:
        at_least(0, checkpoint_every_steps=self.checkpoint_every_steps)
        at_least(1, keep_checkpoints=self.keep_checkpoints)


@dataclass(frozen=True)
class PretrainConfig:
    """How the Llama decoder over semantic-ID sequences is sized and trained, one field per concern."""

    # Name of the preset the config started from, recorded in the manifest ("custom" if none).
    preset: str = "custom"
    model: ModelShape = field(default_factory=ModelShape)
    titles: TitleOptions = field(default_factory=TitleOptions)
    objectives: AuxObjectives = field(default_factory=AuxObjectives)
    augment: Augmentation = field(default_factory=Augmentation)
    optim: Optimisation = field(default_factory=Optimisation)
    validation: Validation = field(default_factory=Validation)
    checkpoints: Checkpoints = field(default_factory=Checkpoints)
    seed: int = 0  # weights, data order, augmentation and the validation sample

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind = _CONCERNS.get(f.name)
            if kind is not None and not isinstance(getattr(self, f.name), kind):
                raise TypeError(
                    f"PretrainConfig.{f.name} must be a {kind.__name__}, got "
                    f"{type(getattr(self, f.name)).__name__} (PretrainConfig.from_dict reads dicts)"
                )
        if self.validation.judge_by == "title_head" and not (
            self.model.history_tokens == "titles" and self.titles.title_loss_weight
        ):
            raise ValueError(
                "judge_by 'title_head' needs a title head: history_tokens 'titles' and title_loss_weight > 0"
            )
        # the title-token options and the heads that read code-token histories exclude each other
        if self.model.history_tokens == "titles":
            clash = [
                n
                for n, v in (
                    ("canvas_mix", self.augment.canvas_mix),
                    ("mtp_tokens", self.objectives.mtp_tokens),
                    ("category_weight", self.objectives.category_weight),
                )
                if v
            ]
            if clash:
                raise ValueError(
                    f"{clash} read code-token histories: set them off with history_tokens 'titles'"
                )
        elif self.titles != TitleOptions():
            raise ValueError(
                "identity_dropout, title_loss_weight, title_code_rows and code_loss_weight need "
                "history_tokens 'titles'"
            )

    def validates(self, epoch: int) -> bool:
        """Whether 1-based `epoch` is validated: every `eval_every` after `eval_from`, and the last."""
        v, epochs = self.validation, self.optim.epochs
        if not v.eval_every:
            return False
        return epoch == epochs or (epoch > v.eval_from * epochs and epoch % v.eval_every == 0)

    def by_path(self) -> dict[str, Any]:
        """Every setting by its dotted path, as JSON values: ``{"optim.lr": 0.001, "seed": 0, ...}``."""
        return _paths(jsonable(self))

    def by_name(self) -> dict[str, Any]:
        """Every setting by its own name, as JSON values (names are unique across the concerns): the
        flat form the config had before it was grouped, which names run folders (``run-<hash>``), so
        folders made before the grouping are still found (a renamed setting by its old name)."""
        old_names = {
            f"{f.name}.{new}": old
            for f in dataclasses.fields(self)
            for old, new in renamed_fields(type(getattr(self, f.name))).items()
        }
        return {old_names.get(p, p.rsplit(".", 1)[-1]): v for p, v in self.by_path().items()}

    def for_machine(self, bf16_native: bool) -> PretrainConfig:
        """This config with ``mixed_precision="auto"`` set for the training device."""
        if self.optim.mixed_precision != "auto":
            return self
        optim = dataclasses.replace(self.optim, mixed_precision="bf16" if bf16_native else "no")
        return dataclasses.replace(self, optim=optim)

    def for_data(self, median_events: float) -> PretrainConfig:
        """This config with the model fields left unset (None) set from the data (``gen_fm.recipes.shape_for_data``);
        the fields set explicitly are kept."""
        unset = self.model.left_to_data
        if not unset:
            return self
        chosen = shape_for_data(median_events, self.model.history_tokens)
        shape = dataclasses.replace(self.model, **{n: chosen[n] for n in unset})
        return dataclasses.replace(self, model=shape)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PretrainConfig:
        """A preset plus explicit overrides (which win): concerns as dicts (``optim={"lr": 5e-4}``,
        merged into the preset's) or fields by their unique name (``lr=5e-4``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return override(cls.from_dict({"preset": name, **PRESETS[name]}), overrides)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> PretrainConfig:
        """Rebuild from a manifest's config: nested as written now, or flat as model folders and
        checkpoints written before the grouping hold it (each field by its own name); fields a
        manifest lacks (added since) take their defaults. Unknown keys are an error, not dropped."""
        return build_config(cls, obj, "PretrainConfig", presets=False)

    @classmethod
    def from_manifest(cls, obj: dict[str, Any]) -> PretrainConfig:
        """A trained model's (or checkpoint's) config, as ``from_dict`` reads it, with the value a
        field the folder predates trained with where that is not the field's default: a folder
        written before ``hidden_dropout_on`` put its hidden dropout at every position."""
        config = cls.from_dict(obj)
        if "hidden_dropout_on" not in {**obj, **obj.get("model", {})}:  # flat or nested
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, hidden_dropout_on="all")
            )
        return config


def _paths(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict's leaves by their dotted paths."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            out.update(_paths(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


# The concern each nested field holds (checked on construction: a dict goes through ``from_dict``).
_CONCERNS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(PretrainConfig)
    if f.default_factory is not dataclasses.MISSING
}
