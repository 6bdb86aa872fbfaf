"""Key tables and the page summary, computed from saved tables and result CSVs only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from oracle.metrics import paired_comparison
from oracle.policy import reference_index
from reports.inputs import RunArtifacts, model_of

DEPLOYABLE_FAMILIES = ("dispatcher", "cascade")
SUMMARY_SACRIFICE = 0.01
ROUTER_TABLE_COLUMNS = ("sacrifice", "method", "family", "accuracy", "precision", "recall", "f1",
                        "seconds", "images_per_second", "speedup_vs_best", "router_seconds",
                        "macs_per_image", "budget_held")
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
    """routers.csv rows at each level (reference rows first, single models once: they do not
    depend on the level), the columns a reader needs."""
    cols = [c for c in ROUTER_TABLE_COLUMNS if c in routers.columns]
    single = routers["family"].isin(("single", "best-single"))
    rows = pd.concat([routers[single].drop_duplicates("method"), routers[~single]])
    order = rows.assign(_level=rows["family"].isin(("single", "best-single", "ceiling"))
                        .map({True: 0, False: 1}))
    return order.sort_values(["_level", "sacrifice", "family", "method"], kind="stable")[cols]


PIVOT_FAMILIES = ("cascade", "dispatcher", "oracle-executed", "ceiling")


def routers_pivot(routers: pd.DataFrame) -> pd.DataFrame:
    """One row per timed router, one column per sacrifice level; each cell reads
    ``accuracy % / speedup x`` and whether the budget held on test."""
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
        held = r.get("budget_held")
        if _is(held, False):
            text += " (missed)"
        return text

    rows = rows.assign(cell=[cell(r) for _, r in rows.iterrows()],
                       level=[f"s = {100 * float(v):g}%" for v in rows["sacrifice"]])
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


@dataclass
class Summary:
    """What the page opens with."""

    best_single: str | None = None
    best_single_val_accuracy: float | None = None
    best_single_test_accuracy: float | None = None
    best_single_images_per_second: float | None = None
    router: dict[str, Any] | None = None        # the routers.csv row of the chosen router
    router_speedup: float | None = None
    router_note: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    router_threads: int | None = None           # threads recorded with the routers' timing
    missed: dict[str, Any] | None = None        # deployable router closest to its budget
    first_held: dict[str, Any] | None = None    # best held router at the next level that has one
    oracle_bound: dict[str, Any] | None = None  # fastest executed label oracle that held it
    oracle_speedup: float | None = None


def _single_row(routers: pd.DataFrame, name: str | None) -> pd.Series | None:
    singles = routers[routers["family"].isin(("single", "best-single"))]
    mask = np.array([model_of(r) == name for _, r in singles.iterrows()], dtype=bool)
    named = singles.loc[mask] if len(singles) else singles
    if name and not named.empty:
        return named.iloc[0]
    best = routers[routers["family"] == "best-single"]
    return None if best.empty else best.iloc[0]


def pick_router(routers: pd.DataFrame, sacrifice: float = SUMMARY_SACRIFICE) -> tuple[
        pd.Series | None, str]:
    """The best deployable router at ``sacrifice`` that held its budget: the fastest of them.

    All candidates kept the accuracy promise, so throughput decides (ties: more accurate).
    Returns ``(row or None, note)``.
    """
    at = routers[routers["family"].isin(DEPLOYABLE_FAMILIES)
                 & np.isclose(routers["sacrifice"].astype(float), sacrifice)]
    if at.empty:
        return None, (f"no dispatcher or cascade was evaluated at {100 * sacrifice:g}% "
                      "sacrifice")
    if "budget_held" not in at.columns:
        return None, "routers.csv has no budget_held column, so no router can be called held"
    held = at[at["budget_held"] == True]  # noqa: E712 (column holds True/False/None)
    if held.empty:
        return None, (f"none of the {len(at)} deployable routers at {100 * sacrifice:g}% "
                      "sacrifice held its budget on test")
    best = held.sort_values(["images_per_second", "accuracy"], ascending=False, kind="stable")
    return best.iloc[0], ""


def _is(value: Any, flag: bool) -> bool:
    """``budget_held`` equals ``flag`` (it may also be None: not known)."""
    return isinstance(value, (bool, np.bool_)) and bool(value) is flag


def _clean(row: pd.Series) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}


def summarize(art: RunArtifacts, sacrifice: float = SUMMARY_SACRIFICE) -> Summary:
    s = Summary(machine=dict(art.costs.machine) if art.costs is not None else {})
    s.best_single = best_single_name(art)
    for split, t in (("val", art.val), ("test", art.test)):
        if t is not None and s.best_single in t.model_names:
            setattr(s, f"best_single_{split}_accuracy",
                    float(t.accuracy()[t.model_index(s.best_single)]))
    if art.routers is None:
        s.router_note = "results/routers.csv is absent: run `evaluate-routers`"
        return s
    single = _single_row(art.routers, s.best_single)
    if single is not None:
        s.best_single_images_per_second = float(single["images_per_second"])
    if "threads" in art.routers.columns:
        threads = pd.to_numeric(art.routers["threads"], errors="coerce").dropna().unique()
        if len(threads) == 1:
            s.router_threads = int(threads[0])
    row, s.router_note = pick_router(art.routers, sacrifice)
    at = art.routers[np.isclose(art.routers["sacrifice"].astype(float), sacrifice)]
    has_held = "budget_held" in at.columns
    held = at["budget_held"].map(lambda v: _is(v, True)) if has_held else None
    if row is None and has_held:
        missed = at[at["family"].isin(DEPLOYABLE_FAMILIES)
                    & at["budget_held"].map(lambda v: _is(v, False))].dropna(
            subset=["images_per_second"])
        if not missed.empty:   # the one that came closest to its target (then the faster)
            s.missed = _clean(missed.sort_values(["accuracy", "images_per_second"],
                                                 ascending=False, kind="stable").iloc[0])
        for level in sorted(float(v) for v in art.routers["sacrifice"].dropna().unique()):
            if level > sacrifice + 1e-12:
                held_row, _ = pick_router(art.routers, level)
                if held_row is not None:
                    s.first_held = _clean(held_row)
                    break
    if held is not None:
        oracles = at[(at["family"] == "oracle-executed") & held].dropna(
            subset=["images_per_second"])
        if not oracles.empty:
            s.oracle_bound = _clean(oracles.sort_values("images_per_second",
                                                        ascending=False).iloc[0])
            if s.best_single_images_per_second:
                s.oracle_speedup = (float(s.oracle_bound["images_per_second"])
                                    / s.best_single_images_per_second)
    if row is not None:
        s.router = _clean(row)
        if s.best_single_images_per_second:
            s.router_speedup = float(row["images_per_second"]) / s.best_single_images_per_second
    return s
