"""The frontier from ``results/routers.csv``: accuracy against measured images/s, single models
as labelled points, routers as curves over their sacrifice levels, the per-sample ceiling.
Families, rows and line styles: ``reports.routers_common``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from reports import style
from reports.inputs import DEFAULT_ZOO, model_of, zoo_rows
from reports.routers_common import SINGLE_FAMILIES, best_single_row, \
    ceiling_rows, data_columns, draw_methods, mark_selected, routed_rows, timing_note


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
        keep = data_columns(self.frame, ["method", "family", "sacrifice", "accuracy",
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
        self._draw_singles(ax, singles, shown_y, low, best_name)
        draw_methods(ax, rows, "images_per_second", "accuracy", scale=100.0)
        mark_selected(ax, self.frame, "images_per_second", "accuracy", scale=100.0)
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
        n_note = timing_note(self.frame)
        ax.set_xlabel(f"images / s (measured on {n_note}"
                      + (", log scale)" if log else ")"))
        ax.set_ylabel("accuracy on test (%)")
        ax.set_title("Accuracy vs measured throughput: up and right is better")
        ax.margins(x=0.08, y=0.06)
        ax.autoscale_view()
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(lo if low.any() else ax.get_ylim()[0], ax.get_ylim()[1])
        if best_name in set(singles["model"]):
            # what beats the reference on both axes: more accurate and faster (up and right)
            b = singles[singles["model"] == best_name].iloc[0]
            ax.fill_between([float(b["images_per_second"]), ax.get_xlim()[1]],
                            100 * float(b["accuracy"]), ax.get_ylim()[1], color="tab:green",
                            alpha=0.08, zorder=0, linewidth=0,
                            label="more accurate and faster than the best single model")
        if ax is ax.figure.axes[0] and len(ax.figure.axes) == 1:
            ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside right upper",
                             fontsize=6.5)
        else:
            ax.legend(fontsize=6.5)
        ax.figure.draw_without_rendering()   # final layout, so labels can be placed in it
        self._label_points(ax, singles, shown_y, rows, ceil)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _draw_singles(self, ax: Any, singles: pd.DataFrame, shown_y: np.ndarray, low: Any,
                      best_name: str | None) -> None:
        """The single models as grey points (off-scale ones on the bottom edge), the best one
        ringed, the cheapest adequate ones squared."""
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

    def _label_points(self, ax: Any, singles: pd.DataFrame, shown_y: np.ndarray,
                      rows: pd.DataFrame, ceil: pd.DataFrame) -> None:
        """Name the single models and the sacrifice levels at the ends of every deployable
        router's curve, where the labels overlap nothing drawn."""
        xy = np.array([1.0, 100.0])
        others = pd.concat([rows, ceil])[["images_per_second", "accuracy"]].to_numpy(float) * xy
        occupied: list[tuple[float, float, float, float]] = []
        self.point_labels_ = place_labels(ax, singles["images_per_second"].to_numpy(float),
                                          shown_y.astype(float), list(singles["label"]),
                                          avoid=others, occupied=occupied)
        # the sacrifice level at each end of every deployable router's curve
        ends_x, ends_y, ends_t = [], [], []
        for method, part in rows[rows["family"].isin(style.deployable_families())].groupby("method"):
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
