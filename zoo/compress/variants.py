"""Variant names -> recipes that turn a trained float VGG into a compressed model.

Names: ``struct-<l1|l2>-<pct>[-<deep|all|i.j.k>]``, ``unstruct-<pct>``, ``int8-dynamic``,
``int8-static``, ``qat8``, ``qat4``, ``prune+int8`` and ``res-<side>``; ``struct`` and
``unstruct`` alone take ``--ratio/--norm/--layers``. ``make_variant`` returns the model, the
arch to save (``kind`` + ``float_arch``) and the state to save.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import quant
from zoo.compressed_archs import make_arch
from zoo.resolution import ResizedVGG, resized_arch
from zoo.compress.structured import NORMS, fold_batchnorm, prune_filters
from zoo.compress.unstructured import gradual_prune, sparsity_report
from zoo.data import DatasetInfo, ImageSet, normalize
from zoo.vgg import VGG

FIXED = ("int8-dynamic", "int8-static", "qat8", "qat4", "prune+int8")
EXAMPLES = "struct-l1-30, struct-l2-10-deep, unstruct-30, int8-dynamic, int8-static, qat8, " \
           "qat4, prune+int8, res-20"


@dataclass
class VariantSpec:
    """One parsed variant name."""

    name: str
    method: str                  # struct | unstruct | int8-dynamic | int8-static | qat8 | qat4
    #                              | prune+int8 | res
    ratio: float = 0.3
    norm: str = "l1"
    layers: str = "deep"
    side: int | None = None

    @property
    def prune_key(self) -> tuple[float, str, str]:
        return (self.ratio, self.norm, self.layers)


def parse_variant(name: str, ratio: float | None = None, norm: str | None = None,
                  layers: str | None = None) -> VariantSpec:
    """Parse a variant name; ``ratio/norm/layers`` fill the bare ``struct``/``unstruct`` forms
    and set the pruning of ``prune+int8``."""
    r = 0.3 if ratio is None else float(ratio)
    nm = norm or "l1"
    ly = layers or "deep"
    if nm not in NORMS:
        raise ValueError(f"--norm {nm!r}: use one of {NORMS}")
    if not 0 <= r < 1:
        raise ValueError(f"--ratio {r}: use a fraction in [0, 1), e.g. 0.3")
    pct = lambda v: int(round(100 * v))  # noqa: E731
    if name == "struct":
        return VariantSpec(f"struct-{nm}-{pct(r)}-{ly.replace(',', '.')}", "struct", r, nm, ly)
    if name == "unstruct":
        return VariantSpec(f"unstruct-{pct(r)}", "unstruct", r)
    if name in FIXED:
        return VariantSpec(name, name, r, nm, ly)
    m = re.fullmatch(r"struct-(l1|l2)-(\d{1,2})(?:-(deep|all|[\d.]+))?", name)
    if m:
        return VariantSpec(name, "struct", int(m.group(2)) / 100, m.group(1), m.group(3) or "deep")
    m = re.fullmatch(r"unstruct-(\d{1,2})", name)
    if m:
        return VariantSpec(name, "unstruct", int(m.group(1)) / 100)
    m = re.fullmatch(r"res-(\d+)", name)
    if m:
        return VariantSpec(name, "res", side=int(m.group(1)))
    raise ValueError(f"unknown variant {name!r}; examples: {EXAMPLES}; or 'struct'/'unstruct' "
                     "with --ratio/--norm/--layers")


@dataclass
class CompressContext:
    """What the recipes need: data (None in cost-only mode) and fine-tuning settings."""

    info: DatasetInfo | None = None
    train: ImageSet | None = None
    val: ImageSet | None = None
    finetune_epochs: int = 1
    lr: float = 1e-4
    qat_lr: float = 5e-5
    qat_epochs: int | None = None  # QAT epochs; None: finetune_epochs
    batch_size: int = 128
    calib_images: int = 256
    unstruct_steps: int = 3
    seed: int = 0
    device: str = "cpu"
    amp: str = "off"               # float fine-tunes only; QAT always trains in float32
    max_batches_per_epoch: int | None = None
    progress: bool = True
    cost_only_input: tuple[int, ...] | None = None  # (C, H, W) of random inputs without data
    cache: dict[Any, nn.Module] = field(default_factory=dict)
    # Where each fine-tune saves its state after every epoch (one file per fine-tune), so a
    # build cut short resumes at its last finished epoch; None: no state files
    work_dir: Path | None = None

    @property
    def has_data(self) -> bool:
        return self.train is not None and self.info is not None and len(self.train) > 0


@dataclass
class Variant:
    """A built variant: model in eval mode, the arch and state to save, what was done."""

    spec: VariantSpec
    model: nn.Module
    arch: dict[str, Any]
    state_dict: dict[str, Any]
    train_config: dict[str, Any]
    extra: dict[str, Any]
    seconds: float


def _train_config(ctx: CompressContext, lr: float, epochs: int, max_batches: int | None,
                  amp: str = "off"):
    from zoo.train import TrainConfig
    return TrainConfig(epochs=epochs, batch_size=ctx.batch_size, optimizer="adam", lr=lr,
                       weight_decay=0.0, schedule="cosine", seed=ctx.seed, device=ctx.device,
                       max_batches_per_epoch=max_batches, amp=amp)


def _finetune(model: nn.Module, ctx: CompressContext, lr: float, desc: str,
              epochs: int | None = None, max_batches: int | None = None,
              amp: str | None = None) -> dict[str, Any]:
    """Fine-tune with ``zoo.train.fit`` (Adam, cosine LR); returns the config used.

    With ``ctx.work_dir`` the state goes to ``work_dir/<desc>.pt`` after every epoch and a
    fine-tune cut short resumes there (same seeds per epoch, so it ends where an unbroken one
    would).

    ``amp`` defaults to the context's (``"off"`` for quantization-aware training).
    """
    epochs = ctx.finetune_epochs if epochs is None else epochs
    if not ctx.has_data or epochs < 1:
        return {}
    from zoo.train import fit
    cfg = _train_config(ctx, lr, epochs, max_batches or ctx.max_batches_per_epoch,
                        ctx.amp if amp is None else amp)
    state = (ctx.work_dir / (re.sub(r"[^A-Za-z0-9.+-]+", "_", desc) + ".pt")
             if ctx.work_dir is not None else None)
    fit(model, ctx.train, ctx.val if ctx.val is not None and len(ctx.val) else ctx.train,
        ctx.info, cfg, progress=ctx.progress, desc=desc, state_path=state)
    model.to("cpu").eval()
    return cfg.to_dict()


def calibration_batches(ctx: CompressContext, batch: int = 64) -> list[torch.Tensor]:
    """A few hundred normalised TRAIN images (a fixed random subset), or random inputs."""
    if ctx.has_data:
        g = torch.Generator().manual_seed(ctx.seed)
        idx = torch.randperm(len(ctx.train), generator=g)[:ctx.calib_images]
        x = normalize(ctx.train.images[idx], ctx.info)
    else:
        if ctx.cost_only_input is None:
            raise ValueError("no data and no input shape for calibration")
        g = torch.Generator().manual_seed(ctx.seed)
        x = torch.randn(min(ctx.calib_images, 16), *ctx.cost_only_input, generator=g)
    return [x[s:s + batch] for s in range(0, len(x), batch)]


def _static_int8(float_model: VGG, ctx: CompressContext) -> tuple[nn.Module, int]:
    """Post-training static int8 calibrated on ``calibration_batches``: (model, images used)."""
    batches = calibration_batches(ctx)
    prepared = quant.prepare(copy.deepcopy(float_model).cpu().eval(), batches[0][:1], "int8")
    quant.calibrate(prepared, batches)
    return quant.convert(prepared, "int8"), sum(len(b) for b in batches)


def _pruned(base: VGG, spec: VariantSpec, ctx: CompressContext) -> tuple[VGG, dict, dict]:
    """Structured pruning + fine-tune, cached per (ratio, norm, layers) within one run."""
    key = ("struct",) + spec.prune_key
    if key in ctx.cache:
        cached = ctx.cache[key]
        return copy.deepcopy(cached["model"]), dict(cached["train_config"]), dict(cached["extra"])
    model, plan = prune_filters(base, spec.ratio, spec.norm, spec.layers)
    tc = _finetune(model, ctx, ctx.lr, f"{spec.name} fine-tune")
    extra = {"pruned_layers": plan.layers, "ratio": spec.ratio, "norm": spec.norm,
             "cfg": model.arch.cfg, "base_cfg": base.arch.cfg}
    put_pruned(ctx, spec, model, tc, extra)
    return copy.deepcopy(model), tc, extra


def put_pruned(ctx: CompressContext, spec: VariantSpec, model: VGG, train_config: dict,
               extra: dict) -> None:
    """Remember a pruned, fine-tuned float model so ``prune+int8`` reuses it."""
    ctx.cache[("struct",) + spec.prune_key] = {"model": copy.deepcopy(model).eval(),
                                               "train_config": train_config, "extra": extra}


def make_variant(base: VGG, spec: VariantSpec, ctx: CompressContext) -> Variant:
    """Build one variant from a trained float VGG (left untouched)."""
    # Long by design: one branch per compression method (prune, quantize, QAT, resolution), each
    # a few calls into its own module; splitting it would only scatter the dispatch.
    t0 = time.perf_counter()
    folded = fold_batchnorm(base).cpu().eval()
    fa = folded.arch
    extra: dict[str, Any] = {"method": spec.method, "folded_batchnorm": bool(base.arch.batch_norm)}
    tc: dict[str, Any] = {}
    if spec.method == "struct":
        model, tc, e = _pruned(folded, spec, ctx)
        extra.update(e)
        arch = make_arch("pruned", model.arch, method="struct", ratio=spec.ratio, norm=spec.norm,
                         layers=spec.layers, parent_cfg=fa.cfg)
        state = model.state_dict()
    elif spec.method == "unstruct":
        model = copy.deepcopy(folded)
        n_train = len(ctx.train) if ctx.has_data else 0
        per_step = max(1, math.ceil(n_train / ctx.batch_size / ctx.unstruct_steps))

        def between(m: nn.Module, step: int) -> None:
            tc.update(_finetune(m, ctx, ctx.lr, f"{spec.name} step {step + 1}",
                                max_batches=per_step))
        res = gradual_prune(model, spec.ratio, ctx.unstruct_steps,
                            between if ctx.has_data and ctx.finetune_epochs > 0 else None)
        model.eval()
        rep = sparsity_report(model)
        extra.update({"step_targets": res.targets, "step_sparsity": res.achieved,
                      "sparsity": rep, "steps": ctx.unstruct_steps,
                      "finetune_batches_per_step": per_step if tc else 0,
                      "note": "dense kernels multiply the zeros: no speedup expected"})
        arch = make_arch("sparse", fa, method="unstruct", target_sparsity=spec.ratio,
                         steps=ctx.unstruct_steps)
        state = model.state_dict()
    elif spec.method == "int8-dynamic":
        model = quant.quantize_dynamic_linear(copy.deepcopy(folded))
        arch = make_arch("quantized", fa, method="dynamic", scheme="int8-dynamic",
                         backend=quant.BACKEND)
        state = model.state_dict()
    elif spec.method == "int8-static":
        model, n_calib = _static_int8(folded, ctx)
        arch = make_arch("quantized", fa, method="fx", scheme="int8", backend=quant.BACKEND,
                         calibration_images=n_calib)
        state = model.state_dict()
        extra["calibration"] = "train images" if ctx.has_data else "random inputs (no data)"
    elif spec.method in ("qat8", "qat4"):
        scheme = spec.method
        batches = calibration_batches(ctx)
        prepared = quant.prepare(copy.deepcopy(folded), batches[0][:1], scheme)
        quant.calibrate(prepared, batches)  # start the observers from real ranges
        tc = _finetune(prepared, ctx, ctx.qat_lr, f"{spec.name} QAT", epochs=ctx.qat_epochs,
                       amp="off")
        extra["qat_trained"] = bool(tc)
        model = quant.convert(prepared.cpu(), scheme)
        if scheme == "qat4":
            model = quant.PackedInt4Model(model)
            arch = make_arch("qat4-packed", fa, method="fx", scheme="qat4", backend=quant.BACKEND,
                             weight_bits=4)
            state = model.packed_state_dict()
        else:
            arch = make_arch("quantized", fa, method="fx", scheme="qat8", backend=quant.BACKEND)
            state = model.state_dict()
    elif spec.method == "prune+int8":
        pruned, tc, e = _pruned(folded, spec, ctx)
        extra.update(e)
        model, n_calib = _static_int8(pruned, ctx)
        extra["calibration_images"] = n_calib
        arch = make_arch("quantized", pruned.arch, method="fx", scheme="int8",
                         backend=quant.BACKEND, pruned={"ratio": spec.ratio, "norm": spec.norm,
                                                        "layers": spec.layers},
                         parent_cfg=fa.cfg)
        state = model.state_dict()
    elif spec.method == "res":
        ra = resized_arch(fa, spec.side)
        model = ResizedVGG(ra)
        model.load_state_dict(folded.state_dict())
        # the trained weights alone fall to chance at a smaller side on small inputs (28 -> 20
        # gave 13% on Fashion-MNIST): a short fine-tune at the new side, like the pruned ones
        tc = _finetune(model, ctx, ctx.lr, f"{spec.name} fine-tune at {spec.side}px")
        extra["finetuned_at_side"] = bool(tc)
        arch = make_arch("resized", ra, side=spec.side, trained_input_size=fa.input_size)
        state = model.state_dict()
    else:  # parse_variant only produces the methods above
        raise ValueError(f"unknown variant method {spec.method!r}")
    model.eval()
    return Variant(spec, model, arch, state, tc, extra, time.perf_counter() - t0)
