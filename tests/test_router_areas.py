"""reports.learned: area above the random router, the learned-vs-cascade figure, routing
disagreements by true label; all on hand-made rows and runs (helpers from test_reports)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports.build import build_report
from reports.inputs import load_run, normalise_router_frame
from reports.learned import (LearnedVsCascadeDisplay, area_above_random, disagreements_from_run,
                             pick_learned, router_areas, routing_disagreements, summary_level)
from tests.test_reports import (CASCADE_CHOSEN, CLASSES, DPI, LABELS, LEARNED_CHOSEN,
                                check_saved, disagreeing_predictions, hand_routers,
                                hand_routers_zoos, make_run)

# Hand example, three levels given out of throughput order:
#   s = 0    : 1000 images/s, accuracy 90 %, random 85 %  -> 5 points above random
#   s = 1 %  : 8000 images/s, accuracy 80 %, random 79 %  -> 1 point
#   s = 5 %  : 2000 images/s, accuracy 88 %, random 85 %  -> 3 points
# sorted by images/s: log2 x = 10 + log2(1000/1024)... only differences count: 1000 -> 2000 is
# one doubling, 2000 -> 8000 two. Trapezoids: 1 * (5 + 3) / 2 + 2 * (3 + 1) / 2 = 4 + 4 = 8.
# (Taken in sacrifice order instead: 3 * (5 + 1) / 2 - 2 * (1 + 3) / 2 = 5: wrong.)
HAND_IPS = [1000.0, 8000.0, 2000.0]
HAND_ACC = [0.90, 0.80, 0.88]
HAND_RND = [0.85, 0.79, 0.85]
HAND_GAP = [0.5, 0.1, 0.3]


def hand_sweep() -> pd.DataFrame:
    """routers.csv rows of the hand example (zoo all) plus a dispatcher without random twins;
    the 5 % level's random accuracy only in its ``random~learned-cascade`` row."""
    rows = []
    for s, ips, acc, rnd, gap in zip((0.0, 0.01, 0.05), HAND_IPS, HAND_ACC, HAND_RND, HAND_GAP):
        rows.append({"method": "learned-cascade", "family": "learned", "zoo": "all",
                     "sacrifice": s, "accuracy": acc, "images_per_second": ips,
                     "random_accuracy": rnd if s < 0.05 else None, "gap_recovered": gap})
        rows.append({"method": "random~learned-cascade", "family": "random", "zoo": "all",
                     "sacrifice": s, "accuracy": rnd})
        rows.append({"method": "dispatcher-sample", "family": "dispatcher", "zoo": "all",
                     "sacrifice": s, "accuracy": 0.7, "images_per_second": 500.0})
    return normalise_router_frame(pd.DataFrame(rows))


def test_area_above_random_by_hand():
    assert area_above_random(HAND_IPS, HAND_ACC, HAND_RND) == pytest.approx(8.0, abs=1e-9)
    # throughput scale does not matter (doublings), a router below random loses area
    assert area_above_random([2 * x for x in HAND_IPS], HAND_ACC, HAND_RND) == pytest.approx(8.0)
    assert area_above_random([1000, 4000], [0.5, 0.5], [0.6, 0.6]) == pytest.approx(-20.0)
    assert math.isnan(area_above_random([1000], [0.9], [0.8]))           # no range covered
    assert math.isnan(area_above_random([1000, 2000], [0.9, np.nan], [0.8, 0.8]))
    with pytest.raises(ValueError, match="one value per level"):
        area_above_random([1000, 2000], [0.9], [0.8, 0.8])


def test_router_areas_table_by_hand():
    areas = router_areas(hand_sweep()).set_index("method")
    lc = areas.loc["learned-cascade"]
    assert (lc.zoo, lc.family, lc.levels) == ("all", "learned", 3)
    assert lc.area_points_doublings == pytest.approx(8.0, abs=1e-9)   # 5 % from random~ row
    assert lc.mean_gap_recovered == pytest.approx(0.3)
    assert lc.gap_recovered_s0 == pytest.approx(0.5)
    d = areas.loc["dispatcher-sample"]          # no random twin, no ceiling: nothing to say
    assert d.levels == 0 and math.isnan(d.area_points_doublings)
    assert math.isnan(d.mean_gap_recovered) and math.isnan(d.gap_recovered_s0)
    assert list(areas.family) == ["learned", "dispatcher"]       # learned before dispatchers


def test_areas_of_a_hand_run(tmp_path):
    run = make_run(tmp_path / "run", routers=hand_routers_zoos(learned=True))
    result = build_report(run, dpi=DPI)
    areas = pd.read_csv(result.index.parent / "router_areas.csv")
    assert list(areas.columns) == ["zoo", "method", "family", "levels", "area_points_doublings",
                                   "area_common_range", "common_ips_lo", "common_ips_hi",
                                   "mean_gap_recovered", "gap_recovered_s0"]
    assert list(zip(areas.zoo, areas.method)) == [
        (z, m) for z in ("all", "base") for m in ("cascade", "learned-cascade", "dispatcher-label")]
    a = areas.set_index(["zoo", "method"])
    # cascade: no random_accuracy column, its random~cascade rows say 60 %; accuracy
    # 87 - 50 s points at 2000 + 50000 s images/s: 27, 26.5, 24.5 points at 2000, 2500, 4500
    cascade = math.log2(2500 / 2000) * 26.75 + math.log2(4500 / 2500) * 25.5
    assert a.loc[("all", "cascade"), "area_points_doublings"] == pytest.approx(cascade)
    # no gap_recovered recorded: (accuracy - random) / (ceiling 100 % - random)
    assert a.loc[("all", "cascade"), "mean_gap_recovered"] == pytest.approx(0.26 / 0.4)
    assert a.loc[("all", "cascade"), "gap_recovered_s0"] == pytest.approx(0.27 / 0.4)
    # learned: 87 - 25 s against 60 + 100 s at 2200 + 60000 s: 27, 25.75, 20.75 points
    learned = math.log2(2800 / 2200) * 26.375 + math.log2(5200 / 2800) * 23.25
    assert a.loc[("all", "learned-cascade"), "area_points_doublings"] == pytest.approx(learned)
    assert a.loc[("all", "learned-cascade"), "gap_recovered_s0"] == pytest.approx(0.27 / 0.4)
    # the base zoo is 20 % slower throughout: the same doublings, the same area
    assert a.loc[("base", "cascade"), "area_points_doublings"] == pytest.approx(cascade)
    assert a.loc[("all", "dispatcher-label"), "levels"] == 0       # no random twin written
    html = result.index.read_text()
    assert "Area above the cost-matched random router" in html and "points x doublings" in html


def test_learned_vs_cascade_figure(tmp_path):
    r = normalise_router_frame(hand_routers_zoos(learned=True))
    disp = LearnedVsCascadeDisplay.from_routers(r).plot()
    frame = check_saved(disp, tmp_path / "learned_vs_cascade.png")
    assert set(frame.kind) == {"router", "random", "best-single", "cheapest-single"}
    curves = frame[frame.kind == "router"]
    assert set(curves.method) == {"cascade", "learned-cascade", "dispatcher-label"}
    assert (curves.images_per_second < 9000 * 0.8).sum() == 6    # zoo all only (no base rows)
    twin = frame[frame.method == "random~learned-cascade"].set_index("sacrifice")
    own = curves[curves.method == "learned-cascade"].set_index("sacrifice")
    assert twin.images_per_second.to_dict() == own.images_per_second.to_dict()  # same x
    assert twin.accuracy.to_dict() == pytest.approx({0.0: 0.6, 0.01: 0.61, 0.05: 0.65})
    assert set(frame[frame.method == "random~cascade"].accuracy) == {0.6}
    assert frame[frame.kind == "best-single"].model.unique().tolist() == ["m_c"]
    assert disp.ax_.get_xscale() == "log"
    alpha = {ln.get_label(): ln.get_alpha() for ln in disp.ax_.get_lines()}
    assert alpha["dispatcher-label (dispatcher, lighter)"] < 1
    assert alpha["learned-cascade"] is None and alpha["cascade"] is None
    # through the report: PNG and CSV beside it, on the page
    result = build_report(make_run(tmp_path / "run", routers=hand_routers_zoos(learned=True)),
                          dpi=DPI)
    out = result.index.parent
    assert (out / "learned_vs_cascade.png").is_file()
    assert len(pd.read_csv(out / "learned_vs_cascade.csv")) == len(frame)
    assert 'src="learned_vs_cascade.png"' in result.index.read_text()


def test_untimed_learned_rows_skip_the_figure(tmp_path):
    routers = hand_routers_zoos(learned=True)
    routers.loc[routers.family == "learned", ["images_per_second", "seconds"]] = np.nan
    result = build_report(make_run(tmp_path / "run", routers=routers), dpi=DPI)
    assert not (result.index.parent / "learned_vs_cascade.png").exists()
    assert any("Learned routers against the cascade (figure) skipped" in n and "untimed" in n
               for n in result.notes)


def test_routing_disagreements_by_hand(tmp_path):
    run = make_run(tmp_path / "run", routers=hand_routers_zoos(learned=True),
                   predictions=disagreeing_predictions(0.01))
    dis, why = disagreements_from_run(load_run(run))
    assert why == "" and (dis.learned, dis.cascade, dis.sacrifice) == ("learned-cascade",
                                                                        "cascade", 0.01)
    t = dis.table.set_index("class")
    assert t.loc["shirt"].tolist() == [0, 4, 2, 1, 0]   # label, images, differently, L, C
    assert t.loc["bag"].tolist() == [1, 4, 2, 1, 1]
    result = build_report(run, dpi=DPI)
    csv = pd.read_csv(result.index.parent / "routing_disagreements.csv")
    assert csv.routed_differently.tolist() == [2, 2]
    assert set(csv.learned_method) == {"learned-cascade"} and set(csv.sacrifice) == {0.01}
    html = result.index.read_text()
    assert "learned-cascade right, cascade wrong" in html and "Routing disagreements" in html
    # the bare function: a class with no test image still gets its row
    y = LABELS
    cc, lc = CASCADE_CHOSEN, LEARNED_CHOSEN     # learned always right, cascade always wrong
    frame = routing_disagreements(y, lc, y, cc, 1 - y, CLASSES + ["coat"])
    assert frame["class"].tolist() == ["shirt", "bag", "coat"]
    assert frame.learned_right_cascade_wrong.tolist() == [2, 2, 0]    # only where routed apart
    assert frame.cascade_right_learned_wrong.sum() == 0 and frame.images.tolist() == [4, 4, 0]
    with pytest.raises(ValueError, match="must all be"):
        routing_disagreements(y, lc[:3], y, cc, y)


def test_disagreements_take_the_summary_level_or_the_first():
    r = normalise_router_frame(hand_routers_zoos(learned=True))
    assert summary_level(r) == 0.01
    assert summary_level(r[r.sacrifice != 0.01]) == 0.0
    assert summary_level(r[r.family.isin(("single", "dispatcher"))]) is None


def test_learned_router_is_picked_on_val_never_on_test():
    """Two learned routers at 1 %: ``learned-b`` is the more accurate on test, ``learned-a``
    the cheaper on val; both met the val target (best single 0.88 on val - 1 %)."""
    def frame(a_val=0.88, selected=None, val=True):
        rows = [{"method": "best-single:m_c", "family": "best-single", "val_accuracy": 0.88},
                {"method": "learned-a", "family": "learned", "accuracy": 0.80,
                 "val_accuracy": a_val, "fit_ms_per_image": 0.3},
                {"method": "learned-b", "family": "learned", "accuracy": 0.90,
                 "val_accuracy": 0.885, "fit_ms_per_image": 0.5}]
        f = pd.DataFrame(rows).assign(zoo="all", sacrifice=0.01)
        if selected:
            f["selected"] = (f.method == selected).astype(int)
        if not val:
            f = f.drop(columns=["val_accuracy", "fit_ms_per_image"])
        return normalise_router_frame(f)

    assert pick_learned(frame(), 0.01)[0] == "learned-a"
    # learned-a misses the val target (0.86 < 0.87): the cheapest that met it
    assert pick_learned(frame(a_val=0.86), 0.01)[0] == "learned-b"
    # none met it: the higher val accuracy (still not the test figure)
    f = frame(a_val=0.86)
    f.loc[f.method == "learned-b", "val_accuracy"] = 0.85
    assert pick_learned(f, 0.01)[0] == "learned-a"
    # a learned router selected on val is the one
    assert pick_learned(frame(selected="learned-b"), 0.01) == ("learned-b",
                                                               "selected on val at this level")
    # no val figures: two learned routers cannot be told apart without test; refused
    method, why = pick_learned(frame(val=False), 0.01)
    assert method is None and "no val figures" in why
    assert pick_learned(frame(), 0.05)[0] is None


def test_runs_without_a_learned_router_still_build(tmp_path):
    # an old routers.csv (no zoo, no selected, no learned rows; npz without chosen)
    old = build_report(make_run(tmp_path / "old", routers=hand_routers()), dpi=DPI)
    # the current format without a learned router
    cur = build_report(make_run(tmp_path / "cur"), dpi=DPI)
    for result in (old, cur):
        out = result.index.parent
        assert not (out / "learned_vs_cascade.png").exists()
        assert not (out / "routing_disagreements.csv").exists()
        assert (out / "router_areas.csv").is_file()              # cascade and dispatcher rows
        assert any(n.startswith("Learned routers against the cascade (figure) skipped")
                   and "no learned router" in n for n in result.notes)
        assert any(n.startswith("Routing disagreements by true label skipped")
                   and "no learned router" in n for n in result.notes)
        assert (out / "frontier.png").is_file()
    areas = pd.read_csv(old.index.parent / "router_areas.csv")
    assert areas.method.tolist() == ["cascade", "dispatcher-label"] and set(areas.zoo) == {"all"}


def test_disagreements_skipped_without_saved_choices(tmp_path):
    run = make_run(tmp_path / "run", routers=hand_routers_zoos(learned=True))
    npz = run / "results" / "router_predictions.npz"
    with np.load(npz) as z:
        keep = {k: z[k] for k in ("zoos", "methods", "sacrifices", "preds")}
    np.savez(npz, **keep)                  # as written before routers saved their choices
    result = build_report(run, dpi=DPI)
    assert (result.index.parent / "learned_vs_cascade.png").is_file()
    assert any("Routing disagreements by true label skipped" in n and "`chosen`" in n
               for n in result.notes)
    npz.unlink()
    result = build_report(run, dpi=DPI)
    assert any("Routing disagreements by true label skipped" in n
               and "router_predictions.npz is absent" in n for n in result.notes)


def test_chosen_of_the_wrong_shape_names_the_file(tmp_path):
    run = make_run(tmp_path / "run", routers=hand_routers_zoos(learned=True))
    npz = run / "results" / "router_predictions.npz"
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["chosen"] = arrays["chosen"][:, :3]
    np.savez(npz, **arrays)
    with pytest.raises(ValueError, match="router_predictions.npz: chosen"):
        load_run(run)


def test_area_over_a_common_range_by_hand():
    from reports.learned import area_above_random, common_range
    # gap 1 point at 2 img/s, 3 points at 8 img/s: linear in log2 (1 at x=1, 3 at x=3)
    ips, acc, rnd = [2.0, 8.0], [0.51, 0.53], [0.50, 0.50]
    assert area_above_random(ips, acc, rnd) == pytest.approx(2 * (1 + 3) / 2)
    # clipped to 4-8 img/s: gap 2 at x=2, 3 at x=3: one doubling of mean 2.5
    assert area_above_random(ips, acc, rnd, (4.0, 8.0)) == pytest.approx(2.5)
    assert np.isnan(area_above_random(ips, acc, rnd, (1.0, 8.0)))   # not covered
    assert common_range([np.array([2.0, 8.0]), np.array([4.0, 16.0, np.nan])]) == (4.0, 8.0)
    assert common_range([np.array([2.0, 3.0]), np.array([4.0, 16.0])]) is None
