"""Reports: every figure from tiny hand-made tables/CSVs, the page, and `report` end to end."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from PIL import Image

from common.io import write_csv, write_json
from common.tables import CostTable, ModelCost, PredictionTable
from reports import style
from reports.build import build_report
from reports.compression import CompressionBarsDisplay, PruneSweepDisplay, WeightHistDisplay
from reports.frontier import FrontierDisplay, place_labels
from reports.heatmap import ConfusionDisplay, OverlapDisplay
from reports.inputs import load_run, normalise_router_frame
from reports.sacrifice import SacrificeMetricsDisplay, SharesDisplay, TimeDisplay
from reports.tables import (headline_table, ladder_table, routers_pivot, routers_table,
                            selected_row, summarize)
from reports.training import TrainingCurvesDisplay

DPI = 40
MODELS = ["m_a", "m_b", "m_c"]          # cost order = weak -> strong in the hand table
CLASSES = ["shirt", "bag"]

# Correctness per model on 8 samples (labels 0,0,0,0,1,1,1,1):
#   label 0: a=[1,0,0,0] b=[1,1,0,0] c=[1,1,1,1];  label 1: a=[1,1,1,0] b=[1,1,0,1] c=[1,1,1,0]
# Overlap a-of-c: label 0 -> 1/4 = 25 %, label 1 -> 3/3 = 100 %, pooled -> 4/7 = 57.14 %
# (not either label's value, and not their mean 62.5 %).
CORRECT = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1],
                    [1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=bool)
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def hand_table(split: str = "test") -> PredictionTable:
    preds = np.where(CORRECT, LABELS[:, None], 1 - LABELS[:, None])
    probs = np.zeros((8, 3, 2), dtype=np.float16)
    for n in range(8):
        for m in range(3):
            probs[n, m, preds[n, m]] = 0.8
            probs[n, m, 1 - preds[n, m]] = 0.2
    return PredictionTable(MODELS, LABELS, preds, probs, np.arange(8), split,
                           {"dataset": {"name": "hand", "classes": CLASSES}})


def hand_routers() -> pd.DataFrame:
    """routers.csv as evaluate-routers writes it: single/best-single/ceiling rows repeated at
    every level, oracle + oracle-executed, dispatcher, cascade, random (text round trip)."""
    rows = []
    shares = lambda a, b, c: {"share_m_a": a, "share_m_b": b, "share_m_c": c}
    for s in (0.0, 0.01, 0.05):
        rows += [
            {"method": "single:m_a", "family": "single", "sacrifice": s, "accuracy": 0.5,
             "images_per_second": 4000.0, "seconds": 0.002, **shares(1, 0, 0)},
            {"method": "single:m_c", "family": "single", "sacrifice": s, "accuracy": 0.875,
             "images_per_second": 1000.0, "seconds": 0.008, **shares(0, 0, 1)},
            {"method": "best-single:m_c", "family": "best-single", "sacrifice": s,
             "accuracy": 0.875, "images_per_second": 1000.0, "seconds": 0.008, **shares(0, 0, 1)},
            {"method": "ceiling", "family": "ceiling", "sacrifice": s, "accuracy": 1.0,
             "images_per_second": 3000.0, "seconds": 8 / 3000, **shares(0.5, 0.1, 0.4)},
            {"method": "ceiling-budget", "family": "ceiling", "sacrifice": s, "accuracy": 1.0 - s,
             **shares(0.5, 0.1, 0.4)},
            {"method": "oracle-overlap", "family": "oracle", "sacrifice": s,
             "accuracy": 0.875 - s, "budget_held": True, **shares(s * 10, 0.2, 0.8 - s * 10)},
            {"method": "oracle-overlap-executed", "family": "oracle-executed", "sacrifice": s,
             "accuracy": 0.875 - s, "images_per_second": 1500 + 10000 * s,
             "seconds": 8 / (1500 + 10000 * s), "budget_held": True,
             **shares(s * 10, 0.2, 0.8 - s * 10)},
            # cascade: held at 1 %, 2500 images/s -> speedup 2.5 over m_c's 1000
            {"method": "cascade", "family": "cascade", "sacrifice": s, "accuracy": 0.87 - s / 2,
             "images_per_second": 2000 + 50000 * s, "seconds": 8 / (2000 + 50000 * s),
             "budget_held": True, "threads": 2, **shares(0.5, 0.25, 0.25)},
            # dispatcher: faster but did not hold its budget -> must not be the summary's router
            {"method": "dispatcher-label", "family": "dispatcher", "sacrifice": s,
             "accuracy": 0.7, "images_per_second": 9000.0, "seconds": 8 / 9000,
             "budget_held": False, "threads": 2, **shares(0.9, 0.1, 0.0)},
            {"method": "random~cascade", "family": "random", "sacrifice": s, "accuracy": 0.6,
             **shares(0.5, 0.25, 0.25)},
        ]
    for r in rows:
        r.setdefault("precision", r["accuracy"] - 0.01)
        r.setdefault("recall", r["accuracy"] - 0.02)
        r.setdefault("f1", r["accuracy"] - 0.03)
    return pd.DataFrame(rows)


# what evaluate-routers selected on val at each level (the candidates' expected costs on val are
# in fit_ms_per_image): at 1 % the cascade, at 5 % the label dispatcher, which then missed its
# budget on test (it is reported as it came out)
SELECTED = {0.0: "cheapest-single:m_c", 0.01: "cascade", 0.05: "dispatcher-label"}


def learned_rows() -> pd.DataFrame:
    """A ``learned-cascade`` (family ``learned``) at every level of ``hand_routers``, with its
    ``random_accuracy`` and ``gap_recovered`` recorded, and its ``random~learned-cascade`` rows:
    accuracy 0.87 - s/4 at 2200 + 60000 s images/s; random 0.6 + s; ceiling 1.0."""
    rows = []
    for s in (0.0, 0.01, 0.05):
        acc, ips, rnd = 0.87 - s / 4, 2200 + 60000 * s, 0.6 + s
        shares = {"share_m_a": 0.6, "share_m_b": 0.2, "share_m_c": 0.2}
        rows += [{"method": "learned-cascade", "family": "learned", "sacrifice": s,
                  "accuracy": acc, "images_per_second": ips, "seconds": 8 / ips,
                  "budget_held": acc >= 0.875 - s - 1e-9, "threads": 2, "random_accuracy": rnd,
                  "gap_recovered": (acc - rnd) / (1.0 - rnd), "precision": acc - 0.01,
                  "recall": acc - 0.02, "f1": acc - 0.03, **shares},
                 {"method": "random~learned-cascade", "family": "random", "sacrifice": s,
                  "accuracy": rnd, "precision": rnd, "recall": rnd, "f1": rnd, **shares}]
    return pd.DataFrame(rows)


def hand_routers_zoos(selected: dict[float, str] | None = None,
                      zoos: tuple[str, ...] = ("all", "base"),
                      learned: bool = False) -> pd.DataFrame:
    """``hand_routers`` in the current format: a ``zoo`` column, a ``cheapest-single`` row per
    level (m_c: m_a and m_b miss every target on val), ``selected`` (one row per zoo and level),
    both speedups, ``fit_ms_per_image``, ``wasted_seconds`` and ``overhead_share``. The base
    zoo's rows are the whole zoo's with every routed row 20 % slower, and at 1 % it selects
    the cheapest single model instead of the cascade. ``learned``: with ``learned_rows`` (the
    learned cascade costs more on val than the cascade, so the selection stays as it is)."""
    selected = dict(SELECTED if selected is None else selected)
    frames = []
    for zoo in zoos:
        r = hand_routers()
        if learned:
            r = pd.concat([r, learned_rows()], ignore_index=True)
        cheap = r[r.family == "best-single"].assign(method="cheapest-single:m_c",
                                                    family="cheapest-single")
        r = pd.concat([r, cheap], ignore_index=True)
        routed = ~r.family.isin(("single", "best-single", "cheapest-single"))
        if zoo == "base":
            r.loc[routed, "images_per_second"] *= 0.8
            r.loc[routed, "seconds"] /= 0.8
        r["zoo"] = zoo
        r["speedup_vs_best"] = r.images_per_second / 1000.0
        r["speedup_vs_cheapest_single"] = r.images_per_second / 1000.0
        r["fit_ms_per_image"] = r.family.map({"cheapest-single": 1.0, "cascade": 0.45,
                                              "dispatcher": 0.2, "learned": 0.5})
        r["wasted_seconds"] = np.where(r.family == "cascade", 0.1 * r.seconds, 0.0)
        r["router_seconds"] = np.where(r.family == "dispatcher", 0.05 * r.seconds, 0.0)
        r["overhead_share"] = (r.router_seconds + r.wasted_seconds) / r.seconds
        sel = dict(selected)
        if zoo == "base":
            sel[0.01] = "cheapest-single:m_c"
        r["selected"] = [int(sel.get(s) == m) for m, s in zip(r.method, r.sacrifice)]
        frames.append(r)
    return pd.concat(frames, ignore_index=True)


def make_run(root: Path, compression: bool = True, routers: pd.DataFrame | None = None,
             predictions: dict[tuple[str, str, float], tuple[np.ndarray, np.ndarray]]
             | None = None) -> Path:
    """A tiny run directory holding every file `report` reads (routers.csv: ``routers``, by
    default ``hand_routers_zoos()``). In the current format router_predictions.npz holds every
    row's answers (the labels) and chosen models (m_c), except the (zoo, method, sacrifice)
    keys of ``predictions``: (answers, chosen model indices)."""
    test, val = hand_table("test"), hand_table("val")
    test.save(root / "tables")
    val.save(root / "tables")
    CostTable({m: ModelCost(m, 1000 * (i + 1), 1000 * (i + 1), 10**6 * (i + 1), 0.1 * (i + 1),
                            1.0 + i, 4000.0 / (2 * i + 1)) for i, m in enumerate(MODELS)},
              {"cpu": "hand CPU", "threads": 1, "torch": "2.14.1"}).save(root / "costs.json")
    res = root / "results"
    routers = hand_routers_zoos() if routers is None else routers
    write_csv(res / "routers.csv", routers.to_dict("records"))
    if "zoo" in routers.columns:     # predictions of every row, as evaluate-routers writes them
        keys = routers[["zoo", "method", "sacrifice"]].drop_duplicates()
        preds = np.tile(LABELS, (len(keys), 1))
        chosen = np.full_like(preds, 2)
        for k, key in enumerate(zip(keys.zoo, keys.method, keys.sacrifice)):
            if key in (predictions or {}):
                preds[k], chosen[k] = predictions[key]
        np.savez(res / "router_predictions.npz", zoos=keys.zoo.to_numpy(str),
                 methods=keys.method.to_numpy(str), sacrifices=keys.sacrifice.to_numpy(float),
                 preds=preds, chosen=chosen, labels=LABELS, sample_ids=np.arange(len(LABELS)),
                 model_names=np.array(MODELS))
        write_csv(res / "deferral_curves.csv", [
            {"zoo": "all", "first": MODELS[0], "reference": MODELS[-1], "score": sc,
             "deferred_share": q, "accuracy": 0.5 + 0.4 * q}
            for sc in ("max-softmax", "learned head", "ideal (label)") for q in (0.0, 0.5, 1.0)])
    else:                            # an older run: no zoos
        np.savez(res / "router_predictions.npz", methods=np.array(["cascade"] * 3),
                 sacrifices=np.array([0.0, 0.01, 0.05]), preds=np.tile(LABELS, (3, 1)))
    for i, m in enumerate(MODELS):
        d = root / "zoo" / m
        write_csv(d / "history.csv", [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + 0.1 * e,
                                       "val_loss": 1.2 / e, "val_accuracy": 0.45 + 0.1 * e,
                                       "lr": 0.01, "seconds": 1.0} for e in (1, 2, 3)])
        write_json(d / "card.json", {"model_name": m, "parent": None, "variant": None,
                                     "dataset": {"classes": CLASSES}, "params": 1000 * (i + 1),
                                     "train_seconds": 3.5})
    if compression:
        write_csv(res / "compression.csv", [
            {"variant": "base", "base": "vgg", "params": 1000, "size_mb": 4.0, "macs": 100,
             "latency_ms_b1": 10.0, "top1": 0.9, "images_per_second_b64": 200.0},
            {"variant": "int8", "base": "vgg", "params": 1000, "size_mb": 1.0, "macs": 100,
             "latency_ms_b1": 5.0, "top1": 0.89, "images_per_second_b64": 400.0},
            {"variant": "struct-l1-30", "base": "vgg", "params": 600, "size_mb": 2.4,
             "macs": 60, "latency_ms_b1": 7.0, "top1": 0.88, "images_per_second_b64": 300.0}])
        write_csv(res / "prune_sweep.csv", [{"method": "l1", "level": lv, "accuracy": 0.9 - lv / 10,
                                             "images_per_second": 100 + 100 * lv}
                                            for lv in (0.0, 0.3, 0.5)])
        write_csv(res / "weight_hist.csv", [{"variant": v, "bin_left": b / 10, "bin_right": (b + 1) / 10,
                                             "count": 5 + b} for v in ("base", "int8")
                                            for b in range(-5, 5)])
    return root


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_saved(display, path: Path) -> pd.DataFrame:
    """Save; the PNG must be the figure's full size (no cropping), non-blank, with its CSV."""
    w, h = display.figure_.get_size_inches()
    expected = (round(w * DPI), round(h * DPI))
    png, csv = style.save_figure(display.figure_, path, display.data_, dpi=DPI)
    assert abs(png_size(png)[0] - expected[0]) <= 1 and abs(png_size(png)[1] - expected[1]) <= 1
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.std() > 5, "figure is blank"
    frame = pd.read_csv(csv)
    assert len(frame) == len(display.data_)
    return frame


def test_total_overlap_is_pooled_not_a_label(tmp_path):
    disp = OverlapDisplay.from_table(hand_table(), CLASSES).plot_total()
    frame = check_saved(disp, tmp_path / "overlap_total.png")
    cell = lambda scope: frame[(frame.scope == scope) & (frame.row_model == "m_a")
                               & (frame.col_model == "m_c")].percent.item()
    assert cell("total") == pytest.approx(400 / 7)
    assert cell("shirt") == pytest.approx(25.0) and cell("bag") == pytest.approx(100.0)
    assert disp.model_names == ["m_a", "m_b", "m_c"]   # weaker rows first, stronger last
    # annotated cells: one text per matrix cell, fixed 0-100 scale
    assert len([t for t in disp.ax_.texts if t.get_text()]) == 9
    assert disp.ax_.collections[0].get_clim() == (0.0, 100.0)


def test_per_label_grid_has_class_titles_and_shared_scale(tmp_path):
    disp = OverlapDisplay.from_table(hand_table(), CLASSES).plot_per_label()
    titles = [ax.get_title() for ax in disp.axes_.ravel() if ax.get_visible()]
    assert titles == CLASSES
    assert all(ax.collections[0].get_clim() == (0.0, 100.0)
               for ax in disp.axes_.ravel() if ax.get_visible())
    check_saved(disp, tmp_path / "overlap_per_label.png")


def test_overlap_rejects_wrong_class_names():
    ov = OverlapDisplay.from_table(hand_table(), CLASSES)
    with pytest.raises(ValueError, match="class names"):
        OverlapDisplay(ov.model_names, ov.total, ov.per_label, ["only one"])


def test_confusion_counts(tmp_path):
    disp = ConfusionDisplay.from_predictions(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]),
                                             CLASSES, "hand").plot()
    assert disp.matrix.tolist() == [[1, 1], [1, 2]]
    assert "accuracy 60.0%" in disp.ax_.get_title()
    assert sorted(t.get_text() for t in disp.ax_.texts) == ["33", "50", "50", "67"]
    check_saved(disp, tmp_path / "confusion.png")


def test_curve_figures(tmp_path):
    r = normalise_router_frame(hand_routers())
    metrics = check_saved(SacrificeMetricsDisplay.from_routers(r).plot(), tmp_path / "m.png")
    assert set(metrics.method) >= {"cascade", "best-single:m_c", "ceiling", "ceiling-budget"}
    assert "oracle-overlap-executed" not in set(metrics.method)  # same predictions as oracle
    check_saved(TimeDisplay.from_routers(r).plot(), tmp_path / "t.png")
    front = FrontierDisplay.from_routers(r).plot()
    labels = front.ax_.get_legend_handles_labels()[1]
    assert "single models" in labels and "ceiling (per-sample oracle, bound)" in labels
    # hand rates span 1000..9000 images/s (9x): linear; the same rows x100 for m_a: log
    assert front.ax_.get_xscale() == "linear"
    notes = sorted(t.get_text() for t in front.point_labels_)
    assert notes == ["m_a", "m_c (best single)"]      # one point per model, best one marked
    check_saved(front, tmp_path / "f.png")


def test_frontier_goes_log_when_rates_span_decades(tmp_path):
    r = normalise_router_frame(hand_routers())
    r.loc[r.method == "single:m_a", "images_per_second"] = 400_000.0   # 400x m_c's 1000
    front = FrontierDisplay.from_routers(r).plot()
    assert front.ax_.get_xscale() == "log" and "log scale" in front.ax_.get_xlabel()
    time = TimeDisplay.from_routers(r).plot()
    assert time.axes_[0, 1].get_yscale() == "linear"   # routed rates span 2000..9000 only


def test_broken_model_is_marked_off_scale_not_stretching_axes(tmp_path):
    r = normalise_router_frame(hand_routers())
    r.loc[r.method == "single:m_a", "accuracy"] = 0.10     # a broken variant, 10 %
    front = FrontierDisplay.from_routers(r).plot()
    assert front.ax_.get_ylim()[0] > 50                     # routers span 72-100 %
    labels = [t.get_text() for t in front.point_labels_]
    assert "m_a (10.0%, off scale)" in labels
    check_saved(front, tmp_path / "front.png")
    comp = pd.DataFrame([{"variant": "base", "base": "vgg", "size_mb": 4.0, "top1": 0.90},
                         {"variant": "res-20", "base": "vgg", "size_mb": 4.0, "top1": 0.13},
                         {"variant": "int8", "base": "vgg", "size_mb": 1.0, "top1": 0.89}])
    bars = CompressionBarsDisplay.from_frame(comp).plot()
    acc_ax = bars.axes_.ravel()[1]
    assert acc_ax.get_xlim()[0] > 70
    assert "13.0 (-77.0), off scale" in [t.get_text() for t in acc_ax.texts]


def test_one_colour_per_rule_across_figures():
    c = style.method_colors(["oracle-budget", "oracle-budget-executed", "random~oracle-budget",
                             "cascade", "random~cascade", "my-router", "random~my-router"])
    assert c["oracle-budget"] == c["oracle-budget-executed"] == c["random~oracle-budget"]
    assert c["cascade"] == c["random~cascade"] != c["oracle-budget"]
    assert c["my-router"] == c["random~my-router"] not in (c["cascade"], c["oracle-budget"])
    assert style.method_key("random~oracle-overlap-executed") == "oracle-overlap"


def test_point_labels_do_not_overlap():
    fig, axes = style.new_figure(5.0, 3.0)
    ax = axes[0, 0]
    xs = np.array([1.0, 1.02, 1.04, 1.01, 1.03, 3.0])
    ys = np.array([5.0, 5.01, 4.99, 5.02, 5.0, 1.0])    # five points in one clump
    ax.scatter(xs, ys)
    ax.set_xlim(0, 4)
    ax.set_ylim(0, 6)
    fig.draw_without_rendering()
    texts = place_labels(ax, xs, ys, [f"model_{k}" for k in range(6)])
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in texts]   # the text, not its leader
    frame = ax.get_window_extent()
    for i, a in enumerate(boxes):
        assert frame.x0 - 1 <= a.x0 and a.x1 <= frame.x1 + 1, texts[i].get_text()
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_shares_are_percent_of_each_row(tmp_path):
    disp = SharesDisplay.from_routers(normalise_router_frame(hand_routers())).plot()
    frame = check_saved(disp, tmp_path / "shares.png")
    one = frame[(frame.method == "oracle-overlap") & np.isclose(frame.sacrifice, 0.01)]
    assert dict(zip(one.model, one.share)) == pytest.approx({"m_a": 10, "m_b": 20, "m_c": 70})
    assert frame.groupby(["method", "sacrifice"]).share.sum().to_numpy() == pytest.approx(100)


def test_training_and_compression_figures(tmp_path):
    run = make_run(tmp_path / "run")
    art = load_run(run)
    frame = check_saved(TrainingCurvesDisplay.from_histories(art.histories).plot(),
                        tmp_path / "train.png")
    assert len(frame) == 3 * 3 * 2   # models x epochs x (train, val)
    bars = CompressionBarsDisplay.from_frame(art.compression)
    int8 = bars.data_[(bars.data_.variant == "int8")].set_index("metric").percent_of_base
    assert int8["size_mb"] == pytest.approx(25.0) and int8["latency_ms_b1"] == pytest.approx(50.0)
    assert int8["images_per_second_b64"] == pytest.approx(200.0)
    check_saved(bars.plot(), tmp_path / "bars.png")
    check_saved(PruneSweepDisplay.from_frame(art.prune_sweep).plot(), tmp_path / "prune.png")
    # without a sweep, the pruned variants of compression.csv and their baseline at level 0
    fallback = PruneSweepDisplay.from_compression(art.compression)
    rows = fallback.data_.set_index("level")
    assert list(rows.index) == [0.0, 0.3] and set(rows.method) == {"structured L1 (filters)"}
    assert rows.accuracy.tolist() == [0.9, 0.88]
    assert rows.images_per_second.tolist() == [200.0, 300.0]
    check_saved(fallback.plot(), tmp_path / "prune_fallback.png")
    with pytest.raises(ValueError, match="no pruned variant"):
        PruneSweepDisplay.from_compression(art.compression[art.compression.variant != "struct-l1-30"])
    check_saved(WeightHistDisplay.from_frame(art.weight_hist).plot(), tmp_path / "hist.png")


def test_summary_reports_the_answer_selected_on_val(tmp_path):
    """The summary's router is the row selected on val, even where another router held its
    budget on test and ran faster: no maximum over test rows."""
    routers = hand_routers_zoos()
    at1 = (routers.sacrifice == 0.01) & (routers.zoo == "all")
    # the label dispatcher now holds its budget on test at 1 % and is the fastest that did
    # (9000 images/s against the cascade's 2500): picking on test would take it
    disp = at1 & (routers.method == "dispatcher-label")
    routers.loc[disp, ["accuracy", "budget_held"]] = [0.87, True]
    art = load_run(make_run(tmp_path / "run", routers=routers))
    s = summarize(art)
    assert s.best_single == "m_c"                # most accurate on val
    assert s.router["method"] == "cascade" and s.router["zoo"] == "all"
    assert s.router_speedup == pytest.approx((2000 + 500) / 1000)
    assert s.machine["cpu"] == "hand CPU" and s.router_threads == 2
    # the executed label oracles at 1 %, each as it came out: bounds, none picked
    assert [o["method"] for o in s.oracle_bounds] == ["oracle-overlap-executed"]
    assert s.oracle_bounds[0]["speedup_vs_best"] == pytest.approx(1.6)
    # no held router at all: the selected one is still reported, as missed
    art.routers = art.routers.assign(budget_held=False)
    s = summarize(art)
    assert s.router["method"] == "cascade" and s.router["budget_held"] is False
    row, note = selected_row(art.routers, 0.05)
    assert row["method"] == "dispatcher-label" and note == ""
    html = build_report(tmp_path / "run", dpi=DPI).index.read_text()
    summary = html.split('<div class="summary">')[1].split("</div>")[0]
    assert "dispatcher-label (dispatcher)" not in summary
    assert "cascade (cascade), selected on val" in summary


def test_headline_has_a_row_per_zoo_and_level(tmp_path):
    run = make_run(tmp_path / "run")
    head = headline_table(load_run(run).routers)
    assert list(zip(head.zoo, head.sacrifice)) == [(z, s) for z in ("all", "base")
                                                  for s in (0.0, 0.01, 0.05)]
    h = head.set_index(["zoo", "sacrifice"])
    assert h.loc[("all", 0.01), "method"] == "cascade"
    assert h.loc[("base", 0.01), "method"] == "cheapest-single:m_c"   # the base zoo's choice
    assert h.loc[("all", 0.01), "speedup_vs_cheapest_single"] == pytest.approx(2.5)
    assert h.loc[("base", 0.01), "speedup_vs_best"] == pytest.approx(1.0)
    assert h.loc[("all", 0.01), "overhead_share"] == pytest.approx(0.1)   # wasted / seconds
    assert h.loc[("all", 0.01), "fit_ms_per_image"] == pytest.approx(0.45)
    assert h.loc[("all", 0.01), "cheapest_single"] == "m_c"
    # selected at 5 %, missed on test: reported as it came out
    assert h.loc[("all", 0.05), "method"] == "dispatcher-label"
    assert h.loc[("all", 0.05), "budget_held"] is False
    assert h.loc[("all", 0.0), "budget_held"] is None          # the hand rows record none
    result = build_report(run, dpi=DPI)
    csv = pd.read_csv(result.index.parent / "headline.csv")
    assert len(csv) == 6 and set(csv.zoo) == {"all", "base"}
    html = result.index.read_text()
    summary = html.split('<div class="summary">')[1].split("</div>")[0]
    assert summary.count("<tr>") == 1 + 6                       # header + one per (zoo, level)
    assert "budget MISSED on test" not in summary               # the 1 % lines: both held
    assert "zoo base" in summary and "zoo all" in summary
    # a level marked twice is refused, not resolved by a test figure
    twice = load_run(run).routers
    twice.loc[(twice.method == "dispatcher-label") & (twice.sacrifice == 0.01), "selected"] = True
    with pytest.raises(ValueError, match="exactly one"):
        headline_table(twice)


def test_old_routers_csv_without_zoo_or_selected_still_reports(tmp_path):
    run = make_run(tmp_path / "run", routers=hand_routers())
    art = load_run(run)
    assert set(art.routers.zoo) == {"all"} and "selected" not in art.routers.columns
    s = summarize(art)
    assert s.router is None and s.headline.empty
    assert "re-run `evaluate-routers`" in s.selection_note
    result = build_report(run, dpi=DPI)
    html = result.index.read_text()
    summary = html.split('<div class="summary">')[1].split("</div>")[0]
    assert "re-run `evaluate-routers`" in summary and "cascade (cascade)" not in summary
    assert not (result.index.parent / "headline.csv").exists()
    assert (result.index.parent / "frontier.png").is_file()
    assert not (result.index.parent / "confusion_selected_router.png").exists()
    assert any("Router confusion matrix skipped" in n and "evaluate-routers" in n
               for n in result.notes)


def test_router_tables():
    r = normalise_router_frame(hand_routers())
    pivot = routers_pivot(r).set_index("method")
    assert list(pivot.columns) == ["family", "s = 0%", "s = 1%", "s = 5%"]
    assert list(pivot.index[:3]) == ["cascade", "dispatcher-label", "oracle-overlap-executed"]
    assert pivot.at["cascade", "s = 1%"] == "86.50% / 2.50x"
    assert pivot.at["dispatcher-label", "s = 1%"] == "70.00% / 9.00x (missed)"
    assert pivot.at["ceiling-budget", "s = 5%"] == "95.00%"      # untimed: no speedup
    full = routers_table(r)
    assert (full.method == "single:m_a").sum() == 1              # single models once
    assert (full.method == "cascade").sum() == 3                 # routers at every level
    # the current format: one table per zoo, the selected answer marked, the cheapest single
    # model one row
    both = normalise_router_frame(hand_routers_zoos())
    pivot = routers_pivot(both).set_index("method")
    assert pivot.at["cascade", "s = 1%"] == "86.50% / 2.50x [selected]"
    assert pivot.at["cheapest-single", "s = 0%"] == "m_c: 87.50% / 1.00x [selected]"
    assert pivot.at["dispatcher-label", "s = 5%"] == "70.00% / 9.00x (missed) [selected]"
    base = routers_pivot(both, "base").set_index("method")
    assert base.at["cascade", "s = 1%"] == "86.50% / 2.00x"
    full = routers_table(both)
    assert (full.method == "single:m_a").sum() == 2              # once per zoo
    assert list(dict.fromkeys(full.zoo)) == ["all", "base"]


# Routing disagreements by hand at 1 % (zoo all), labels 0,0,0,0,1,1,1,1:
#   cascade chosen 0,0,1,2, 0,1,2,2; right on 0,2,4,5,6
#   learned chosen 0,1,2,2, 0,2,2,1; right on 0,1,2,4,6,7
# different models on samples 1,2 (shirt) and 5,7 (bag); only the learned router right on 1 and
# 7, only the cascade on 5; sample 3 both wrong with the same model (not counted)
CASCADE_CHOSEN = np.array([0, 0, 1, 2, 0, 1, 2, 2])
LEARNED_CHOSEN = np.array([0, 1, 2, 2, 0, 2, 2, 1])
CASCADE_OK = np.array([1, 0, 1, 0, 1, 1, 1, 0], dtype=bool)
LEARNED_OK = np.array([1, 1, 1, 0, 1, 0, 1, 1], dtype=bool)


def disagreeing_predictions(level: float = 0.01) -> dict:
    """``make_run``'s ``predictions`` for the hand disagreement above, at ``level``."""
    answer = lambda ok: np.where(ok, LABELS, 1 - LABELS)
    return {("all", "cascade", level): (answer(CASCADE_OK), CASCADE_CHOSEN),
            ("all", "learned-cascade", level): (answer(LEARNED_OK), LEARNED_CHOSEN)}


def test_report_end_to_end(tmp_path, capsys):
    from scripts.report import main
    run = make_run(tmp_path / "run", routers=hand_routers_zoos(learned=True),
                   predictions=disagreeing_predictions())
    # a hostile method name must come out escaped
    r = pd.read_csv(run / "results" / "routers.csv")
    r.loc[r.method == "random~cascade", "method"] = "<script>x</script>&"
    r.to_csv(run / "results" / "routers.csv", index=False)
    assert main(["--run", str(run), "--dpi", str(DPI)]) == 0
    index = run / "reports" / "index.html"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(index)
    html = index.read_text()
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;&amp;" in html
    assert "http://" not in html and "https://" not in html and "@font-face" not in html
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert refs, "page names no files"
    for ref in refs:
        assert (index.parent / ref).is_file(), ref
    for name in ("overlap_total", "overlap_per_label", "metrics_vs_sacrifice", "time_vs_sacrifice",
                 "frontier", "model_shares", "training_curves", "confusion_best_single",
                 "confusion_selected_router", "compression_bars", "prune_sweep", "weight_hist",
                 "learned_vs_cascade", "deferral_curves"):
        assert f'src="{name}.png"' in html and (index.parent / f"{name}.csv").is_file(), name
    assert (index.parent / "ladder.csv").is_file() and "McNemar" in html
    assert "cascade (cascade)" in html and "2.50x" in html and "hand CPU" in html
    assert "skipped" not in html
    assert (index.parent / "headline.csv").is_file()
    for name in ("router_areas.csv", "routing_disagreements.csv"):
        assert (index.parent / name).is_file() and name in html, name


def test_ladder_table_by_hand(tmp_path):
    # Hand table, MACs order a < b < c; correct: a 4/8, b 5/8, c 7/8.
    # b vs a: only b right on samples 1 and 7, only a on 6 -> p = 2 (C(3,0) + C(3,1)) / 8 = 1
    # c vs b (the most accurate cheaper): only c on 2, 3, 6, only b on 7 -> p = 2 * 5 / 16
    art = load_run(make_run(tmp_path / "run"))
    frame = ladder_table(art).set_index(["split", "model"])
    b, c = frame.loc[("test", "m_b")], frame.loc[("test", "m_c")]
    assert (b.cheaper_best, b.only_this_right, b.only_cheaper_right, b.images_gained) == ("m_a", 2, 1, 1)
    assert b.p_value == pytest.approx(1.0) and b.holds and not b.beyond_noise
    assert c.cheaper_best == "m_b" and c.difference_points == pytest.approx(25.0)
    assert c.p_value == pytest.approx(10 / 16) and c.holds
    assert set(frame.index.get_level_values("split")) == {"val", "test"}
    # a compressed variant (card with a parent) is not on the ladder
    art.cards["m_b"]["parent"] = "m_a"
    assert list(ladder_table(art).query("split == 'test'").model) == ["m_c"]
    art.costs = None
    assert ladder_table(art).empty


def test_report_without_compression_notes_the_gap(tmp_path):
    run = make_run(tmp_path / "run", compression=False)
    result = build_report(run, dpi=DPI)
    html = result.index.read_text()
    assert "compression.csv is absent" in html
    assert not (run / "reports" / "compression_bars.png").exists()
    assert (run / "reports" / "frontier.png").exists()


def test_bad_inputs_name_the_file(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "results" / "routers.csv").write_text("method,accuracy\nx,1\n")
    with pytest.raises(ValueError, match="routers.csv lacks columns"):
        build_report(run, dpi=DPI)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nope")


def test_reports_never_imports_torch():
    code = ("import sys, reports.build, reports.style, reports.heatmap, reports.frontier, "
            "reports.sacrifice, reports.training, reports.routers_common, "
            "reports.compression, reports.tables, reports.html, reports.inputs, reports.learned, "
            "scripts.report; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_deferral_curves_display_one_panel_per_zoo():
    from reports.learned import DeferralCurvesDisplay
    rows = [{"zoo": z, "first": "a", "reference": "b", "score": sc, "deferred_share": q,
             "accuracy": 0.8 + 0.1 * q + (0.05 * q if sc == "ideal (label)" else 0.0)}
            for z in ("all", "base") for sc in ("max-softmax", "learned head", "ideal (label)")
            for q in (0.0, 0.5, 1.0)]
    disp = DeferralCurvesDisplay(pd.DataFrame(rows)).plot()
    assert len(disp.figure_.axes) == 2 and len(disp.data_) == 18
    assert "zoo base" in disp.figure_.axes[1].get_title()


def test_headline_states_the_certificate_and_the_speedup_interval():
    from reports.build import _headline_line
    r = pd.Series({"zoo": "all", "sacrifice": 0.01, "method": "cascade", "family": "cascade",
                   "accuracy": 0.9347, "target_accuracy": 0.927, "budget_held": True,
                   "budget_status": "within test noise", "selection": "certified",
                   "delta": 0.1, "certified": True, "certified_drop_ucb": 0.0097,
                   "speedup_vs_best": 4.21, "speedup_vs_best_lo": 4.15,
                   "speedup_vs_best_hi": 4.37, "best_single": "big",
                   "speedup_vs_cheapest_single": None, "cheapest_single": None,
                   "overhead_share": None})
    line = _headline_line(r)
    assert "certified on val at risk 0.1" in line and "at most 1 points (bound 0.97 points)" in line
    assert "on test: within test noise" in line and "4.21x (95% interval 4.15-4.37)" in line
    assert "not certified on val" in _headline_line(r.copy().replace({True: False}))


def test_committee_table_best_single_against_the_committee_per_level():
    from reports.inputs import normalise_router_frame
    from reports.tables import committee_table
    rows = []
    for s, acc, ips, sel in ((0.0, 0.9412, 250.0, True), (0.01, 0.9301, 400.0, False)):
        rows += [{"method": "best-single:big", "family": "best-single", "zoo": "all",
                  "sacrifice": s, "accuracy": 0.9370, "images_per_second": 100.0,
                  "selected": False},
                 {"method": "committee-cascade", "family": "committee", "zoo": "all",
                  "sacrifice": s, "accuracy": acc, "images_per_second": ips,
                  "speedup_vs_best": ips / 100.0, "speedup_vs_best_lo": ips / 110.0,
                  "speedup_vs_best_hi": ips / 90.0, "certified": True,
                  "certified_drop_ucb": -0.001 if s == 0 else 0.008, "selected": sel}]
    t = committee_table(normalise_router_frame(pd.DataFrame(rows)))
    assert list(t["level"]) == ["0%", "1%"]
    # 94.12 - 93.70 = +0.42 points at 2.5x [250/110 = 2.27, 250/90 = 2.78]
    first = t.iloc[0]
    assert first["gain (points)"] == pytest.approx(0.42)
    assert first["x best [95% CI]"] == "2.50x [2.27-2.78]"
    assert first["selected"] and not t.iloc[1]["selected"]
    assert first["drop bound (points)"] == pytest.approx(-0.1)
    assert t.iloc[1]["gain (points)"] == pytest.approx(-0.69)
    assert committee_table(normalise_router_frame(pd.DataFrame(rows[:1]))).empty


def test_report_shows_the_committee_timings(tmp_path):
    from reports.inputs import load_run
    results = tmp_path / "results"
    results.mkdir(parents=True)
    (results / "committees.csv").write_text(
        "committee,k,members,batch,threads,rounds,committee_ms_per_image,members_ms_per_image,"
        "speedup\ncommittee-ax3,3,a a@s1 a@s2,256,2,7,0.5,0.6,1.2\n")
    art = load_run(tmp_path)
    assert art.committees is not None and float(art.committees["speedup"][0]) == 1.2
    (results / "committees.csv").write_text("committee,k\nx,3\n")
    with pytest.raises(ValueError, match="bench_committee"):
        load_run(tmp_path)


def test_headline_display_says_no_promise_where_nothing_was_certified_below_zero():
    from reports.tables import headline_display
    base = {"zoo": "all", "method": "cascade", "family": "cascade", "val_accuracy": 0.95,
            "fit_ms_per_image": 0.5, "accuracy": 0.937, "target_accuracy": 0.938,
            "budget_held": False, "budget_margin_se": -2.4, "selection": "certified",
            "delta": 0.1, "certified_drop_ucb": None, "speedup_vs_best": 1.0,
            "speedup_vs_best_lo": None, "speedup_vs_best_hi": None,
            "speedup_vs_cheapest_single": None, "overhead_share": None, "best_single": "b",
            "cheapest_single": "b"}
    rows = pd.DataFrame([dict(base, sacrifice=-0.001, certified=False,
                              budget_status="no promise"),
                         dict(base, sacrifice=0.0, certified=True, budget_status="violated")])
    shown = headline_display(rows)["budget on test"].tolist()
    assert shown == ["no promise (nothing certified)", "MISSED (-2.4 SE)"]
