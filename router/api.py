"""Route between your own classifiers: the library API, no run directory needed.

The flow, each step one function (``docs/library.md`` has a runnable example)::

    members = [Member.torchvision("mobilenet_v3_small", 10, weights="mnv3.pt"),
               Member.torchvision("resnet18", 10, weights="r18.pt")]   # each with its preprocessing
    val, test = load_images(val_source, size=256), load_images(test_source, size=256)
    costs = measure_costs(members, val.images[:512])                   # ms/image, on their device
    val_table = build_table(members, val, "val")
    fitted = fit_router("cascade", val_table, costs, sacrifice=0.01)   # sees val only
    clf = routed_classifier(fitted, members, data=val)                 # callable on uint8 images
    report = compare(clf, members, test, val_table, costs, 0.01)       # vs best and cheapest single
    clf.save("routed.pt", embed=True); RoutedClassifier.load("routed.pt")

The CLI stages use the same pieces: ``fit_router`` calls the functions ``evaluate-routers``
fits with (``router.fitting``), so the same tables and costs give the same settings.
Everything that needs the true label stays on validation: ``fit_router`` receives the val
table (and val images for a dispatcher); test enters only ``compare``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from common.tables import PredictionTable
from oracle.policy import LABEL_KINDS, Policy, fit_policy, reference_index
from router.api_inputs import CHANNELS, channels_first, fitted_class_count, fitted_input_shape, \
    member_outputs, to_uint8
from router.artifact import RoutedClassifier
from router.base import ConstantRouter, Router, RouterError, budget_margin_se, gain_se
from router.certified import certify_context, certify_level, certify_singles, \
    reference_certificate
from router.certify import DEFAULT_DELTA, Certificate, certificate, check_delta, drop_ucb, \
    split_calibration
from router.dispatcher import DispatcherConfig
from router.execute import ExecResult, benchmark_interleaved, execute_routed, \
    model_ms_per_image, run_model
from router.kind import KindContext, KindSettings
from router.kinds import kind_named
from router.scoring import budget_status
from router.timing import paired_speedup
from router.selection import cheapest_single
from zoo.costs import count_macs
from zoo.profile import table_columns
from zoo.data import DatasetInfo
from zoo.device import describe_device, device_of, resolve_device
from zoo.preprocess import Preprocess, PreprocessLike, prepare



# ---- members -----------------------------------------------------------------------------

@dataclass
class Member:
    """One classifier of the zoo: a module, how its inputs are prepared, and how to rebuild it.

    ``preprocess``: a ``zoo.preprocess.Preprocess`` (resize, crop, mean, std; stored in
    artifacts), a ``DatasetInfo`` (this project's normalisation) or any callable on a uint8
    batch. ``spec``: how to rebuild the module without this object (``{"torchvision": arch,
    "num_classes": C}``), or None (then ``save(..., embed=True)`` embeds a TorchScript copy,
    scripted or else traced, and refuses a module that is neither; saved without ``embed`` it
    needs a ``model_provider`` to load).
    """

    name: str
    model: nn.Module
    preprocess: PreprocessLike
    spec: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise RouterError(f"a member needs a name without '/', got {self.name!r}")
        self.model.eval()

    @classmethod
    def torchvision(cls, arch: str, num_classes: int, *, name: str | None = None,
                    weights: str | Path | None = None,
                    preprocess: PreprocessLike | None = None, **kwargs: Any) -> "Member":
        """A torchvision classifier by architecture name (``resnet18``, ``mobilenet_v3_small``,
        ...) with ``num_classes`` outputs, random weights or a state dict file (``weights``,
        read with ``weights_only=True``); ImageNet preprocessing unless given."""
        from zoo.torchvision_models import build_torchvision
        model = build_torchvision(arch, num_classes, **kwargs)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            model.load_state_dict(state)
        return cls(name or arch, model, preprocess or Preprocess.imagenet(),
                   {"torchvision": arch, "num_classes": int(num_classes), "kwargs": kwargs})

    @classmethod
    def torchscript(cls, path: str | Path, preprocess: PreprocessLike, *,
                    name: str | None = None) -> "Member":
        """A TorchScript file (``torch.jit.save``) as a member."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"TorchScript file {path} does not exist")
        return cls(name or path.stem, torch.jit.load(str(path), map_location="cpu"), preprocess)

    def to(self, device: str | torch.device) -> "Member":
        """Move the module to ``device`` (``"auto"``: CUDA where there is one); returns self."""
        self.model.to(resolve_device(device))
        return self

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    @torch.inference_mode()
    def macs_per_image(self, sample: torch.Tensor) -> int:
        """MACs of one forward pass on one preprocessed image like ``sample[:1]`` (counted,
        float modules only; quantized ops are not counted by torch)."""
        x = prepare(sample[:1].to(self.device), self.preprocess)
        return count_macs(self.model, tuple(x.shape))


# ---- images ------------------------------------------------------------------------------

@dataclass
class ImageData:
    """uint8 images ``(N, C, H, W)`` in memory with int64 labels ``(N,)`` and class names."""

    images: torch.Tensor
    labels: np.ndarray
    classes: list[str]
    name: str = "data"

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise RouterError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                              f"{tuple(self.images.shape)}; see load_images")
        c, last = int(self.images.shape[1]), int(self.images.shape[-1])
        if c not in CHANNELS:
            raise RouterError(f"images must be (N, C, H, W) with C = 1 (grey) or 3 (RGB), got "
                              f"{tuple(self.images.shape)}"
                              + ("; they look channel-last (N, H, W, C): load_images converts "
                                 "them" if last in CHANNELS else ""))
        if len(self.images) != len(self.labels):
            raise RouterError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape ``(C, H, W)``: what ``routed_classifier(..., data=)`` records."""
        return tuple(int(v) for v in self.images.shape[1:])  # type: ignore[return-value]

    def info(self) -> DatasetInfo:
        """The data's own description (channels, size, classes, per-channel mean and std): what
        a dispatcher network, trained from scratch on these images, normalises with."""
        x = self.images.float().div_(255.0)
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        return DatasetInfo(self.name, len(self.classes), int(self.images.shape[1]),
                           int(self.images.shape[-1]), list(self.classes), mean, std, "library")


def _to_uint8(img: Any) -> torch.Tensor:
    """One image (PIL, numpy array or tensor; ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)``) ->
    CHW uint8 tensor by ``router.api_inputs``' rules, the same for numpy and torch: floats in
    [0, 1] are scaled by 255 and rounded, integers in 0..255 cast, anything else refused;
    channel-last images permuted."""
    if not isinstance(img, (torch.Tensor, np.ndarray)):
        from torchvision.transforms.v2.functional import pil_to_tensor
        img = pil_to_tensor(img)
    return channels_first(to_uint8(img, "an image"), batched=False, what="an image")


def _fit_square(t: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop a ``size`` square (uint8 kept)."""
    from torchvision.transforms.v2.functional import center_crop, resize
    return center_crop(resize(t, size, antialias=True), [size, size])


def load_images(source: Any, *, size: int | None = None, classes: Sequence[str] | None = None,
                limit: int | None = None, name: str = "data",
                progress: bool = False) -> ImageData:
    """All images of ``source`` in memory as uint8, with labels.

    ``source``: a pair ``(images, labels)`` (a tensor or an array), a dataset yielding
    ``(image, label)`` (e.g. torchvision's ``ImageFolder``; PIL, arrays or tensors), or a
    ``DataLoader`` yielding batches. ``size``: resize every image's shorter side to ``size`` and
    centre-crop a square, so images of different sizes batch together (each member then applies
    its own preprocessing); required when sizes differ. ``classes`` default to the dataset's
    ``classes`` attribute or ``0..C-1``.

    Numpy arrays and tensors follow the same rules (``router.api_inputs``): uint8 is kept,
    floats in [0, 1] become ``round(255 x)``, integers in 0..255 are cast, anything else (floats
    in 0-255, normalised values, NaN) is refused. Images are channel-first with 1 (grey) or 3
    (RGB) channels; a batch whose second axis is not 1 or 3 but whose last is (``(N, H, W, C)``,
    e.g. ``(N, 32, 32, 3)``) is channel-last and is permuted to ``(N, C, H, W)``; ``(N, H, W)``
    is grey. Other shapes are refused.
    """
    if isinstance(source, tuple) and len(source) == 2:
        x, y = source
        x = channels_first(to_uint8(x), batched=True)
        if size is not None:
            x = _fit_square(x, size)
        x, y = x[:limit], np.asarray(y)[:limit]
        n_cls = len(classes) if classes else int(np.max(y)) + 1
        return ImageData(x.contiguous(), y, list(classes or map(str, range(n_cls))), name)
    items: list[torch.Tensor] = []
    labels: list[int] = []
    loader = isinstance(source, torch.utils.data.DataLoader)
    it: Iterable = source
    for entry in tqdm(it, desc="load images", disable=not progress, leave=False):
        xs, ys = entry
        if loader:
            xs = [_to_uint8(t) for t in xs]
            ys = [int(v) for v in torch.as_tensor(ys).reshape(-1)]
        else:
            xs, ys = [_to_uint8(xs)], [int(ys)]
        for t, lab in zip(xs, ys):
            items.append(_fit_square(t, size) if size is not None else t)
            labels.append(lab)
        if limit is not None and len(items) >= limit:
            items, labels = items[:limit], labels[:limit]
            break
    if not items:
        raise RouterError("the image source yielded no images")
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        raise RouterError(f"images have {len(shapes)} different shapes (e.g. "
                          f"{sorted(shapes)[:2]}); pass size= to bring them to one square size")
    if classes is None:
        ds = getattr(source, "dataset", source)
        classes = getattr(ds, "classes", None) or [str(c) for c in range(max(labels) + 1)]
    return ImageData(torch.stack(items).contiguous(), np.asarray(labels), list(classes), name)


# ---- tables and costs --------------------------------------------------------------------

def build_table(members: Sequence[Member], data: ImageData, split: str = "val", *,
                batch_size: int = 256, progress: bool = False) -> PredictionTable:
    """Every member's predictions and probabilities on ``data`` (members in the given order)."""
    _check_members(members)
    preds, probs = [], []
    for m in tqdm(members, desc=f"table {split}", disable=not progress, leave=False):
        logits = run_model(m.model, data.images, m.preprocess, batch_size)
        if logits.shape[1] != len(data.classes):
            raise RouterError(f"member {m.name!r} has {logits.shape[1]} outputs but the data has "
                              f"{len(data.classes)} classes")
        member_preds, member_probs = table_columns(logits)
        preds.append(member_preds)
        probs.append(member_probs)
    return PredictionTable([m.name for m in members], data.labels, np.stack(preds, 1),
                           np.stack(probs, 1), np.arange(len(data), dtype=np.int64), split,
                           {"source": "router.api.build_table", "data": data.name,
                            "classes": list(data.classes)})


@dataclass
class Costs:
    """Measured milliseconds per image of each member (table order), and where."""

    names: list[str]
    ms_per_image: np.ndarray
    device: str
    batch_size: int
    threads: int
    n_images: int
    macs: list[int] = field(default_factory=list)

    def vector(self, names: Sequence[str]) -> np.ndarray:
        """(M,) ms per image in the order of ``names`` (a table's model order)."""
        pos = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in pos]
        if missing:
            raise RouterError(f"no cost measured for {missing}; measure_costs over every member")
        return self.ms_per_image[[pos[n] for n in names]]

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "ms_per_image": self.ms_per_image.tolist(),
                "device": self.device, "batch_size": self.batch_size, "threads": self.threads,
                "n_images": self.n_images, "macs": self.macs}


def measure_costs(members: Sequence[Member], images: torch.Tensor, *, batch_size: int = 256,
                  rounds: int = 3, warmup: int = 1) -> Costs:
    """Milliseconds per image of each member on ``images`` (uint8), each on its own device
    with its own preprocessing, timed round-robin by the executor's loop (median of rounds).
    On a GPU the clock is read after synchronising. MACs are counted beside, never instead."""
    _check_members(members)
    ms = model_ms_per_image([m.model for m in members], [m.preprocess for m in members], images,
                            batch_size, warmup=warmup, rounds=rounds)
    devices = sorted({describe_device(m.device) for m in members})
    macs = []
    for m in members:
        try:
            macs.append(m.macs_per_image(images))
        except Exception:                       # scripted or quantized: not countable
            macs.append(0)
    return Costs([m.name for m in members], ms, ", ".join(devices), batch_size,
                 torch.get_num_threads(), len(images), macs)


# ---- fitting (validation only) -----------------------------------------------------------

@dataclass
class FittedRouter:
    """A router fitted at one sacrifice level, with what validation said about it."""

    kind: str
    sacrifice: float
    router: Router
    model_names: list[str]
    target: float                 # the val accuracy it had to meet
    val_accuracy: float           # on the part of val its settings were chosen on
    expected_ms_per_image: float  # what the fit expects it to cost (costs' units)
    meets_target: bool
    details: dict[str, Any] = field(default_factory=dict)
    certificate: Certificate | None = None   # certified selection: what the certify part says

    def statement(self) -> str:
        """The promise in plain words (or that the estimate rule makes none)."""
        if self.certificate is None:
            return ("selected by the estimate rule (val accuracy minus a margin): no stated "
                    "risk; fit with selection='certified' for a guarantee")
        return self.certificate.statement()


def _check_sacrifice(sacrifice: float) -> float:
    """``sacrifice`` as a fraction of accuracy, refusing values whose size looks like points."""
    s = float(sacrifice)
    if abs(s) >= 0.2:
        raise RouterError(f"sacrifice is a fraction of accuracy (0.01 = one point), got {s:g}: "
                          f"did you mean {s / 100:g} for {s:g} points?")
    if s < 0:
        raise RouterError(f"sacrifice must be >= 0 (0.01 = one point), got {s:g}")
    return s


def fit_router(kind: str, val: PredictionTable, costs: Costs | np.ndarray, sacrifice: float, *,
               delta: float = DEFAULT_DELTA, selection: str = "certified",
               select_share: float = 0.3, margin_z: float = 1.0,
               val_data: ImageData | None = None, max_stages: int = 3,
               grid: int = 24, learned_folds: int = 5, seed: int = 0,
               dispatcher: DispatcherConfig | None = None, dispatcher_time_share: float = 0.25,
               label_policy: str = "budget", macs: Sequence[int] | None = None,
               overhead: dict[str, float] | None = None) -> FittedRouter:
    """Fit a ``kind`` router (a name of ``router.kinds.ROUTER_KINDS``) on the val table at
    ``sacrifice`` (a fraction: 0.01 = one point below the most accurate member on val).

    ``selection="certified"`` (default): settings are chosen on a ``select_share`` part of val
    and the budget is certified on the rest at risk ``delta``: with probability >= 1 - delta
    over the draw of the val images, the router's expected accuracy drop against the most
    accurate member is at most ``sacrifice`` (``FittedRouter.certificate``; where nothing
    cheaper can be certified the router answers with that member alone, and the certificate
    says so). ``selection="estimate"``: the older rule, val accuracy minus ``margin_z`` paired
    standard errors, no stated risk. Kinds that look at the images (the dispatchers) also need
    ``val_data`` (the val images, in table order) and are trained here; ``macs`` (or
    ``costs.macs``) sets their MAC cap at 1/4 of the cheapest member's. ``overhead``
    (``stage_ms``, ``head_ms``, as ``evaluate-routers`` records in ``fits.json:
    router_overhead_ms``) adds each stage's own routing time to the costs the same way. The
    same kinds and functions as ``evaluate-routers``.
    """
    kcls = kind_named(kind)
    sacrifice = _check_sacrifice(sacrifice)
    if selection not in ("certified", "estimate"):
        raise RouterError(f"selection must be 'certified' or 'estimate', got {selection!r}")
    check_delta(delta)
    names = list(val.model_names)
    cvec = costs.vector(names) if isinstance(costs, Costs) else np.asarray(costs, np.float64)
    if cvec.shape != (len(names),):
        raise RouterError(f"costs must give one ms/image per model of the table ({len(names)}), "
                          f"got shape {cvec.shape}")
    ref = reference_index(val, cvec)
    target = float(val.correct[:, ref].mean()) - sacrifice
    if kcls.needs_images and (val_data is None or len(val_data) != val.n_samples):
        raise RouterError(f"a {kind} trains on the val images: pass val_data= with the "
                          f"{val.n_samples} images of the val table, in its order")
    stage_ms = float((overhead or {}).get("stage_ms", 0.0))
    cvec = cvec + stage_ms
    macs = list(macs) if macs is not None else (costs.macs if isinstance(costs, Costs) else [])
    settings = KindSettings(
        margin_z=margin_z, max_stages=max_stages, grid=grid, learned_folds=learned_folds,
        seed=seed, label_policy=label_policy, dispatcher=dispatcher or DispatcherConfig(seed=seed),
        dispatcher_max_macs=(float(min(m for m in macs if m > 0)) / 4.0
                             if any(m > 0 for m in macs) else float("inf")),
        dispatcher_max_ms=(dispatcher_time_share * float(cvec.min() - stage_ms)
                           if dispatcher_time_share else None), delta=delta)
    images = val_data.images if val_data is not None else None
    common = dict(images=images, info=val_data.info() if val_data is not None else None,
                  head_ms=float((overhead or {}).get("head_ms", 0.0)), stage_ms=stage_ms,
                  log=lambda _: None)
    if selection == "certified":
        ctx = certify_context("library", val, cvec, ref, settings, select_share=select_share,
                              **common)
        lv = certify_level(ctx, sacrifice, delta, [kcls])
        fitted, cert = lv.kinds[kind], lv.certificates[kind]
        details = fitted.library_details()
        details.update(selection="certified", delta=delta, certificate=cert.to_dict(),
                       statement=cert.statement(), path=lv.record["path"],
                       select_samples=lv.record["select_samples"],
                       certify_samples=lv.record["certify_samples"],
                       smallest_certifiable=lv.record["smallest_certifiable"])
    else:
        fitted = kcls(KindContext("library", val, cvec, ref, settings, **common)).fit(sacrifice,
                                                                                    target)
        cert, details = None, fitted.library_details()
    details["num_classes"] = val.n_classes
    cand = fitted.candidate_
    return FittedRouter(kind, sacrifice, fitted.router_, names, target, cand.val_accuracy,
                        cand.fit_ms_per_image, cand.meets_target, details, certificate=cert)


def fit_oracle_policy(kind: str, val: PredictionTable, costs: Costs | np.ndarray,
                      sacrifice: float) -> Policy:
    """An oracle policy (label -> model, ``LABEL_KINDS``) fitted on val: a bound that routes by
    the true label, never a deployable router."""
    cvec = costs.vector(val.model_names) if isinstance(costs, Costs) else np.asarray(costs)
    if kind not in LABEL_KINDS:
        raise RouterError(f"unknown oracle policy {kind!r}; use one of {LABEL_KINDS}")
    return fit_policy(kind, val, cvec, sacrifice)


def routed_classifier(fitted: FittedRouter, members: Sequence[Member], *,
                      data: ImageData | None = None,
                      input_shape: Sequence[int] | None = None, name: str | None = None,
                      batch_size: int = 256) -> RoutedClassifier:
    """The fitted router and its members as one callable classifier (uint8 images in).

    ``data``: the val images the router was fitted on (``ImageData``), or ``input_shape``:
    their ``(C, H, W)``; a dispatcher knows both already. The classifier records that shape
    (``meta["input_shape"]``, saved with it) and refuses every batch of another shape or
    layout; each member is run once on one image of that shape and must give one output per
    class (``len(data.classes)``, the dispatcher's classes, and the other members' count).
    The fitted router is never changed: each classifier binds its members to its own copy.
    """
    _check_members(members)
    names = [m.name for m in members]
    if names != fitted.model_names:
        raise RouterError(f"members {names} are not the models the router was fitted over "
                          f"{fitted.model_names} (same names, same order)")
    rinfo = getattr(fitted.router, "info", None)
    details = fitted.details or {}
    shape = fitted_input_shape([
        ("input_shape=", input_shape), ("data=", None if data is None else data.shape),
        ("the dispatcher", None if rinfo is None else
         (rinfo.in_channels, rinfo.input_size, rinfo.input_size)),
        ("the fit (details['input_shape'])", details.get("input_shape"))])
    n_cls = fitted_class_count([
        (f"data= ({data.name!r})" if data is not None else "data=",
         None if data is None else len(data.classes)),
        ("the dispatcher", None if rinfo is None else rinfo.num_classes),
        ("the fit (details['num_classes'])", details.get("num_classes"))])
    outputs = {m.name: member_outputs(m.name, m.model, m.preprocess, shape) for m in members}
    for m in members:
        want = n_cls if n_cls is not None else outputs[members[0].name]
        if outputs[m.name] != want:
            against = (f"the router was fitted on {n_cls} classes" if n_cls is not None else
                       f"member {members[0].name!r} gives {want}")
            raise RouterError(f"member {m.name!r} gives {outputs[m.name]} outputs but {against}: "
                              f"give members built for the fitted classes (e.g. "
                              f"Member.torchvision(arch, {want}, ...))")
    n_cls = outputs[members[0].name]
    return RoutedClassifier(name or f"{fitted.kind}@{fitted.sacrifice:g}", fitted.router,
                            [m.model for m in members], [m.preprocess for m in members],
                            [None] * len(members), batch_size,
                            meta={"sacrifice": fitted.sacrifice, "method": fitted.kind,
                                  "settings": fitted.router.describe(),
                                  "specs": [m.spec for m in members],
                                  "certificate": (None if fitted.certificate is None
                                                  else fitted.certificate.to_dict()),
                                  "statement": fitted.statement(),
                                  "input_shape": list(shape), "num_classes": n_cls},
                            info=getattr(fitted.router, "info", None))


# ---- measuring against the single models -------------------------------------------------

@dataclass
class Comparison:
    """Test accuracy and measured throughput of a routed classifier against the best single
    member (most accurate on val) and the cheapest member whose val accuracy meets the same
    target (same margin rule). ``rows``: one dict per method."""

    sacrifice: float
    rows: list[dict[str, Any]]
    device: str
    threads: int
    timing_samples: int
    statement: str = ""              # the router's promise in words (its certificate)

    def row(self, role: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["role"] == role)

    def format(self) -> str:
        out = [f"s={self.sacrifice:g} on {self.device}, {self.threads} threads, timed on "
               f"{self.timing_samples} test images",
               f"{'role':<16} {'method':<28} {'acc':>7} {'val bound':>10} {'on test':>18} "
               f"{'img/s':>9} {'x best [95% CI]':>20} {'x cheap [95% CI]':>20}"]
        for r in self.rows:
            ucb = r.get("certified_drop_ucb")
            out.append(f"{r['role']:<16} {r['method']:<28} {r['accuracy']:>7.4f} "
                       f"{'' if ucb is None else f'{100 * ucb:.2f}p':>10} "
                       f"{r['budget_status']:>18} {r['images_per_second']:>9.0f} "
                       f"{_ci(r, 'speedup_vs_best'):>20} {_ci(r, 'speedup_vs_cheapest'):>20}")
        if self.statement:
            out.append(f"router: {self.statement}")
        return "\n".join(out)


def run_classifier(clf: RoutedClassifier, images: torch.Tensor) -> ExecResult:
    """Execute a routed classifier and return the executor's result (answers and timing parts):
    a cascade runs its stages, any other router routes and runs the chosen groups."""
    router = clf.router
    if router.runs_models:                # the classifier's own copy, bound to its members
        return router.run(images)
    return execute_routed(router, images, clf.models, clf.infos, clf.batch_size)


def _ci(row: dict[str, Any], col: str) -> str:
    med = row[col if col == "speedup_vs_best" else "speedup_vs_cheapest_single"]
    return f"{med:.2f}x [{row[col + '_lo']:.2f}-{row[col + '_hi']:.2f}]"


def compare(clf: RoutedClassifier, members: Sequence[Member], test: ImageData,
            val: PredictionTable, costs: Costs | np.ndarray, sacrifice: float, *,
            delta: float = DEFAULT_DELTA, selection: str = "certified",
            select_share: float = 0.3, seed: int = 0, margin_z: float = 1.0,
            timing_samples: int | None = 2000, repeats: int = 11,
            warmup: int = 1, batch_size: int = 256) -> Comparison:
    """Score on ``test`` and time (``repeats`` interleaved rounds in a shuffled order after a
    warm-up; router inside the clock) the routed classifier, the best single member and the
    cheapest adequate single member, chosen on ``val`` (never on test) by the same rule as the
    router (``selection``; certified: the same select/certify split as ``fit_router`` with the
    same ``select_share`` and ``seed``). Each row reports the certificate from val beside the
    test result: "held", "within test noise" (missed by less than 1.96 paired test SEs) or
    "violated"; speedups are per-round ratios with a 95 % interval."""
    names = [m.name for m in members]
    if names != list(val.model_names):
        raise RouterError(f"members {names} must be the val table's models {val.model_names}")
    sacrifice = _check_sacrifice(sacrifice)
    cvec = costs.vector(names) if isinstance(costs, Costs) else np.asarray(costs, np.float64)
    ref = reference_index(val, cvec)
    ref_val = float(val.correct[:, ref].mean())
    cs_cert: Certificate | None = None
    if selection == "certified":
        sel, cer = split_calibration(val.n_samples, select_share, seed)
        cs, k = certify_singles(val.correct[sel], val.correct[cer], ref, cvec, sacrifice, delta)
        cs_cert = (certificate(val.correct[cer, cs], val.correct[cer, ref], sacrifice, delta,
                               True, "certified on the single-model path") if k
                   else reference_certificate(sacrifice, delta, len(cer)))
    else:
        cs, _ = cheapest_single(val.correct, cvec, ref, ref_val - sacrifice, margin_z)
    k = len(test) if timing_samples is None else min(len(test), int(timing_samples))
    x = test.images[:k]
    models, preps = [m.model for m in members], [m.preprocess for m in members]

    def single(i: int):
        return lambda xx: execute_routed(ConstantRouter([names[i]], 0), xx, [models[i]],
                                         [preps[i]], batch_size)
    runs = {"best-single": single(ref), "cheapest-single": single(cs),
            "router": lambda xx: run_classifier(clf, xx)}
    answers = {key: run(test.images) for key, run in runs.items()}      # also warms up
    timings = benchmark_interleaved({key: (lambda r=run: r(x)) for key, run in runs.items()},
                                    k, warmup=max(0, warmup - 1), repeats=repeats,
                                    shuffle_seed=seed)
    ref_right = answers["best-single"].preds == test.labels
    ref_test = float(ref_right.mean())
    rows = []
    for role, method in (("best-single", names[ref]), ("cheapest-single", names[cs]),
                         ("router", clf.name)):
        res, tm = answers[role], timings[role]
        right = res.preds == test.labels
        acc = float(right.mean())
        held = bool(acc >= ref_test - sacrifice - 1e-9)
        margin = budget_margin_se(right, ref_right, sacrifice)
        cert = {"best-single": None, "cheapest-single": cs_cert and cs_cert.to_dict(),
                "router": clf.meta.get("certificate")}[role]
        rows.append({"role": role, "method": method, "accuracy": acc,
                     "budget_held": held, "budget_margin_se": margin,
                     "gain_se": gain_se(right, ref_right),
                     "budget_status": budget_status(held, margin, sacrifice,
                                                    None if cert is None else cert["certified"]),
                     "certified": None if cert is None else cert["certified"],
                     "certified_drop_ucb": None if cert is None else (
                         cert.get("drop_ucb") if cert.get("drop_ucb") is not None
                         else drop_ucb(cert["n_loss"], cert["n_gain"], cert["n"],
                                       cert["delta"])),
                     "target_accuracy": ref_test - sacrifice, "seconds": tm.seconds,
                     "images_per_second": tm.images_per_second,
                     "router_seconds": tm.router_seconds, "wasted_seconds": tm.wasted_seconds,
                     "overhead_share": tm.overhead_share,
                     "shares": {n: float(np.mean(res.chosen == i)) for i, n in enumerate(names)}
                     if role == "router" else {method: 1.0}})
    for r, role in zip(rows, ("best-single", "cheapest-single", "router")):
        for base, col in (("best-single", "speedup_vs_best"),
                          ("cheapest-single", "speedup_vs_cheapest")):
            med, lo, hi = paired_speedup(timings[base].all_seconds, timings[role].all_seconds)
            r["speedup_vs_best" if base == "best-single" else "speedup_vs_cheapest_single"] = med
            r[f"{col}_lo"], r[f"{col}_hi"] = lo, hi
    devices = sorted({describe_device(device_of(m)) for m in models})
    return Comparison(sacrifice, rows, ", ".join(devices), torch.get_num_threads(), k,
                      clf.meta.get("statement", ""))


def _check_members(members: Sequence[Member]) -> None:
    if not members:
        raise RouterError("give at least one member")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise RouterError(f"member names must be unique, got {names}")
