"""One entry of the router strip (a router's verdict on one image, or why there is none), and
the hints that name the command which makes a missing artifact."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROUTERS_HINT = "run `evaluate-routers --run {run}` to fit and save the routers"
POLICIES_HINT = "run `evaluate-routers --run {run}` to fit and save the oracle policies"


@dataclass
class StripEntry:
    """One router's verdict on one image (or why there is none)."""

    name: str
    family: str                   # cascade | dispatcher | oracle
    status: str                   # ok | missing | n/a | error
    model: str | None = None      # the zoo model it chose
    answer: str | None = None     # that model's class name
    answer_index: int | None = None
    correct: bool | None = None   # only for test samples
    why: list[dict[str, Any]] = field(default_factory=list)
    why_text: str = ""
    message: str = ""
