"""The house's floors, read from the imports: every import runs down a floor, never up or in a loop.

    top     sidrec/: the command line, the quickstart, refresh, benchmark commands (what a person runs)
    stages  semantic_ids -> gen_fm -> prompt_tuning -> serving -> eval (each imports only leftwards)
    ground  core/: data, sequences, artifacts, metrics, overrides, logs (shared by every stage)

The floor of a module is its top-level folder's, so the folder names alone tell a newcomer where a
file belongs.

vLLM is imported only inside ``serving/``. Imports under ``if TYPE_CHECKING:`` are not runtime
edges and are skipped. A failure names the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["semantic_ids", "gen_fm", "prompt_tuning", "serving", "eval"]
TOP = "sidrec"
GROUND = "core"
PACKAGES = [GROUND, *STAGES, TOP]


def floor(module: str) -> tuple[int, int]:
    """(floor, rank within the stage floor): ground 0, stages 1, top 2."""
    package = module.split(".")[0]
    if package == TOP:
        return 2, 0
    if package in STAGES:
        return 1, STAGES.index(package)
    return 0, 0


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    vllm = []
    for m, path in mods.items():
        for name in imports(path, m):
            if name.split(".")[0] == "vllm" and not m.startswith("serving"):
                vllm.append(f"{path.relative_to(ROOT)} imports {name}")
            target = name
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != m and not m.startswith(target + "."):  # a package's own __init__
                edges[m].add(target)
    return edges, vllm


def test_no_import_runs_up_a_floor_or_into_vllm_outside_serving():
    edges, vllm = graph()
    upward = [f"{a} imports {b}" for a, targets in edges.items() for b in targets if floor(b) > floor(a)]
    assert upward == [] and vllm == []


def test_no_import_cycle():
    edges, _ = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n) :] + [m, n]) if n in path else f"{m} -> {n}")
            elif n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule itself: a ground-floor module importing a stage is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("from gen_fm.train import pretrain\nif TYPE_CHECKING:\n    import serving\n")
    names = imports(probe, "core.probe")
    assert "gen_fm.train" in names and "serving" not in names
    assert floor("gen_fm.train") > floor("core.probe") and floor("sidrec.cli") > floor("eval.bench_canvases")


def test_every_package_is_a_floor():
    """A new top-level package must be placed on a floor here, or the checker would not see it."""
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == set(PACKAGES)
