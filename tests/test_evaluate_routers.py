"""evaluate-routers end to end on a tiny profiled run, and bench-routers on its output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.io import read_csv
from common.tables import PredictionTable
from router.artifact import RoutedClassifier
from router.kinds import kind_families
from router.evaluate import images_for_table
from scripts.bench_routers import main as bench_main
from scripts.evaluate_routers import main
from tests.conftest import make_fake_idx_dataset
from tests.router_run import make_router_run
from zoo.data import prepare_data
from zoo.rundir import RunDir

LEVELS = ["0", "0.05"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("router-run")
    data = make_fake_idx_dataset(root / "data", n_train=1000, n_test=200)
    run = make_router_run(root / "run", data, {"tiny_vgg1": 1, "tiny_vgg2": 2, "tiny_vgg3": 4})
    assert main(["--run", str(run), "--sacrifices", *LEVELS, "--threads", "1", "--repeats", "2",
                 "--selection", "estimate",
                 "--dispatcher-epochs", "3", "--timing-samples", "0", "--no-progress"]) == 0
    return run


def test_routers_csv_rows_and_invariants(evaluated_run, capsys):
    rd = RunDir(evaluated_run)
    rows = read_csv(rd.results / "routers.csv")
    test = PredictionTable.load(rd.tables, "test")
    names = test.model_names
    for col in ["method", "family", "sacrifice", "accuracy", "precision", "recall", "f1",
                "seconds", "images_per_second", "speedup_vs_best", "router_seconds",
                "budget_held", "macs_per_image", "routing_accuracy", "gap_recovered",
                *[f"share_{m}" for m in names]]:
        assert col in rows[0], col
    fams = {r["family"] for r in rows}
    assert fams == {"single", "best-single", "cheapest-single", "oracle", "oracle-executed",
                    "ceiling", "dispatcher", "cascade", "learned", "committee", "random"}
    # no compressed variant in this run: the base zoo would equal the whole zoo, so it is left out
    assert {r["zoo"] for r in rows} == {"all"}
    for s in LEVELS:
        at = {r["method"]: r for r in rows if float(r["sacrifice"]) == float(s)}
        for m in ["dispatcher-label", "dispatcher-sample", "cascade", "learned-cascade",
                  "committee-cascade", "ceiling", "oracle-budget", "oracle-budget-executed", "random~cascade",
                  "random~learned-cascade"]:
            assert m in at, (s, m)
        # (the per-round speedup and its interval are checked by hand in test_certify.py)
        best = next(r for r in at.values() if r["family"] == "best-single")
        cheap = next(r for r in at.values() if r["family"] == "cheapest-single")
        assert float(cheap["fit_ms_per_image"]) <= float(best["fit_ms_per_image"])
        # exactly one deployable answer is selected per level, and it is the one whose fit
        # expected the least cost among those meeting the target on val
        sel = [r for r in at.values() if r["selected"] == "1"]
        deployable = ("cheapest-single", *kind_families())
        assert len(sel) == 1 and sel[0]["family"] in deployable
        cands = [r for r in at.values() if r["family"] in deployable
                 and json.loads(r["settings"]).get("val_meets_target", True)]
        assert float(sel[0]["fit_ms_per_image"]) == pytest.approx(
            min(float(r["fit_ms_per_image"]) for r in cands))
        for r in at.values():
            if r.get("images_per_second"):
                # the speedup is the median of per-round ratios, inside its own interval
                for col in ("speedup_vs_cheapest", "speedup_vs_best"):
                    med = float(r[col + ("_single" if col.endswith("cheapest") else "")])
                    assert float(r[f"{col}_lo"]) <= med <= float(r[f"{col}_hi"])
            if r["family"] not in ("cascade", "learned") and r.get("wasted_seconds"):
                assert float(r["wasted_seconds"]) == 0.0
        # single rows are the table's accuracy; shares sum to one
        for i, m in enumerate(names):
            assert float(at[f"single:{m}"]["accuracy"]) == pytest.approx(test.accuracy()[i])
        for r in at.values():
            assert sum(float(r[f"share_{m}"]) for m in names) == pytest.approx(1.0)
            held = float(r["accuracy"]) >= float(best["accuracy"]) - float(s) - 1e-9
            assert (r["budget_held"] == "True") == held
            # the margin in paired SEs has the sign of the budget test (empty: no SE, the row
            # is right exactly where the best single model is, so it holds by s >= 0)
            if r["budget_margin_se"] not in ("", None):
                assert (float(r["budget_margin_se"]) >= -1e-9) == held
                # gain_se is the SE the margin divides by: margin x SE = acc - (ref - s)
                assert float(r["budget_margin_se"]) * float(r["gain_se"]) == pytest.approx(
                    float(r["accuracy"]) - (float(best["accuracy"]) - float(s)), abs=1e-9)
            else:
                assert held and float(r["gain_se"]) == 0.0
        # the ceiling is every sample's cheapest right model: its accuracy = any model right
        assert float(at["ceiling"]["accuracy"]) == pytest.approx(test.correct.any(1).mean())
        # executed oracle answers equal the simulated ones (timed on all test images here)
        for k in ("overlap", "accuracy", "budget"):
            assert at[f"oracle-{k}-executed"]["accuracy"] == at[f"oracle-{k}"]["accuracy"]
            assert float(at[f"oracle-{k}-executed"]["agree_with_table"]) == 1.0
        # a dispatcher pays MACs for its network exactly when it runs it (whether it skips it
        # is decided from measured costs, so either can happen on a busy machine)
        for m in ("dispatcher-label", "dispatcher-sample"):
            skipped = json.loads(at[m]["settings"])["network_skipped"]
            assert (float(at[m]["router_macs"]) > 0) == (not skipped), (s, m)
        assert float(at["cascade"]["agree_with_table"]) == 1.0
        # the learned cascade's executed answers equal its simulation from the test table
        assert float(at["learned-cascade"]["agree_with_table"]) == 1.0
        learned = json.loads(at["learned-cascade"]["settings"])
        assert learned["type"] == "learned-cascade" and learned["fit_samples"] > 0
        assert learned["threshold_samples"] > 0
        assert 0.0 <= float(at["dispatcher-sample"]["routing_accuracy"]) <= 1.0


def test_dispatcher_stays_within_a_quarter_of_the_cheapest_model(evaluated_run):
    from common.tables import CostTable
    rd = RunDir(evaluated_run)
    fits = json.loads((rd.root / "routers" / "fits.json").read_text())
    cheapest = min(c.macs for c in CostTable.load(rd.costs).models.values())
    for mode in ("label", "sample"):
        assert 0 < fits[f"dispatcher_{mode}"]["macs"] <= cheapest / 4


def test_predictions_npz_and_saved_routers_reproduce_rows(evaluated_run):
    rd = RunDir(evaluated_run)
    test = PredictionTable.load(rd.tables, "test")
    with np.load(rd.results / "router_predictions.npz") as z:
        methods, sac, preds = list(z["methods"]), z["sacrifices"], z["preds"]
        assert set(z["zoos"]) == {"all"}
        assert preds.shape == (len(methods), test.n_samples)
        assert np.array_equal(z["labels"], test.labels)
    rows = read_csv(rd.results / "routers.csv")
    assert len(methods) == len(rows)
    i = methods.index("cascade")
    acc = float(next(r for r in rows if r["method"] == "cascade"
                     and float(r["sacrifice"]) == sac[i])["accuracy"])
    assert (preds[i] == test.labels).mean() == pytest.approx(acc)
    bundle = prepare_data(rd.root, **rd.load_config().data_kwargs())
    x = images_for_table(bundle.test, test)
    for method in ("cascade", "learned-cascade", "dispatcher-sample", "dispatcher-label"):
        k = next(j for j, m in enumerate(methods) if m == method and sac[j] == 0.05)
        clf = RoutedClassifier.load(rd.root / "routers" / f"{method}-s0.05.pt")
        out = clf(x)
        assert (out.preds == preds[k]).all(), method
        assert out.scores is not None and len(out.score_names) == out.scores.shape[1]


@pytest.mark.parametrize("selection", ["estimate", "certified"])
def test_never_fits_on_test_labels(evaluated_run, tmp_path, monkeypatch, selection):
    """Scrambling the test labels, predictions and probabilities leaves every fitted setting unchanged (profiled costs, no
    dispatcher time cap and a fixed dispatcher cost, so neither evaluation depends on a timing:
    the dispatcher's measured ms/image decides whether its network is skipped, and on a busy
    machine it varied enough between the two calls to flip that decision)."""
    import shutil
    import router.kind_dispatchers
    monkeypatch.setattr(router.kind_dispatchers, "dispatcher_ms_per_image",
                        lambda arch, x: 0.01)
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    from router.evaluate import EvalConfig, evaluate_run, load_run_inputs
    from router.dispatcher import DispatcherConfig

    def settings(scramble: bool) -> dict:
        inp = load_run_inputs(run)
        if scramble:
            # everything the test split holds: labels, and each model's predictions and
            # probabilities, each shuffled by its own permutation
            rng = np.random.default_rng(5)
            inp.test.labels = rng.permutation(inp.test.labels)
            inp.test.preds = inp.test.preds[rng.permutation(inp.test.n_samples)]
            inp.test.probs = inp.test.probs[rng.permutation(inp.test.n_samples)]
        cfg = EvalConfig(sacrifices=[0.05], threads=1, repeats=1, warmup=0, timing_samples=20,
                         dispatcher=DispatcherConfig(epochs=3, progress=False), progress=False,
                         save_routers=False, costs="profile", dispatcher_time_share=None,
                         selection=selection, count_router_time=False)
        res = evaluate_run(run, cfg, inputs=inp, log=lambda s: None)
        out = {(r["zoo"], r["method"], r["sacrifice"]): (r["settings"], r["selected"],
                                                        r["fit_ms_per_image"], r["val_accuracy"])
               for r in res.rows if r["family"] in (*kind_families(), "cheapest-single",
                                                    "single")}
        out["learned heads"] = {z: f["learned_cascade"]["heads"]         # the deferral heads
                                for z, f in res.fits["zoos"].items()}
        return out
    before, after = settings(False), settings(True)
    assert {"dispatcher-label", "dispatcher-sample", "cascade", "learned-cascade"} <= \
        {k[1] for k in before}
    assert before["learned heads"]["all"]["tiny_vgg1"]["coef"]
    assert sum(v[1] for k, v in before.items() if k != "learned heads") == 1  # one selected
    assert after == before


def test_fits_record_measured_costs_and_dispatcher_time(evaluated_run):
    rd = RunDir(evaluated_run)
    fits = json.loads((rd.root / "routers" / "fits.json").read_text())
    test = PredictionTable.load(rd.tables, "test")
    assert fits["costs"] == "measured" and fits["margin_z"] == 1.0
    assert list(fits["ms_per_image"]) == test.model_names
    assert all(v > 0 for v in fits["ms_per_image"].values())
    assert fits["dispatcher_max_ms_per_image"] == pytest.approx(
        0.25 * min(fits["ms_per_image"].values()))
    for mode in ("label", "sample"):
        d = fits[f"dispatcher_{mode}"]
        assert d["ms_per_image"] > 0
        assert d["time_cap_met"] == (d["ms_per_image"] <= fits["dispatcher_max_ms_per_image"])


def test_bench_routers_prints_the_headline(evaluated_run, capsys):
    assert bench_main(["--run", str(evaluated_run)]) == 0
    out = capsys.readouterr().out
    assert "selected on val" in out and "gap recovered" in out and "x cheapest" in out


def test_missing_tables_name_the_fix(tmp_path):
    RunDir(tmp_path).save_config(__import__("zoo.rundir", fromlist=["RunConfig"]).RunConfig())
    with pytest.raises(FileNotFoundError, match="profile-zoo"):
        main(["--run", str(tmp_path), "--no-progress"])


def test_two_zoos_policies_and_base_routers(evaluated_run, tmp_path):
    """A run with a compressed variant (a card naming a parent) is fitted over the whole zoo and
    over the uncompressed models; each zoo has its own reference, cheapest single model, selected
    answer, saved routers and oracle policies (with the costs they were fitted with)."""
    import shutil
    from common.io import read_json, write_json
    from oracle.policy import Policy
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    rd = RunDir(run)
    card = read_json(rd.card("tiny_vgg2"))
    write_json(rd.card("tiny_vgg2"), {**card, "parent": "tiny_vgg3", "variant": "fake"})
    assert main(["--run", str(run), "--sacrifices", "0.05", "--threads", "1", "--repeats", "1",
                 "--warmup", "0", "--dispatcher-epochs", "2", "--timing-samples", "50",
                 "--no-progress"]) == 0
    rows = read_csv(rd.results / "routers.csv")
    assert {r["zoo"] for r in rows} == {"all", "base"}
    for zoo in ("all", "base"):
        at = [r for r in rows if r["zoo"] == zoo]
        assert sum(r["selected"] == "1" for r in at) == 1
        assert sum(r["family"] == "cheapest-single" for r in at) == 1
    base = [r for r in rows if r["zoo"] == "base"]
    assert all(float(r["share_tiny_vgg2"]) == 0.0 for r in base)
    assert not any(r["method"] == "single:tiny_vgg2" for r in base)
    fits = json.loads((run / "routers" / "fits.json").read_text())
    assert fits["zoos"]["base"]["models"] == ["tiny_vgg1", "tiny_vgg3"]
    assert (run / "routers" / "base" / "cascade-s0.05.pt").exists()
    assert (run / "routers" / "base" / "learned-cascade-s0.05.pt").exists()
    clf = RoutedClassifier.load(run / "routers" / "base" / "cascade-s0.05.pt")
    assert clf.model_names == ["tiny_vgg1", "tiny_vgg3"]
    pol = Policy.load(run / "policies" / "budget-s0.05.json")
    assert pol.model_names == PredictionTable.load(rd.tables, "val").model_names
    # the policies were fitted with each model's measured ms plus a stage's own routing work
    stage = fits["router_overhead_ms"]["stage_ms"]
    assert stage > 0
    assert pol.meta["costs"] == pytest.approx([v + stage
                                               for v in fits["ms_per_image"].values()])
    pol_b = Policy.load(run / "policies" / "base" / "budget-s0.05.json")
    assert pol_b.model_names == ["tiny_vgg1", "tiny_vgg3"]
    with np.load(rd.results / "router_predictions.npz") as z:
        assert set(z["zoos"]) == {"all", "base"}
        names = list(z["model_names"])
        k = [i for i, (zz, m) in enumerate(zip(z["zoos"], z["methods"]))
             if zz == "base" and m == "cascade"][0]
        assert names.index("tiny_vgg2") not in set(z["chosen"][k])


def test_library_fit_gives_the_settings_evaluate_routers_saved(evaluated_run):
    """router.api.fit_router on the run's val table and the costs evaluate-routers measured
    gives exactly the stages and thresholds of the routers it saved (cascade and learned
    cascade; the dispatchers' architecture depends on a timing, so they are left out)."""
    from router.api import fit_router
    rd = RunDir(evaluated_run)
    val = PredictionTable.load(rd.tables, "val")
    fits = json.loads((rd.root / "routers" / "fits.json").read_text())
    costs = np.array([fits["ms_per_image"][n] for n in val.model_names])
    for s in LEVELS:
        for kind in ("cascade", "learned-cascade"):
            saved = RoutedClassifier.load(rd.root / "routers" / f"{kind}-s{float(s):g}.pt").router
            ours = fit_router(kind, val, costs, float(s), margin_z=1.0, selection="estimate",
                              overhead=fits["router_overhead_ms"]).router
            assert ours.stages == saved.stages, (kind, s)
            assert ours.thresholds == saved.thresholds, (kind, s)
            if kind == "learned-cascade":
                for a, b in zip(ours.heads, saved.heads):
                    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_timed_rows_say_where_they_ran(evaluated_run):
    rows = read_csv(RunDir(evaluated_run).results / "routers.csv")
    timed = [r for r in rows if r["seconds"] not in ("", None)]
    assert timed and {r["device"] for r in timed} == {"cpu"}


def test_deferral_curves_run_from_the_cheap_model_to_the_reference(evaluated_run):
    rd = RunDir(evaluated_run)
    rows = read_csv(rd.results / "deferral_curves.csv")
    test = PredictionTable.load(rd.tables, "test")
    acc = dict(zip(test.model_names, test.accuracy()))
    assert {r["score"] for r in rows} == {"max-softmax", "learned head", "ideal (label)"}
    for r in rows:
        share = float(r["deferred_share"])
        if share == 0.0:
            assert float(r["accuracy"]) == pytest.approx(acc[r["first"]])
        if share == 1.0:
            assert float(r["accuracy"]) == pytest.approx(acc[r["reference"]])
    ideal = [float(r["accuracy"]) for r in rows if r["score"] == "ideal (label)"]
    soft = [float(r["accuracy"]) for r in rows if r["score"] == "max-softmax"]
    assert all(i >= s - 1e-12 for i, s in zip(ideal, soft))      # nothing beats the label


def test_costs_from_pins_the_costs_and_so_the_choices(evaluated_run, tmp_path):
    """--costs-from reuses a fits.json's ms/image, overheads, dispatcher architectures and the
    dispatchers' measured network time: two fits then see the same costs (recorded back as
    given) and make the same choices; a zoo it lacks is refused."""
    import shutil
    from router.base import RouterError
    from router.evaluate import pinned_costs
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    pinned = tmp_path / "pinned.json"
    shutil.copy(run / "routers" / "fits.json", pinned)
    given = json.loads(pinned.read_text())

    def choose() -> dict:
        assert main(["--run", str(run), "--sacrifices", "0.05", "--threads", "1", "--repeats", "1",
                     "--costs-from", str(pinned), "--dispatcher-epochs", "2",
                     "--timing-samples", "20", "--no-progress", "--no-save-routers"]) == 0
        fits = json.loads((run / "routers" / "fits.json").read_text())
        assert fits["ms_per_image"] == given["ms_per_image"]
        assert fits["router_overhead_ms"] == given["router_overhead_ms"]
        for mode in ("label", "sample"):           # the network and its measured time
            for key in ("arch", "ms_per_image"):
                assert (fits["zoos"]["all"][f"dispatcher_{mode}"][key]
                        == given["zoos"]["all"][f"dispatcher_{mode}"][key])
        rows = read_csv(RunDir(run).results / "routers.csv")
        return {(r["zoo"], r["method"], r["sacrifice"]): (r["selected"], r["settings"],
                                                         r["fit_ms_per_image"], r["accuracy"])
                for r in rows}
    assert choose() == choose()
    names = list(given["ms_per_image"])
    with pytest.raises(RouterError, match="another zoo"):
        pinned_costs(pinned, names + ["resnet50"])
    with pytest.raises(RouterError, match="no such file"):
        pinned_costs(tmp_path / "nope.json", names)
