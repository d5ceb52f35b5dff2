"""The architecture's rules, read from the code's own imports (module and function level;
``if TYPE_CHECKING:`` blocks ignored):

1. embedcache never imports probes (the extraction side never reaches up);
2. probes never imports the encoder zoo (``embedcache.encoders``), except ``probes.finetune``;
3. no import cycle among our modules (a package re-exporting its own children aside).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("embedcache", "probes")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of our packages."""
    found = {}
    for package in PACKAGES:
        for file in (root / package).rglob("*.py"):
            parts = list(file.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = file
    return found


def import_edges(mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` for every import of one of our modules."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for name, file in mods.items():
        tree = ast.parse(file.read_text())
        skipped = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = (
                        name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
                    )
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in sorted({resolve(t) for t in targets} - {None, name}):
                edges.append((name, target, node.lineno))
    return edges


def broken_rules(root: Path = ROOT) -> list[str]:
    """Every broken rule, as ``what: module:line (target)``."""
    mods = modules(root)
    edges = import_edges(mods)
    broken: dict[str, str] = {}  # one message per rule and import statement
    for source, target, line in edges:
        if source.startswith("embedcache") and target.startswith("probes"):
            broken.setdefault(f"embedcache imports probes: {source}:{line}", f" ({target})")
        if (
            source.startswith("probes")
            and not source.startswith("probes.finetune")
            and target.startswith("embedcache.encoders")
        ):
            broken.setdefault(f"probes reaches the encoder zoo: {source}:{line}", f" ({target})")
    messages = [rule + target for rule, target in broken.items()]
    names = sorted(mods)
    index = {n: i for i, n in enumerate(names)}
    rows = [index[s] for s, _, _ in edges]
    cols = [index[t] for _, t, _ in edges]
    graph = csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=True, connection="strong")
    for label in np.unique(labels):
        members = [names[i] for i in np.flatnonzero(labels == label)]
        top = min(members, key=len)
        if len(members) > 1 and not all(m == top or m.startswith(top + ".") for m in members):
            messages.append("import cycle: " + " <-> ".join(members))
    return messages


def test_the_layering_rules_hold():
    assert broken_rules() == []


def test_the_rules_catch_each_kind_of_break(tmp_path):
    """A copy of a tiny tree breaking each rule once is caught three times."""
    for package, files in {
        "embedcache": {
            "__init__.py": "",
            "encoders/__init__.py": "",
            "encoders/base.py": "",
            "store.py": "def f():\n    from probes.core import run\n",
        },
        "probes": {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/run.py": "from probes.core import table\n",
            "core/table.py": "import probes.core.run\n",
            "report.py": "from embedcache.encoders.base import x\n",
            "finetune/__init__.py": "from embedcache.encoders import base\n",
        },
    }.items():
        for relative, text in files.items():
            path = tmp_path / package / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    found = broken_rules(tmp_path)
    assert any(b.startswith("embedcache imports probes: embedcache.store:2") for b in found)
    assert any(b.startswith("probes reaches the encoder zoo: probes.report:1") for b in found)
    assert "import cycle: probes.core.run <-> probes.core.table" in found
    assert not any("probes.finetune" in b for b in found)  # the fine-tune may build encoders
    assert len(found) == 3
