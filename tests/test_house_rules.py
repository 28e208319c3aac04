"""Rules a newcomer's reading depends on, checked over every module of the project: a module
docstring says what the module is for in a few lines, and the project's own imports sit at the
top of a module, unless one must wait for a heavy optional library (then a comment says why). The
README stays short and every link between the docs leads to a file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.test_layers import PACKAGES, ROOT

MAX_DOCSTRING_LINES = 15
MAX_LOCAL_IMPORTS = 19


def _trees():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            yield path.relative_to(ROOT), text.splitlines(), ast.parse(text)


def test_no_module_docstring_is_longer_than_15_lines():
    long = [
        f"{path}: {len(doc.splitlines())} lines"
        for path, _, tree in _trees()
        if (doc := ast.get_docstring(tree, clean=False)) and len(doc.splitlines()) > MAX_DOCSTRING_LINES
    ]
    assert long == []


def test_few_function_local_imports_of_the_project_each_with_its_reason():
    local, unexplained = [], []
    for path, lines, tree in _trees():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                if not any(n.split(".")[0] in PACKAGES for n in names):
                    continue
                local.append(f"{path}:{node.lineno}")
                line, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                if "#" not in line and not above.startswith("#"):
                    unexplained.append(f"{path}:{node.lineno}")
    assert len(local) <= MAX_LOCAL_IMPORTS, local
    assert unexplained == []


def _docs() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_stays_under_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200


def test_every_link_between_the_docs_leads_to_a_file():
    broken = []
    for doc in _docs():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
