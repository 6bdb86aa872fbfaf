"""Routers above the cost-matched random router, and the learned routers against the cascade.

Three things, all from saved results (``routers.csv``, ``router_predictions.npz``):

- ``router_areas``: per deployable router (families ``cascade``, ``learned``, ``dispatcher``)
  and zoo, the area between its accuracy-versus-throughput curve over the sacrifice sweep and
  the cost-matched random router's accuracy at the same points, in accuracy points times
  doublings of images/s (``area_above_random``), with its mean ``gap_recovered`` over levels
  and ``gap_recovered`` at s = 0.
- ``LearnedVsCascadeDisplay``: the learned routers and the cascade (the dispatchers lighter)
  as accuracy against measured images/s, each level's random twin a hollow marker at the same x.
- ``routing_disagreements``: per true label, the test images on which the learned router and
  the cascade chose different models, and which of the two got those right. The learned router
  is picked on **val** figures (``pick_learned``), never on test.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from reports import style
from reports.inputs import DEFAULT_ZOO, RunArtifacts, model_of, zoo_rows, zoos_of
from reports.tables import SUMMARY_SACRIFICE

LEARNED_FAMILY = "learned"
CASCADE_METHOD = "cascade"
AREA_COLUMNS = ("zoo", "method", "family", "levels", "area_points_doublings",
                "area_common_range", "common_ips_lo", "common_ips_hi",
                "mean_gap_recovered", "gap_recovered_s0")
DISAGREEMENT_COLUMNS = ("label", "class", "images", "routed_differently",
                        "learned_right_cascade_wrong", "cascade_right_learned_wrong")
RERUN = "re-run `evaluate-routers`"
_EPS = 1e-9


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


# ---- area above the random router -------------------------------------------------------

def area_above_random(images_per_second: Sequence[float], accuracy: Sequence[float],
                      random_accuracy: Sequence[float],
                      x_range: tuple[float, float] | None = None) -> float:
    """Trapezoid integral of ``100 * (accuracy - random_accuracy)`` over ``log2(images/s)``,
    along the router's own points sorted by images/s (accuracy points x doublings).

    Points with a missing value or a non-positive rate are left out; fewer than two points
    span no throughput: NaN. A router below its random twin adds negative area. ``x_range``
    (images/s lo, hi) clips the integral to that range (the gap interpolated linearly in
    log2 images/s at its ends), so routers are compared over the same throughputs; NaN where
    the router's points do not cover it.
    """
    x = np.asarray(images_per_second, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    rnd = np.asarray(random_accuracy, dtype=float)
    if not x.shape == acc.shape == rnd.shape:
        raise ValueError(f"images/s {x.shape}, accuracy {acc.shape} and random accuracy "
                         f"{rnd.shape} must have one value per level")
    ok = np.isfinite(x) & np.isfinite(acc) & np.isfinite(rnd) & (x > 0)
    if ok.sum() < 2:
        return float("nan")
    order = np.argsort(x[ok], kind="stable")
    lx = np.log2(x[ok][order])
    gap = 100.0 * (acc[ok] - rnd[ok])[order]
    if x_range is not None:
        lo, hi = np.log2(x_range[0]), np.log2(x_range[1])
        if not lx[0] - _EPS <= lo < hi <= lx[-1] + _EPS:
            return float("nan")
        inside = (lx > lo) & (lx < hi)
        lx, gap = (np.concatenate([[lo], lx[inside], [hi]]),
                   np.concatenate([[np.interp(lo, lx, gap)], gap[inside],
                                   [np.interp(hi, lx, gap)]]))
    return float(np.sum(np.diff(lx) * (gap[1:] + gap[:-1]) / 2.0))


def common_range(curves: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """The images/s range every curve (its finite positive points, >= 2 of them) covers: the
    largest of their lowest rates to the smallest of their highest; None if empty."""
    kept = [c[np.isfinite(c) & (c > 0)] for c in (np.asarray(v, float) for v in curves)]
    spans = [(c.min(), c.max()) for c in kept if c.size >= 2]
    if not spans:
        return None
    lo, hi = max(a for a, _ in spans), min(b for _, b in spans)
    return (lo, hi) if hi > lo else None


def random_accuracy_of(frame: pd.DataFrame) -> pd.Series:
    """Each row's cost-matched random accuracy: its ``random_accuracy`` where recorded, else
    the accuracy of the ``random~<method>`` row of the same zoo and level."""
    own = (pd.to_numeric(frame["random_accuracy"], errors="coerce")
           if "random_accuracy" in frame.columns else pd.Series(np.nan, index=frame.index))
    rand = frame[frame["family"] == "random"].dropna(subset=["sacrifice", "accuracy"])
    lookup: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _, r in rand.iterrows():
        key = (str(r.get("zoo", DEFAULT_ZOO)), str(r["method"]))
        lookup.setdefault(key, []).append((float(r["sacrifice"]), float(r["accuracy"])))

    def fallback(r: pd.Series) -> float:
        for s, acc in lookup.get((str(r.get("zoo", DEFAULT_ZOO)), f"random~{r['method']}"), []):
            if np.isclose(s, _num(r["sacrifice"])):
                return acc
        return float("nan")

    return pd.Series([o if np.isfinite(o) else fallback(r)
                      for o, (_, r) in zip(own.to_numpy(float), frame.iterrows())],
                     index=frame.index, dtype=float)


def _gaps(rows: pd.DataFrame, everything: pd.DataFrame, rnd: pd.Series) -> pd.Series:
    """``gap_recovered`` as recorded, else (accuracy - random) / (ceiling - random) with the
    ``ceiling`` row of the same zoo and level (older routers.csv files)."""
    own = (pd.to_numeric(rows["gap_recovered"], errors="coerce")
           if "gap_recovered" in rows.columns else pd.Series(np.nan, index=rows.index))
    ceil = everything[everything["method"] == "ceiling"].dropna(subset=["sacrifice", "accuracy"])
    out = []
    for (i, r), g in zip(rows.iterrows(), own.to_numpy(float)):
        if not np.isfinite(g):
            at = ceil[np.isclose(ceil["sacrifice"].astype(float), _num(r["sacrifice"]))]
            top = float(at["accuracy"].iloc[0]) if len(at) else float("nan")
            if np.isfinite(top) and np.isfinite(rnd[i]) and top - rnd[i] > _EPS:
                g = (float(r["accuracy"]) - rnd[i]) / (top - rnd[i])
        out.append(g)
    return pd.Series(out, index=rows.index, dtype=float)


def router_areas(routers: pd.DataFrame) -> pd.DataFrame:
    """One row per deployable router and zoo (columns ``AREA_COLUMNS``): ``levels`` = levels
    with accuracy, images/s and a random twin (the points integrated), the area above random
    (NaN below two such levels), the mean recorded ``gap_recovered`` over its levels and the
    one at s = 0 (NaN where absent). Cascade first, then learned routers, then dispatchers."""
    out: list[dict[str, Any]] = []
    rank = {f: i for i, f in enumerate(style.deployable_families())}
    for zoo in zoos_of(routers):
        everything = zoo_rows(routers, zoo)
        rows = everything[everything["family"].isin(style.deployable_families())
                          & everything["sacrifice"].notna()]
        if rows.empty:
            continue
        rnd = random_accuracy_of(everything).loc[rows.index]
        gaps = _gaps(rows, everything, rnd)
        pairs = sorted(dict.fromkeys(zip(rows["method"], rows["family"])),
                       key=lambda p: (rank[p[1]], p[0]))
        common = common_range([pd.to_numeric(rows[rows["method"] == m]["images_per_second"],
                                             errors="coerce").to_numpy(float)
                               for m, _ in pairs])
        for method, family in pairs:
            part = rows[rows["method"] == method].sort_values("sacrifice", kind="stable")
            ips = pd.to_numeric(part["images_per_second"], errors="coerce").to_numpy(float)
            acc = pd.to_numeric(part["accuracy"], errors="coerce").to_numpy(float)
            r = rnd.loc[part.index].to_numpy(float)
            used = np.isfinite(ips) & np.isfinite(acc) & np.isfinite(r) & (ips > 0)
            g = gaps.loc[part.index]
            at0 = g[np.isclose(part["sacrifice"].astype(float), 0.0)].dropna()
            out.append({"zoo": zoo, "method": method, "family": family,
                        "levels": int(used.sum()),
                        "area_points_doublings": area_above_random(ips, acc, r),
                        "area_common_range": (np.nan if common is None else
                                              area_above_random(ips, acc, r, common)),
                        "common_ips_lo": np.nan if common is None else common[0],
                        "common_ips_hi": np.nan if common is None else common[1],
                        "mean_gap_recovered": float(g.mean()) if g.notna().any() else np.nan,
                        "gap_recovered_s0": float(at0.iloc[0]) if len(at0) else np.nan})
    return pd.DataFrame(out, columns=list(AREA_COLUMNS))


def areas_display(areas: pd.DataFrame) -> pd.DataFrame:
    """``router_areas`` as the page shows it."""
    def fmt(v: Any, spec: str) -> str:
        return "" if not np.isfinite(_num(v)) else format(float(v), spec)

    return pd.DataFrame([{
        "zoo": r["zoo"], "router": r["method"], "family": r["family"],
        "levels": int(r["levels"]),
        "area above random (points x doublings)": fmt(r["area_points_doublings"], ".2f"),
        "area over the common range": fmt(r.get("area_common_range"), ".2f"),
        "mean gap_recovered": fmt(r["mean_gap_recovered"], ".3f"),
        "gap_recovered at s = 0": fmt(r["gap_recovered_s0"], ".3f")}
        for _, r in areas.iterrows()])


# ---- which level and which learned router --------------------------------------------------

def summary_level(routers: pd.DataFrame, zoo: str = DEFAULT_ZOO) -> float | None:
    """The summary's level (1 %) if the cascade or a learned router has it, else their first."""
    rows = zoo_rows(routers, zoo)
    rows = rows[rows["family"].isin((CASCADE_METHOD, LEARNED_FAMILY))]
    levels = sorted(float(v) for v in rows["sacrifice"].dropna().unique())
    if not levels:
        return None
    return next((v for v in levels if np.isclose(v, SUMMARY_SACRIFICE)), levels[0])


def _val_target(row: pd.Series, best_val: float, sacrifice: float) -> float:
    """The level's target on val: the fit's recorded ``val_target`` (settings), else the
    reference model's val accuracy minus s."""
    try:
        settings = json.loads(row.get("settings") or "{}")
    except (TypeError, ValueError):
        settings = {}
    t = _num(settings.get("val_target")) if isinstance(settings, dict) else float("nan")
    return t if np.isfinite(t) else best_val - sacrifice


def pick_learned(routers: pd.DataFrame, sacrifice: float,
                 zoo: str = DEFAULT_ZOO) -> tuple[str | None, str]:
    """The learned router to compare at ``sacrifice``, chosen on **val** figures only.

    Rule: a learned router selected on val at the level; else, of the learned routers whose
    val accuracy met the level's val target, the least expected cost on val
    (``fit_ms_per_image``: the rule ``evaluate-routers`` selects by), ties to the higher val
    accuracy, then the name; if none met it, the highest val accuracy. With no val figures, a
    lone learned router is taken; several are refused. Returns ``(method or None, how/why)``.
    """
    rows = zoo_rows(routers, zoo)
    at = rows[np.isclose(rows["sacrifice"].astype(float), sacrifice)]
    learned = at[at["family"] == LEARNED_FAMILY]
    if learned.empty:
        return None, f"no learned router in zoo {zoo!r} at {100 * sacrifice:g}% sacrifice"
    methods = list(dict.fromkeys(learned["method"]))
    if "selected" in learned.columns:
        sel = learned[learned["selected"] == True]  # noqa: E712
        if len(sel) == 1:
            return str(sel["method"].iloc[0]), "selected on val at this level"
    def column(frame: pd.DataFrame, name: str) -> pd.Series:
        return (pd.to_numeric(frame[name], errors="coerce") if name in frame.columns
                else pd.Series(np.nan, index=frame.index, dtype=float))

    val, cost = column(learned, "val_accuracy"), column(learned, "fit_ms_per_image")
    if val.isna().all():
        if len(methods) == 1:
            return methods[0], "the only learned router (no val figures recorded)"
        return None, (f"{len(methods)} learned routers and no val figures (val_accuracy, "
                      f"fit_ms_per_image) to choose among them: {RERUN}")
    best = column(at[at["family"] == "best-single"], "val_accuracy").dropna()
    best_val = float(best.iloc[0]) if len(best) else float("nan")
    cand = learned.assign(_val=val, _cost=cost.fillna(np.inf))
    cand = cand[cand["_val"].notna()]
    target = np.array([_val_target(r, best_val, sacrifice) for _, r in cand.iterrows()])
    meets = cand[~(cand["_val"].to_numpy(float) < target - _EPS)]   # unknown target: met
    if not meets.empty:
        pick = meets.sort_values(["_cost", "_val", "method"], ascending=[True, False, True],
                                 kind="stable").iloc[0]
        return str(pick["method"]), ("least expected cost on val among the learned routers "
                                     "that met the level's target on val")
    pick = cand.sort_values(["_val", "_cost", "method"], ascending=[False, True, True],
                            kind="stable").iloc[0]
    return str(pick["method"]), ("highest val accuracy (no learned router met the level's "
                                 "target on val)")


# ---- routing disagreements by true label ------------------------------------------------------

def routing_disagreements(labels: np.ndarray, learned_chosen: np.ndarray,
                          learned_preds: np.ndarray, cascade_chosen: np.ndarray,
                          cascade_preds: np.ndarray,
                          class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per true label (columns ``DISAGREEMENT_COLUMNS``): test images, those on which the two
    routers chose different models, and of those the ones only the learned router / only the
    cascade got right. Every label 0..C-1 gets a row (C from ``class_names`` or the labels)."""
    y = np.asarray(labels, dtype=np.int64)
    arrays = [np.asarray(a, dtype=np.int64) for a in
              (learned_chosen, learned_preds, cascade_chosen, cascade_preds)]
    if any(a.shape != y.shape for a in arrays) or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and the routers' choices and answers "
                         f"{[a.shape for a in arrays]} must all be (N,)")
    lc, lp, cc, cp = arrays
    differ = lc != cc
    l_only = differ & (lp == y) & (cp != y)
    c_only = differ & (cp == y) & (lp != y)
    n_classes = max(len(class_names or ()), int(y.max()) + 1 if len(y) else 0)
    names = list(class_names or ())
    rows = []
    for k in range(n_classes):
        on = y == k
        rows.append({"label": k, "class": names[k] if k < len(names) else str(k),
                     "images": int(on.sum()), "routed_differently": int((differ & on).sum()),
                     "learned_right_cascade_wrong": int((l_only & on).sum()),
                     "cascade_right_learned_wrong": int((c_only & on).sum())})
    return pd.DataFrame(rows, columns=list(DISAGREEMENT_COLUMNS))


@dataclass
class Disagreements:
    """The disagreement table of one comparison, and what it compares."""

    table: pd.DataFrame
    learned: str
    cascade: str
    sacrifice: float
    zoo: str
    how: str            # why this learned router (a val rule)

    def csv_frame(self) -> pd.DataFrame:
        return self.table.assign(zoo=self.zoo, sacrifice=self.sacrifice,
                                 learned_method=self.learned, cascade_method=self.cascade)

    def display(self) -> pd.DataFrame:
        """The page's table: one row per label and a total."""
        t = self.table
        total = {"label": "", "class": "total", **{c: int(t[c].sum()) for c in
                                                    DISAGREEMENT_COLUMNS[2:]}}
        frame = pd.concat([t, pd.DataFrame([total])], ignore_index=True)
        return pd.DataFrame({
            "true label": [f"{c}" if lab == "" else f"{lab}: {c}"
                           for lab, c in zip(frame["label"], frame["class"])],
            "test images": frame["images"],
            "routed differently": frame["routed_differently"],
            f"{self.learned} right, cascade wrong": frame["learned_right_cascade_wrong"],
            f"cascade right, {self.learned} wrong": frame["cascade_right_learned_wrong"]})


def disagreements_from_run(art: RunArtifacts, zoo: str = DEFAULT_ZOO
                           ) -> tuple[Disagreements | None, str]:
    """The learned router (picked on val) against the cascade at the summary level, from the
    run's saved choices. Returns ``(result, "")`` or ``(None, why not)``."""
    if art.routers is None:
        return None, "results/routers.csv is absent (run `evaluate-routers`)"
    rows = zoo_rows(art.routers, zoo)
    if not (rows["family"] == LEARNED_FAMILY).any():
        return None, f"routers.csv has no learned router (family `learned`) in zoo {zoo!r}"
    if not (rows["method"] == CASCADE_METHOD).any():
        return None, f"routers.csv has no cascade in zoo {zoo!r}"
    level = summary_level(art.routers, zoo)
    learned, how = pick_learned(art.routers, level, zoo)
    if learned is None:
        return None, how
    if not (np.isclose(rows["sacrifice"].astype(float), level)
            & (rows["method"] == CASCADE_METHOD)).any():
        return None, f"routers.csv has no cascade row at {100 * level:g}% sacrifice"
    rp = art.router_predictions
    if rp is None:
        return None, "results/router_predictions.npz is absent (run `evaluate-routers`)"
    if rp.chosen is None:
        return None, (f"router_predictions.npz holds no `chosen` models (written before "
                      f"routers recorded their choices): {RERUN}")
    got = {}
    for m in (learned, CASCADE_METHOD):
        chosen, preds = rp.find_chosen(m, level, zoo), rp.find(m, level, zoo)
        if chosen is None or preds is None:
            return None, (f"router_predictions.npz has no entry for {m} at sacrifice {level:g} "
                          f"in zoo {zoo!r}: {RERUN}")
        got[m] = (chosen, preds)
    labels = rp.labels if rp.labels is not None else (
        art.test.labels if art.test is not None else None)
    if labels is None:
        return None, ("no test labels (router_predictions.npz has none and tables/test.npz "
                      "is absent)")
    if len(labels) != len(got[learned][0]):
        raise ValueError(f"router_predictions.npz holds {len(got[learned][0])} choices but "
                         f"{len(labels)} test labels; {RERUN}")
    table = routing_disagreements(labels, *got[learned], *got[CASCADE_METHOD], art.class_names)
    return Disagreements(table, learned, CASCADE_METHOD, level, zoo, how), ""


# ---- the figure ------------------------------------------------------------------------------

@dataclass
class LearnedVsCascadeDisplay:
    """Accuracy against measured images/s (log x) for the cascade, every learned router and
    (lighter) the dispatchers, one curve each over its levels; at every point the cost-matched
    random router's accuracy as a hollow marker at the same x; the best single model and the
    cheapest adequate single models as reference markers."""

    frame: pd.DataFrame

    @classmethod
    def from_routers(cls, frame: pd.DataFrame,
                     zoo: str = DEFAULT_ZOO) -> "LearnedVsCascadeDisplay":
        frame = zoo_rows(frame, zoo)
        if not (frame["family"] == LEARNED_FAMILY).any():
            raise ValueError(f"routers.csv has no learned router (family `learned`) in zoo "
                             f"{zoo!r}; {RERUN} with a version that fits one")
        disp = cls(frame)
        points = disp.data_
        if points[(points["kind"] == "router") & (points["family"] == LEARNED_FAMILY)].empty:
            raise ValueError(f"no learned router row of zoo {zoo!r} has both accuracy and "
                             "images/s (untimed)")
        return disp

    @property
    def data_(self) -> pd.DataFrame:
        """Rows of kind ``router`` (a point of a curve), ``random`` (its cost-matched random
        twin, drawn at the router's x), ``best-single`` and ``cheapest-single``."""
        f = self.frame
        routed = f[f["family"].isin(style.deployable_families())].dropna(
            subset=["sacrifice", "accuracy", "images_per_second"])
        rnd = random_accuracy_of(f).loc[routed.index]
        rank = {fam: i for i, fam in enumerate(style.deployable_families())}
        pairs = sorted(dict.fromkeys(zip(routed["method"], routed["family"])),
                       key=lambda p: (rank[p[1]], p[0]))
        out: list[dict[str, Any]] = []
        for method, family in pairs:
            part = routed[routed["method"] == method].sort_values("images_per_second",
                                                                  kind="stable")
            for i, r in part.iterrows():
                base = {"method": method, "family": family, "sacrifice": float(r["sacrifice"]),
                        "images_per_second": float(r["images_per_second"]), "model": ""}
                out.append({"kind": "router", **base, "accuracy": float(r["accuracy"])})
                if np.isfinite(rnd[i]):
                    out.append({"kind": "random", **base, "method": f"random~{method}",
                                "family": "random", "accuracy": float(rnd[i])})
        refs = f[f["family"].isin(("best-single", "cheapest-single"))].dropna(
            subset=["accuracy", "images_per_second"])
        for _, r in refs.iterrows():
            out.append({"kind": r["family"], "method": r["method"], "family": r["family"],
                        "sacrifice": _num(r["sacrifice"]), "model": model_of(r),
                        "images_per_second": float(r["images_per_second"]),
                        "accuracy": float(r["accuracy"])})
        cols = ["kind", "method", "family", "sacrifice", "images_per_second", "accuracy", "model"]
        return pd.DataFrame(out, columns=cols)

    def plot(self) -> "LearnedVsCascadeDisplay":
        fig, axes = style.new_figure(10.0, 6.0)
        ax = axes[0, 0]
        data = self.data_
        routers = data[data["kind"] == "router"]
        colors = style.method_colors(routers["method"].unique())
        for method, part in routers.groupby("method", sort=False):
            family = str(part["family"].iloc[0])
            light = family == "dispatcher"
            kw = style.method_line_kw(method, family, colors[method])
            if light:
                kw.update(alpha=0.4, linewidth=1.0)
            ax.plot(part["images_per_second"], 100 * part["accuracy"], zorder=3 if not light else 2,
                    label=method + (" (dispatcher, lighter)" if light else ""), **kw)
            twin = data[(data["kind"] == "random") & (data["method"] == f"random~{method}")]
            if not twin.empty:
                marker = style.METHOD_MARKERS.get(style.method_key(method), ("o", 4.5))[0]
                ax.scatter(twin["images_per_second"], 100 * twin["accuracy"], marker=marker,
                           s=34, facecolors="none", edgecolors=colors[method], linewidths=1.1,
                           alpha=0.4 if light else 0.95, zorder=3,
                           label=f"{method}: cost-matched random at the same images/s")
                top = part.set_index("sacrifice")["accuracy"]
                for _, t in twin.iterrows():   # the gap the router earns over its random twin
                    ax.plot([t["images_per_second"]] * 2,
                            [100 * t["accuracy"], 100 * float(top.get(t["sacrifice"]))],
                            color=colors[method], linewidth=0.6, alpha=0.25 if light else 0.5,
                            zorder=1.5)
        best = data[data["kind"] == "best-single"].drop_duplicates("model")
        if not best.empty:
            b = best.iloc[0]
            ax.scatter([b["images_per_second"]], [100 * b["accuracy"]], marker="*", s=150,
                       color="black", zorder=4, label=f"best single model ({b['model']})")
        cheap = data[data["kind"] == "cheapest-single"].drop_duplicates("model")
        if not cheap.empty:
            ax.scatter(cheap["images_per_second"], 100 * cheap["accuracy"], marker="s", s=70,
                       facecolors="none", edgecolors="dimgray", linewidths=1.3, zorder=4,
                       label="cheapest adequate single model (on val, at some level)")
        for _, r in pd.concat([best.iloc[:1], cheap]).drop_duplicates("model").iterrows():
            ax.annotate(r["model"], (r["images_per_second"], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(6, -10), fontsize=6.5, color="0.25")
        ax.set_xscale("log")
        style.human_axis(ax, "x")
        ax.set_xlabel("images / s (measured on test, log scale)")
        ax.set_ylabel("accuracy on test (%)")
        ax.set_title("Learned routers and the cascade against their cost-matched random routers")
        ax.margins(x=0.08, y=0.08)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=6.5)
        self.ax_, self.figure_ = ax, fig
        return self


DEFERRAL_COLUMNS = ("zoo", "first", "reference", "score", "deferred_share", "accuracy")


@dataclass
class DeferralCurvesDisplay:
    """Test accuracy against the share of inputs the cheapest model defers to the reference,
    ranked by max-softmax, by the learned deferral head and ideally (mistakes first), one panel
    per zoo: where the learned curve lies on the max-softmax one, no threshold can make the
    learned cascade beat the plain one on that first stage."""

    frame: pd.DataFrame

    @property
    def data_(self) -> pd.DataFrame:
        return self.frame[list(DEFERRAL_COLUMNS)]

    def plot(self) -> "DeferralCurvesDisplay":
        import seaborn as sns
        zoos = list(dict.fromkeys(self.frame["zoo"]))
        fig, axes = style.new_figure(5.0 * len(zoos), 4.2, ncols=len(zoos))
        for ax, zoo in zip(axes[0], zoos):
            part = self.frame[self.frame["zoo"] == zoo].assign(
                pct=lambda d: 100 * d["accuracy"], deferred=lambda d: 100 * d["deferred_share"])
            sns.lineplot(data=part, x="deferred", y="pct", hue="score", style="score", ax=ax,
                         legend=ax is axes[0][0])
            r = part.iloc[0]
            ax.set_title(f"zoo {zoo}: {r['first']} defers to {r['reference']}", fontsize=9)
            ax.set_xlabel("share of test inputs deferred (%)")
            ax.set_ylabel("test accuracy (%)")
        self.ax_, self.figure_ = axes[0][0], fig
        return self


__all__ = ["area_above_random", "router_areas", "areas_display", "random_accuracy_of",
           "summary_level", "pick_learned", "routing_disagreements", "disagreements_from_run",
           "Disagreements", "LearnedVsCascadeDisplay", "DeferralCurvesDisplay", "AREA_COLUMNS",
           "DISAGREEMENT_COLUMNS", "DEFERRAL_COLUMNS"]
