"""The main job: every stage on a real dataset, reusing stages whose artifacts are up to date.

Re-running after an interruption resumes: a finished stage whose artifact was built from the same
data with the same config is reused, and pretraining continues from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.artifacts import jsonable, manifest_hash, read_json, read_manifest, write_json
from core.data import DataConfig, RecData, load_data
from core.overrides import nest_keys
from core.sequences import SequenceConfig, build_sequences, leave_one_out
from eval.config import EvalConfig
from eval.next_title import choose_fusion, describe_fusion, evaluate_model
from gen_fm.beams import JudgeConfig
from gen_fm.co_engagement import CO_ENGAGEMENT_FILE
from gen_fm.config import PretrainConfig
from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from gen_fm.model import FUSION_FILE, TITLE_TAGS_FILE, load_model
from gen_fm.train import config_for_run, pretrain
from prompt_tuning.canvases import canvas_names, get_canvas
from prompt_tuning.config import PromptTuningStageConfig
from prompt_tuning.export import ADAPTERS_FILE, export_adapters
from prompt_tuning.train import co_engagement_for, model_split, train_canvas
from semantic_ids.builder import build_ids
from semantic_ids.config import SemanticIDConfig, text_weight_of
from semantic_ids.ids import SemanticIDs
from serving.backends.registry import DEFAULT_BACKEND, backend_names
from serving.recommender import Recommender
from sidrec.run_record import RECORD_FILE, StageClock, run_record

console = Console()


def pretrain_default() -> PretrainConfig:
    # The quickstart's recipe on ml-latest-small: few training windows, so small batches; the
    # validation sample (every member of a catalog under validation's default 5,000) judged each
    # epoch of the second half (the first half's weights, at a high learning rate, are not kept),
    # the weights kept the latest epoch within one standard error of the best
    # (``gen_fm.selection``), no early stop; the schedule spans the 12 epochs. The weights
    # judged and kept are an exponential moving average (decay 0.995: about the last 200 steps).
    # Histories are one title token per title (its codes' embeddings plus a learned identity), and
    # the title rows also score the next title over the whole catalog (the title head, fused with
    # the beam at the weight chosen on validation). The depth and dropouts are left to the data
    # (``gen_fm.recipes.shape_for_data``: 4 layers and no hidden dropout on MovieLens's long
    # histories, SASRec's 2 layers and dropouts on sparse shopping histories), and mixed precision
    # to the machine (``mixed_precision="auto"``).
    return PretrainConfig.from_preset(
        "small",
        seed=0,
        model=dict(history_tokens="titles"),
        titles=dict(title_loss_weight=1.0),
        optim=dict(epochs=12, lr=2e-3, batch_size=64, ema_decay=0.995),
        validation=dict(eval_every=1, eval_from=0.5, patience=0),
    )


def prompts_default() -> PromptTuningStageConfig:
    # small example caps keep every canvas quick to train; ``canvas`` is set per canvas
    return PromptTuningStageConfig.create(max_train_examples=2000, max_eval_examples=300, epochs=3)


def _ids_default() -> SemanticIDConfig:
    return SemanticIDConfig()


def _judge_default() -> JudgeConfig:
    # the evaluation stage's batch (EvalConfig.batch_size): the quickstart judges through evaluate_model
    return JudgeConfig(eval_batch_size=EvalConfig().batch_size)


@dataclass(frozen=True)
class QuickstartConfig:
    """What the quickstart runs: the stages' own configs, and the run around them.

    Override a stage's field with ``--set pretrain.lr=0.001`` (``pretrain.optim.lr`` by its unique
    name), ``--set ids.quantizer=rqvae``, ``--set prompts.epochs=5`` or ``--set judge.k=20`` (or
    the same keys nested in a ``--preset`` JSON file).
    """

    dataset: str = "ml-latest-small"
    out: str = "runs/quickstart"
    max_users: int | None = None  # read only the first N members (smoke runs)
    ids: SemanticIDConfig = field(default_factory=_ids_default)
    pretrain: PretrainConfig = field(default_factory=pretrain_default)
    # Canvases that get an adapter (search and collection need a text modality in the IDs), and
    # the prompt-tuning config every one of them uses (its ``canvas`` is set per canvas).
    canvases: tuple[str, ...] = ("home", "search", "t2t", "collection")
    prompts: PromptTuningStageConfig = field(default_factory=prompts_default)
    # How the test split is judged (K and its beam, members, batch) and how many titles the
    # examples list: ``--set judge.k=5``, ``--set judge.eval_users=500`` (by its path: pretraining's
    # validation has a judge too, ``pretrain.validation.judge``).
    judge: JudgeConfig = field(default_factory=_judge_default)
    examples: int = 3  # members whose recommendations are printed
    # Engine that serves the examples, a name registered in serving.backends.registry: "vllm" (the
    # server's engine; the examples fall back to "transformers" when vLLM is not installed),
    # "transformers", or one added with register_backend.
    backend: str = DEFAULT_BACKEND

    def __post_init__(self) -> None:
        if self.examples < 0:
            raise ValueError(f"examples must be >= 0, got {self.examples}")
        object.__setattr__(self, "judge", JudgeConfig.of(self.judge))
        CANVASES = canvas_names()  # the registry: built-in canvases and any registered since

        object.__setattr__(self, "canvases", tuple(self.canvases))
        unknown = [c for c in self.canvases if c not in CANVASES]
        if unknown or len(set(self.canvases)) != len(self.canvases):
            raise ValueError(f"canvases must be distinct names from {CANVASES}, got {self.canvases}")
        if self.backend not in backend_names():
            raise ValueError(
                f"backend must be a registered one, {list(backend_names())}, got {self.backend!r} "
                f"(serving.backends.registry.register_backend adds one)"
            )


def show_stats(ids) -> None:
    s = ids.stats()
    t = Table(title=f"semantic IDs: {ids.path}")
    t.add_column("figure")
    t.add_column("value")
    for key in (
        "num_items",
        "sid_length",
        "unique_ids",
        "collision_rate",
        "max_collision_group",
        "dedup_codes_used",
        "reconstruction_mse",
    ):
        v = s.get(key)
        t.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    t.add_row("codebook_utilization", ", ".join(f"{u:.1%}" for u in s["codebook_utilization"]))
    t.add_row("perplexity", ", ".join(f"{p:.1f}" for p in s["perplexity"]))
    t.add_row("map version", str(ids.version))
    console.print(t)


def same_build(artifact: Path, kind: str, config, data_fingerprint: str) -> bool:
    """An artifact is reused only if it was built from the same data with the same config."""
    try:
        m = read_manifest(artifact, kind)
    except Exception:
        return False
    fp = m.get("parents", {}).get("data") or m.get("data", {}).get("fingerprint")
    try:  # keys as the config reads them (a model folder written before its config was nested: flat)
        stored = nest_keys(type(config), m["config"])
    except ValueError:
        return False
    return stored == jsonable(config) and fp == data_fingerprint


def quickstart(config: QuickstartConfig, data_dir: str | None = None, command: str | None = None) -> None:
    """Every stage in turn; ``command`` (the command line that ran it) goes into the run record."""
    out = Path(config.out)
    console.rule(f"[bold]sidrec quickstart[/bold] on {config.dataset} -> {out}")
    data_config = DataConfig(data_dir=data_dir, dataset=config.dataset, max_users=config.max_users)
    data = load_data(data_config)
    for line in data.report.lines():
        console.print(f"[dim]{line}[/dim]")
    clock = StageClock()
    with clock("semantic IDs"):
        ids = stage_ids(config, data, out / "ids")
    with clock("pretraining"):
        model_dir = stage_pretrain(config, data, out / "ids", out)
    with clock("fusion weight"):
        stage_fusion(data_config, model_dir)
    with clock("test evaluation"):
        test = _stage_eval(config, data_config, model_dir, out / "eval-test.json")
    with clock("canvas adapters"):
        console.rule("4/5 an adapter per canvas (PEFT soft prompts and LoRA on the frozen model)")
        served = stage_prompts(model_dir, data_config, config.canvases, config.prompts, out / "prompts")
    with clock("examples"):
        _stage_examples(config, data, served, ids)
    write_json(out / RECORD_FILE, run_record(config, data, clock, model_dir, served, test, command))
    console.print(f"[dim]run record (command, machine, time per stage, figures): {out / RECORD_FILE}[/dim]")
    console.print(f"[dim]{clock.summary()}[/dim]", soft_wrap=True)  # the closing line, for logs


def stage_ids(config: QuickstartConfig, data, ids_dir: Path):
    console.rule("1/5 semantic IDs")
    id_config = config.ids
    if same_build(ids_dir, "semantic_ids", id_config, data.fingerprint):
        console.print(f"reusing {ids_dir} (same data and config)")
        ids = SemanticIDs.load(ids_dir)
    else:
        ids = build_ids(data, id_config, ids_dir)
    show_stats(ids)
    depth = ids.sid_length - 2
    groups = sorted((p, m) for p, m in ids.prefix_groups(depth).items() if len(m) >= 3)
    console.print(f"Titles that share their first {depth} codes (semantic neighbours):")
    for prefix, members in groups[:: max(len(groups) // 4, 1)][:4]:
        console.print(
            f"  [bold]{'-'.join(map(str, prefix))}[/bold]: " + " | ".join(ids.title(m) for m in members[:4])
        )
    return ids


def stage_pretrain(config: QuickstartConfig, data: RecData, ids_dir: Path, out: Path) -> Path:
    console.rule("2/5 pretrain the foundation model")
    pc = config.pretrain
    # One run folder per training config: a rerun with the same config resumes its checkpoints,
    # a changed config trains afresh beside it instead of clashing with them. Named by the flat
    # form of the config, so folders made before it was grouped by concern are found.
    digest = hashlib.sha256(json.dumps(pc.by_name(), sort_keys=True).encode()).hexdigest()[:8]
    run_dir = out / f"run-{digest}"
    model_dir = run_dir / "model"
    trained_with = config_for_run(pc, build_sequences(data, SequenceConfig()))  # as the folder records it
    if same_build(model_dir, "gen_fm", trained_with, data.fingerprint) and read_manifest(model_dir)[
        "parents"
    ].get("semantic_ids") == manifest_hash(ids_dir):
        console.print(f"reusing {model_dir} (same data, IDs and config)")
        return model_dir
    return pretrain(data, SequenceConfig(), ids_dir, run_dir, pc, resume=True)  # the data loaded once


def stage_fusion(data_config: DataConfig, model_dir: Path) -> None:
    """The home row's fusion weight for this model, chosen on the validation split (once)."""
    if FUSION_FILE in read_manifest(model_dir)["files"]:
        console.print(f"reusing the fusion weight chosen for {model_dir}")
        return
    for line in describe_fusion(choose_fusion(model_dir, data_config)):
        console.print(line)


def _stage_eval(config: QuickstartConfig, data_config: DataConfig, model_dir: Path, out: Path) -> dict:
    console.rule("3/5 evaluate (leave-one-out test split, full catalog)")
    judge = config.judge
    rep = evaluate_model(
        model_dir,
        data_config,
        EvalConfig(split="test", ks=judge.ks, batch_size=judge.eval_batch_size),
        out=out,
        num_beams=judge.beams,
        max_users=judge.eval_users,
        unconstrained_users=200,
    )
    home = rep["home_row"]
    t = Table(
        title=f"{rep['dataset']} test, {rep['num_users']} members, beam {rep['num_beams']}, history excluded"
    )
    cols = tuple(f"{m}@{k}" for k in judge.ks for m in ("recall", "ndcg"))
    for col in ("ranking", *cols):
        t.add_column(col)
    rows = [("model", home["model_history_excluded"])]
    if home.get("title_weight"):  # the model's ranking is its beam fused with its title head
        rows += [
            ("  its beam", home["beam_history_excluded"]),
            ("  its title head", home["title_head_alone"]),
        ]
    rows += [("counts", home["co_engaged_alone"]), ("served", home)]
    for name, figures in rows:
        t.add_row(name, *(f"{figures[k]:.4f}" for k in cols))
    console.print(t)
    how = (
        f"its beam fused with its title head (weight {home['title_weight']:g})"
        if home.get("title_weight")
        else "its beam"
    )
    console.print(
        f"[dim]model: the model's ranking, {how}; counts: the titles most co-engaged with the "
        f"member's {home['recent_titles']} newest titles; served: the two fused (weight "
        f"{home['fusion_weight']:g}, chosen on validation). Invalid IDs: {rep['invalid_rate']:.1%} "
        f"constrained, {rep['invalid_rate_unconstrained']:.1%} without the trie.[/dim]"
    )
    console.print(f"[dim]report: {out}[/dim]")
    return rep


def stage_prompts(model_dir: Path, data_config, canvases, prompt_config, root: Path) -> Path:
    """An adapter per canvas (its spec's method) on the frozen model, then one servable folder with all of them
    (``root/served``; the model folder itself when no canvas could be trained). Adapters and the
    folder already on disk for the same model and config are reused. Quickstart and refresh."""
    from prompt_tuning.adapter import read_adapter  # imports peft: the soft-prompt stage only

    base_hash = manifest_hash(model_dir)
    has_text = text_weight_of(SemanticIDs.load(model_dir / "semantic_ids").manifest) > 0
    adapters = []
    for canvas in canvases:
        if get_canvas(canvas).context_kind == "text" and not has_text:
            console.print(
                f"[yellow]skipping {canvas}: its queries/themes are text and these IDs have "
                f"no text modality (text_weight=0)[/yellow]"
            )
            continue
        pc = replace(prompt_config, canvas=canvas)  # a PromptTuningStageConfig
        if pc.adapter_method == "none":
            console.print(
                f"{canvas}: served by the frozen model, no adapter to train (no adapter "
                f'measured for it beat the frozen model beyond noise; docs/experiments.md, "Home as served")'
            )
            continue
        target = root / canvas
        try:
            info = read_adapter(target)
            if info.base_hash == base_hash and info.manifest["config"] == jsonable(pc):
                console.print(f"reusing {target} (same model and config)")
                adapters.append(target)
                continue
        except Exception:  # absent, partial or from another model: train it
            pass
        adapters.append(train_canvas(model_dir, data_config, target, pc))
    if not adapters:
        return model_dir
    served = root / "served"
    tags = _title_tags(model_dir, data_config)  # None: the folder carries its own
    want = {f"adapter_{read_adapter(a).config.canvas}": manifest_hash(a) for a in adapters}
    try:
        parents = read_manifest(served, "gen_fm")["parents"]
        if (
            parents.get("base_model") == base_hash
            and all(parents.get(k) == v for k, v in want.items())
            and (served / CO_ENGAGEMENT_FILE).is_file()
            and (served / TITLE_TAGS_FILE).is_file()
        ):
            console.print(f"reusing {served} (same model and soft prompts)")
            return served
    except Exception:
        pass
    export_adapters(
        model_dir, adapters, served, co_engagement=_co_engagement(model_dir, data_config), title_tags=tags
    )
    console.print(f"servable folder, every canvas in one model: {served}")
    return served


def _co_engagement(model_dir: Path, data_config):
    """The base folder's co-engagement table, counted from its data when the folder predates it."""
    if (model_dir / CO_ENGAGEMENT_FILE).is_file():
        return None  # export carries the folder's own
    gen = load_model(model_dir)
    return co_engagement_for(gen, *model_split(gen, data_config))


def _title_tags(model_dir: Path, data_config):
    """The base folder's title tags, read from its data (a ``DataConfig`` or ``RecData``, as
    ``model_split`` takes) when the folder predates them."""
    if (model_dir / TITLE_TAGS_FILE).is_file():
        return None  # export carries the folder's own
    data, _ = model_split(load_model(model_dir), data_config)
    return data.title_tags()


def _stage_examples(config: QuickstartConfig, data, model_dir: Path, ids) -> None:
    gen = load_model(model_dir)
    canvases = [c for c in config.canvases if c in _served_canvases(model_dir)] or ["home"]
    backend = config.backend
    if backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            console.print(
                "[yellow]vLLM is not installed (pip install 'sidrec[serving]'): serving the "
                "examples with the transformers backend[/yellow]"
            )
            backend = "transformers"
    console.rule(f"5/5 recommendations per canvas for a few members ({backend} engine)")
    rec = Recommender.from_pretrained(str(model_dir), backend=backend, num_beams=config.judge.beams)
    try:
        split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
        ex = split.examples("test")
        sid_rows = catalog_to_sid_rows(data, gen.ids)
        picks = list(range(0, len(ex.users), max(len(ex.users) // max(config.examples, 1), 1)))[
            : config.examples
        ]
        for i in picks:
            hist = to_sid_rows(ex.histories[i], sid_rows).tolist()
            user = split.sequences.user_ids[ex.users[i]]
            history = [gen.ids.item_ids[r] for r in hist]
            target = gen.ids.item_ids[to_sid_rows(ex.targets[i : i + 1], sid_rows)[0]]
            console.print(
                f"[bold]member {user}[/bold] recently: " + " | ".join(gen.ids.titles[r] for r in hist[-4:])
            )
            for canvas in canvases:
                spec = get_canvas(canvas)
                demo = spec.example(data, gen.ids, hist, user)  # the canvas's own demonstration
                if demo is None:  # e.g. a collection for a member with no themed title
                    continue
                kwargs = {spec.context_field: demo.value} if demo.value is not None else {}
                label = demo.label
                res = rec.recommend(history, canvas=canvas, k=config.judge.k, user_id=user, **kwargs)
                soft = (
                    ("LoRA" if canvas in rec.prompts.loras else "soft prompt")
                    if res.soft_prompt
                    else "the frozen model"
                    if spec.adapter == "none"
                    else "canvas token only"
                )
                how = f"; ranked within {res.candidates}" if res.candidates else ""
                if res.fused_with:
                    how += "; fused with " + ("that order" if res.candidates else res.fused_with)
                console.print(f"  [cyan]{label}[/cyan] [dim]({soft}{how})[/dim]")
                if res.reason:
                    console.print(f"   [yellow]{res.reason}[/yellow]")
                for rank, item in enumerate(res, 1):
                    mark = " [green]<- held-out next title[/green]" if item.item_id == target else ""
                    console.print(
                        f"   {rank:2d}. {item.title}  [dim]{item.semantic_id} {item.score:.2f}[/dim]{mark}"
                    )
    finally:
        rec.close()
    console.print(f"served model folder: {model_dir}  (sidrec serve --model {model_dir})")


def _served_canvases(model_dir: Path) -> set[str]:
    path = Path(model_dir) / ADAPTERS_FILE
    frozen = {c for c in canvas_names() if get_canvas(c).adapter == "none"}  # served without one
    return (set(read_json(path)) if path.is_file() else {"home"}) | frozen
