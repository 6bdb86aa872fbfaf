"""Layers: imports go one way (common <- zoo, oracle <- router <- router.web; reports on tables).

No import circles either: not between two modules (lazy and type-only imports count), and not
between a package's own modules and one of its subpackages (``zoo`` <- ``zoo.compress``).

Every ``import`` in the library is read with ``ast`` (module level and inside functions, so a
lazy import counts) and checked against ``ALLOWED``; ``oracle/`` and ``common/`` never import torch.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "zoo", "oracle", "router", "reports", "scripts")

# layer -> the other layers it may import (its own layer is always allowed).
ALLOWED: dict[str, set[str]] = {
    "common": set(),                                    # neutral bottom: I/O and numpy tables
    "zoo": {"common"},                                  # data, models, training, profiling
    "oracle": {"common"},                               # numpy policies over the tables
    "router": {"common", "zoo", "oracle"},              # routers fitted, executed and timed
    "router.web": {"common", "zoo", "oracle", "router"},  # serving sits above router
    # Figures are built from saved tables and CSVs; oracle is numpy-only and gives the
    # reference model and the paired comparison, so reports never reach torch through it.
    "reports": {"common", "oracle"},
    "scripts": {"common", "zoo", "oracle", "router", "router.web", "reports"},
}
# (layer, module) pairs refused even though the layer table allows the direction.
DENIED: dict[tuple[str, str], str] = {
    ("router.web", "router.evaluate"): "the page must not depend on the evaluation harness",
}


def layer_of(module: str) -> str | None:
    """``router.web.app`` -> ``router.web``; ``zoo.compress.run`` -> ``zoo``; others -> None."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[:2] == ["router", "web"]:
        return "router.web"
    return parts[0]


def absolute_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute dotted name a ``from ... import`` in ``module`` imports from (relative
    imports resolved against the module's package)."""
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return base


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted module) of every import anywhere in ``tree``, lazy ones included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute_base(node, module, is_package)
            if base in PACKAGES:   # ``from router import web`` names a submodule: router.web
                out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, base))
    return out


def violations(source: str, module: str, filename: str, is_package: bool = False) -> list[str]:
    """Imports in ``source`` (the text of ``module``) that run against ``ALLOWED`` or ``DENIED``."""
    own = layer_of(module)
    found = []
    for line, target in imported_modules(ast.parse(source, filename), module, is_package):
        other = layer_of(target)
        if own is None or other is None:
            continue
        why = None
        if other != own and other not in ALLOWED[own]:
            why = f"layer {own!r} may import only {sorted(ALLOWED[own]) or 'nothing of ours'}"
        for (layer, denied), reason in DENIED.items():
            if own == layer and (target == denied or target.startswith(denied + ".")):
                why = reason
        if why:
            found.append(f"{filename}:{line}: imports {target} ({why})")
    return sorted(set(found))


def library_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_layer_is_in_the_table():
    assert set(ALLOWED) == {layer_of(module_name(p)) for p in library_files()}


def test_no_module_imports_a_layer_above_its_own():
    found = []
    for path in library_files():
        found += violations(path.read_text(), module_name(path), str(path.relative_to(ROOT)),
                            is_package=path.name == "__init__.py")
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_checker_flags_a_crafted_violation():
    source = ("import numpy as np\n"
              "from common.io import write_json\n"
              "from zoo.data import DatasetInfo\n"
              "def f():\n"
              "    from router import evaluate\n"
              "    import reports.style\n")
    found = violations(source, "oracle.fake", "oracle/fake.py")
    assert found == [
        "oracle/fake.py:3: imports zoo.data (layer 'oracle' may import only ['common'])",
        "oracle/fake.py:5: imports router.evaluate (layer 'oracle' may import only ['common'])",
        "oracle/fake.py:6: imports reports.style (layer 'oracle' may import only ['common'])",
    ]
    assert violations("from zoo.data import DatasetInfo\n", "common.x", "common/x.py") == [
        "common/x.py:1: imports zoo.data (layer 'common' may import only nothing of ours)"]
    web = violations("from router.evaluate import DEFAULT_SACRIFICES\n", "router.web.app", "a.py")
    assert web == ["a.py:1: imports router.evaluate "
                   "(the page must not depend on the evaluation harness)"]
    assert violations("from router.web import create_app\n", "router.base", "b.py") == [
        "b.py:1: imports router.web (layer 'router' may import only "
        "['common', 'oracle', 'zoo'])"]
    # relative imports resolve against the module's package
    assert violations("from .web import app\n", "router", "router/__init__.py",
                      is_package=True) != []
    assert violations("from ..policy import Policy\n", "oracle.sub.m", "c.py") == []
    assert violations("from . import style\n", "reports.build", "d.py") == []
    assert violations("from router.base import Router\n", "scripts.x", "e.py") == []


@pytest.mark.parametrize("package", ["oracle", "common"])
def test_package_never_imports_torch(package):
    modules = sorted(module_name(p) for p in (ROOT / package).rglob("*.py"))
    code = (f"import sys, {', '.join(modules)}; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- no import circles: between modules, and between a package and its subpackages --------

def import_edges(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules ``module`` imports (lazy and type-only imports included):
    ``from pkg import sub`` names the module ``pkg.sub``, anything else its longest prefix
    that is a module of ``modules``."""
    def known(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {m for a in node.names if (m := known(a.name))}
        elif isinstance(node, ast.ImportFrom):
            base = absolute_base(node, module, is_package)
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base)
                if target:
                    out.add(target)
    out.discard(module)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (each an import circle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def package_of(module: str, is_package: bool) -> str:
    """``zoo.compress.run`` -> ``zoo.compress``; a package's ``__init__`` is the package."""
    return module if is_package else module.rpartition(".")[0]


def package_graph(graph: dict[str, set[str]], packages: set[str]) -> dict[str, set[str]]:
    """Imports between packages (``zoo`` -> ``zoo.compress`` when a module directly in ``zoo``
    imports one in ``zoo.compress``): a subpackage above its parent must not be imported back."""
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        a = package_of(m, m in packages)
        out.setdefault(a, set()).update(
            b for t in targets if (b := package_of(t, t in packages)) != a)
    return out


def project_graph() -> tuple[dict[str, set[str]], set[str]]:
    files = library_files()
    modules = {module_name(p) for p in files}
    packages = {module_name(p) for p in files if p.name == "__init__.py"}
    graph = {module_name(p): import_edges(p.read_text(), module_name(p),
                                          p.name == "__init__.py", modules) for p in files}
    return graph, packages


def test_no_import_circles_between_modules():
    graph, _ = project_graph()
    found = circles(graph)
    assert not found, "modules that import each other (directly or round a loop):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


def test_no_package_imports_a_subpackage_that_imports_it():
    """A subpackage sits above (``zoo.compress``, ``router.web``) or below (``zoo.data``) its
    parent; imports between a package's own modules and a subpackage go one way only."""
    graph, packages = project_graph()
    pg = package_graph(graph, packages)
    found = []
    for c in circles(pg):
        edges = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                       if package_of(m, m in packages) in c and package_of(t, t in packages) in c
                       and package_of(m, m in packages) != package_of(t, t in packages))
        found.append(" <-> ".join(c) + ": " + "; ".join(edges))
    assert not found, "packages that import each other:\n" + "\n".join(found)


def test_circle_checkers_flag_crafted_circles():
    modules = {"zoo", "zoo.a", "zoo.b", "zoo.sub", "zoo.sub.c", "zoo.data", "zoo.data.fetch"}
    # lazy and type-only imports count; ``from pkg import sub`` is the submodule, not pkg
    assert import_edges("def f():\n    from zoo.b import X\n", "zoo.a", False,
                        modules) == {"zoo.b"}
    assert import_edges("if TYPE_CHECKING:\n    from zoo import b\n", "zoo.a", False,
                        modules) == {"zoo.b"}
    assert import_edges("from zoo.data import fetch\nfrom . import a\n", "zoo.data.x",
                        False, modules) == {"zoo.data.fetch", "zoo.data"}
    assert import_edges("from .sub.c import Y\n", "zoo.a", False, modules) == {"zoo.sub.c"}
    graph = {"zoo.a": {"zoo.b"}, "zoo.b": {"zoo.a"}, "zoo.sub.c": {"zoo.a"}, "zoo": set()}
    assert circles(graph) == [["zoo.a", "zoo.b"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    # zoo.a -> zoo.sub.c and zoo.sub.c -> zoo.b: no module circle, but an arrow back up
    graph = {"zoo.a": {"zoo.sub.c"}, "zoo.sub.c": {"zoo.b"}, "zoo.b": set()}
    assert circles(graph) == []
    pg = package_graph(graph, {"zoo", "zoo.sub"})
    assert pg == {"zoo": {"zoo.sub"}, "zoo.sub": {"zoo"}} and circles(pg) == [["zoo",
                                                                              "zoo.sub"]]
    # a package's __init__ re-exporting its subpackage is no arrow back when the subpackage
    # does not import the package's other modules
    ok = {"zoo": {"zoo.data.fetch"}, "zoo.data.fetch": set(), "zoo.a": {"zoo.data.fetch"}}
    assert circles(package_graph(ok, {"zoo", "zoo.data"})) == []

# ---- the repository explains itself ---------------------------------------------------------

TEXT_SUFFIXES = (".py", ".md", ".cfg", ".toml", ".txt", ".html", ".js", ".css", ".yml", ".yaml")


def tracked_text_files() -> list[Path]:
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return [ROOT / f for f in done.stdout.split()
            if (f.endswith(TEXT_SUFFIXES) or Path(f).name == "Makefile") and (ROOT / f).is_file()]


def test_no_file_points_outside_the_repository_or_to_a_missing_document():
    """Every ``X.md`` a tracked file names is a file of the repository (there is no DESIGN.md),
    and nothing points into ``../shared/``."""
    files = tracked_text_files()
    here = {str(p.relative_to(ROOT)) for p in files} | {p.name for p in files}
    found = []
    for path in files:
        if path == Path(__file__).resolve():   # this test spells out what it looks for
            continue
        text = path.read_text(errors="ignore")
        for line_no, line in enumerate(text.splitlines(), 1):
            for doc in re.findall(r"[\w./-]*\.md\b", line):
                if doc not in here and Path(doc).name not in here:
                    found.append(f"{path.relative_to(ROOT)}:{line_no}: names {doc}")
            if "../shared" in line:
                found.append(f"{path.relative_to(ROOT)}:{line_no}: points into ../shared/")
    assert not found, "references to files that are not in the repository:\n" + "\n".join(found)
