"""The main job: every stage on a real dataset, reusing stages whose artifacts are up to date.

Re-running after an interruption resumes: a finished stage whose artifact was built from the same
data with the same config is reused, and pretraining continues from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sidrec.artifacts import jsonable, manifest_hash, read_manifest
from sidrec.data import DataConfig, load_data

console = Console()


@dataclass(frozen=True)
class QuickstartConfig:
    """What the quickstart runs; presets in configs/quickstart-*.json override these."""

    dataset: str = "ml-latest-small"
    out: str = "runs/quickstart"
    quantizer: str = "rqvae"
    model_preset: str = "small"
    epochs: int = 12  # pretraining epochs (early stopping may end sooner)
    lr: float = 2e-3
    batch_size: int = 64  # small batches: ml-latest-small has only ~5k training windows
    val_users: int = 300  # members in the per-epoch validation sample
    eval_users: int | None = None  # members judged on the test split; None = all
    examples: int = 3  # members whose recommendations are printed
    k: int = 10
    max_users: int | None = None  # read only the first N members (smoke runs)
    # SemanticIDConfig overrides, e.g. {"quantizer": "rqkmeans"} or a tiny config for tests.
    id_config: dict | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.k < 1 or self.examples < 0:
            raise ValueError("epochs and k must be >= 1, examples >= 0")


def _same_build(artifact: Path, kind: str, config, data_fingerprint: str) -> bool:
    """An artifact is reused only if it was built from the same data with the same config."""
    try:
        m = read_manifest(artifact, kind)
    except Exception:
        return False
    fp = m.get("parents", {}).get("data") or m.get("data", {}).get("fingerprint")
    return m["config"] == jsonable(config) and fp == data_fingerprint


def quickstart(config: QuickstartConfig, data_dir: str | None = None) -> None:
    out = Path(config.out)
    console.rule(f"[bold]sidrec quickstart[/bold] on {config.dataset} -> {out}")
    data_config = DataConfig(data_dir=data_dir, dataset=config.dataset, max_users=config.max_users)
    data = load_data(data_config)
    for line in data.report.lines():
        console.print(f"[dim]{line}[/dim]")
    ids = _stage_ids(config, data, out / "ids")
    model_dir = _stage_pretrain(config, data_config, data, out / "ids", out)
    _stage_eval(config, data_config, model_dir, out / "eval-test.json")
    _stage_examples(config, data, model_dir, ids)


def _stage_ids(config: QuickstartConfig, data, ids_dir: Path):
    from semantic_ids.builder import build_ids
    from semantic_ids.config import SemanticIDConfig
    from semantic_ids.ids import SemanticIDs
    from sidrec.cli import show_stats

    console.rule("1/4 semantic IDs")
    id_config = SemanticIDConfig(**{"quantizer": config.quantizer, **(config.id_config or {})})
    if _same_build(ids_dir, "semantic_ids", id_config, data.fingerprint):
        console.print(f"reusing {ids_dir} (same data and config)")
        ids = SemanticIDs.load(ids_dir)
    else:
        ids = build_ids(data, id_config, ids_dir)
    show_stats(ids)
    depth = ids.sid_length - 2
    groups = sorted((p, m) for p, m in ids.prefix_groups(depth).items() if len(m) >= 3)
    console.print(f"Titles that share their first {depth} codes (semantic neighbours):")
    for prefix, members in groups[:: max(len(groups) // 4, 1)][:4]:
        console.print(f"  [bold]{'-'.join(map(str, prefix))}[/bold]: "
                      + " | ".join(ids.title(m) for m in members[:4]))
    return ids


def _stage_pretrain(config: QuickstartConfig, data_config: DataConfig, data, ids_dir: Path,
                    out: Path) -> Path:
    from gen_fm.config import PretrainConfig
    from gen_fm.train import pretrain
    from sidrec.sequences import SequenceConfig

    console.rule("2/4 pretrain the foundation model")
    pc = PretrainConfig.from_preset(config.model_preset, epochs=config.epochs, lr=config.lr,
                                    batch_size=config.batch_size, val_users=config.val_users,
                                    eval_every=1, patience=3)
    # One run folder per training config: a rerun with the same config resumes its checkpoints,
    # a changed config trains afresh beside it instead of clashing with them.
    digest = hashlib.sha256(json.dumps(jsonable(pc), sort_keys=True).encode()).hexdigest()[:8]
    run_dir = out / f"run-{digest}"
    model_dir = run_dir / "model"
    if (_same_build(model_dir, "gen_fm", pc, data.fingerprint)
            and read_manifest(model_dir)["parents"].get("semantic_ids") == manifest_hash(ids_dir)):
        console.print(f"reusing {model_dir} (same data, IDs and config)")
        return model_dir
    return pretrain(data_config, SequenceConfig(), ids_dir, run_dir, pc, resume=True)


def _stage_eval(config: QuickstartConfig, data_config: DataConfig, model_dir: Path, out: Path) -> None:
    from eval.config import EvalConfig
    from eval.generative import evaluate_model

    console.rule("3/4 evaluate (leave-one-out test split, full catalog)")
    rep = evaluate_model(model_dir, data_config, EvalConfig(split="test"), out=out,
                         max_users=config.eval_users, unconstrained_users=200)
    t = Table(title=f"{rep['dataset']} test, {rep['num_users']} members, beam {rep['num_beams']}")
    for col in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "invalid IDs", "unconstrained invalid"):
        t.add_column(col)
    t.add_row(*(f"{rep[k]:.4f}" for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")),
              f"{rep['invalid_rate']:.1%}", f"{rep['invalid_rate_unconstrained']:.1%}")
    console.print(t)
    console.print(f"[dim]report: {out}[/dim]")


def _stage_examples(config: QuickstartConfig, data, model_dir: Path, ids) -> None:
    from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
    from gen_fm.decode import recommend
    from gen_fm.model import load_model
    from semantic_ids.trie import PrefixTrie
    from sidrec.sequences import build_sequences, leave_one_out

    console.rule("4/4 recommendations for a few members (home canvas)")
    gen = load_model(model_dir)
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    ex = split.examples("test")
    sid_rows = catalog_to_sid_rows(data, gen.ids)
    encoder, trie = gen.prompt_encoder(), PrefixTrie.from_ids(gen.ids)
    picks = list(range(0, len(ex.users), max(len(ex.users) // max(config.examples, 1), 1)))[: config.examples]
    for i in picks:
        hist = to_sid_rows(ex.histories[i], sid_rows)
        user = split.sequences.user_ids[ex.users[i]]
        prompt = encoder.encode(hist, user_id=user)
        rec = recommend(gen.model, [prompt], trie, k=config.k, num_beams=max(config.k, 10),
                        exclude=[sorted(set(hist.tolist()))])[0]
        target = gen.ids.item_ids[to_sid_rows(ex.targets[i: i + 1], sid_rows)[0]]
        console.print(f"[bold]member {user}[/bold] recently: "
                      + " | ".join(gen.ids.titles[r] for r in hist[-4:]))
        for rank, (row, score) in enumerate(zip(rec.rows, rec.scores), 1):
            mark = " [green]<- held-out next title[/green]" if gen.ids.item_ids[row] == target else ""
            console.print(f"   {rank:2d}. {gen.ids.titles[row]}  [dim]{gen.ids.layout.sid_string(gen.ids.codes[row])} "
                          f"{score:.2f}[/dim]{mark}")
    console.print(f"model folder: {model_dir}")
