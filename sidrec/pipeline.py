"""The main job: run every stage on a real dataset, reusing stages whose artifacts are up to date."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from sidrec.artifacts import jsonable, read_manifest
from sidrec.data import DataConfig, load_data

console = Console()


@dataclass(frozen=True)
class QuickstartConfig:
    """What the quickstart runs; presets in configs/quickstart-*.json override these."""

    dataset: str = "ml-latest-small"
    out: str = "runs/quickstart"
    quantizer: str = "rqvae"
    id_epochs: int = 150  # RQ-VAE epochs: enough for stable codes on ~10k titles


def _up_to_date(artifact: Path, kind: str, config, data_fingerprint: str) -> bool:
    """An artifact is reused only if it was built from the same data with the same config."""
    try:
        m = read_manifest(artifact, kind)
    except Exception:
        return False
    return m["config"] == jsonable(config) and m.get("parents", {}).get("data") == data_fingerprint


def quickstart(config: QuickstartConfig, data_dir: str | None = None) -> None:
    from semantic_ids.builder import build_ids
    from semantic_ids.config import SemanticIDConfig
    from semantic_ids.ids import SemanticIDs
    from sidrec.cli import show_stats

    out = Path(config.out)
    console.rule(f"[bold]sidrec quickstart[/bold] on {config.dataset}")
    data = load_data(DataConfig(data_dir=data_dir, dataset=config.dataset))
    for line in data.report.lines():
        console.print(f"[dim]{line}[/dim]")

    console.rule("1. semantic IDs")
    id_config = SemanticIDConfig(quantizer=config.quantizer, epochs=config.id_epochs)
    ids_dir = out / "ids"
    if _up_to_date(ids_dir, "semantic_ids", id_config, data.fingerprint):
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
