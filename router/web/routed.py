"""Routed classifiers (cascade, dispatcher) saved under ``RUN/routers/``, seen by the page.

Each loaded router gives, for one image, the zoo model it picks, that model's answer, and why
(cascade: each stage's confidence against its threshold; dispatcher: its score per model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from router.web.strip import ROUTERS_HINT, StripEntry

FAMILIES = ("cascade", "dispatcher")


def load_all(routers_dir: Path, run_root: Path, model_names: list[str]) -> tuple[list[Any], list[StripEntry]]:
    """Routers found under ``routers_dir`` and entries for the families that are missing."""
    hint = ROUTERS_HINT.format(run=run_root)
    routers: list[Any] = []
    errors: list[StripEntry] = []
    for family in FAMILIES:
        errors.append(StripEntry(family, family, "missing",
                                 message=f"no saved {family} in {routers_dir}: {hint}"))
    return routers, errors
