"""One seaborn theme for every figure, and ``save_figure`` (PNG plus the plotted data as CSV).

Figures are saved at a fixed ``figsize * dpi`` pixel size (no tight bounding box), so a test can
check the size of every PNG; layouts fit through matplotlib's constrained layout instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from common.io import atomic_write  # noqa: E402

DEFAULT_DPI = 110
OVERLAP_CMAP = "viridis"           # the one colour map of every overlap map (fixed 0-100 scale)
CONFUSION_CMAP = "Blues"
OVERLAP_VMIN, OVERLAP_VMAX = 0.0, 100.0
PALETTE = "tab10"
# reference lines stay out of the tab10 palette the methods use
REFERENCE_STYLE = {"best-single": dict(color="dimgray", linestyle="--", linewidth=1.4),
                   "cheapest-single": dict(color="dimgray", linestyle=(0, (6, 2, 1, 2)),
                                           linewidth=1.1, marker="s", markersize=4.5,
                                           markerfacecolor="none"),
                   "ceiling": dict(color="black", linestyle=":", linewidth=1.5)}
# the answer selected on val at a level (routers.csv ``selected``): a ring around its point
SELECTED_STYLE = dict(marker="o", s=150, facecolors="none", edgecolors="crimson",
                      linewidths=1.4, zorder=4)
SELECTED_LABEL = "selected on val (deployed at its level)"


# One colour per routing method in every figure (its executed twin and its cost-matched random
# baseline share it); methods not listed take the next free colour of the palette. The router
# kinds' own colours and markers come from the run (``use_router_kinds``).
METHOD_COLORS = {"oracle-overlap": "tab:red", "oracle-accuracy": "tab:purple",
                 "oracle-budget": "tab:brown", "ceiling": "black", "ceiling-budget": "black"}
# the deployable router families of runs written before RUN/results/router_kinds.json
LEGACY_FAMILIES = ("cascade", "learned", "dispatcher")
_KIND_FAMILIES: list[str] = []


def use_router_kinds(kinds: Iterable[Mapping[str, Any]] | None) -> None:
    """Register the router kinds a run was evaluated with (``RUN/results/router_kinds.json``,
    written by evaluate-routers from its kind table): each kind's colour and marker, and its
    family among the deployable ones (replacing the previous run's). None (an older run): the
    families of older runs."""
    _KIND_FAMILIES.clear()
    for k in kinds or []:
        METHOD_COLORS[str(k["name"])] = str(k["color"])
        METHOD_MARKERS[str(k["name"])] = (str(k.get("marker", "o")), float(k.get("size", 4.5)))
        if k["family"] not in _KIND_FAMILIES:
            _KIND_FAMILIES.append(str(k["family"]))


def deployable_families() -> tuple[str, ...]:
    """The families of deployable routers: the registered kinds' (``use_router_kinds``), else
    those of older runs."""
    return tuple(_KIND_FAMILIES) or LEGACY_FAMILIES
_SPARE_COLORS = ["tab:pink", "tab:olive", "tab:gray", "gold", "navy", "teal", "maroon"]
LOG_SPAN = 10.0   # an axis of rates spanning more than this factor is drawn on a log scale


def method_key(method: str) -> str:
    """The routing rule behind a method name: ``oracle-budget-executed`` and
    ``random~oracle-budget`` both belong to ``oracle-budget``."""
    key = method.split("~", 1)[1] if method.startswith("random~") else method
    return key[:-len("-executed")] if key.endswith("-executed") else key


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A stable colour for each method (by its rule, see ``method_key``)."""
    out: dict[str, str] = {}
    spare = iter(_SPARE_COLORS * 4)
    extra: dict[str, str] = {}
    for m in methods:
        key = method_key(m)
        if key in METHOD_COLORS:
            out[m] = METHOD_COLORS[key]
        else:
            if key not in extra:
                extra[key] = next(spare)
            out[m] = extra[key]
    return out


# marker per rule: hollow markers of different shapes and sizes stay visible where the
# lines of two rules coincide (the three label oracles often do)
METHOD_MARKERS = {"oracle-overlap": ("s", 7.0), "oracle-accuracy": ("^", 5.5),
                  "oracle-budget": ("D", 3.5)}


def method_line_kw(method: str, family: str, color: str) -> dict[str, Any]:
    """Line style by family: deployable routers solid with filled markers, oracle policies
    (bounds: they route by the true label) dashed with hollow markers, random baselines thin
    dotted without markers."""
    if family == "random":
        return dict(color=color, linestyle=":", linewidth=1.0, alpha=0.75, marker=None)
    marker, size = METHOD_MARKERS.get(method_key(method), ("o", 4.5))
    if family in ("oracle", "oracle-executed"):
        return dict(color=color, linestyle="--", linewidth=1.3, marker=marker, markersize=size,
                    markerfacecolor="none", markeredgewidth=1.1)
    return dict(color=color, linestyle="-", linewidth=1.8, marker=marker, markersize=size)


def method_label(method: str, family: str) -> str:
    """Legend text that says what a line is."""
    if family == "random":
        return f"{method} (cost-matched random)"
    if family in ("oracle", "oracle-executed"):
        return f"{method} (label oracle, bound)"
    return method


def log_scale_if_wide(ax: Any, values: Iterable[float], axis: str = "x",
                      span: float = LOG_SPAN) -> bool:
    """Put ``axis`` on a log scale when the positive finite ``values`` span more than ``span``x
    (rates of models a decade apart are unreadable on a linear axis). Returns whether it did."""
    import numpy as np
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2 or (v <= 0).any() or v.max() / v.min() <= span:
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    return True


def human(value: float, unit: str = "") -> str:
    """Compact number: 950, 1.2k, 3.4M, 5.6G (with an optional unit)."""
    import math
    if value is None or not math.isfinite(value):
        return ""
    a = abs(value)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{value / div:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def _is_2_or_5(v: float) -> bool:
    """A tick value whose leading digit is 2 or 5 (0.2, 50, 2000...)."""
    import math
    if v <= 0:
        return False
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return min(abs(mantissa - 2), abs(mantissa - 5)) < 1e-6


def human_axis(ax: Any, axis: str = "x", fmt: Any = None) -> None:
    """Tick labels as ``human`` numbers (no 1e6 offset text, no 10^k); on a log axis the 2x and
    5x minor ticks are labelled too. ``fmt`` replaces ``human`` (e.g. ``"{:g}".format``)."""
    from matplotlib.ticker import FuncFormatter
    text = fmt or (lambda v: human(v) if v else "0")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(FuncFormatter(lambda v, _pos: text(v)))
    if (ax.get_xscale() if axis == "x" else ax.get_yscale()) == "log":
        target.set_minor_formatter(FuncFormatter(
            lambda v, _pos: text(v) if _is_2_or_5(v) else ""))


def apply_theme() -> None:
    """Set the report's seaborn theme (idempotent)."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE,
                  rc={"figure.dpi": DEFAULT_DPI, "savefig.dpi": DEFAULT_DPI,
                      "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7,
                      "xtick.labelsize": 8, "ytick.labelsize": 8,
                      "font.family": "DejaVu Sans"})


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1,
               **kw: Any) -> tuple[plt.Figure, Any]:
    """A themed figure with constrained layout (so saving needs no tight bounding box)."""
    apply_theme()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained",
                             squeeze=False, **kw)
    return fig, axes


def shared_legend(fig: Any, axes: Iterable[Any], title: str | None = None) -> None:
    """One legend for all panels, outside on the right (no duplicates)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
        if ax.get_legend():
            ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7, title=title)


def as_frame(data: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The figure's data as a DataFrame (rows of dicts are accepted)."""
    return data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))


def save_figure(fig: plt.Figure, path: str | Path,
                data: pd.DataFrame | Iterable[Mapping[str, Any]],
                dpi: int = DEFAULT_DPI) -> tuple[Path, Path]:
    """Write ``path`` (.png) and the same name with ``.csv`` holding ``data``; close the figure.

    Both files are written atomically. Returns ``(png_path, csv_path)``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path {path} must end in .png (its data goes beside it as .csv)")
    frame = as_frame(data)
    if frame.empty:
        raise ValueError(f"no data for figure {path.name}: a figure must carry the data it plots")
    png = atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    csv = atomic_write(path.with_suffix(".csv"), lambda p: frame.to_csv(p, index=False))
    plt.close(fig)
    return png, csv
