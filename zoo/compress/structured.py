"""Structured filter pruning by channel surgery on a sequential VGG (BatchNorm folded first).

A conv's lowest-norm filters are removed physically: its output channels, the next conv's
input channels and, after the last conv, the first Linear's columns (flatten order is
``(C, H, W)``, so channel ``c`` owns columns ``c*h*w .. (c+1)*h*w - 1``). The result is a
plain ``VGG`` with a narrower cfg, so a checkpoint rebuilds it from its arch alone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from zoo.vgg import VGG, feature_shape

NORMS = ("l1", "l2")


def conv_modules(model: VGG) -> list[nn.Conv2d]:
    """The convs of ``model.features`` in order."""
    return [m for m in model.features if isinstance(m, nn.Conv2d)]


@torch.no_grad()
def fold_batchnorm(model: VGG) -> VGG:
    """A BN-free copy whose convs absorb each following BatchNorm (eval statistics), fused by
    ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (what ``fuse_conv_bn_eval`` runs; called on
    the tensors so that ``model``'s train/eval mode is left as it is)."""
    if not model.arch.batch_norm:
        return copy.deepcopy(model)
    arch = replace(model.arch, batch_norm=False, cfg=list(model.arch.cfg))
    out = VGG(arch)
    src = list(model.features)
    convs = conv_modules(out)
    k = 0
    for i, m in enumerate(src):
        if isinstance(m, nn.Conv2d):
            bn = src[i + 1]
            if not isinstance(bn, nn.BatchNorm2d):
                raise ValueError(f"features[{i + 1}] is {type(bn).__name__}, expected BatchNorm2d")
            w, b = fuse_conv_bn_weights(m.weight, m.bias, bn.running_mean, bn.running_var,
                                        bn.eps, bn.weight, bn.bias)
            convs[k].weight.copy_(w)
            convs[k].bias.copy_(b)
            k += 1
    out.classifier.load_state_dict(model.classifier.state_dict())
    return out.eval()


def filter_norms(conv: nn.Conv2d, norm: str) -> torch.Tensor:
    """(C_out,) L1 or L2 norm of each filter's weights (bias not included)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    w = conv.weight.detach().flatten(1)
    return w.abs().sum(1) if norm == "l1" else w.pow(2).sum(1).sqrt()


def select_layers(n_convs: int, layers: str | list[int]) -> list[int]:
    """Conv indices to prune: "deep" (second half), "all", or explicit indices."""
    if isinstance(layers, str):
        if layers == "deep":
            return list(range(n_convs // 2, n_convs))
        if layers == "all":
            return list(range(n_convs))
        try:
            layers = [int(v) for v in layers.replace(".", ",").split(",") if v != ""]
        except ValueError:
            raise ValueError(f"--layers {layers!r}: use 'deep', 'all' or conv indices like "
                             "'8,9,10'") from None
    bad = [i for i in layers if not 0 <= i < n_convs]
    if bad or not layers:
        raise ValueError(f"conv indices {layers} invalid: this model has convs 0..{n_convs - 1}")
    return sorted(set(int(i) for i in layers))


def filters_to_keep(conv: nn.Conv2d, ratio: float, norm: str) -> torch.Tensor:
    """Sorted indices of the filters kept: drop ``round(ratio * C_out)`` lowest-norm ones."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio {ratio} must be in [0, 1)")
    n = conv.out_channels
    n_drop = min(int(round(ratio * n)), n - 1)  # keep at least one filter
    order = torch.argsort(filter_norms(conv, norm), stable=True)  # ascending norm
    return torch.sort(order[n_drop:]).values


@dataclass
class PrunePlan:
    """Which filters of which convs survive (indices into the original convs)."""

    keep: dict[int, torch.Tensor]
    ratio: float
    norm: str
    layers: list[int] = field(default_factory=list)


def plan_pruning(model: VGG, ratio: float, norm: str = "l1",
                 layers: str | list[int] = "deep") -> PrunePlan:
    convs = conv_modules(model)
    idx = select_layers(len(convs), layers)
    return PrunePlan({i: filters_to_keep(convs[i], ratio, norm) for i in idx}, ratio, norm, idx)


@torch.no_grad()
def apply_plan(model: VGG, plan: PrunePlan) -> VGG:
    """A new, narrower VGG holding the surviving filters; the model must be BN-free."""
    if model.arch.batch_norm:
        raise ValueError("fold BatchNorm first (zoo.compress.structured.fold_batchnorm)")
    convs = conv_modules(model)
    keep = [plan.keep.get(i, torch.arange(c.out_channels)) for i, c in enumerate(convs)]
    new_cfg, k = [], 0
    for v in model.arch.cfg:
        if v == "M":
            new_cfg.append("M")
        else:
            new_cfg.append(int(len(keep[k])))
            k += 1
    arch = replace(model.arch, cfg=new_cfg)
    out = VGG(arch)
    in_keep = torch.arange(model.arch.in_channels)
    for conv, new, kept in zip(convs, conv_modules(out), keep):
        new.weight.copy_(conv.weight[kept][:, in_keep])
        new.bias.copy_(conv.bias[kept])
        in_keep = kept
    # first Linear: keep the columns of the surviving last-conv channels
    _, h, w = feature_shape(model.arch)
    hw = h * w
    cols = (in_keep.view(-1, 1) * hw + torch.arange(hw).view(1, -1)).flatten()
    lin_old = [m for m in model.classifier if isinstance(m, nn.Linear)]
    lin_new = [m for m in out.classifier if isinstance(m, nn.Linear)]
    lin_new[0].weight.copy_(lin_old[0].weight[:, cols])
    lin_new[0].bias.copy_(lin_old[0].bias)
    for a, b in zip(lin_old[1:], lin_new[1:]):
        b.load_state_dict(a.state_dict())
    return out.train(model.training)


def prune_filters(model: VGG, ratio: float, norm: str = "l1",
                  layers: str | list[int] = "deep") -> tuple[VGG, PrunePlan]:
    """Fold BN, plan and apply structured pruning; returns ``(pruned model, plan)``."""
    base = fold_batchnorm(model)
    plan = plan_pruning(base, ratio, norm, layers)
    return apply_plan(base, plan), plan


@torch.no_grad()
def masked_copy(model: VGG, plan: PrunePlan) -> VGG:
    """The original model with the pruned filters (weights and bias) set to zero."""
    out = copy.deepcopy(model)
    convs = conv_modules(out)
    for i, kept in plan.keep.items():
        drop = torch.ones(convs[i].out_channels, dtype=torch.bool)
        drop[kept] = False
        convs[i].weight[drop] = 0.0
        convs[i].bias[drop] = 0.0
    return out
