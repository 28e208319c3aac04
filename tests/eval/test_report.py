"""`sidrec report` on a copy of the real results folder and on synthetic files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from eval import report  # noqa: E402
from eval.published import PUBLISHED  # noqa: E402
from sidrec.cli import main  # noqa: E402
from tests.eval.test_report_headline import tiny_results  # noqa: E402

RESULTS = Path(__file__).resolve().parents[2] / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    if not any(RESULTS.rglob("*.json")):
        pytest.skip(f"no results files in {RESULTS}")
    return Path(shutil.copytree(RESULTS, tmp_path / "results"))


def _pngs(readme: Path) -> list[Path]:
    return sorted(readme.parent.glob("*.png"))


def _datasets(results: Path) -> set[str]:
    found = set()
    for path in results.rglob("*.json"):
        data = json.loads(path.read_text())
        found.add(data.get("dataset") or (data.get("data") or {}).get("dataset"))
    return found - {None}


def test_real_results(results, tmp_path):
    readme = report.build_report(results, tmp_path / "report")
    assert readme == (tmp_path / "report" / "README.md").resolve()
    text = readme.read_text()
    for dataset in _datasets(results):
        assert dataset in text
    for path in sorted(results.rglob("*.json")):  # every source file is named
        assert f"results/{path.relative_to(results).as_posix()}" in text
    for row in PUBLISHED["amazon-beauty"].values():
        assert row["source"] in text
    pngs = _pngs(readme)
    names = {p.name for p in pngs}
    assert "codebooks.png" in names and any(n.startswith("retrieval-") for n in names)
    assert any(n.startswith("latency-") for n in names)
    for png in pngs:
        data = png.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), png
        assert f"]({png.name})" in text  # embedded with a relative link
    manifest = json.loads((readme.parent / "manifest.json").read_text())
    assert manifest["kind"] == "report" and not manifest["skipped"]
    assert len(manifest["parents"]) == len(list(results.rglob("*.json")))


def test_deterministic(results, tmp_path):
    a = report.build_report(results, tmp_path / "a").parent
    b = report.build_report(results, tmp_path / "b").parent
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name


def _canvas_file(root: Path) -> Path:
    def variant(recall: float, params: int) -> dict:
        return {
            "recall@10": recall,
            "ndcg@10": recall / 2,
            "trainable_parameters": params,
            "train_seconds": 12.5,
        }

    path = root / "prompt_tuning" / "ml-latest-small.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "benchmark": "prompt_tuning",
                "dataset": "ml-latest-small",
                "canvases": {
                    "search": {
                        "data": {"test_examples": 40},
                        "config": {"num_virtual_tokens": 8},
                        "adapter": variant(0.11, 4096),
                        "base": variant(0.05, 0),
                        "base_home_prompt": variant(0.03, 0),
                        "full_finetune": variant(0.12, 1_409_280),
                    },
                    "t2t": {
                        "adapter": variant(0.21, 4096),
                        "base": variant(0.07, 0),
                        "full_finetune": variant(0.19, 1_409_280),
                    },
                    "home": {"adapter": variant(0.09, 4096), "base": variant(0.04, 0)},
                },
            }
        )
    )
    return path


def test_prompt_tuning_canvases(tmp_path):
    root = tmp_path / "results"
    _canvas_file(root)
    readme = report.build_report(root, tmp_path / "report")
    png = readme.parent / "canvases-ml-latest-small.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    text = readme.read_text()
    assert "](canvases-ml-latest-small.png)" in text
    assert "results/prompt_tuning/ml-latest-small.json" in text
    for needle in (
        "search",
        "t2t",
        "home",
        "soft prompt (adapter)",
        "frozen base",
        "frozen base, home prompt",
        "full fine-tune",
        "4,096",
        "0.2100",
    ):
        assert needle in text
    assert "Skipped files" not in text
    table = text[text.index("## Per-canvas") : text.index("## Semantic IDs")]
    assert table.count("| search |") == 4  # the canvas's data/config entries are not variants


def test_empty_results_dir_is_an_error(tmp_path):
    empty = tmp_path / "nothing-here"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not json")
    with pytest.raises(report.ReportError, match="nothing-here"):
        report.build_report(empty, tmp_path / "report")
    assert not (tmp_path / "report").exists()
    assert main(["report", "--results", str(empty), "--out", str(tmp_path / "report")]) == 2


def test_bad_files_are_skipped(tmp_path, capsys):
    root = tmp_path / "results"
    _canvas_file(root)
    (root / "baselines").mkdir()
    (root / "baselines" / "broken.json").write_text("{not json")
    (root / "baselines" / "odd.json").write_text(
        json.dumps({"kind": "baseline", "dataset": "x", "metrics": {"test": "oops"}})
    )
    (root / "mystery.json").write_text(json.dumps([1, 2, 3]))
    out = tmp_path / "report"
    assert main(["report", "--results", str(root), "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    skipped = text[text.index("### Skipped files") :]
    for name in ("broken.json", "odd.json", "mystery.json"):
        assert f"results/{'baselines/' if name != 'mystery.json' else ''}{name}" in skipped
    assert "canvases-ml-latest-small.png" in text  # the good file still made its plot
    err = capsys.readouterr()
    assert "skipped results/baselines/broken.json" in err.err and str(out) in err.out


def test_failed_build_keeps_earlier_report(results, tmp_path, monkeypatch):
    out = tmp_path / "report"
    report.build_report(results, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "plot_latency", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        report.build_report(results, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "results"]  # no staging left


def test_report_inside_results_is_not_read_back(tmp_path):
    root = tmp_path / "results"
    _canvas_file(root)
    report.build_report(root, root / "report")
    readme = report.build_report(root, root / "report")
    manifest = json.loads((readme.parent / "manifest.json").read_text())
    assert list(manifest["parents"]) == ["results/prompt_tuning/ml-latest-small.json"]
    assert not manifest["skipped"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    root = tmp_path / "results"
    _canvas_file(root)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(report.ReportError, match="not an earlier sidrec report"):
        report.build_report(root, precious)
    with pytest.raises(report.ReportError, match="would replace the results folder"):
        report.build_report(root, tmp_path)
    assert (precious / "keep.txt").read_text() == "mine"


def test_report_opens_with_the_headline(tmp_path):
    root = tiny_results(tmp_path / "results")
    readme = report.build_report(root, tmp_path / "report")
    text = readme.read_text()
    head, experiments = text.index("## Headline: the home row"), text.index("## Experiments")
    assert head < experiments < text.index("## Results files read")
    section = text[head:experiments]
    assert "Headline file: `results/gen_fm/amazon-beauty-titles.json` (400 members)" in section
    assert "among the `sidrec eval` files on the test split" in section  # the rule, in words
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert len(rows) == 7
    served = next(line for line in rows if line.startswith("| **served**"))
    assert "| 0.0900 | 0.0090 | 0.0450 | `results/gen_fm/amazon-beauty-titles.json` `home_row` |" in served
    assert "| 0.1000 | 0.0150* |" in next(line for line in rows if "SASRec" in line)
    assert next(line for line in rows if "TIGER" in line).startswith("| published anchor: TIGER (paper)")
    for png in ("retrieval-amazon-beauty.png", "experiments-amazon-beauty.png"):
        assert (readme.parent / png).read_bytes().startswith(PNG_SIGNATURE)
        assert f"]({png})" in text
    assert "](retrieval-amazon-beauty.png)" in section
    # every run stays in the experiments table, the headline file marked, its served R@10 beside it
    table = text[experiments : text.index("## Per-canvas")]
    assert (
        "| ours | gen-fm (titles) (headline) | test | 0.0200 | 0.0100 | 0.0400 | 0.0200 | 0.0900 |" in table
    )
    for stem in ("codes", "old-fixed-weight", "titles-valid"):
        assert f"results/gen_fm/amazon-beauty-{stem}.json" in table


def test_the_report_imports_no_torch():
    """``sidrec report`` runs where torch is slow to load or absent: reading results needs none."""
    import subprocess
    import sys

    code = "import sys, sidrec.handlers.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
