"""Key tables and the page summary, computed from saved tables and result CSVs only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from oracle.metrics import paired_comparison
from oracle.policy import reference_index
from reports.inputs import DEFAULT_ZOO, RunArtifacts, _as_bool, model_of, selected_rows, \
    zoo_rows, zoos_of

SUMMARY_SACRIFICE = 0.01
NO_PROMISE = "no promise"   # routers.csv budget_status (router.scoring): nothing certified below 0
ROUTER_TABLE_COLUMNS = ("zoo", "sacrifice", "method", "family", "selected", "accuracy",
                        "precision", "recall", "f1", "seconds", "images_per_second",
                        "speedup_vs_best", "speedup_vs_cheapest_single", "router_seconds",
                        "wasted_seconds", "overhead_share", "macs_per_image", "val_accuracy",
                        "fit_ms_per_image", "budget_held")
COMPRESSION_TABLE_COLUMNS = ("variant", "base", "params", "nonzero_params", "pruning_rate",
                             "macs", "sparsity", "size_mb", "size_reduction", "top1", "top5",
                             "latency_ms_b1", "latency_ms_b64", "speedup_b1", "speedup_b64",
                             "peak_memory_mb")


def best_single_name(art: RunArtifacts) -> str | None:
    """The reference model (``oracle.policy.reference_index``: most accurate on val, ties to
    the cheaper), else the routers.csv ``best-single`` row's model."""
    if art.val is not None:
        costs = None
        if art.costs is not None and all(n in art.costs.models for n in art.val.model_names):
            costs = art.costs.vector(art.val.model_names, "ms_per_image")
        return art.val.model_names[reference_index(art.val, costs)]
    if art.routers is not None:
        rows = art.routers[art.routers["family"] == "best-single"]
        if not rows.empty:
            return model_of(rows.iloc[0])
    return None


def zoo_table(art: RunArtifacts) -> pd.DataFrame:
    """One row per model: accuracies from the tables, measured costs, training time from cards."""
    if art.test is not None:
        names = list(art.test.model_names)
    elif art.val is not None:
        names = list(art.val.model_names)
    elif art.costs is not None:
        names = art.costs.sorted_names()
    else:
        names = sorted(art.cards)
    accs = {split: dict(zip(t.model_names, t.accuracy()))
            for split, t in (("val", art.val), ("test", art.test)) if t is not None}
    rows = []
    for name in names:
        card = art.cards.get(name, {})
        row: dict[str, Any] = {"model": name, "variant": card.get("variant"),
                               "parent": card.get("parent")}
        for split in ("val", "test"):
            acc = accs.get(split, {}).get(name, card.get(f"{split}_accuracy"))
            row[f"{split}_accuracy"] = None if acc is None else float(acc)
        cost = art.costs.models.get(name) if art.costs is not None else None
        row["params"] = cost.params if cost else card.get("params")
        if cost:
            row.update(macs=cost.macs, size_mb=cost.size_mb, latency_ms_b1=cost.latency_ms_b1,
                       images_per_second=cost.images_per_second,
                       ms_per_image=cost.ms_per_image, peak_memory_mb=cost.peak_memory_mb)
        row["train_seconds"] = card.get("train_seconds")
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.dropna(axis=1, how="all")


LADDER_P = 0.05


def ladder_table(art: RunArtifacts) -> pd.DataFrame:
    """The accuracy ladder with paired tests: the base models (cards without a parent),
    cheapest first by counted MACs, each against the most accurate cheaper one on each split.

    ``holds`` is the ladder's rule (strictly more accurate); ``beyond_noise`` says the exact
    McNemar p-value of the pair is below ``LADDER_P``. Empty without costs or tables.
    """
    if art.costs is None:
        return pd.DataFrame()
    rows: list[dict[str, Any]] = []
    for split, table in (("val", art.val), ("test", art.test)):
        if table is None:
            continue
        names = [n for n in table.model_names if n in art.costs.models
                 and n in art.cards and art.cards[n].get("parent") is None]
        names = sorted(names, key=lambda n: art.costs.models[n].macs)   # stable: ties keep order
        correct = table.correct
        col = {n: correct[:, table.model_index(n)] for n in names}
        acc = {n: float(c.mean()) for n, c in col.items()}
        for i, name in enumerate(names[1:], start=1):
            rival = max(names[:i], key=acc.__getitem__)   # first of equals: the cheapest
            pair = paired_comparison(col[rival], col[name])
            rows.append({"split": split, "model": name, "macs": art.costs.models[name].macs,
                         "accuracy": acc[name], "cheaper_best": rival,
                         "cheaper_best_accuracy": acc[rival],
                         "difference_points": 100 * pair["difference"],
                         "images_gained": pair["b_only"] - pair["a_only"],
                         "only_this_right": pair["b_only"], "only_cheaper_right": pair["a_only"],
                         "p_value": pair["p_value"], "holds": pair["difference"] > 0,
                         "beyond_noise": pair["p_value"] < LADDER_P})
    return pd.DataFrame(rows)


def routers_table(routers: pd.DataFrame) -> pd.DataFrame:
    """routers.csv rows at each level (reference rows first, single models once per zoo: they
    do not depend on the level), the columns a reader needs."""
    cols = [c for c in ROUTER_TABLE_COLUMNS if c in routers.columns]
    single = routers["family"].isin(("single", "best-single"))
    key = ["zoo", "method"] if "zoo" in routers.columns else ["method"]
    rows = pd.concat([routers[single].drop_duplicates(key), routers[~single]])
    zoo_rank = {z: i for i, z in enumerate(zoos_of(routers))}
    order = rows.assign(_level=rows["family"].isin(("single", "best-single", "ceiling"))
                        .map({True: 0, False: 1}),
                        _zoo=rows["zoo"].map(zoo_rank) if "zoo" in rows.columns else 0)
    return order.sort_values(["_zoo", "_level", "sacrifice", "family", "method"],
                             kind="stable")[cols]


PIVOT_FAMILIES = ("cascade", "dispatcher", "learned", "cheapest-single", "oracle-executed",
                  "ceiling")


def routers_pivot(routers: pd.DataFrame, zoo: str = DEFAULT_ZOO) -> pd.DataFrame:
    """One row per timed router of ``zoo``, one column per sacrifice level; each cell reads
    ``accuracy % / speedup x``, ``(missed)`` where the budget did not hold on test and
    ``[selected]`` on the answer selected on val. The cheapest adequate single model is one
    row (``cheapest-single``), its model named in each cell."""
    routers = zoo_rows(routers, zoo)
    rows = routers[routers["family"].isin(PIVOT_FAMILIES)].dropna(
        subset=["accuracy", "sacrifice"])
    if rows.empty:
        return pd.DataFrame()
    best = routers[routers["family"] == "best-single"]["images_per_second"].dropna()
    best_ips = float(best.iloc[0]) if len(best) else np.nan

    def cell(r: pd.Series) -> str:
        text = f"{100 * float(r['accuracy']):.2f}%"
        speed = r.get("speedup_vs_best")
        if (speed is None or not np.isfinite(speed)) and np.isfinite(best_ips):
            speed = float(r.get("images_per_second", np.nan)) / best_ips
        if speed is not None and np.isfinite(speed):
            text += f" / {speed:.2f}x"
        if r["family"] == "cheapest-single":
            text = f"{model_of(r)}: {text}"
        held = r.get("budget_held")
        if _is(held, False):
            text += " (missed)"
        if _is(r.get("selected"), True):
            text += " [selected]"
        return text

    rows = rows.assign(cell=[cell(r) for _, r in rows.iterrows()],
                       level=[f"s = {100 * float(v):g}%" for v in rows["sacrifice"]],
                       method=rows["method"].where(rows["family"] != "cheapest-single",
                                                   "cheapest-single"))
    levels = [f"s = {100 * float(v):g}%" for v in sorted(rows["sacrifice"].unique())]
    rank = {f: i for i, f in enumerate(PIVOT_FAMILIES)}
    methods = sorted(dict.fromkeys(zip(rows["method"], rows["family"])),
                     key=lambda p: (rank[p[1]], p[0]))
    table = rows.pivot_table(index="method", columns="level", values="cell", aggfunc="first")
    out = table.reindex(index=[m for m, _ in methods], columns=levels).reset_index()
    out.insert(1, "family", [f for _, f in methods])
    return out.fillna("")


def compression_table(compression: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in COMPRESSION_TABLE_COLUMNS if c in compression.columns]
    return compression[cols]


HEADLINE_COLUMNS = ("zoo", "sacrifice", "method", "family", "val_accuracy", "fit_ms_per_image",
                    "accuracy", "target_accuracy", "budget_held", "budget_margin_se",
                    "images_per_second", "speedup_vs_best", "speedup_vs_cheapest_single",
                    "overhead_share", "best_single", "cheapest_single", "selection", "delta",
                    "certified", "certified_drop_ucb", "budget_status", "speedup_vs_best_lo",
                    "speedup_vs_best_hi")
RERUN_HINT = "re-run `evaluate-routers`"
ZOO_DESCRIPTIONS = {"all": "whole zoo, compressed variants included",
                    "base": "uncompressed models only"}


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _first(rows: pd.DataFrame, family: str) -> pd.Series | None:
    part = rows[rows["family"] == family]
    return None if part.empty else part.iloc[0]


def _speedup(row: pd.Series, ref: pd.Series | None, column: str) -> float | None:
    """The row's recorded speedup, else its images/s over the reference row's (same zoo, same
    level, same timing rounds)."""
    v = _finite(row.get(column))
    if v is not None:
        return v
    ips = _finite(row.get("images_per_second"))
    ref_ips = None if ref is None else _finite(ref.get("images_per_second"))
    return ips / ref_ips if ips is not None and ref_ips else None


def overhead_share(row: pd.Series) -> float | None:
    """``overhead_share`` as recorded, else (router + wasted seconds) / seconds."""
    v = _finite(row.get("overhead_share"))
    if v is not None:
        return v
    seconds, router = _finite(row.get("seconds")), _finite(row.get("router_seconds"))
    if not seconds or router is None:
        return None
    return (router + (_finite(row.get("wasted_seconds")) or 0.0)) / seconds


def has_selection(routers: pd.DataFrame | None) -> bool:
    """Whether routers.csv records the answer selected on val (runs before that do not)."""
    return routers is not None and "selected" in routers.columns


def committee_table(routers: pd.DataFrame, family: str = "committee") -> pd.DataFrame:
    """Per zoo and level: the best single model against the ``family`` router fitted on val at
    that level (one row per level, never a pick among test rows): test accuracy and its gain in
    points, measured images/s and the speedup over the best single model with its interval,
    the certificate from val and whether validation selected it. Empty where no such row."""
    out: list[dict[str, Any]] = []
    for zoo in zoos_of(routers):
        rows = zoo_rows(routers, zoo)
        fam = rows[rows["family"] == family]
        for level in sorted(float(v) for v in fam["sacrifice"].dropna().unique()):
            at = rows[np.isclose(rows["sacrifice"].astype(float), level)]
            best, r = _first(at, "best-single"), _first(at, family)
            acc, ref = _finite(r.get("accuracy")), None if best is None else _finite(
                best.get("accuracy"))
            lo, hi = _finite(r.get("speedup_vs_best_lo")), _finite(r.get("speedup_vs_best_hi"))
            speed = _speedup(r, best, "speedup_vs_best")
            out.append({
                "zoo": zoo, "level": f"{100 * level:g}%",
                "best single": None if best is None else model_of(best),
                "best single acc %": None if ref is None else round(100 * ref, 2),
                "method": r["method"], "acc %": None if acc is None else round(100 * acc, 2),
                "gain (points)": None if acc is None or ref is None
                else round(100 * (acc - ref), 2),
                "x best [95% CI]": "" if speed is None else f"{speed:.2f}x" + (
                    "" if lo is None or hi is None else f" [{lo:.2f}-{hi:.2f}]"),
                "certified on val": _as_bool(r.get("certified")),
                "drop bound (points)": None if _finite(r.get("certified_drop_ucb")) is None
                else round(100 * float(r["certified_drop_ucb"]), 2),
                "selected": r["method"] in set(selected_rows(at)["method"])})
    return pd.DataFrame(out)


def headline_table(routers: pd.DataFrame) -> pd.DataFrame:
    """One row per (zoo, level): the deployable answer **selected on val** (``selected``) and
    its test figures as they came out, held or not. Nothing here compares test rows.

    Empty (with the columns) when routers.csv has no ``selected`` column; a level with no
    selected row gets a row without a method; two selected rows at one level are an error.
    """
    if not has_selection(routers):
        return pd.DataFrame(columns=list(HEADLINE_COLUMNS))
    out: list[dict[str, Any]] = []
    for zoo in zoos_of(routers):
        rows = zoo_rows(routers, zoo)
        for level in sorted(float(v) for v in rows["sacrifice"].dropna().unique()):
            at = rows[np.isclose(rows["sacrifice"].astype(float), level)]
            sel = selected_rows(at)
            if len(sel) > 1:
                raise ValueError(f"routers.csv marks {len(sel)} rows selected for zoo {zoo!r} at "
                                 f"sacrifice {level:g} ({list(sel['method'])}); exactly one may "
                                 f"be: {RERUN_HINT}")
            best, cheap = _first(at, "best-single"), _first(at, "cheapest-single")
            rec: dict[str, Any] = {c: None for c in HEADLINE_COLUMNS}
            rec.update(zoo=zoo, sacrifice=level,
                       best_single=None if best is None else model_of(best),
                       cheapest_single=None if cheap is None else model_of(cheap))
            if not sel.empty:
                r = sel.iloc[0]
                held = r.get("budget_held")
                rec.update(method=r["method"], family=r["family"],
                           val_accuracy=_finite(r.get("val_accuracy")),
                           fit_ms_per_image=_finite(r.get("fit_ms_per_image")),
                           accuracy=_finite(r.get("accuracy")),
                           target_accuracy=_finite(r.get("target_accuracy")),
                           budget_held=bool(held) if isinstance(held, (bool, np.bool_)) else None,
                           budget_margin_se=_finite(r.get("budget_margin_se")),
                           images_per_second=_finite(r.get("images_per_second")),
                           speedup_vs_best=_speedup(r, best, "speedup_vs_best"),
                           speedup_vs_cheapest_single=_speedup(r, cheap,
                                                               "speedup_vs_cheapest_single"),
                           overhead_share=overhead_share(r),
                           selection=r.get("selection") if isinstance(r.get("selection"), str)
                           else None, delta=_finite(r.get("delta")),
                           certified=_as_bool(r.get("certified")),
                           certified_drop_ucb=_finite(r.get("certified_drop_ucb")),
                           budget_status=r.get("budget_status")
                           if isinstance(r.get("budget_status"), str) else None,
                           speedup_vs_best_lo=_finite(r.get("speedup_vs_best_lo")),
                           speedup_vs_best_hi=_finite(r.get("speedup_vs_best_hi")))
            out.append(rec)
    return pd.DataFrame(out, columns=list(HEADLINE_COLUMNS))


def headline_display(headline: pd.DataFrame) -> pd.DataFrame:
    """The headline table as the page shows it (percentages and speedups as text)."""
    def pct(v: Any, digits: int = 2) -> str:
        return "" if _finite(v) is None else f"{100 * float(v):.{digits}f}%"

    def times(v: Any) -> str:
        return "" if _finite(v) is None else f"{float(v):.2f}x"

    def held(v: Any, margin: Any = None) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        text = "held" if bool(v) else "MISSED"
        m = _finite(margin)
        return text if m is None else f"{text} ({m:+.1f} SE)"

    def certified(r: pd.Series) -> str:
        if r.get("selection") != "certified" or r.get("certified") is None:
            return "no (estimate rule)" if r.get("selection") == "estimate" else ""
        ucb = _finite(r.get("certified_drop_ucb"))
        bound = "" if ucb is None else f", drop <= {100 * ucb:.2f} pts"
        return (f"{'yes' if r['certified'] else 'no'} at delta {r['delta']:g}{bound}"
                if r.get("delta") is not None else "")

    def interval(r: pd.Series) -> str:
        lo, hi = _finite(r.get("speedup_vs_best_lo")), _finite(r.get("speedup_vs_best_hi"))
        return "" if lo is None or hi is None else f" [{lo:.2f}-{hi:.2f}]"

    rows = []
    for _, r in headline.iterrows():
        rows.append({"zoo": r["zoo"], "s": f"{100 * float(r['sacrifice']):g}%",
                     "selected on val": r["method"] or f"none ({RERUN_HINT})",
                     "family": r["family"] or "",
                     "val accuracy": pct(r["val_accuracy"]),
                     "expected ms/image (val)": _finite(r["fit_ms_per_image"]),
                     "test accuracy": pct(r["accuracy"]),
                     "target (test)": pct(r["target_accuracy"]),
                     "certified on val": certified(r),
                     "budget on test": ("no promise (nothing certified)"
                                        if r.get("budget_status") == NO_PROMISE else
                                        held(r["budget_held"], r.get("budget_margin_se"))),
                     "x best single": times(r["speedup_vs_best"]) + interval(r),
                     "x cheapest single": times(r["speedup_vs_cheapest_single"]),
                     "overhead share": pct(r["overhead_share"], 1),
                     "best single": r["best_single"] or "",
                     "cheapest adequate single": r["cheapest_single"] or ""})
    return pd.DataFrame(rows)


@dataclass
class Summary:
    """What the page opens with. Every router figure in it is a row **selected on val**
    (``headline``); no summary field is a maximum over test rows."""

    best_single: str | None = None
    best_single_val_accuracy: float | None = None
    best_single_test_accuracy: float | None = None
    best_single_images_per_second: float | None = None
    headline: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=list(HEADLINE_COLUMNS)))   # one row per (zoo, level): the selected answer
    selection_note: str = ""                # why there is no headline (absent or old CSV)
    router: dict[str, Any] | None = None    # routers.csv row selected at the summary level, zoo all
    router_speedup: float | None = None     # its speedup over the best single model
    router_note: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    router_threads: int | None = None       # threads recorded with the routers' timing
    oracle_bounds: list[dict[str, Any]] = field(default_factory=list)  # executed label oracles
    # at the summary level (zoo all), every one as it came out: bounds, never a pick


def _single_row(routers: pd.DataFrame, name: str | None) -> pd.Series | None:
    singles = routers[routers["family"].isin(("single", "best-single"))]
    mask = np.array([model_of(r) == name for _, r in singles.iterrows()], dtype=bool)
    named = singles.loc[mask] if len(singles) else singles
    if name and not named.empty:
        return named.iloc[0]
    best = routers[routers["family"] == "best-single"]
    return None if best.empty else best.iloc[0]


def selected_row(routers: pd.DataFrame, sacrifice: float = SUMMARY_SACRIFICE,
                 zoo: str = DEFAULT_ZOO) -> tuple[pd.Series | None, str]:
    """The row selected on val at ``sacrifice`` in ``zoo``, as it came out on test (held or
    not). Returns ``(row or None, why none)``; never looks at a test figure to choose."""
    if not has_selection(routers):
        return None, ("routers.csv has no `selected` column (written before the deployed answer "
                      f"was selected on val): {RERUN_HINT}; nothing is picked on test here")
    at = zoo_rows(routers, zoo)
    at = at[np.isclose(at["sacrifice"].astype(float), sacrifice)]
    if at.empty:
        return None, f"no routers.csv row for zoo {zoo!r} at {100 * sacrifice:g}% sacrifice"
    sel = selected_rows(at)
    if sel.empty:
        return None, (f"no row is selected for zoo {zoo!r} at {100 * sacrifice:g}% sacrifice: "
                      f"{RERUN_HINT}")
    return sel.iloc[0], ""


def _is(value: Any, flag: bool) -> bool:
    """``budget_held`` equals ``flag`` (it may also be None: not known)."""
    return isinstance(value, (bool, np.bool_)) and bool(value) is flag


def _clean(row: pd.Series) -> dict[str, Any]:
    """A row as plain Python values (numpy scalars unwrapped, NaN as None)."""
    out = {}
    for k, v in row.items():
        v = v.item() if isinstance(v, np.generic) else v
        out[k] = None if isinstance(v, float) and np.isnan(v) else v
    return out


def summarize(art: RunArtifacts, sacrifice: float = SUMMARY_SACRIFICE) -> Summary:
    s = Summary(machine=dict(art.costs.machine) if art.costs is not None else {})
    s.best_single = best_single_name(art)
    for split, t in (("val", art.val), ("test", art.test)):
        if t is not None and s.best_single in t.model_names:
            setattr(s, f"best_single_{split}_accuracy",
                    float(t.accuracy()[t.model_index(s.best_single)]))
    if art.routers is None:
        s.router_note = s.selection_note = "results/routers.csv is absent: run `evaluate-routers`"
        return s
    routers = zoo_rows(art.routers, DEFAULT_ZOO)
    single = _single_row(routers, s.best_single)
    if single is not None:
        s.best_single_images_per_second = _finite(single.get("images_per_second"))
    if "threads" in art.routers.columns:
        threads = pd.to_numeric(art.routers["threads"], errors="coerce").dropna().unique()
        if len(threads) == 1:
            s.router_threads = int(threads[0])
    s.headline = headline_table(art.routers)
    if not has_selection(art.routers):
        s.selection_note = ("results/routers.csv has no `selected` column (it was written before "
                            "the deployed answer was selected on val): re-run `evaluate-routers`"
                            " to get it; this report does not pick a router on test")
    row, s.router_note = selected_row(art.routers, sacrifice)
    if row is not None:
        s.router = _clean(row)
        at = routers[np.isclose(routers["sacrifice"].astype(float), sacrifice)]
        s.router_speedup = _speedup(row, _first(at, "best-single"), "speedup_vs_best")
    at = routers[np.isclose(routers["sacrifice"].astype(float), sacrifice)]
    for _, o in at[at["family"] == "oracle-executed"].iterrows():
        rec = _clean(o)
        rec["speedup_vs_best"] = _speedup(o, _first(at, "best-single"), "speedup_vs_best")
        s.oracle_bounds.append(rec)
    return s
