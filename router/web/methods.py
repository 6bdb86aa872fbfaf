"""What a request can be served by: one zoo model, or a routed classifier of the run.

Keys: ``single:<model>`` (a finished model of ``RUN/zoo``) and ``router:<stem>`` (an artifact
``RUN/routers/<stem>.pt`` written by ``evaluate-routers``). Three aliases name the methods the
study compares at a sacrifice level, read from ``RUN/results/routers.csv`` (zoo ``all``):

- ``best-single``: the row of family ``best-single`` (the most accurate single model on val);
- ``cheapest-single``: the row of family ``cheapest-single`` at that level (the cheapest single
  model whose val accuracy meets the level's target);
- ``selected``: the row marked ``selected`` at that level (the answer val chose: a router, or
  the cheapest adequate single model itself).

A row's method is a single model when it names one (``best-single:tiny_vgg5``), else the router
artifact evaluate-routers saved for it, ``routers/<method>-s<level:g>.pt``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from router.execute import run_model
from router.web.images import InputError

ALIASES = ("best-single", "cheapest-single", "selected")
DEFAULT_LEVEL = 0.005
_EPS = 1e-9


@dataclass
class ServedMethod:
    """A callable on a uint8 batch ``(N, C, H, W)`` of the size ``info`` names."""

    key: str                        # single:<model> | router:<stem>
    kind: str                       # single | router
    info: Any                       # zoo.data.DatasetInfo: channels, input size, classes
    run: Callable[[torch.Tensor], tuple[np.ndarray, list[str], np.ndarray]]  # preds, models, conf
    models: list[str] = field(default_factory=list)   # the zoo models it may call

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "input_size": self.info.input_size,
                "models": self.models}


def single_method(name: str, model: torch.nn.Module, info: Any,
                  batch_size: int = 256, how: Any = None) -> ServedMethod:
    """One zoo model on the whole batch (``how``: its own preprocessing; default ``info``'s)."""
    def run(x: torch.Tensor) -> tuple[np.ndarray, list[str], np.ndarray]:
        probs = torch.softmax(run_model(model, x, info if how is None else how, batch_size),
                              dim=1)
        conf, preds = probs.max(dim=1)
        return preds.numpy(), [name] * len(x), conf.numpy()
    return ServedMethod(f"single:{name}", "single", info, run, [name])


def router_method(stem: str, routed: Any) -> ServedMethod:
    """A ``RoutedClassifier``: routes the batch, runs each chosen model on its group."""
    def run(x: torch.Tensor) -> tuple[np.ndarray, list[str], np.ndarray]:
        out = routed(x)
        return np.asarray(out.preds), out.chosen_names, np.asarray(out.confidence)
    models = [n for n, m in zip(routed.model_names, routed.models) if m is not None]
    return ServedMethod(f"router:{stem}", "router", routed.info, run, models)


def method_of_row(row: Mapping[str, str]) -> str:
    """The served key of a routers.csv row."""
    method = row["method"]
    if ":" in method:
        return "single:" + method.split(":", 1)[1]
    return f"router:{method}-s{float(row['sacrifice']):g}"


def resolve_alias(rows: Sequence[Mapping[str, str]], alias: str, level: float,
                  zoo: str = "all") -> tuple[str, Mapping[str, str]]:
    """(served key, routers.csv row) of ``alias`` at ``level``; ``LookupError`` says why not."""
    if alias not in ALIASES:
        raise LookupError(f"unknown method alias {alias!r}; use one of {list(ALIASES)}, "
                          "single:<model> or router:<artifact stem>")
    at = [r for r in rows if r.get("zoo", "all") == zoo
          and abs(float(r["sacrifice"]) - level) < _EPS]
    if not at:
        levels = sorted({float(r["sacrifice"]) for r in rows if r.get("zoo", "all") == zoo})
        raise LookupError(f"routers.csv has no level {level:g} for zoo {zoo!r}; levels: "
                          f"{[f'{v:g}' for v in levels]}")
    if alias == "selected":
        hit = [r for r in at if str(r.get("selected", "")).strip().lower() in ("1", "true", "1.0")]
    else:
        hit = [r for r in at if r["family"] == alias]
    if not hit:
        raise LookupError(f"routers.csv has no {alias} row at level {level:g} (zoo {zoo}); "
                          "re-run `evaluate-routers`")
    return method_of_row(hit[0]), hit[0]


def resolve_key(name: str, level: float, methods: Mapping[str, Any],
                rows: Sequence[Mapping[str, str]] | None, rows_note: str = "") -> str:
    """The served key of ``name`` (a key of ``methods`` or an alias at ``level``);
    ``LookupError`` names what exists."""
    if name in methods:
        return name
    if name in ALIASES:
        if rows is None:
            raise LookupError(f"method {name!r} needs RUN/results/routers.csv ({rows_note})")
        key, _ = resolve_alias(rows, name, level)
        if key not in methods:
            raise LookupError(f"{name} at level {level:g} is {key}, which this server has not "
                              "loaded (its artifact or model is missing from the run)")
        return key
    raise LookupError(f"unknown method {name!r}; use {list(ALIASES)} (with level=S), "
                      "single:<model> or router:<artifact stem>; see GET /api/methods")


class BadParameter(LookupError):
    """A request parameter whose value the server cannot take (HTTP 400): names the parameter
    and the values it may have."""

    def __init__(self, parameter: str, value: Any, allowed: Sequence[str], note: str = ""):
        self.parameter, self.value, self.allowed = parameter, value, list(allowed)
        shown = ", ".join(self.allowed) if self.allowed else "none"
        super().__init__(f"bad parameter {parameter}={value!r}: allowed values are {shown}"
                         + (f" ({note})" if note else ""))

    def fields(self) -> dict[str, Any]:
        """What a JSON error body adds to the message."""
        return {"parameter": self.parameter, "allowed": self.allowed}


def run_levels(rows: Sequence[Mapping[str, str]] | None, zoo: str = "all") -> list[float]:
    """The sacrifice levels routers.csv has for ``zoo``, ascending; [] without routers.csv."""
    return sorted({float(r["sacrifice"]) for r in rows or [] if r.get("zoo", "all") == zoo})


def parse_level(raw: str | None, rows: Sequence[Mapping[str, str]] | None,
                rows_note: str = "") -> float | None:
    """A request's ``level=S``: None when absent, else one of the run's levels;
    ``BadParameter`` names the levels there are (none without routers.csv)."""
    if raw is None or str(raw).strip() == "":
        return None
    levels = run_levels(rows)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not any(abs(value - v) < _EPS for v in levels):   # nan and inf match nothing
        note = ("the levels of RUN/results/routers.csv, zoo 'all'" if rows is not None
                else f"this run has no levels: {rows_note or 'no routers.csv'}")
        raise BadParameter("level", raw, [f"{v:g}" for v in levels], note)
    return value


def request_key(name: str | None, level_raw: str | None, default_level: float,
                methods: Mapping[str, Any], rows: Sequence[Mapping[str, str]] | None,
                rows_note: str = "") -> str | None:
    """The served key a request's ``method`` and ``level`` parameters name (None: no method
    given, serve the default). A malformed parameter raises ``BadParameter`` (HTTP 400: the
    parameter and its allowed values); a known alias the run cannot resolve ``LookupError``."""
    level = parse_level(level_raw, rows, rows_note)
    if not name:
        return None
    if name not in methods and name not in ALIASES:
        raise BadParameter("method", name, [*methods, *ALIASES],
                           "an alias takes level=S; see GET /api/methods")
    return resolve_key(name, default_level if level is None else level, methods, rows,
                       rows_note)


def resolve_request(name: str | None, level_raw: str | None, default_level: float,
                    methods: Mapping[str, "ServedMethod"],
                    rows: Sequence[Mapping[str, str]] | None, rows_note: str,
                    default: "ServedMethod") -> "ServedMethod":
    """The served method a request names (``default`` when it names none), as an HTTP error
    otherwise: ``InputError`` 400 naming a bad parameter and its allowed values, 404 for an
    alias the run cannot resolve (the embedded service and the Ray ingress share this)."""
    try:
        key = request_key(name, level_raw, default_level, methods, rows, rows_note)
    except BadParameter as e:
        raise InputError(str(e), 400, **e.fields()) from None
    except LookupError as e:
        raise InputError(str(e), 404) from None
    return default if key is None else methods[key]


def load_rows_or_none(run: str | Path) -> tuple[list[dict[str, str]] | None, str]:
    """RUN/results/routers.csv rows, or None and why (the aliases then cannot be resolved)."""
    from router.bench import load_rows
    try:
        return load_rows(run), ""
    except (FileNotFoundError, ValueError) as e:
        return None, str(e)
