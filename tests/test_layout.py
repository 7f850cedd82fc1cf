"""The package's layout holds: each part imports only the parts below it
(gpo/__init__.py draws them), and no modules import each other in a circle.
Read from the source (ast), lazy imports inside functions included."""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# What each part of gpo may import besides itself. The top (run, sweep, and
# any other module at the package root) composes the parts and may import all.
ALLOWED = {
    "infra": set(),
    "model": {"infra"},
    "losses": {"infra"},
    "data": {"infra", "model"},
    "reference": {"infra", "model", "data"},
    "training": {"infra", "model", "losses", "data", "reference"},
    "evaluation": {"infra", "model", "data"},
    "report": {"infra", "losses"},
    "bandit": {"infra", "losses"},
    # The top, beside run.py: sweeps compose runs (their outcomes, the report, Optuna trials).
    "sweeps": {"infra", "model", "losses", "data", "reference", "training", "evaluation", "report"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gpo_imports(path: Path) -> set[str]:
    """The gpo modules `path` imports (from-imports resolved to the module
    where the name lives, when it is a module of its own)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "gpo"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpo":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = any((SRC / Path(*candidate.split("."))).with_suffix(suffix).exists()
                                for suffix in (".py", "")) and candidate != node.module
                found.add(candidate if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): gpo_imports(path) for path in sorted((SRC / "gpo").rglob("*.py"))}


def part(module: str) -> str | None:
    """The part (subpackage) a module belongs to; None for the package root's modules."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 or (len(pieces) == 2 and pieces[1] in ALLOWED) else None


def test_every_subpackage_has_a_place_in_the_layers():
    packages = {path.parent.name for path in (SRC / "gpo").glob("*/__init__.py")}
    assert packages == set(ALLOWED), "a new subpackage: say which parts it may import (ALLOWED)"


def test_each_part_imports_only_the_parts_below_it():
    upward = []
    for module, imports in graph().items():
        here = part(module)
        if here is None:
            continue
        for target in imports:
            there = part(target)
            if there != here and there not in ALLOWED[here]:
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    # Importing gpo.x.y runs gpo/x/__init__.py first: an edge to a module is an edge to its packages too.
    for module, imports in edges.items():
        imports |= {".".join(t.split(".")[:i]) for t in imports for i in range(2, len(t.split(".")))}
        imports.discard(module)
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if target.startswith(module + "."):  # a package importing its own modules (its face)
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_an_upward_import(tmp_path, monkeypatch):
    """The layer test can fail: a module of infra importing a training module is caught."""
    fake = tmp_path / "gpo" / "infra"
    fake.mkdir(parents=True)
    (tmp_path / "gpo" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from gpo.training.module import GPOModule\n")
    (tmp_path / "gpo" / "training").mkdir()
    (tmp_path / "gpo" / "training" / "__init__.py").write_text("")
    (tmp_path / "gpo" / "training" / "module.py").write_text("import gpo.infra.bad\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert graph()["gpo.infra.bad"] == {"gpo.training.module"}
    with pytest.raises(AssertionError, match="gpo.infra.bad imports gpo.training.module"):
        test_each_part_imports_only_the_parts_below_it()
    with pytest.raises(AssertionError, match="gpo.infra.bad -> gpo.training.module -> gpo.infra.bad"):
        test_no_import_cycles()
