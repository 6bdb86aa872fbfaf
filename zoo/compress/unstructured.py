"""Gradual global magnitude pruning (unstructured), sparsity reports and a sparse file format.

Weights of every conv and Linear compete in one global ranking by ``|w|``. Over ``steps``
steps the cumulative sparsity rises linearly to the target; at step k, the weights still
alive lose the fraction ``(t_k - t_{k-1}) / (1 - t_{k-1})`` (the per-step amount rescaled to
what is left). Masks are enforced with ``torch.nn.utils.prune`` while fine-tuning and made
permanent at the end. Dense kernels still multiply the zeros: no speedup is expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from common.io import atomic_write


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear: their ``weight`` is pruned, biases are not."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _weight(m: nn.Module) -> torch.Tensor:
    return m.weight_orig if hasattr(m, "weight_orig") else m.weight


def step_targets(target: float, steps: int) -> list[float]:
    """Cumulative sparsity after each step (linear ramp to ``target``)."""
    if not 0.0 <= target < 1.0 or steps < 1:
        raise ValueError(f"target sparsity {target} must be in [0, 1) and steps {steps} >= 1")
    return [target * (k + 1) / steps for k in range(steps)]


@torch.no_grad()
def global_magnitude_masks(model: nn.Module, sparsity: float,
                           masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks (1 = keep) reaching exactly ``round(sparsity * total)`` zeros globally.

    Weights already masked stay masked; the newly pruned ones are the smallest ``|w|`` among
    those still alive.
    """
    mods = prunable(model)
    masks = masks or {}
    flat_w = torch.cat([_weight(m).detach().abs().flatten() for _, m in mods])
    flat_alive = torch.cat([masks[n].flatten().bool() if n in masks
                            else torch.ones(_weight(m).numel(), dtype=torch.bool)
                            for n, m in mods])
    total = flat_w.numel()
    n_zero_target = int(round(sparsity * total))
    n_new = n_zero_target - int((~flat_alive).sum())
    new_alive = flat_alive.clone()
    if n_new > 0:
        alive_idx = torch.nonzero(flat_alive).flatten()
        order = torch.argsort(flat_w[alive_idx], stable=True)
        new_alive[alive_idx[order[:n_new]]] = False
    out, start = {}, 0
    for n, m in mods:
        k = _weight(m).numel()
        out[n] = new_alive[start:start + k].view_as(_weight(m)).float()
        start += k
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Enforce masks through ``torch.nn.utils.prune`` (weight = weight_orig * mask)."""
    for n, m in prunable(model):
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
        tprune.custom_from_mask(m, "weight", masks[n])


def make_permanent(model: nn.Module) -> None:
    """Fold the masks into the weights and drop the reparametrisation."""
    for _, m in prunable(model):
        if hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")


@dataclass
class GradualResult:
    targets: list[float]
    achieved: list[float]


def gradual_prune(model: nn.Module, target: float, steps: int = 3,
                  finetune: Callable[[nn.Module, int], None] | None = None) -> GradualResult:
    """Prune ``model`` in place to ``target`` global sparsity over ``steps`` steps.

    ``finetune(model, step)`` runs after each step with the masks enforced.
    """
    masks: dict[str, torch.Tensor] | None = None
    targets = step_targets(target, steps)
    achieved = []
    for k, t in enumerate(targets):
        masks = global_magnitude_masks(model, t, masks)
        apply_masks(model, masks)
        achieved.append(sparsity_report(model)["overall"])
        if finetune is not None:
            finetune(model, k)
    make_permanent(model)
    return GradualResult(targets, achieved)


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights per prunable layer and ``overall`` (weights only)."""
    out, zeros, total = {}, 0, 0
    for n, m in prunable(model):
        w = m.weight  # masked view while pruning is active
        z = int((w == 0).sum())
        out[n] = z / w.numel()
        zeros += z
        total += w.numel()
    out["overall"] = zeros / max(total, 1)
    return out


# ---- bitmask + fp16 values file ----------------------------------------------------------

@torch.no_grad()
def sparse_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights as packed bitmask (uint8) + fp16 non-zero values; other tensors in fp16."""
    out: dict[str, torch.Tensor] = {}
    weight_names = {f"{n}.weight" for n, _ in prunable(model)}
    for k, v in model.state_dict().items():
        if k in weight_names:
            nz = v != 0
            out[f"{k}.mask"] = torch.from_numpy(np.packbits(nz.flatten().numpy()))
            out[f"{k}.values"] = v[nz].half()
            out[f"{k}.shape"] = torch.tensor(list(v.shape), dtype=torch.int64)
        else:
            out[k] = v.half() if v.is_floating_point() else v
    return out


def dense_from_sparse(sparse: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert ``sparse_state`` to a float32 state dict."""
    out = {}
    for k, v in sparse.items():
        if k.endswith(".mask"):
            name = k[:-5]
            shape = tuple(int(s) for s in sparse[f"{name}.shape"])
            n = int(np.prod(shape))
            mask = torch.from_numpy(np.unpackbits(v.numpy())[:n].astype(bool))
            w = torch.zeros(n, dtype=torch.float32)
            w[mask] = sparse[f"{name}.values"].float()
            out[name] = w.view(shape)
        elif k.endswith(".values") or k.endswith(".shape"):
            continue
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out


def write_sparse_file(model: nn.Module, path: str | Path) -> int:
    """Save the bitmask + fp16 file atomically; return its size in bytes."""
    state = sparse_state(model)
    atomic_write(path, lambda p: torch.save(state, p))
    return Path(path).stat().st_size
