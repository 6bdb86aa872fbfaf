"""The web page and its JSON API: good and bad inputs, the server going on, concurrency.

The run is built here: the synthetic Fashion-MNIST folder, two tiny VGGs with cards, a cost
table, a val prediction table and one oracle policy, all with values chosen so the expected
answers can be worked out by hand.
"""
from __future__ import annotations

import datetime as dt
import io
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from common.tables import CostTable, ModelCost, PredictionTable
from router.web import Limits, TimingConfig, WebService, create_app
from zoo.checkpoint import file_sha256, save_checkpoint
from zoo.data import FASHION_MNIST_CLASSES, DatasetInfo, normalize, prepare_data
from zoo.infer import predict_logits
from zoo.rundir import RunConfig, RunDir

MODELS = ["tiny_vgg1", "tiny_vgg2"]
# Batched costs (fixture inputs): tiny_vgg2 is the baseline below, so tiny_vgg1's batched
# speedup must be 0.5 / 0.2 = 2.5 exactly.
COSTS = {"tiny_vgg1": (0.2, 1_000_000), "tiny_vgg2": (0.5, 9_000_000)}
# Oracle policy: label c -> tiny_vgg1 for even c, tiny_vgg2 for odd c.
LABEL_TO_MODEL = {c: MODELS[c % 2] for c in range(10)}


def make_web_run(root: Path, data_dir: Path, with_extras: bool = True, steps: int = 12) -> Path:
    """A run dir with two barely trained tiny VGGs (``steps`` Adam steps), their cards and,
    optionally, costs, a val table in which tiny_vgg2 is the more accurate, and two overlap
    policies."""
    run = RunDir(root)
    run.save_config(RunConfig(data_dir=str(data_dir), download=False, limit_eval=30))
    bundle = prepare_data(root, data_dir=data_dir, download=False, limit_eval=30)
    info = bundle.info
    torch.manual_seed(0)
    for i, name in enumerate(MODELS):
        m = quick_train(zoo.create_model(name, num_classes=10, in_channels=1, input_size=28),
                        bundle.train, info, steps)
        path = save_checkpoint(run.checkpoint(name), model_name=name, arch=m.arch.to_dict(),
                               state_dict=m.state_dict(), data=info.to_dict())
        card = {"model_name": name, "arch": m.arch.to_dict(), "parent": None, "variant": None,
                "dataset": info.to_dict(), "split_fingerprint": bundle.splits.fingerprint,
                "val_accuracy": [0.5, 0.6][i], "test_accuracy": [0.5, 0.6][i],
                "params": sum(p.numel() for p in m.parameters()), "train_seconds": 0.0,
                "train_config": {}, "command": "fixture",
                "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                "checkpoint_sha256": file_sha256(path)}
        from common.io import write_json
        write_json(run.card(name), card)
    if with_extras:
        CostTable({n: ModelCost(n, 100, 100, macs, 1.5, ms, 1000.0 / ms)
                   for n, (ms, macs) in COSTS.items()}, {"threads": 1}).save(run.costs)
        labels = np.arange(10)
        preds = np.stack([np.where(labels < 5, labels, 0), labels], axis=1)  # vgg2 all right
        probs = np.full((10, 2, 10), 0.1, dtype=np.float16)
        PredictionTable(MODELS, labels, preds, probs, labels, "val").save(run.tables)
        from oracle.policy import Policy
        for sac in (0.01, 0.05):
            Policy("overlap", sac, MODELS, LABEL_TO_MODEL, "tiny_vgg2").save(
                run.policies / f"overlap-{sac}.json")
    return root


CASCADE_THRESHOLDS = {0.01: 0.0, 0.05: 1.01}  # 0: stage 1 always stops; > 1: never


def add_routers(root: Path) -> None:
    """Two cascades (sacrifice 1%: threshold 0, so always tiny_vgg1; 5%: threshold 1.01, so
    always tiny_vgg2), an untrained label dispatcher (predicted label -> LABEL_TO_MODEL) and a
    learned cascade that always defers to tiny_vgg2 and a committee cascade: one router of
    every kind family.

    The router modules need nothing optional (torch and numpy only), so an import error here
    is a broken router and fails the test that asked for the routers, never a skip."""
    from router.artifact import RoutedClassifier
    from router.cascade import CascadeRouter
    from router.deferral import DeferralHead, LearnedCascadeRouter
    from router.dispatcher import Dispatcher, DispatcherArch, DispatcherNet
    from router.kind_committee import CommitteeCascadeRouter
    from zoo.checkpoint import load_model
    run = RunDir(root)
    loaded = [load_model(run.checkpoint(n)) for n in MODELS]
    models = [m for m, _ in loaded]
    infos = [DatasetInfo.from_dict(c["data"]) for _, c in loaded]
    ckpts = [run.checkpoint(n) for n in MODELS]
    for sac, th in CASCADE_THRESHOLDS.items():
        meta = {"sacrifice": sac, "statement": f"certified (a test statement at {sac})"}
        RoutedClassifier("cascade", CascadeRouter(MODELS, [0, 1], [th, 0.0]), models, infos,
                         ckpts, meta=meta).save(root / "routers" / f"cascade-{sac}.pt", root)
    torch.manual_seed(1)
    net = DispatcherNet(DispatcherArch(1, 28, 10, width=4))
    disp = Dispatcher("label", net, infos[0], MODELS, np.array([0.2, 0.5]),
                      label_to_model=[MODELS.index(LABEL_TO_MODEL[c]) for c in range(10)], macs=0)
    RoutedClassifier("dispatcher-label", disp, models, infos, ckpts,
                     meta={"sacrifice": 0.01}).save(root / "routers" / "dispatcher-label-0.01.pt",
                                                    root)
    # a learned cascade whose head (all weights 0, intercept -5: p(right) 0.007) always defers
    head = DeferralHead.from_state({"coef": [0.0] * 23, "intercept": -5.0, "n_classes": 10})
    RoutedClassifier("learned-cascade", LearnedCascadeRouter(MODELS, [0, 1], [0.5, 0.0], [head]),
                     models, infos, ckpts, meta={"sacrifice": 0.01}).save(
                         root / "routers" / "learned-cascade-0.01.pt", root)
    RoutedClassifier("committee-cascade", CommitteeCascadeRouter(MODELS, [0, 1], [0.5, 0.0]),
                     models, infos, ckpts, meta={"sacrifice": 0.01}).save(
                         root / "routers" / "committee-cascade-0.01.pt", root)


def test_a_broken_router_import_fails_add_routers_instead_of_skipping(tmp_path, monkeypatch):
    """add_routers used to swallow ImportError and return False, so every test built on it
    went on without routers (or skipped) when a router module stopped importing."""
    import sys
    monkeypatch.setitem(sys.modules, "router.cascade", None)   # its import now raises
    with pytest.raises(ImportError):
        add_routers(tmp_path)

def quick_train(model: torch.nn.Module, train, info: DatasetInfo, steps: int = 12) -> torch.nn.Module:
    """A few Adam steps so the cards show real (if rough) answers, not uniform guesses."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for s in range(steps):
        idx = torch.arange(s * 32, s * 32 + 32) % len(train)
        loss = torch.nn.functional.cross_entropy(model(normalize(train.images[idx], info)),
                                                 train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def web_run(fake_fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_web_run(tmp_path_factory.mktemp("webrun"), fake_fmnist_dir)
    add_routers(root)
    return root


def copy_run(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a run without some of its artifacts (cheaper than training again)."""
    shutil.copytree(src, dst)
    for name in drop:
        p = dst / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


@pytest.fixture(scope="module")
def service(web_run: Path) -> WebService:
    return WebService.load(web_run, TimingConfig(repeats=1, threads=1))


LIMITS = Limits(max_bytes=200_000, max_pixels=4_000_000)


@pytest.fixture(scope="module")
def client(service: WebService):
    return create_app(service, LIMITS).test_client()


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def upload(client, data: bytes, name: str = "x.png", url: str = "/api/predict", **form):
    return client.post(url, data={"image": (io.BytesIO(data), name), **form},
                       content_type="multipart/form-data")


def assert_still_serving(client) -> None:
    assert client.get("/healthz").get_json()["ok"] is True
    r = upload(client, png_bytes(Image.new("L", (40, 30), 0)))
    assert r.status_code == 200 and len(r.get_json()["models"]) == len(MODELS)


# ---- good inputs --------------------------------------------------------------------------

def test_upload_gives_one_card_per_model_with_costs(client):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), np.uint8))
    r = upload(client, png_bytes(rgb), "photo.png")
    assert r.status_code == 200
    d = r.get_json()
    assert [m["name"] for m in d["models"]] == MODELS  # cheapest first (costs.json)
    by = {m["name"]: m for m in d["models"]}
    for m in d["models"]:
        probs = [t["prob"] for t in m["top3"]]
        assert probs == sorted(probs, reverse=True) and len(probs) == 3
        assert abs(sum(m["probs"]) - 1) < 1e-4 and m["ms_this_image"] > 0
        assert m["top3"][0]["class"] == FASHION_MNIST_CLASSES[m["pred"]]
    assert d["baseline"] == {"name": "tiny_vgg2", "source": "val table"}
    assert by["tiny_vgg2"]["is_baseline"] and by["tiny_vgg2"]["speedup_this_image"] == 1.0
    assert by["tiny_vgg1"]["speedup_batched"] == pytest.approx(0.5 / 0.2)
    assert by["tiny_vgg1"]["macs"] == 1_000_000 and by["tiny_vgg2"]["macs"] == 9_000_000
    assert d["source"]["original_size"] == [90, 120] and d["source"]["input_shape"] == [1, 28, 28]


def test_sample_matches_direct_inference_and_png_round_trip(client, service, web_run):
    """A test sample's probabilities equal predict_logits on it, and uploading that sample as a
    28x28 PNG gives the very same input, hence the same answers."""
    i = 7
    d = client.get(f"/api/predict?sample={i}").get_json()
    x = service.samples.images[i]
    for m, res in zip(service.models, d["models"]):
        ref = torch.softmax(predict_logits(m.model, x[None], m.info), dim=1)[0]
        assert np.allclose(res["probs"], ref.numpy(), atol=1e-5)
        assert res["correct"] == (res["pred"] == int(service.samples.labels[i]))
    up = upload(client, png_bytes(Image.fromarray(x[0].numpy(), "L")), "s.png").get_json()
    assert not up["source"]["inverted"]
    assert np.allclose([m["probs"] for m in up["models"]], [m["probs"] for m in d["models"]],
                       atol=1e-6)


def test_dark_on_light_photo_is_inverted(client):
    img = Image.new("L", (64, 64), 255)
    img.paste(0, (16, 16, 48, 48))
    d = upload(client, png_bytes(img)).get_json()
    assert d["source"]["inverted"] is True


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"),
                                      ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"),
                                      ("1", "PNG"), ("RGB", "JPEG"), ("L", "JPEG"),
                                      ("CMYK", "JPEG")])
def test_any_mode_is_accepted(client, mode, fmt):
    img = Image.new(mode, (33, 51))
    r = upload(client, png_bytes(img, fmt), f"x.{fmt.lower()}")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["source"]["format"] == fmt


def test_phone_camera_mpo_jpeg_is_accepted(client):
    """Many phone JPEGs are multi-picture (PIL: MPO); the first picture is what is classified."""
    first = Image.new("RGB", (40, 30), (200, 10, 10))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (40, 30))])
    d = upload(client, buf.getvalue(), "phone.jpg").get_json()
    plain = upload(client, png_bytes(first, "JPEG"), "plain.jpg").get_json()
    assert d["source"]["format"] == "MPO"
    assert np.allclose([m["probs"] for m in d["models"]], [m["probs"] for m in plain["models"]],
                       atol=1e-6)


def test_file_name_is_escaped_on_the_page(client):
    name = "<img src=x onerror=alert(1)>.png"
    html = upload(client, png_bytes(Image.new("L", (8, 8))), name, url="/").get_data(as_text=True)
    assert name not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html


def test_page_renders_cards_and_strip(client):
    html = client.get("/?sample=3").get_data(as_text=True)
    assert html.count('class="model-card') == len(MODELS)
    assert 'id="router-strip"' in html and html.count('class="router-entry') >= 3
    assert "stage" in html and "threshold" in html  # the cascade's why-table
    home = client.get("/").get_data(as_text=True)
    assert 'id="image"' in home and "/samples/" in home and "model-card" not in home
    assert client.get("/samples/0.png").mimetype == "image/png"


def test_models_endpoint(client):
    d = client.get("/api/models").get_json()
    assert [m["name"] for m in d["models"]] == MODELS and d["n_test_samples"] == 30


# ---- the router strip ---------------------------------------------------------------------

def test_oracle_needs_a_test_sample(client, service):
    up = upload(client, png_bytes(Image.new("L", (28, 28)))).get_json()
    oracle = [e for e in up["routers"] if e["family"] == "oracle"][0]
    assert oracle["status"] == "n/a" and "true label" in oracle["message"]
    for i in range(4):
        d = client.get(f"/api/predict?sample={i}").get_json()
        label = d["source"]["label"]
        o = [e for e in d["routers"] if e["family"] == "oracle"][0]
        assert o["status"] == "ok" and o["model"] == LABEL_TO_MODEL[label]
        chosen = [m for m in d["models"] if m["name"] == o["model"]][0]
        assert o["answer_index"] == chosen["pred"] and o["correct"] == (chosen["pred"] == label)


def test_cascade_and_dispatcher_explain_their_choice(client, service, web_run):
    if not (web_run / "routers").is_dir():
        pytest.skip("router.artifact is not available yet")
    from router.dispatcher import dispatcher_scores
    for policy, th in (("overlap-0.01", 0.0), ("overlap-0.05", 1.01)):
        d = client.get(f"/api/predict?sample=4&policy={policy}").get_json()
        casc = [e for e in d["routers"] if e["family"] == "cascade"]
        assert len(casc) == 1 and casc[0]["status"] == "ok"  # one per group, at this sacrifice
        c = casc[0]
        by = {m["name"]: m for m in d["models"]}
        if th == 0.0:  # stage 1 stops at once: its confidence is the card's
            assert c["model"] == "tiny_vgg1" and c["why"][1]["confidence"] == "not run"
            assert c["why"][0]["confidence"] == pytest.approx(by["tiny_vgg1"]["confidence"],
                                                              abs=1e-5)
        else:  # nothing clears 1.01: both stages run, the last answers
            assert c["model"] == "tiny_vgg2" and c["why"][0]["stops"] == "no"
            assert c["why"][1]["confidence"] == pytest.approx(by["tiny_vgg2"]["confidence"],
                                                              abs=1e-5)
        assert c["answer_index"] == by[c["model"]]["pred"]
        # the certificate saved with the router is printed beside its choice
        level = policy.split("-")[1]
        assert f"Its budget: certified (a test statement at {level})." in c["why_text"]
    disp = [e for e in d["routers"] if e["family"] == "dispatcher"][0]
    rc = [r for r in service.strip.routers if r.family == "dispatcher"][0].routed
    top = int(dispatcher_scores(rc.router.net, service.samples.images[4][None], rc.router.info,
                                "label").argmax())
    assert disp["model"] == LABEL_TO_MODEL[top]
    assert disp["why"][0]["routes to"] == disp["model"]
    assert disp["answer_index"] == {m["name"]: m for m in d["models"]}[disp["model"]]["pred"]
    # the routers use the server's own model objects, not second copies
    assert all(m is None or any(m is lm.model for lm in service.models) for m in rc.models)


def test_missing_routers_name_the_command(web_run, tmp_path):
    run = copy_run(web_run, tmp_path / "r", ("routers",) if (web_run / "routers").exists() else ())
    d = create_app(WebService.load(run, TimingConfig(repeats=1))).test_client().get(
        "/api/predict?sample=0").get_json()
    fams = {e["family"]: e for e in d["routers"]}
    for fam in ("cascade", "dispatcher"):
        assert fams[fam]["status"] == "missing"
        assert "evaluate-routers --run" in fams[fam]["message"]
    assert fams["oracle"]["status"] == "ok"


def test_broken_router_artifact_is_reported_not_fatal(web_run, tmp_path):
    run = copy_run(web_run, tmp_path / "r", ("routers",) if (web_run / "routers").exists() else ())
    (run / "routers").mkdir()
    (run / "routers" / "cascade-0.01.pt").write_bytes(b"garbage")
    c = create_app(WebService.load(run, TimingConfig(repeats=1))).test_client()
    d = c.get("/api/predict?sample=0").get_json()
    casc = [e for e in d["routers"] if e["family"] == "cascade"][0]
    assert casc["status"] == "error" and "cannot be loaded" in casc["message"]


def test_routers_refuse_a_changed_or_missing_checkpoint(web_run, tmp_path):
    """Artifacts pin their models by SHA-256: a retrained model makes them error entries (the
    page still serves); a router needing a model that is not in zoo/ is refused too."""
    if not (web_run / "routers").is_dir():
        pytest.skip("router.artifact is not available yet")
    from zoo.checkpoint import load_model
    run = copy_run(web_run, tmp_path / "changed")
    path = run / "zoo" / "tiny_vgg1" / "checkpoint.pt"
    model, ckpt = load_model(path)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_checkpoint(path, model_name="tiny_vgg1", arch=model.arch.to_dict(),
                    state_dict=model.state_dict(), data=ckpt["data"])
    d = create_app(WebService.load(run, TimingConfig(repeats=1))).test_client().get(
        "/api/predict?sample=0").get_json()
    errors = [e for e in d["routers"] if e["status"] == "error"]
    assert len(errors) == 5 and all("changed since" in e["message"] for e in errors)
    assert len(d["models"]) == 2

    run = copy_run(web_run, tmp_path / "fewer", ("zoo/tiny_vgg2",))
    svc = WebService.load(run, TimingConfig(repeats=1))
    broken = [e for e in svc.strip.router_errors if e.status == "error"]
    assert not svc.strip.routers and len(broken) == 5 and all(
        "not a finished model" in e.message for e in broken)
    # every family of the kind table had a file, so none is noted as missing
    assert not [e for e in svc.strip.router_errors if e.status == "missing"]


def save_fitted_policies(run: Path, levels=(0.01, 0.05)) -> list[Path]:
    """What evaluate-routers writes: every label policy kind at each level, fitted on the val
    table with the run's costs, saved as ``RUN/policies/<kind>-s<level>.json``."""
    from oracle.policy import LABEL_KINDS, fit_policy
    rd = RunDir(run)
    val = PredictionTable.load(rd.tables, "val")
    costs = CostTable.load(rd.costs).vector(val.model_names, "ms_per_image")
    return [fit_policy(kind, val, costs, s).save(rd.policies / f"{kind}-s{s:g}.json")
            for kind in LABEL_KINDS for s in levels]


def oracle_of(d: dict) -> dict:
    return [e for e in d["routers"] if e["family"] == "oracle"][0]


def test_policies_saved_by_evaluate_routers_are_shown(web_run, tmp_path):
    """Policies fitted on val and saved with Policy.save (as evaluate-routers does) are what the
    strip offers. By hand (fixture val table, one sample per label): tiny_vgg1 is right on labels
    0-4 only, tiny_vgg2 on all, so the overlap policy at 1% or 5% sends 0-4 to tiny_vgg1
    (cheaper, full cover) and 5-9 to the reference tiny_vgg2 (tiny_vgg1 covers none of them).
    The base zoo's policies (RUN/policies/base/) are not offered."""
    run = copy_run(web_run, tmp_path / "r", ("policies",))
    save_fitted_policies(run)
    from oracle.policy import Policy
    Policy("overlap", 0.02, MODELS, LABEL_TO_MODEL, "tiny_vgg2").save(
        run / "policies" / "base" / "overlap-s0.02.json")
    svc = WebService.load(run, TimingConfig(repeats=1))
    assert sorted(k for k, _ in svc.strip.policy_options()) == sorted(
        f"{k}-s{s}" for k in ("overlap", "accuracy", "budget") for s in ("0.01", "0.05"))
    assert svc.strip.default_policy() == "overlap-s0.01"
    c = create_app(svc).test_client()
    for i in range(10):
        d = c.get(f"/api/predict?sample={i}&policy=overlap-s0.05").get_json()
        o = oracle_of(d)
        label = d["source"]["label"]
        assert o["status"] == "ok" and "policies/overlap-s0.05.json" in o["why_text"]
        assert o["model"] == ("tiny_vgg1" if label < 5 else "tiny_vgg2")
    html = c.get("/?sample=0").get_data(as_text=True)
    assert html.count('id="policy-upload"') == 1 and "budget, sacrifice 5%" in html
    assert "sacrifice 2%" not in html


def test_page_shows_the_saved_policy_not_a_refit(web_run, tmp_path, monkeypatch):
    """A saved policy whose table no refit on this val table would give (labels 0-4 to the
    reference tiny_vgg2, 5-9 to tiny_vgg1: the opposite of the fit) is shown exactly as saved:
    its whole label-to-model table, and the model it names for each test sample."""
    import oracle.policy
    from oracle.policy import Policy, fit_policy
    run = copy_run(web_run, tmp_path / "r", ("policies",))
    saved = {c: ("tiny_vgg2" if c < 5 else "tiny_vgg1") for c in range(10)}
    rd = RunDir(run)
    val = PredictionTable.load(rd.tables, "val")
    refit = fit_policy("overlap", val, CostTable.load(rd.costs).vector(MODELS, "ms_per_image"),
                       0.01)
    assert refit.label_to_model != saved   # so a refit would fail this test
    Policy("overlap", 0.01, MODELS, saved, "tiny_vgg2",
           {"cost_source": "ms per image measured by evaluate-routers"}).save(
        rd.policies / "overlap-s0.01.json")

    def refuse(*a, **k):
        raise AssertionError("the page fitted a policy")
    monkeypatch.setattr(oracle.policy, "fit_policy", refuse)
    svc = WebService.load(run, TimingConfig(repeats=1))
    assert svc.strip.policy_options() == [("overlap-s0.01", "overlap, sacrifice 1%")]
    c = create_app(svc).test_client()
    for i in range(10):
        d = c.get(f"/api/predict?sample={i}").get_json()
        o = oracle_of(d)
        label = d["source"]["label"]
        assert o["status"] == "ok" and o["model"] == saved[label]
        table = {int(r["true label"].split()[0]): r["routes to"] for r in o["why"]}
        assert table == saved
        assert [r["this image"] for r in o["why"]] == ["<-" if c == label else ""
                                                       for c in range(10)]
    assert FASHION_MNIST_CLASSES[7] in o["why"][7]["true label"]
    html = c.get("/?sample=2").get_data(as_text=True)
    assert "routes to" in html and html.count("<td>tiny_vgg2</td>") >= 5


def test_no_saved_policy_names_evaluate_routers(web_run, tmp_path, monkeypatch):
    """Without RUN/policies/ the page does not fit any (even with the val table and costs it
    would need): the oracle entry names the command that writes them."""
    import oracle.policy

    def refuse(*a, **k):
        raise AssertionError("the page fitted a policy")
    monkeypatch.setattr(oracle.policy, "fit_policy", refuse)
    run = copy_run(web_run, tmp_path / "r", ("policies",))
    assert (run / "tables" / "val.npz").exists() and (run / "costs.json").exists()
    svc = WebService.load(run, TimingConfig(repeats=1))
    assert svc.strip.policy_options() == [] and svc.strip.default_policy() is None
    c = create_app(svc).test_client()
    o = oracle_of(c.get("/api/predict?sample=0").get_json())
    assert o["status"] == "missing"
    assert f"run `evaluate-routers --run {run}` to fit and save the oracle policies" in o["message"]
    html = c.get("/?sample=0").get_data(as_text=True)
    assert 'id="policy-upload"' not in html and "evaluate-routers --run" in html
    # a folder holding only unreadable files says so, and names the command too
    (run / "policies").mkdir()
    (run / "policies" / "overlap-s0.01.json").write_text("{}")
    o = oracle_of(create_app(WebService.load(run, TimingConfig(repeats=1))).test_client().get(
        "/api/predict?sample=0").get_json())
    assert o["status"] == "missing" and "overlap-s0.01.json" in o["message"]
    assert "evaluate-routers --run" in o["message"]


def test_models_load_once_not_per_request(service, monkeypatch):
    """After start nothing is read from disk again: loading a checkpoint now would fail."""
    import router.artifact
    import router.web.service

    def refuse(*a, **k):
        raise AssertionError("a model was loaded during a request")
    for mod in (router.web.service, router.artifact):
        monkeypatch.setattr(mod, "load_model", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    c = create_app(service, LIMITS).test_client()
    assert upload(c, png_bytes(Image.new("RGB", (20, 20), (9, 9, 9)))).status_code == 200
    d = c.get("/api/predict?sample=5").get_json()
    assert {e["status"] for e in d["routers"]} == {"ok"}
    assert c.get("/?sample=6").status_code == 200


def test_bare_run_falls_back_to_cards(web_run, tmp_path):
    """No costs, tables or policies: baseline from cards, MACs n/a, the strip says what to run."""
    run = copy_run(web_run, tmp_path / "bare", ("costs.json", "tables", "policies", "routers"))
    svc = WebService.load(run, TimingConfig(repeats=1))
    c = create_app(svc).test_client()
    d = c.get("/api/predict?sample=1").get_json()
    assert d["baseline"] == {"name": "tiny_vgg2", "source": "cards"}  # val_accuracy 0.6 > 0.5
    assert all(m["macs"] is None and m["speedup_batched"] is None for m in d["models"])
    assert {e["status"] for e in d["routers"]} == {"missing"}
    assert "evaluate-routers --run" in oracle_of(d)["message"]
    assert "n/a (run profile-zoo)" in c.get("/?sample=1").get_data(as_text=True)


# ---- bad inputs -----------------------------------------------------------------------------

def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height: tiny on the wire, gigantic if decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def truncated_png() -> bytes:
    rng = np.random.default_rng(1)
    data = png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8)))
    return data[: len(data) // 2]


BAD = [
    ("not an image", b"hello, I am plain text" * 10, "notes.png", 415, "not an image"),
    ("empty", b"", "empty.png", 400, "empty"),
    ("no file chosen", b"", "", 400, "empty"),  # what a browser sends for an empty file input
    ("gif", png_bytes(Image.new("L", (8, 8)), "GIF"), "a.gif", 415, "only PNG and JPEG"),
    ("truncated png", truncated_png(), "cut.png", 400, "truncated"),
    ("decompression bomb", bomb_png(), "bomb.png", 413, "decompression bomb"),
    ("pil bomb guard", bomb_png(50000, 50000), "bomb2.png", 413, "pixels"),
    ("over the size limit", b"\x89PNG" + bytes(LIMITS.max_bytes + 10), "big.png", 413,
     "over the limit"),
    ("far over the size limit", bytes(3 * LIMITS.max_bytes), "huge.png", 413, "over the limit"),
    ("parent path", png_bytes(Image.new("L", (8, 8))), "../../etc/passwd.png", 400, "path"),
    ("absolute path", png_bytes(Image.new("L", (8, 8))), "/tmp/x.png", 400, "path"),
    ("windows path", png_bytes(Image.new("L", (8, 8))), "C:\\Users\\x.png", 400, "path"),
]


@pytest.mark.parametrize("case,data,name,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_upload_api(client, case, data, name, status, needle):
    r = upload(client, data, name)
    assert r.status_code == status, r.get_data(as_text=True)
    assert needle in r.get_json()["error"]
    assert_still_serving(client)


@pytest.mark.parametrize("case,data,name,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_upload_page(client, case, data, name, status, needle):
    r = upload(client, data, name, url="/")
    assert r.status_code == status
    html = r.get_data(as_text=True)
    assert 'id="error"' in html and needle in html.replace("&#39;", "'")
    assert_still_serving(client)


@pytest.mark.parametrize("query,status,needle", [("sample=999", 404, "out of range"),
                                                 ("sample=-1", 404, "out of range"),
                                                 ("sample=abc", 400, "integer"),
                                                 ("", 400, "nothing to analyse")])
def test_bad_sample_or_empty_request(client, query, status, needle):
    r = client.get(f"/api/predict?{query}")
    assert r.status_code == status and needle in r.get_json()["error"]
    assert_still_serving(client)


def test_bad_level_or_method_is_a_400_naming_the_parameter_and_its_values(client, web_run,
                                                                           tmp_path):
    """`level=abc` or `level=-5` used to be answered 200 and ignored; an unknown method was a
    404. Each is now a 400 whose body names the parameter and what it may be: the levels of
    the run's routers.csv, the methods the server has."""
    from common.io import write_csv
    # without routers.csv the run has no levels at all, so any level is refused
    for q in ("sample=0&level=abc", "sample=0&level=-5", "sample=0&level=0.01",
              "sample=0&method=single:tiny_vgg1&level=0.01"):
        r = client.get(f"/api/predict?{q}")
        d = r.get_json()
        assert r.status_code == 400 and d["parameter"] == "level" and d["allowed"] == [], q
        assert "level=" in d["error"] and "no levels" in d["error"], d
    run = copy_run(web_run, tmp_path / "run")
    write_csv(run / "results" / "routers.csv", [
        {"zoo": "all", "sacrifice": s, "method": "best-single:tiny_vgg2",
         "family": "best-single", "selected": 0} for s in (0.01, 0.05)])
    c = create_app(WebService.load(run, TimingConfig(repeats=1, threads=1)), LIMITS).test_client()
    for q in ("sample=0&level=abc", "sample=0&level=-5", "sample=0&level=nan",
              "sample=0&method=best-single&level=0.02",
              "sample=0&method=single:tiny_vgg1&level=-5"):
        r = c.get(f"/api/predict?{q}")
        d = r.get_json()
        assert r.status_code == 400, (q, d)
        assert d["parameter"] == "level" and d["allowed"] == ["0.01", "0.05"], (q, d)
        assert "level=" in d["error"] and "0.01, 0.05" in d["error"], (q, d)
    r = c.get("/api/predict?sample=0&method=nope")
    d = r.get_json()
    assert r.status_code == 400 and d["parameter"] == "method", d
    assert {"single:tiny_vgg1", "single:tiny_vgg2", "router:cascade-0.01",
            "best-single", "selected"} <= set(d["allowed"])
    assert "method='nope'" in d["error"] and "single:tiny_vgg1" in d["error"]
    # good values still answer
    ok = c.get("/api/predict?sample=0&method=best-single&level=0.05")
    assert ok.status_code == 200 and ok.get_json()["method"] == "single:tiny_vgg2"
    assert c.get("/api/predict?sample=0&level=0.01").status_code == 200
    assert c.get("/api/predict?sample=0&method=single:tiny_vgg1&level=0.01").status_code == 200
    assert_still_serving(c)

def test_form_without_file_and_unknown_route(client):
    r = client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "field 'image'" in r.get_json()["error"]
    assert client.get("/api/nope").status_code == 404
    assert client.get("/api/nope").get_json()["status"] == 404
    assert client.get("/samples/5000.png").status_code == 404
    assert_still_serving(client)


# ---- concurrency and the script -------------------------------------------------------------

def test_concurrent_requests_agree(service):
    app = create_app(service, LIMITS)
    data = png_bytes(Image.fromarray(np.random.default_rng(5).integers(0, 255, (50, 50),
                                                                          np.uint8)))
    expected = upload(app.test_client(), data).get_json()["models"]
    out: list = [None] * 6

    def worker(k: int) -> None:
        if k % 2:
            out[k] = upload(app.test_client(), data).get_json()["models"]
        else:
            out[k] = app.test_client().get("/api/predict?sample=2").get_json()["models"]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    sample = app.test_client().get("/api/predict?sample=2").get_json()["models"]
    for k, res in enumerate(out):
        ref = expected if k % 2 else sample
        assert res is not None
        assert np.allclose([m["probs"] for m in res], [m["probs"] for m in ref], atol=1e-6)


def test_concurrent_requests_over_a_real_threaded_server(service):
    """The server ``serve`` runs (waitress, a pool of request threads in front of the batcher)
    on a loopback socket: good and bad requests at once all get their own right answer, and it
    serves on afterwards."""
    import json
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from router.web.server import BackgroundServer

    server = BackgroundServer(create_app(service, LIMITS), http_threads=8).start()
    base = server.url
    good = png_bytes(Image.fromarray(np.random.default_rng(6).integers(0, 255, (30, 40),
                                                                          np.uint8)))

    def call(k: int) -> tuple[int, dict]:
        if k % 3 == 2:  # a GET for a test sample
            url, body, headers = f"{base}/api/predict?sample={k % 5}", None, {}
        else:           # an upload: a good picture, or plain text sent as a PNG
            data = good if k % 3 == 0 else b"plain text, not a picture"
            body = (b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\""
                    b"\r\n\r\n" + data + b"\r\n--B--\r\n")
            url, headers = f"{base}/api/predict", {"Content-Type": "multipart/form-data; boundary=B"}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        def key(k: int) -> tuple[str, int]:  # requests with the same key must agree
            return ("sample", k % 5) if k % 3 == 2 else ("upload", k % 3)
        expected: dict = {}
        for k in range(18):  # one at a time first: the answer to every distinct request
            expected.setdefault(key(k), call(k))
        assert len(expected) == 7
        with ThreadPoolExecutor(6) as ex:
            out = list(ex.map(call, range(18)))
        for k, (status, d) in enumerate(out):
            want_status, want = expected[key(k)]
            assert status == want_status
            if status != 200:
                assert status == 415 and "not an image" in d["error"]
                continue
            assert np.allclose([m["probs"] for m in d["models"]],
                               [m["probs"] for m in want["models"]], atol=1e-6)
        assert call(0)[0] == 200
    finally:
        server.stop()


def test_serve_main_binds_loopback_by_default(web_run, monkeypatch):
    """Waitress (the production server) on 127.0.0.1:8000 unless told otherwise; Flask's
    development server, threaded, only with --server flask."""
    import waitress
    from flask import Flask
    from scripts import serve
    seen = {}

    class FakeServer:
        effective_port = 8000

        def __init__(self, app, **kw):
            seen.update(kw)

        def run(self):
            pass

        def close(self):
            pass
    monkeypatch.setattr(waitress, "create_server", FakeServer)
    assert serve.main(["--run", str(web_run), "--repeats", "1"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000 and seen["threads"] > 1
    flask_seen = {}
    monkeypatch.setattr(Flask, "run", lambda self, **kw: flask_seen.update(kw))
    assert serve.main(["--run", str(web_run), "--repeats", "1", "--server", "flask"]) == 0
    assert flask_seen["host"] == "127.0.0.1" and flask_seen["port"] == 8000
    assert flask_seen["threaded"] is True


def test_serve_main_refuses_empty_or_missing_run(tmp_path):
    from scripts import serve
    with pytest.raises(SystemExit, match="train-zoo --run"):
        serve.main(["--run", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist"):
        serve.main(["--run", str(tmp_path / "nope")])


def test_serve_main_names_a_damaged_checkpoint(web_run, tmp_path):
    from scripts import serve
    run = copy_run(web_run, tmp_path / "r", ("routers",))
    (run / "zoo" / "tiny_vgg1" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="model tiny_vgg1 cannot be loaded"):
        serve.main(["--run", str(run)])


def test_the_pages_baseline_is_the_best_single_model_not_a_committee(tmp_path):
    """The page's baseline is the reference of the routers: the most accurate single model on
    val, never a committee (``oracle.policy.reference_index``), from the val table or, without
    one, from the cards."""
    from router.web.service import LoadedModel, pick_baseline
    info = DatasetInfo("t", 2, 1, 4, ["a", "b"], [0.5], [0.5])
    names = ["tiny", "big", "committee-bigx3"]
    models = [LoadedModel(n, torch.nn.Identity(), info, {"val_accuracy": acc}, 1.0)
              for n, acc in zip(names, [0.5, 0.75, 1.0])]
    run = RunDir(tmp_path)
    assert pick_baseline(run, models).name == "big"              # cards: committee skipped
    labels = np.array([0, 1, 0, 1])
    right = np.array([[1, 0, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool).T   # 2, 3, 4 of 4
    preds = np.where(right, labels[:, None], 1 - labels[:, None])
    probs = np.zeros((4, 3, 2), dtype=np.float16)
    PredictionTable(names, labels, preds, probs, np.arange(4), "val").save(run.tables)
    assert pick_baseline(run, models).name == "big"              # val table: the same
    only = [m for m in models if m.name.startswith("committee-")]
    assert pick_baseline(run, only).name == "committee-bigx3"     # nothing else to pick
