"""What the router figures share: the families of ``results/routers.csv``, the rows each figure
draws, the lines every method and reference gets, the evenly spaced sacrifice axis.

Families in routers.csv: ``single`` and ``best-single`` rows are single models (points and
reference lines); ``cheapest-single`` is the cheapest model meeting each level's target on val
(a second reference, drawn over the levels); ``ceiling`` is the per-sample oracle (a
reference); the routed families (oracle, oracle-executed, dispatcher, cascade, random) are
curves over their sacrifice levels. Every routing method keeps one colour in every figure
(``style.method_colors``); line style says what it is: solid = deployable router, dashed =
label oracle (a bound), dotted = the cost-matched random baseline. The answer selected on val
at each level (``selected``) is ringed.

Router figures draw one zoo (``zoo="all"`` by default: routers fitted over the whole zoo), so
no row is drawn twice; a routers.csv without a ``zoo`` column is all ``"all"``. The figures
themselves: ``reports.frontier`` (accuracy against throughput) and ``reports.sacrifice``
(quality, time and model shares against the sacrifice level).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from reports import style
from reports.inputs import model_of, selected_rows


SINGLE_FAMILIES = ("single", "best-single")
REFERENCE_FAMILIES = ("single", "best-single", "cheapest-single", "ceiling")
REFERENCE_ROWS = ("best-single", "cheapest-single", "ceiling")   # in the figures' data_
CHEAPEST_LABEL = "cheapest adequate single model (on val)"
# oracle-executed rows carry the same predictions as their simulated oracle rows (only timed)
SAME_AS_ORACLE = ("oracle-executed",)
METRICS = ("accuracy", "precision", "recall", "f1")
METRIC_LABELS = {"accuracy": "accuracy (%)", "precision": "precision, macro (%)",
                 "recall": "recall, macro (%)", "f1": "F1, macro (%)"}
BOUND_FAMILIES = ("oracle", "oracle-executed", "random")    # drawn after the deployable ones
SACRIFICE_LABEL = "sacrifice budget s (accuracy points; levels evenly spaced)"


def level_axis(ax: Any, frame: pd.DataFrame) -> Callable[[Any], np.ndarray]:
    """Evenly spaced sacrifice levels (0, 0.5, 1, 2, 5, 10 % would crowd the small ones on a
    linear axis); returns the map from sacrifice fractions to x positions."""
    levels = np.sort(frame["sacrifice"].dropna().astype(float).unique())

    def xmap(values: Any) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        return np.interp(v, levels, np.arange(len(levels))) if len(levels) > 1 else v * 0

    ax.set_xticks(np.arange(len(levels)), [f"{100 * v:g}%" for v in levels])
    return xmap


def routed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of methods that have a sacrifice level (everything but single models and ceiling)."""
    rows = frame[~frame["family"].isin(REFERENCE_FAMILIES)].copy()
    rows = rows[rows["sacrifice"].notna()]
    return rows.sort_values(["method", "sacrifice"], kind="stable")


def best_single_row(frame: pd.DataFrame) -> pd.Series | None:
    """The ``best-single`` row (the reference model, most accurate on val), if written."""
    rows = frame[frame["family"] == "best-single"]
    return None if rows.empty else rows.iloc[0]


def ceiling_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["family"] == "ceiling"].sort_values("sacrifice", kind="stable")


def method_order(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(method, family) pairs: deployable routers first, then oracles, then random baselines."""
    pairs = list(dict.fromkeys(zip(rows["method"], rows["family"])))
    rank = {f: i for i, f in enumerate(style.deployable_families() + BOUND_FAMILIES)}
    return sorted(pairs, key=lambda p: (rank.get(p[1], len(rank)), p[0]))


def draw_methods(ax: Any, rows: pd.DataFrame, x: str, y: str, scale: float = 1.0,
                  xmap: Callable[[Any], Any] | None = None) -> None:
    """One line per method over its sacrifice levels, styled by family."""
    pairs = method_order(rows)
    colors = style.method_colors(m for m, _ in pairs)
    for method, family in pairs:
        part = rows[(rows["method"] == method)].dropna(subset=[x, y]).sort_values(
            "sacrifice", kind="stable")
        if part.empty:
            continue
        xs = part[x].to_numpy(dtype=float)
        ax.plot(xmap(xs) if xmap else xs, scale * part[y],
                label=style.method_label(method, family),
                **style.method_line_kw(method, family, colors[method]))


def reference_lines(ax: Any, frame: pd.DataFrame, column: str, scale: float = 1.0,
                     xmap: Callable[[Any], Any] | None = None) -> None:
    """Best single model (horizontal) and the per-sample ceilings (a line, or a curve where a
    ceiling method has several values over the sacrifice levels)."""
    best = best_single_row(frame)
    if best is not None and column in best and np.isfinite(best[column]):
        ax.axhline(scale * best[column], label=f"best single model ({model_of(best)})",
                   zorder=1.6, **style.REFERENCE_STYLE["best-single"])
    if column not in frame.columns:
        return
    cheap = frame[frame["family"] == "cheapest-single"].dropna(subset=["sacrifice", column])
    if not cheap.empty:
        cheap = cheap.sort_values("sacrifice", kind="stable")
        xs = cheap["sacrifice"].to_numpy(dtype=float)
        ax.plot(xmap(xs) if xmap else 100 * xs, scale * cheap[column].to_numpy(dtype=float),
                label=CHEAPEST_LABEL, zorder=1.7, **style.REFERENCE_STYLE["cheapest-single"])
    for method, part in ceiling_rows(frame).groupby("method", sort=False):
        vals = part[["sacrifice", column]].dropna()
        if vals.empty:
            continue
        label = f"{method} (per-sample oracle, bound)"
        if vals[column].nunique() > 1:
            xs = vals["sacrifice"].to_numpy(dtype=float)
            ax.plot(xmap(xs) if xmap else 100 * xs, scale * vals[column], marker="*",
                    label=label, zorder=1.6,
                    **{**style.REFERENCE_STYLE["ceiling"], "linestyle": "-."})
        else:
            ax.axhline(scale * float(vals[column].iloc[0]), label=label, zorder=1.6,
                       **style.REFERENCE_STYLE["ceiling"])


def mark_selected(ax: Any, frame: pd.DataFrame, x: str, y: str, scale: float = 1.0,
                   xmap: Callable[[Any], Any] | None = None) -> None:
    """A ring around each level's answer selected on val."""
    sel = selected_rows(frame).dropna(subset=[x, y])
    if sel.empty:
        return
    xs = sel[x].to_numpy(dtype=float)
    ax.scatter(xmap(xs) if xmap else xs, scale * sel[y].to_numpy(dtype=float),
               label=style.SELECTED_LABEL, **style.SELECTED_STYLE)


def data_columns(frame: pd.DataFrame, keep: list[str]) -> list[str]:
    return keep + [c for c in ("zoo", "selected") if c in frame.columns and c not in keep]


def target_line(ax: Any, frame: pd.DataFrame, scale: float = 100.0,
                 xmap: Callable[[Any], Any] | None = None) -> None:
    """The accuracy each level promises: the best single model's test accuracy minus s."""
    if "target_accuracy" in frame.columns and frame["target_accuracy"].notna().any():
        t = frame.dropna(subset=["target_accuracy", "sacrifice"]).groupby("sacrifice")[
            "target_accuracy"].first()
    else:
        best = best_single_row(frame)
        if best is None or not np.isfinite(best.get("accuracy", np.nan)):
            return
        levels = np.sort(frame["sacrifice"].dropna().unique())
        t = pd.Series(float(best["accuracy"]) - levels, index=levels)
    if len(t):
        xs = t.index.to_numpy(dtype=float)
        ax.plot(xmap(xs) if xmap else 100 * xs, scale * t.to_numpy(dtype=float), zorder=1.6,
                color="gray", linewidth=0.9, linestyle=(0, (1, 1)),
                label="target: best single - s")


def need_rows(frame: pd.DataFrame, what: str) -> None:
    if frame.empty:
        raise ValueError(f"routers.csv has no routed rows (families other than "
                         f"{list(REFERENCE_FAMILIES)}) to draw {what}; re-run `evaluate-routers`")


def timing_note(frame: pd.DataFrame) -> str:
    """'N test images' from the rows' timing_samples, where recorded and unique."""
    if "timing_samples" in frame.columns:
        n = pd.to_numeric(frame["timing_samples"], errors="coerce").dropna().unique()
        if len(n) == 1 and n[0] > 0:
            return f"{int(n[0]):,} test images"
    return "the timed test images"
