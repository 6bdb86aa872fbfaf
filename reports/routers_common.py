"""Curves from ``results/routers.csv`` and training histories.

Families in routers.csv: ``single`` and ``best-single`` rows are single models (points and
reference lines); ``cheapest-single`` is the cheapest model meeting each level's target on val
(a second reference, drawn over the levels); ``ceiling`` is the per-sample oracle (a
reference); the routed families (oracle, oracle-executed, dispatcher, cascade, random) are
curves over their sacrifice levels. Every routing method keeps one colour in every figure
(``style.method_colors``); line style says what it is: solid = deployable router, dashed =
label oracle (a bound), dotted = the cost-matched random baseline. The answer selected on val
at each level (``selected``) is ringed.

Router figures draw one zoo (``zoo="all"`` by default: routers fitted over the whole zoo), so
no row is drawn twice; a routers.csv without a ``zoo`` column is all ``"all"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from reports import style
from reports.inputs import DEFAULT_ZOO, _as_bool, model_of, zoo_rows

SINGLE_FAMILIES = ("single", "best-single")
REFERENCE_FAMILIES = ("single", "best-single", "cheapest-single", "ceiling")
REFERENCE_ROWS = ("best-single", "cheapest-single", "ceiling")   # in the figures' data_
CHEAPEST_LABEL = "cheapest adequate single model (on val)"
# oracle-executed rows carry the same predictions as their simulated oracle rows (only timed)
SAME_AS_ORACLE = ("oracle-executed",)
METRICS = ("accuracy", "precision", "recall", "f1")
METRIC_LABELS = {"accuracy": "accuracy (%)", "precision": "precision, macro (%)",
                 "recall": "recall, macro (%)", "f1": "F1, macro (%)"}
FAMILY_ORDER = ("cascade", "learned", "dispatcher", "oracle", "oracle-executed", "random")
DEPLOYABLE_FAMILIES = ("cascade", "learned", "dispatcher")   # see only the image
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


def _method_order(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(method, family) pairs: deployable routers first, then oracles, then random baselines."""
    pairs = list(dict.fromkeys(zip(rows["method"], rows["family"])))
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(pairs, key=lambda p: (rank.get(p[1], len(rank)), p[0]))


def _draw_methods(ax: Any, rows: pd.DataFrame, x: str, y: str, scale: float = 1.0,
                  xmap: Callable[[Any], Any] | None = None) -> None:
    """One line per method over its sacrifice levels, styled by family."""
    pairs = _method_order(rows)
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


def _reference_lines(ax: Any, frame: pd.DataFrame, column: str, scale: float = 1.0,
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


def selected_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows selected on val (none where routers.csv predates selection)."""
    if "selected" not in frame.columns:
        return frame.iloc[0:0]
    return frame[frame["selected"].map(lambda v: _as_bool(v) is True).astype(bool)]


def _mark_selected(ax: Any, frame: pd.DataFrame, x: str, y: str, scale: float = 1.0,
                   xmap: Callable[[Any], Any] | None = None) -> None:
    """A ring around each level's answer selected on val."""
    sel = selected_rows(frame).dropna(subset=[x, y])
    if sel.empty:
        return
    xs = sel[x].to_numpy(dtype=float)
    ax.scatter(xmap(xs) if xmap else xs, scale * sel[y].to_numpy(dtype=float),
               label=style.SELECTED_LABEL, **style.SELECTED_STYLE)


def _data_columns(frame: pd.DataFrame, keep: list[str]) -> list[str]:
    return keep + [c for c in ("zoo", "selected") if c in frame.columns and c not in keep]


def _target_line(ax: Any, frame: pd.DataFrame, scale: float = 100.0,
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


def _need_rows(frame: pd.DataFrame, what: str) -> None:
    if frame.empty:
        raise ValueError(f"routers.csv has no routed rows (families other than "
                         f"{list(REFERENCE_FAMILIES)}) to draw {what}; re-run `evaluate-routers`")


def _shared_legend(fig: Any, axes: Sequence[Any], title: str | None = None) -> None:
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


def _timing_note(frame: pd.DataFrame) -> str:
    """'N test images' from the rows' timing_samples, where recorded and unique."""
    if "timing_samples" in frame.columns:
        n = pd.to_numeric(frame["timing_samples"], errors="coerce").dropna().unique()
        if len(n) == 1 and n[0] > 0:
            return f"{int(n[0]):,} test images"
    return "the timed test images"


@dataclass
class SacrificeMetricsDisplay:
    """Accuracy, precision, recall and F1 against sacrifice for every routed method."""

    frame: pd.DataFrame
    metrics: tuple[str, ...] = METRICS

    @classmethod
    def from_routers(cls, frame: pd.DataFrame,
                     zoo: str | None = DEFAULT_ZOO) -> "SacrificeMetricsDisplay":
        frame = zoo_rows(frame, zoo)
        metrics = tuple(m for m in METRICS if m in frame.columns)
        _need_rows(routed_rows(frame), "metrics against sacrifice")
        return cls(frame, metrics)

    @property
    def data_(self) -> pd.DataFrame:
        keep = ["method", "family", "sacrifice", *self.metrics]
        keep += [c for c in ("target_accuracy", "budget_held") if c in self.frame.columns]
        refs = self.frame[self.frame["family"].isin(REFERENCE_ROWS)]
        return pd.concat([self._rows(), refs])[_data_columns(self.frame, keep)]

    def _rows(self) -> pd.DataFrame:
        rows = routed_rows(self.frame)
        return rows[~rows["family"].isin(SAME_AS_ORACLE)]

    def plot(self) -> "SacrificeMetricsDisplay":
        n = len(self.metrics)
        ncols = min(n, 2)
        nrows = math.ceil(n / ncols)
        fig, axes = style.new_figure(4.3 * ncols + 2.8, 3.1 * nrows, nrows, ncols)
        rows = self._rows()
        for ax, metric in zip(axes.ravel(), self.metrics):
            xmap = level_axis(ax, self.frame)
            _draw_methods(ax, rows, "sacrifice", metric, scale=100.0, xmap=xmap)
            _reference_lines(ax, self.frame, metric, scale=100.0, xmap=xmap)
            _mark_selected(ax, self.frame, "sacrifice", metric, scale=100.0, xmap=xmap)
            if metric == "accuracy":
                _target_line(ax, self.frame, xmap=xmap)
            ax.set_xlabel(SACRIFICE_LABEL)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_title(f"{metric} on test vs sacrifice")
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        _shared_legend(fig, axes.ravel()[:n])
        fig.suptitle("Quality on test at each sacrifice level (policies fitted on val)",
                     fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class TimeDisplay:
    """Measured seconds and images/s against sacrifice (timed rows only)."""

    frame: pd.DataFrame

    @classmethod
    def from_routers(cls, frame: pd.DataFrame, zoo: str | None = DEFAULT_ZOO) -> "TimeDisplay":
        frame = zoo_rows(frame, zoo)
        for col in ("seconds", "images_per_second"):
            if col not in frame.columns:
                raise ValueError(f"routers.csv lacks column {col!r}; re-run `evaluate-routers`")
        rows = routed_rows(frame).dropna(subset=["images_per_second"])
        _need_rows(rows, "time against sacrifice (no routed row was timed)")
        return cls(frame)

    @property
    def data_(self) -> pd.DataFrame:
        keep = ["method", "family", "sacrifice", "seconds", "images_per_second"]
        keep += [c for c in ("speedup_vs_best", "speedup_vs_cheapest_single", "router_seconds",
                             "wasted_seconds", "overhead_share", "timing_samples", "threads")
                 if c in self.frame.columns]
        refs = self.frame[self.frame["family"].isin(REFERENCE_ROWS)]
        timed = routed_rows(self.frame).dropna(subset=["images_per_second"])
        return pd.concat([timed, refs.dropna(subset=["images_per_second"])])[
            _data_columns(self.frame, keep)]

    def plot(self) -> "TimeDisplay":
        fig, axes = style.new_figure(11.5, 3.8, 1, 2)
        rows = routed_rows(self.frame).dropna(subset=["images_per_second"])
        n_note = _timing_note(self.frame)
        for ax, col, label in ((axes[0, 0], "seconds", f"seconds for {n_note}"),
                               (axes[0, 1], "images_per_second", "images / s")):
            xmap = level_axis(ax, self.frame)
            _draw_methods(ax, rows, "sacrifice", col, xmap=xmap)
            _reference_lines(ax, self.frame, col, xmap=xmap)
            _mark_selected(ax, self.frame, "sacrifice", col, xmap=xmap)
            ax.set_xlabel(SACRIFICE_LABEL)
            ax.set_ylabel(label)
            values = pd.concat([rows[col], self.data_[col]])
            if style.log_scale_if_wide(ax, values, "y"):
                ax.set_ylabel(f"{label} (log scale)")
            else:
                ax.set_ylim(bottom=0)
            style.human_axis(ax, "y", None if col == "images_per_second" else "{:g}".format)
        axes[0, 0].set_title("measured time (lower is faster)")
        axes[0, 1].set_title("measured throughput (higher is faster)")
        _shared_legend(fig, axes.ravel())
        self.axes_, self.figure_ = axes, fig
        return self


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 fontsize: float = 6.5, avoid: np.ndarray | None = None,
                 occupied: list[tuple[float, float, float, float]] | None = None,
                 **kw: Any) -> list[Any]:
    """Label points without overlaps. Each label tries positions around its point, nearest
    first (right, left, then stepping up and down, then further out), and takes the first that
    clears the labels already placed, every point in ``avoid`` ((K, 2) data coordinates; the
    labelled points are always avoided) and the axes' edges. A thin leader line joins a label
    that had to move away to its point. ``occupied`` (axes-fraction boxes) is avoided too and
    receives the new labels' boxes, so several calls share one layout. Call once the figure's
    layout and limits are final."""
    fig = ax.figure
    w_in, h_in = fig.get_size_inches() * np.array(ax.get_position().size)
    char_w = 0.56 * fontsize / 72 / max(w_in, 1e-6)      # axes fraction per character
    line_h = 1.25 * fontsize / 72 / max(h_in, 1e-6)      # axes fraction per text line
    to_axes = ax.transData + ax.transAxes.inverted()
    pts = to_axes.transform(np.column_stack([xs, ys]))
    obstacles = pts if avoid is None or not len(avoid) else np.vstack(
        [pts, to_axes.transform(np.asarray(avoid, dtype=float))])
    rx, ry = 0.006, 0.6 * line_h          # half-size of a marker, axes fraction
    order = np.argsort(-pts[:, 1], kind="stable")
    placed: list[tuple[float, float, float, float]] = occupied if occupied is not None else []
    out: list[Any] = []

    def free(box: tuple[float, float, float, float]) -> bool:
        if box[0] < 0.0 or box[2] > 1.0 or box[1] < 0.0 or box[3] > 1.0:
            return False
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in placed):
            return False
        hit = ((obstacles[:, 0] + rx > box[0]) & (obstacles[:, 0] - rx < box[2])
               & (obstacles[:, 1] + ry > box[1]) & (obstacles[:, 1] - ry < box[3]))
        return not hit.any()

    for i in order:
        px, py = pts[i]
        width = char_w * len(texts[i])
        candidates = []
        for gap in (0.012, 0.04, 0.08, 0.14):
            for k in range(0, 25):
                dy = (k + 1) // 2 * line_h * (1 if k % 2 else -1)
                for side in (1, -1):
                    x0 = px + gap if side > 0 else px - gap - width
                    candidates.append((abs(dy) + gap, x0, py + dy, side))
        candidates.sort(key=lambda c: c[0])
        choice = next((c for c in candidates
                       if free((c[1], c[2] - line_h / 2, c[1] + width, c[2] + line_h / 2))),
                      (0.0, px + 0.012, py, 1))
        _, x0, y, side = choice
        placed.append((x0, y - line_h / 2, x0 + width, y + line_h / 2))
        moved = abs(y - py) > 1e-9 or abs(x0 - px) > 0.02 and abs(x0 + width - px) > 0.02
        out.append(ax.annotate(
            texts[i], (xs[i], ys[i]), xytext=(x0, y), textcoords="axes fraction",
            fontsize=fontsize, va="center", ha="left",
            arrowprops=dict(arrowstyle="-", color="0.55", linewidth=0.5, shrinkA=0,
                            shrinkB=2) if moved else None, **kw))
    return out


@dataclass
class FrontierDisplay:
    """Accuracy against images/s: single models as points, routers as curves, the ceiling too."""

    frame: pd.DataFrame

    @classmethod
    def from_routers(cls, frame: pd.DataFrame, zoo: str | None = DEFAULT_ZOO) -> "FrontierDisplay":
        frame = zoo_rows(frame, zoo)
        if frame[["accuracy", "images_per_second"]].dropna().empty:
            raise ValueError("routers.csv has no row with both accuracy and images_per_second")
        return cls(frame)

    @property
    def data_(self) -> pd.DataFrame:
        keep = _data_columns(self.frame, ["method", "family", "sacrifice", "accuracy",
                                          "images_per_second"])
        return self.frame[keep].dropna(subset=["accuracy", "images_per_second"]).copy()

    @staticmethod
    def _floor(singles: pd.DataFrame, rows: pd.DataFrame, ceil: pd.DataFrame,
               best: pd.Series | None) -> float:
        """Lower y limit (%): everything of interest plus a margin, or all singles if they are
        not far below it."""
        keep = [100 * rows["accuracy"], 100 * ceil["accuracy"]]
        if best is not None and np.isfinite(best.get("accuracy", np.nan)):
            keep.append(pd.Series([100 * float(best["accuracy"])]))
        core = pd.concat(keep).dropna()
        all_y = pd.concat([core, 100 * singles["accuracy"]]).dropna()
        if core.empty:
            return float(all_y.min()) if len(all_y) else 0.0
        top = float(core.max())
        floor = float(core.min()) - max(2.0, 0.25 * (top - float(core.min())))
        # keep a single model on the axis when showing it costs less than doubling the range
        return float(min(all_y.min(), floor)) if all_y.min() > floor - (top - floor) else floor

    def plot(self, ax: Any = None) -> "FrontierDisplay":
        if ax is None:
            fig, axes = style.new_figure(10.0, 6.0)
            ax = axes[0, 0]
        singles = self.frame[self.frame["family"].isin(SINGLE_FAMILIES)].dropna(
            subset=["accuracy", "images_per_second"])
        singles = singles.assign(model=[model_of(r) for _, r in singles.iterrows()])
        best = best_single_row(self.frame)
        best_name = model_of(best) if best is not None else None
        singles = singles.drop_duplicates("model").assign(
            label=lambda d: d["model"].where(d["model"] != best_name, f"{best_name} (best single)"))
        rows = routed_rows(self.frame).dropna(subset=["images_per_second", "accuracy"])
        ceil = ceiling_rows(self.frame).dropna(subset=["images_per_second", "accuracy"])
        # the y range covers the routers, the ceiling and the best single model; a single model
        # far below it (a broken variant) is drawn on the bottom edge, marked off scale
        lo = self._floor(singles, rows, ceil, best)
        low = 100 * singles["accuracy"] < lo
        shown_y = np.where(low, lo, 100 * singles["accuracy"])
        singles = singles.assign(label=[f"{lab} ({100 * a:.1f}%, off scale)" if out else lab
                                        for lab, a, out in zip(singles["label"],
                                                               singles["accuracy"], low)])
        ax.scatter(singles["images_per_second"][~low], shown_y[~low], color="dimgray",
                   marker="o", s=22, zorder=3, label="single models")
        if low.any():
            ax.scatter(singles["images_per_second"][low], shown_y[low], color="dimgray",
                       marker="v", s=30, zorder=3, clip_on=False,
                       label="single model below the axis (off scale)")
        if best_name in set(singles["model"]):
            b = singles[singles["model"] == best_name].iloc[0]
            ax.scatter([b["images_per_second"]], [100 * b["accuracy"]], s=90, zorder=2,
                       facecolors="none", edgecolors="black", linewidths=1.2,
                       label="best single model (reference)")
        cheap_models = {model_of(r) for _, r in
                        self.frame[self.frame["family"] == "cheapest-single"].iterrows()}
        cheap = singles["model"].isin(cheap_models).to_numpy()
        if cheap.any():     # the second reference: a square around its point
            ref_kw = style.REFERENCE_STYLE["cheapest-single"]
            ax.scatter(singles["images_per_second"][cheap], shown_y[cheap], marker="s", s=110,
                       zorder=2, facecolors="none", edgecolors=ref_kw["color"], linewidths=1.1,
                       linestyle="--",
                       label="cheapest adequate single model (on val, at some level)")
        _draw_methods(ax, rows, "images_per_second", "accuracy", scale=100.0)
        _mark_selected(ax, self.frame, "images_per_second", "accuracy", scale=100.0)
        for method, part in ceil.groupby("method", sort=False):
            part = part.drop_duplicates(["images_per_second", "accuracy"])
            ax.plot(part["images_per_second"], 100 * part["accuracy"], marker="*",
                    markersize=11, label=f"{method} (per-sample oracle, bound)",
                    **{**style.REFERENCE_STYLE["ceiling"], "linestyle": "none"})
        if ceil.empty:
            untimed = ceiling_rows(self.frame)
            if untimed["accuracy"].notna().any():
                ax.axhline(100 * float(untimed["accuracy"].max()),
                           label="ceiling (bound, untimed)", **style.REFERENCE_STYLE["ceiling"])
        drawn = pd.concat([singles["images_per_second"], rows["images_per_second"],
                           ceil["images_per_second"]])
        log = style.log_scale_if_wide(ax, drawn, "x")
        style.human_axis(ax, "x")
        n_note = _timing_note(self.frame)
        ax.set_xlabel(f"images / s (measured on {n_note}"
                      + (", log scale)" if log else ")"))
        ax.set_ylabel("accuracy on test (%)")
        ax.set_title("Accuracy vs measured throughput: up and right is better")
        ax.margins(x=0.08, y=0.06)
        ax.autoscale_view()
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(lo if low.any() else ax.get_ylim()[0], ax.get_ylim()[1])
        if ax is ax.figure.axes[0] and len(ax.figure.axes) == 1:
            ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside right upper",
                             fontsize=6.5)
        else:
            ax.legend(fontsize=6.5)
        ax.figure.draw_without_rendering()   # final layout, so labels can be placed in it
        xy = np.array([1.0, 100.0])
        others = pd.concat([rows, ceil])[["images_per_second", "accuracy"]].to_numpy(float) * xy
        occupied: list[tuple[float, float, float, float]] = []
        self.point_labels_ = place_labels(ax, singles["images_per_second"].to_numpy(float),
                                          shown_y.astype(float), list(singles["label"]),
                                          avoid=others, occupied=occupied)
        # the sacrifice level at each end of every deployable router's curve
        ends_x, ends_y, ends_t = [], [], []
        for method, part in rows[rows["family"].isin(DEPLOYABLE_FAMILIES)].groupby("method"):
            part = part.sort_values("sacrifice")
            first, last = part.iloc[0], part.iloc[-1]
            same = (np.isclose(first["images_per_second"], last["images_per_second"], rtol=0.01)
                    and np.isclose(first["accuracy"], last["accuracy"], atol=5e-4))
            if same or len(part) == 1:
                ends = [(first, f"{100 * first['sacrifice']:g}%" if len(part) == 1 else
                         f"{100 * first['sacrifice']:g}-{100 * last['sacrifice']:g}%")]
            else:
                ends = [(first, f"{100 * first['sacrifice']:g}%"),
                        (last, f"{100 * last['sacrifice']:g}%")]
            for r, text in ends:
                ends_x.append(float(r["images_per_second"]))
                ends_y.append(100 * float(r["accuracy"]))
                ends_t.append(f"s={text}")
        pts = np.column_stack([singles["images_per_second"].to_numpy(float),
                               shown_y.astype(float)])
        self.level_labels_ = place_labels(ax, ends_x, ends_y, ends_t, fontsize=5.5,
                                          avoid=np.vstack([others, pts]) if len(others) else pts,
                                          occupied=occupied, color="0.3")
        self.ax_, self.figure_ = ax, ax.figure
        return self


@dataclass
class SharesDisplay:
    """Stacked share of test images sent to each model, per policy and sacrifice level."""

    shares: pd.DataFrame   # tidy: method, sacrifice, model, share (0-100 within each row)
    models: list[str] = field(default_factory=list)   # in routers.csv order (cheapest first)

    @classmethod
    def from_routers(cls, frame: pd.DataFrame, zoo: str | None = DEFAULT_ZOO) -> "SharesDisplay":
        frame = zoo_rows(frame, zoo)
        cols = [c for c in frame.columns if c.startswith("share_")]
        if not cols:
            raise ValueError("routers.csv has no share_<model> columns; re-run "
                             "`evaluate-routers`")
        rows = routed_rows(frame)
        # executed oracles and cost-matched random baselines repeat another row's shares
        rows = rows[~rows["family"].isin((*SAME_AS_ORACLE, "random"))]
        _need_rows(rows, "model shares")
        values = rows[cols].fillna(0.0).to_numpy(dtype=float)
        totals = values.sum(axis=1, keepdims=True)
        pct = np.divide(100.0 * values, totals, out=np.zeros_like(values), where=totals > 0)
        models = [c[len("share_"):] for c in cols]
        tidy = [{"method": m, "family": f, "sacrifice": s, "model": models[j], "share": pct[i, j]}
                for i, (m, f, s) in enumerate(zip(rows["method"], rows["family"],
                                                  rows["sacrifice"]))
                for j in range(len(models))]
        return cls(pd.DataFrame(tidy), models)

    @property
    def data_(self) -> pd.DataFrame:
        return self.shares

    def plot(self) -> "SharesDisplay":
        pairs = _method_order(self.shares)
        methods = [m for m, _ in pairs]
        ncols = min(len(methods), 3)
        nrows = math.ceil(len(methods) / ncols)
        fig, axes = style.new_figure(3.5 * ncols + 2.6, 2.5 * nrows + 0.5, nrows, ncols,
                                     sharey=True)
        palette = sns.color_palette("tab10" if len(self.models) <= 10 else "tab20",
                                    len(self.models))
        colours = dict(zip(self.models, palette))
        for ax, (method, family) in zip(axes.ravel(), pairs):
            part = self.shares[self.shares["method"] == method]
            table = part.pivot_table(index="sacrifice", columns="model", values="share",
                                     sort=True).reindex(columns=self.models).fillna(0.0)
            bottom = np.zeros(len(table))
            x = np.arange(len(table))
            for model in self.models:
                ax.bar(x, table[model].to_numpy(), bottom=bottom, color=colours[model],
                       label=model, width=0.8, edgecolor="white", linewidth=0.3)
                bottom += table[model].to_numpy()
            ax.set_xticks(x, [f"{100 * s:g}%" for s in table.index])
            kind = " (label oracle)" if family == "oracle" else ""
            ax.set_title(f"{method}{kind}")
            ax.set_xlabel("sacrifice s")
            ax.set_ylabel("% of test images")
            ax.set_ylim(0, 100)
        for ax in axes.ravel()[len(methods):]:
            ax.set_visible(False)
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles[::-1], labels[::-1], loc="outside right upper",
                   title="model (costliest on top)", fontsize=7)
        fig.suptitle("Which models each policy sends the test images to", fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class TrainingCurvesDisplay:
    """Loss and accuracy per epoch for every model (solid = train, dashed = val)."""

    history: pd.DataFrame  # tidy: model, epoch, split, loss, accuracy

    @classmethod
    def from_histories(cls, histories: dict[str, pd.DataFrame]) -> "TrainingCurvesDisplay":
        if not histories:
            raise ValueError("no history.csv under RUN/zoo/*/; train models with `train-zoo`")
        parts = []
        for model, h in histories.items():
            for split in ("train", "val"):
                parts.append(pd.DataFrame({"model": model, "epoch": h["epoch"], "split": split,
                                           "loss": h[f"{split}_loss"],
                                           "accuracy": h[f"{split}_accuracy"]}))
        return cls(pd.concat(parts, ignore_index=True))

    @property
    def data_(self) -> pd.DataFrame:
        return self.history

    def plot(self) -> "TrainingCurvesDisplay":
        fig, axes = style.new_figure(11.0, 3.8, 1, 2)
        shown = self.history.assign(accuracy=100 * self.history["accuracy"])
        for ax, col, label in ((axes[0, 0], "loss", "loss (cross-entropy)"),
                               (axes[0, 1], "accuracy", "accuracy (%)")):
            sns.lineplot(shown, x="epoch", y=col, hue="model", style="split",
                         style_order=["train", "val"], markers=True, ax=ax,
                         legend=col == "accuracy")
            ax.set_title(f"{col} per epoch (solid: train, dashed: val)")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _shared_legend(fig, [axes[0, 1]])
        self.axes_, self.figure_ = axes, fig
        return self
