"""bench_guarantee end to end on synthetic tables, and its verdicts on hand-made rows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.io import read_csv
from router.guarantee import Deployed, accuracy_on, clopper_pearson, judge, pool_tables
from router.scoring import cascade_cost
from scripts.bench_guarantee import main
from tests.test_certify import _population, _table


def _rows(rule, s, miss, speed, delta=0.1, zoo="all"):
    return {"zoo": zoo, "rule": rule, "sacrifice": s, "delta": delta, "miss_rate": miss,
            "miss_lo": 0.0, "miss_hi": 1.0, "median_speedup": speed}


def test_judge_by_hand():
    rows = [_rows("estimate", 0.0, 0.4, 2.0), _rows("certified", 0.0, 0.5, 1.0),  # s=0 ignored
            _rows("estimate", 0.01, 0.2, 3.0), _rows("certified", 0.01, 0.05, 2.7),
            _rows("estimate", 0.02, 0.2, 4.0), _rows("certified", 0.02, 0.1, 3.0)]
    v = judge(rows)
    assert v.passed == {"miss_rate_all": True, "price_all": False}   # 3.0 / 4.0 = 0.75 < 0.8
    assert "lowest 0.75x at s=0.02" in v.lines[1]
    rows[3]["miss_rate"] = 0.11
    assert judge(rows).passed["miss_rate_all"] is False


def test_clopper_pearson_and_expected_cost_by_hand():
    # 0 of n: the upper end solves (1 - p)^n = 0.025
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1)
    # a chain 0 -> 2 where half the images go on: 1 + 0.5 * 4
    assert cascade_cost(np.array([0, 2, 0, 2]), [0, 2], np.array([1.0, 9.0, 4.0])) == 3.0


def _fake_run(tmp_path):
    rng = np.random.default_rng(0)
    correct = _population(rng, 1500, 2, drop=0.01, q=0.05)
    val, test = _table(correct[:600], seed=1), _table(correct[600:], seed=2)
    test.split = "test"
    run = tmp_path / "run"
    val.save(run / "tables")
    test.save(run / "tables")
    (run / "routers").mkdir(parents=True)
    (run / "routers" / "fits.json").write_text(json.dumps({
        "ms_per_image": {"m0": 1.0, "m1": 2.0, "m2": 8.0},
        "router_overhead_ms": {"stage_ms": 0.01, "head_ms": 0.01},
        "zoos": {"all": {"models": ["m0", "m1", "m2"]}}}))
    return run


def test_bench_guarantee_writes_its_table_and_figure(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert main(["--run", str(run), "--draws", "6", "--sacrifices", "0", "0.02",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[PASS]" in out or "[FAIL]" in out
    rows = read_csv(run / "results" / "guarantee.csv")
    assert {(r["rule"], float(r["sacrifice"])) for r in rows} == {
        (rule, s) for rule in ("estimate", "certified") for s in (0.0, 0.02)}
    for r in rows:
        assert int(r["draws"]) == 6 and int(r["population"]) == 1500
        assert float(r["miss_lo"]) <= float(r["miss_rate"]) <= float(r["miss_hi"])
        assert float(r["median_speedup"]) >= 1.0 - 1e-9 or r["rule"] == "estimate"
    assert (run / "reports" / "guarantee.png").exists()
    assert (run / "reports" / "guarantee.csv").exists()
    # the report draws it from results/guarantee.csv
    from reports.build import build_report
    html = build_report(run).index.read_text()
    assert "guarantee.png" in html and "miss-rate benchmark" in html
    # --draw-size: what a val split of another size would give, written beside the default
    assert main(["--run", str(run), "--draws", "3", "--sacrifices", "0", "--draw-size", "1200",
                 "--no-progress"]) == 0
    rows = read_csv(run / "results" / "guarantee_n1200.csv")
    assert {int(r["n_val"]) for r in rows} == {1200} and {int(r["draws"]) for r in rows} == {3}
    assert int(read_csv(run / "results" / "guarantee.csv")[0]["n_val"]) == 600   # untouched
    capsys.readouterr()
    assert main(["--run", str(run), "--draw-size", "1501", "--no-progress"]) == 2
    assert "100 to 1500" in capsys.readouterr().err


def test_bench_guarantee_with_committees_and_a_negative_level(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert main(["--run", str(run), "--draws", "4", "--sacrifices", "-0.005", "0",
                 "--committee", "--estimate-weight", "1", "--no-progress"]) == 0
    rows = read_csv(run / "results" / "guarantee_committee_w1.csv")
    # the estimate rule has no negative level (evaluate-routers refuses it there)
    assert {(r["rule"], float(r["sacrifice"])) for r in rows} == {
        ("certified", -0.005), ("certified", 0.0), ("estimate", 0.0)}
    for r in rows:
        assert r["committee"] == "True" and float(r["estimate_weight"]) == 1.0
        # a miss is a broken promise: never more misses than draws with a promise
        assert int(r["misses"]) <= round(float(r["promised"]) * int(r["draws"]))
        if float(r["sacrifice"]) >= 0:
            assert float(r["promised"]) == 1.0           # the reference meets s >= 0 itself
    # one rule, one zoo
    assert main(["--run", str(run), "--draws", "2", "--sacrifices", "0", "--rules", "certified",
                 "--zoos", "all", "--no-progress"]) == 0
    assert [(r["rule"], r["zoo"]) for r in read_csv(run / "results" / "guarantee.csv")] == [
        ("certified", "all")]
    capsys.readouterr()
    assert main(["--run", str(run), "--estimate-weight", "-1", "--no-progress"]) == 2
    assert "--estimate-weight -1" in capsys.readouterr().err
    assert main(["--run", str(run), "--zoos", "base", "--no-progress"]) == 2
    assert "the run has zoos all" in capsys.readouterr().err


def test_bench_guarantee_committee_grid_flag(tmp_path, capsys):
    # a design knob studied on val-only draws: its own file, and a column that says so
    run = _fake_run(tmp_path)
    assert main(["--run", str(run), "--draws", "2", "--sacrifices", "0", "0.02", "--committee",
                 "--rules", "certified", "--committee-grid", "4", "--population", "val",
                 "--no-progress"]) == 0
    rows = read_csv(run / "results" / "guarantee_val_committee_g4.csv")
    assert len(rows) == 2 and {int(r["committee_grid"]) for r in rows} == {4}
    for r in rows:
        assert int(r["misses"]) <= int(r["draws"]) and float(r["promised"]) == 1.0
    # another chain length is named in the file: a 3-stage study keeps the 2-stage one
    assert main(["--run", str(run), "--draws", "1", "--sacrifices", "0", "--committee",
                 "--rules", "certified", "--committee-grid", "4", "--population", "val",
                 "--max-stages", "3", "--no-progress"]) == 0
    assert {int(r["max_stages"]) for r in read_csv(
        run / "results" / "guarantee_val_committee_g4_s3.csv")} == {3}
    assert len(read_csv(run / "results" / "guarantee_val_committee_g4.csv")) == 2
    capsys.readouterr()
    assert main(["--run", str(run), "--committee-grid", "1", "--no-progress"]) == 2
    assert "--committee-grid 1" in capsys.readouterr().err


def test_accuracy_of_a_deployed_answer_by_hand():
    # 3 images, labels 0 1 2; model 0 answers 0 0 2, model 1 answers 1 1 1
    pool = _table(np.array([[1, 0], [0, 1], [1, 0]], bool), n_classes=3)
    pool.labels[:] = [0, 1, 2]
    pool.preds[:] = [[0, 1], [0, 1], [2, 1]]
    chosen = np.array([0, 1, 1])
    assert accuracy_on(Deployed("r", "single", chosen, 1.0), pool) == pytest.approx(2 / 3)
    # a committee's own answers count, not its last member's
    committee = Deployed("r", "committee-cascade", chosen, 1.0, preds=np.array([0, 1, 2]))
    assert accuracy_on(committee, pool) == 1.0


def test_bench_guarantee_names_the_missing_step(tmp_path, capsys):
    assert main(["--run", str(tmp_path), "--draws", "2"]) == 2
    assert "evaluate-routers" in capsys.readouterr().err


def test_pool_keeps_model_order():
    rng = np.random.default_rng(0)
    a, b = _table(_population(rng, 10, 1, 0.0, 0.1)), _table(_population(rng, 5, 1, 0.0, 0.1))
    p = pool_tables(a, b)
    assert p.n_samples == 15 and p.model_names == a.model_names
    assert (p.labels[10:] == b.labels).all()
