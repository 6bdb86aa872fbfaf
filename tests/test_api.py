"""The library API (router.api): the documented example runs, preprocessing matches
torchvision's transforms, images load from every source, save/load round trips, GPU paths."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.tables import PredictionTable
from router.api import FittedRouter, ImageData, Member, build_table, compare, fit_router, \
    load_images, measure_costs, routed_classifier
from router.artifact import RoutedClassifier
from router.base import RouterError
from zoo.preprocess import Preprocess, prepare
from zoo.torchvision_models import build_torchvision

ROOT = Path(__file__).resolve().parents[1]


def write_imagefolder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """val/ and test/ trees of two classes, RGB PNGs of varying height (40-46 x 48)."""
    rng = np.random.default_rng(seed)
    for split in ("val", "test"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a = rng.integers(0, 255, size=(40 + i % 7, 48, 3), dtype=np.uint8)
                if c == "dog":
                    a[..., 0] = 250
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def test_documented_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "library.md").read_text()
    code = re.search(r"## Example.*?```python\n(.*?)```", text, re.S).group(1)
    data = write_imagefolder(tmp_path / "folder")
    # the same code at test size: small images, a small crop, our temporary folder
    for old, new in [('Path("my_imagefolder")', f'Path({str(data)!r})'),
                     ("size=256", "size=40"),
                     ("Preprocess.imagenet()", "Preprocess.imagenet(resize=36, crop=32)")]:
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/library.md", "exec"), scope)
    report = scope["report"]
    assert [r["role"] for r in report.rows] == ["best-single", "cheapest-single", "router"]
    assert report.row("best-single")["speedup_vs_best"] == pytest.approx(1.0)
    assert (tmp_path / "routed-cascade.pt").exists()


def test_preprocess_equals_torchvision_transforms():
    from torchvision.transforms import v2
    x = torch.randint(0, 256, (5, 3, 41, 47), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = Preprocess(mean, std, resize=36, crop=32)(x)
    theirs = v2.Compose([v2.Resize(36, antialias=True), v2.CenterCrop(32),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])(x)
    assert ours.shape == (5, 3, 32, 32)
    torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=0)   # uint8 rounding in theirs


def test_preprocess_by_hand_and_grey_to_rgb():
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)      # (1, 1, 2, 2)
    p = Preprocess([0.5], [0.25])
    assert p(x).flatten().tolist() == pytest.approx([-2.0, 2.0, -1.2, -0.4])
    rgb = Preprocess([0.0] * 3, [1.0] * 3, channels=3)(x)
    assert rgb.shape == (1, 3, 2, 2) and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(ValueError, match="std must be > 0"):
        Preprocess([0.5], [0.0])
    with pytest.raises(ValueError, match="resize first"):
        Preprocess([0.5], [0.5], crop=3)(x)
    assert Preprocess.from_dict(Preprocess.imagenet().to_dict()) == Preprocess.imagenet()


def small_members(pre: Preprocess) -> list[Member]:
    torch.manual_seed(0)
    return [Member.torchvision("mobilenet_v3_small", 2, preprocess=pre),
            Member.torchvision("resnet18", 2, preprocess=pre)]


def test_router_answers_equal_direct_calls(tmp_path):
    data = write_imagefolder(tmp_path / "f")
    from torchvision.datasets import ImageFolder
    val = load_images(ImageFolder(data / "val"), size=40)
    test = load_images(ImageFolder(data / "test"), size=40)
    pre = Preprocess.imagenet(resize=36, crop=32)
    # two ResNet-18s (a random MobileNetV3's logits are ~1e-10: argmax would be float noise)
    torch.manual_seed(1)
    members = [Member.torchvision("resnet18", 2, name=f"resnet18-{k}", preprocess=pre)
               for k in "ab"]
    vt = build_table(members, val, "val", batch_size=8)
    costs = np.array([1.0, 2.0])                       # fixed costs: a two-stage cascade is cheap
    fitted = fit_router("cascade", vt, costs, 0.15, selection="estimate")
    clf = routed_classifier(fitted, members, data=val, batch_size=8)
    out = clf(test.images)
    with torch.inference_mode():
        direct = torch.stack([m.model(pre(test.images)).argmax(1) for m in members], 1).numpy()
    assert np.array_equal(out.preds, direct[np.arange(len(test)), out.chosen])
    # and the table says the same as direct calls
    tt = build_table(members, test, "test", batch_size=8)
    assert np.array_equal(tt.preds, direct)


def test_load_images_sources_and_errors(tmp_path):
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    d = load_images((x, y))
    assert d.classes == ["0", "1", "2"] and len(d) == 6
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.as_tensor(y)),
                                         batch_size=4)
    d2 = load_images(loader)
    assert torch.equal(d2.images, x) and np.array_equal(d2.labels, y)
    ragged = [(torch.zeros(3, 10, 12, dtype=torch.uint8), 0),
              (torch.zeros(3, 11, 12, dtype=torch.uint8), 1)]
    with pytest.raises(RouterError, match="size="):
        load_images(ragged)
    assert load_images(ragged, size=8).images.shape == (2, 3, 8, 8)
    with pytest.raises(RouterError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), np.zeros(2), ["a"])


class TwoPixel(nn.Module):
    """Class 1 when the first pixel is brighter than the second (a module of the user's own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[:, 0, 0, 0] - x[:, 0, 0, 1]
        return torch.stack([-d, d], 1)


def test_own_module_saves_and_loads_with_a_provider(tmp_path):
    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    y = (x[:, 0, 0, 0] > x[:, 0, 0, 1]).long().numpy()
    data = ImageData(x, y, ["no", "yes"])
    pre = Preprocess([0.5], [0.5])
    members = [Member("const", nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), pre),
               Member("two-pixel", TwoPixel(), pre)]
    vt = build_table(members, data, "val")
    fitted = fit_router("cascade", vt, np.array([1.0, 2.0]), 0.0)
    clf = routed_classifier(fitted, members, data=data)
    path = clf.save(tmp_path / "r.pt")
    with pytest.raises(RouterError, match="model_provider"):
        RoutedClassifier.load(path)
    mods = {m.name: m.model for m in members}
    again = RoutedClassifier.load(path, model_provider=lambda name, ckpt: (mods[name], None))
    assert isinstance(again.infos[fitted.router.stages[-1]], Preprocess)   # stored, not given
    assert np.array_equal(again(x).preds, clf(x).preds)
    assert (again(x).preds == y).mean() == 1.0                 # the cascade ends at two-pixel


class FlippedTwoPixel(TwoPixel):
    """TwoPixel's answers swapped: the same member name with another module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -super().forward(x)


def two_pixel_fit() -> tuple[torch.Tensor, np.ndarray, ImageData, list[Member], FittedRouter]:
    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    y = (x[:, 0, 0, 0] > x[:, 0, 0, 1]).long().numpy()
    data = ImageData(x, y, ["no", "yes"])
    pre = Preprocess([0.5], [0.5])
    torch.manual_seed(0)
    members = [Member("const", nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), pre),
               Member("two-pixel", TwoPixel(), pre)]
    fitted = fit_router("cascade", build_table(members, data, "val"), np.array([1.0, 2.0]), 0.0)
    return x, y, data, members, fitted


def test_fitted_router_is_not_changed_by_a_second_classifier():
    x, y, data, members, fitted = two_pixel_fit()
    stages = list(fitted.router.stages)
    first = routed_classifier(fitted, members, data=data, batch_size=7)
    assert (first(x).preds == y).all()                       # the cascade ends at two-pixel
    flipped = [members[0], Member("two-pixel", FlippedTwoPixel(), members[1].preprocess)]
    second = routed_classifier(fitted, flipped, data=data, batch_size=5)
    out2 = second(x)
    at_two = out2.chosen == 1
    assert at_two.any() and (out2.preds[at_two] != y[at_two]).all()   # its own modules
    assert (first(x).preds == y).all()                       # the first keeps its own
    assert first.router.batch_size == 7 and second.router.batch_size == 5
    assert first.router.models[1] is members[1].model
    assert second.router.models[1] is flipped[1].model
    # the fit itself holds no models: a third classifier starts from the same untouched fit
    assert fitted.router.models is None and fitted.router.stages == stages


class Untraceable(nn.Module):
    """Goes through numpy: neither scriptable nor traceable without baking in one input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[:, 0, 0, 0] - x[:, 0, 0, 1]
        return torch.from_numpy(np.stack([-d.numpy(), d.numpy()], 1))


def test_own_modules_embed_as_torchscript_and_load_without_their_class(tmp_path):
    x, y, data, members, fitted = two_pixel_fit()
    # TwoPixel scripts; a module that only traces (a Python-varargs forward) goes by trace
    class Traced(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TwoPixel()

        def forward(self, *xs):                      # varargs: torch.jit.script refuses them
            return self.inner(xs[0])

    for second in (TwoPixel(), Traced()):
        own = [members[0], Member("two-pixel", second, members[1].preprocess)]
        clf = routed_classifier(fitted, own, data=data)
        path = clf.save(tmp_path / "own.pt", embed=True)
        raw = torch.load(path, weights_only=True)            # plain tensors, nothing pickled
        assert raw["models"][1]["embedded"]["torchscript"].dtype == torch.uint8
        again = RoutedClassifier.load(path)                  # no provider, no user class
        assert isinstance(again.models[1], torch.jit.ScriptModule)
        assert np.array_equal(again(x).preds, clf(x).preds) and (again(x).preds == y).all()
        resaved = RoutedClassifier.load(again.save(tmp_path / "own2.pt", embed=True))
        assert np.array_equal(resaved(x).preds, y)
    # a TorchScript file member embeds as it is
    torch.jit.save(torch.jit.script(TwoPixel()), str(tmp_path / "tp.pt"))
    ts = [members[0], Member.torchscript(tmp_path / "tp.pt", members[1].preprocess,
                                         name="two-pixel")]
    path = routed_classifier(fitted, ts, data=data).save(tmp_path / "ts.pt", embed=True)
    assert (RoutedClassifier.load(path)(x).preds == y).all()
    # neither scriptable nor traceable: refused with the reason and the alternative
    bad = [members[0], Member("two-pixel", Untraceable(), members[1].preprocess)]
    clf = routed_classifier(fitted, bad, data=data)
    with pytest.raises(RouterError) as e:
        clf.save(tmp_path / "bad.pt", embed=True)
    assert all(w in str(e.value) for w in ("'two-pixel'", "torch.jit.script:", "torch.jit.trace:",
                                           "model_provider="))
    # a callable preprocessing cannot be stored: refused too
    fn = [members[0], Member("two-pixel", TwoPixel(), lambda u: u.float() / 255)]
    with pytest.raises(RouterError, match="callable"):
        routed_classifier(fitted, fn, data=data).save(tmp_path / "fn.pt", embed=True)


def test_torchvision_builder_refuses_weights_and_unknown_names():
    with pytest.raises(ValueError, match="never downloaded"):
        build_torchvision("resnet18", 10, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="did you mean"):
        build_torchvision("resnet19", 10)
    m = build_torchvision("resnet18", 10, in_channels=1, small_input=True)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_measure_costs_and_compare_on_cpu():
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    y = np.arange(32) % 2
    data = ImageData(x, y, ["a", "b"])
    pre = Preprocess.imagenet(resize=16, crop=16)
    members = small_members(pre)
    costs = measure_costs(members, x, batch_size=16, rounds=1, warmup=0)
    assert costs.device == "cpu" and costs.ms_per_image.shape == (2,)
    assert (costs.ms_per_image > 0).all() and costs.macs[1] > costs.macs[0] > 0
    vt = build_table(members, data, "val")
    fitted = fit_router("cascade", vt, costs, 0.0)
    rep = compare(routed_classifier(fitted, members, data=data), members, data, vt, costs, 0.0,
                  repeats=1,
                  warmup=0)
    ref = rep.row("best-single")
    assert ref["accuracy"] == pytest.approx(float(vt.accuracy()[vt.model_names.index(
        ref["method"])]))                                      # same images: the table's figure
    assert ref["gain_se"] == 0.0                               # against itself: no paired SE
    assert rep.device == "cpu" and rep.row("router")["images_per_second"] > 0
    # the certificate from val beside the test result, not a bare held flag
    router = rep.row("router")
    assert router["certified"] is True and router["certified_drop_ucb"] == 0.0  # the reference
    assert router["budget_status"] in ("held", "within test noise", "violated")
    assert router["speedup_vs_best_lo"] <= router["speedup_vs_best"] <= router["speedup_vs_best_hi"]
    assert "reference" in fitted.statement() and "x best [95% CI]" in rep.format()


def test_sacrifice_is_a_fraction_and_points_are_refused():
    vt = PredictionTable(["a", "b"], np.array([0, 1]), np.array([[0, 0], [1, 1]]),
                         np.full((2, 2, 2), 0.5), np.arange(2), "val")
    for points in (1, 5, 0.5, -0.3):
        with pytest.raises(RouterError, match="did you mean"):
            fit_router("cascade", vt, np.array([1.0, 2.0]), points)
    with pytest.raises(RouterError, match="delta"):
        fit_router("cascade", vt, np.array([1.0, 2.0]), 0.01, delta=0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_members_give_cpu_answers():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    data = ImageData(x, np.arange(64) % 2, ["a", "b"])
    pre = Preprocess.imagenet(resize=32, crop=32)
    cpu = build_table(small_members(pre), data, "val")
    gpu_members = [m.to("cuda") for m in small_members(pre)]
    gpu = build_table(gpu_members, data, "val")
    assert (cpu.preds == gpu.preds).mean() > 0.95              # float differences only
    costs = measure_costs(gpu_members, x, rounds=1, warmup=1)
    assert costs.device.startswith("cuda")
    assert prepare(x[:2].cuda(), pre).device.type == "cuda"


def test_place_keeps_int8_models_on_the_cpu():
    from zoo.device import is_quantized, place
    float_model = nn.Sequential(nn.Linear(4, 4))
    int8 = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 4)), {nn.Linear},
                                                  dtype=torch.qint8)
    assert is_quantized(int8) and not is_quantized(float_model)
    meta = torch.device("meta")            # any non-CPU device: no GPU needed
    assert place(int8, meta).type == "cpu"
    assert place(float_model, meta) == meta and next(float_model.parameters()).is_meta
