"""Packaging: every third-party import is declared in setup.cfg, and the library (everything
but the page and the figures) needs no extra."""
from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"common", "zoo", "oracle", "router", "reports", "scripts", "tests"}
DIST_OF = {"sklearn": "scikit-learn", "PIL": "pillow"}   # import name -> distribution name


def declared() -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    def names(text: str) -> set[str]:
        return {re.split(r"[<>=!\[; ]", line.strip(), maxsplit=1)[0].lower()
                for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}
    out = {"core": names(cfg["options"]["install_requires"])}
    for extra, text in cfg["options.extras_require"].items():
        out[extra] = names(text)
    return out


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """distribution name -> files importing it, over every .py under ``folder``."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top in OURS or top in sys.stdlib_module_names or top == "__future__":
                    continue
                found.setdefault(DIST_OF.get(top, top).lower(), set()).add(
                    str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared():
    decl = declared()
    everything = set().union(*decl.values())
    for folder in ("common", "zoo", "oracle", "router", "reports", "scripts"):
        missing = {d: sorted(f)[:3] for d, f in third_party_imports(folder).items()
                   if d not in everything}
        assert not missing, f"undeclared imports in {folder}/: {missing}"


def test_the_library_needs_no_extra():
    core = declared()["core"]
    for folder in ("common", "zoo", "oracle", "router"):
        for dist, files in third_party_imports(folder).items():
            files = {f for f in files if not f.startswith("router/web/")}
            assert not files or dist in core, f"{dist} imported by {sorted(files)} is not core"
    assert "flask" in declared()["web"] and "seaborn" in declared()["reports"]
