"""Committees: k models of one architecture run as one module, answering with their mean
probability.

``Committee(members)`` stacks the members' parameters and buffers (``torch.func.
stack_module_state``; BatchNorm running statistics are buffers, stacked too) and runs them
one after the other by default, as member modules whose tensors are views of the stacked ones,
or all at once under ``torch.vmap`` over ``torch.func.functional_call`` on a stateless copy of
one member on the "meta" device (the ensembling recipe of the torch.func tutorial; slower on
this project's CPUs, see ``Committee``). Its output is
``log(mean_k softmax(member_k(x)))``: argmax is the mean-probability vote and softmax of the
output is the mean probability itself, so everything that reads a zoo member's logits (the
prediction tables, a cascade's threshold on the top probability) reads the committee's mean
probability unchanged.

As a zoo member a committee is a checkpoint like any other: ``arch`` is ``{"kind":
"committee", "member_arch": <one member's arch>, "k": k, "members": [names]}`` and
``state_dict`` the stacked one (each member key holds a ``(k, ...)`` tensor). ``zoo.arch_kinds``
builds it (``Committee.from_arch`` with the table's own builder for the member), so
``load_model``, profile-zoo and evaluate-routers load it like any model. This module imports
nothing of the zoo (``zoo.arch_kinds`` imports it). Names: ``seed_model_name`` (``tiny_vgg2@s1``: the same model trained with
another seed) and ``committee_name`` (``committee-tiny_vgg2x3``).
"""
from __future__ import annotations

import copy
import math
import re
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from common.ensembles import ENSEMBLE_PREFIX

KIND = "committee"
SEED_SEP = "@s"


# ---- names -----------------------------------------------------------------------------------

def seed_model_name(model: str, seed: int, first_seed: int) -> str:
    """``model`` for the first seed of a run, ``<model>@s<seed>`` for the others."""
    return model if seed == first_seed else f"{model}{SEED_SEP}{seed}"


def registry_name(name: str) -> str:
    """The registered model a (possibly seeded) zoo name was built from: ``tiny_vgg2@s1`` ->
    ``tiny_vgg2``."""
    return name.split("@", 1)[0]


def committee_name(model: str, k: int) -> str:
    """``committee-<model>x<k>``: the prefix marks an ensemble (``common.ensembles``)."""
    return f"{ENSEMBLE_PREFIX}{model}x{k}"


def parse_committee(spec: str) -> tuple[str, int]:
    """``"tiny_vgg2:3"`` -> ``("tiny_vgg2", 3)``; k must be at least 2."""
    m = re.fullmatch(r"([^:@/\s]+):(\d+)", spec.strip())
    if not m or int(m.group(2)) < 2:
        raise ValueError(f"committee {spec!r} is not MODEL:K with K >= 2 (e.g. tiny_vgg2:3)")
    return m.group(1), int(m.group(2))


def committee_member_names(model: str, k: int, seeds: Sequence[int]) -> list[str]:
    """The zoo names of a committee's k members: the first k of ``seeds`` (the first seed keeps
    the plain name)."""
    seeds = list(seeds)
    if len(seeds) < k:
        raise ValueError(f"committee {model}:{k} needs {k} seeds, but only {len(seeds)} "
                         f"({seeds}) are given; pass --seeds with at least {k}")
    return [seed_model_name(model, s, seeds[0]) for s in seeds[:k]]


# ---- the module ------------------------------------------------------------------------------

def _holder(tensors: dict[str, torch.Tensor], *, params: set[str]) -> nn.Module:
    """Plain ``nn.Module`` containers mirroring the member's module paths, holding the stacked
    tensors: the state dict keys are the member's keys (``features.0.weight``) and no layer
    class ever sees a stacked (k, ...) tensor."""
    root = nn.Module()
    for name, t in tensors.items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if part not in mod._modules:
                mod.add_module(part, nn.Module())
            mod = mod._modules[part]
        if name in params:
            mod.register_parameter(leaf, nn.Parameter(t, requires_grad=False))
        else:
            mod.register_buffer(leaf, t)
    return root


class Committee(nn.Module):
    """k members of one architecture as one module: ``forward(x)`` is
    ``log(mean_k softmax(member_k(x)))``, shape ``(B, num_classes)``.

    ``members``: k >= 1 modules of the same class and state-dict shapes (same architecture);
    their weights are copied (stacked), the members themselves are not kept. Inference only:
    the members run in eval mode whatever ``train()`` says (BatchNorm uses the stacked running
    statistics, dropout is off).

    ``mode="loop"`` (default) runs the members one after the other, as modules whose tensors
    are views of slice i of the stacked weights (``_loop_members``); ``mode="vmap"`` runs them
    as one
    ``torch.vmap`` over ``functional_call`` (if vmap cannot run some layer of the member, the
    committee warns once and falls back to the loop). Same answers either way. The loop is
    the default because it is the faster on the CPUs of this project: a standard-preset
    committee of three tiny_vgg3 (width 0.5, batch 256, 2 threads) took 4.79 ms/image under
    vmap, whose convolutions become grouped ones, 3.06 in the loop and 2.84 for the three
    members run one after the other (one measurement, beside another job: ratios only).
    """

    def __init__(self, members: Sequence[nn.Module] | None = None, *, mode: str = "loop",
                 _template: nn.Module | None = None,
                 _shapes: tuple[int, dict[str, torch.Tensor], set[str]] | None = None):
        super().__init__()
        if mode not in ("vmap", "loop"):
            raise ValueError(f"mode must be 'vmap' or 'loop', got {mode!r}")
        self.mode = mode
        if members is not None:
            members = list(members)
            if not members:
                raise ValueError("a committee needs at least one member")
            _check_same_architecture(members)
            for m in members:
                m.eval()
            params, buffers = stack_module_state(members)
            tensors = {**{n: t.detach().clone() for n, t in params.items()},
                       **{n: t.detach().clone() for n, t in buffers.items()}}
            self.k = len(members)
            base = copy.deepcopy(members[0]).to("meta")
            param_names = set(params)
        else:                       # from an arch: empty stacked tensors, filled by load_state_dict
            assert _template is not None and _shapes is not None
            self.k, tensors, param_names = _shapes
            base = _template
        self.stacked = _holder(tensors, params=param_names)
        self._param_names = [n for n in tensors if n in param_names]
        self._buffer_names = [n for n in tensors if n not in param_names]
        # the stateless member: a plain attribute (a list), so it is neither in the state dict
        # nor moved by .to(); functional_call gives it every parameter and buffer
        base.eval()
        self._base = [base]
        # the loop's members: copies of the stateless one whose tensors are views of the
        # stacked ones (``_loop_members``), rebuilt when those move (.to, load_state_dict
        # copies in place and keeps them); a plain attribute, outside the state dict
        self._loop_cache: tuple[tuple[int, ...], list[nn.Module]] | None = None

    # ---- construction from an arch (a checkpoint) ------------------------------------------
    @classmethod
    def from_arch(cls, arch: dict[str, Any], build_member: Callable[[dict[str, Any]], nn.Module],
                  mode: str = "loop") -> "Committee":
        """An empty committee (weights to be loaded) for a ``kind: committee`` arch;
        ``build_member`` builds one member from ``arch["member_arch"]`` (on the meta device:
        only its shapes are used)."""
        k = int(arch["k"])
        with torch.device("meta"):
            template = build_member(arch["member_arch"])
        params = {n: torch.empty((k, *p.shape), dtype=p.dtype)
                  for n, p in template.named_parameters()}
        buffers = {n: torch.empty((k, *b.shape), dtype=b.dtype)
                   for n, b in template.named_buffers()}
        return cls(None, mode=mode, _template=template,
                   _shapes=(k, {**params, **buffers}, set(params)))

    # ---- running --------------------------------------------------------------------------
    def _stacked(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        get = self.stacked.get_parameter
        params = {n: get(n) for n in self._param_names}
        buffers = {n: self.stacked.get_buffer(n) for n in self._buffer_names}
        return params, buffers

    def _loop_members(self, params: dict[str, torch.Tensor],
                      buffers: dict[str, torch.Tensor]) -> list[nn.Module]:
        """The k members as plain modules whose parameters and buffers are views of slice i of
        the stacked tensors (no copy): what the loop runs. ``functional_call`` swaps every
        tensor into the stateless member on each call, about 1.3 ms per call of three
        standard tiny_vgg5 members on this project's 2-core CPU (5.2 against 3.9 ms at batch
        1); these are built once and rebuilt only when the stacked tensors move."""
        key = tuple(t.data_ptr() for t in (*params.values(), *buffers.values()))
        if self._loop_cache is not None and self._loop_cache[0] == key:
            return self._loop_cache[1]
        members = []
        for i in range(self.k):
            m = copy.deepcopy(self._base[0])
            for name, t in (*params.items(), *buffers.items()):
                *path, leaf = name.split(".")
                owner = m.get_submodule(".".join(path)) if path else m
                if name in params:
                    owner._parameters[leaf] = nn.Parameter(t[i], requires_grad=False)
                else:
                    owner._buffers[leaf] = t[i]
            members.append(m.eval())
        self._loop_cache = (key, members)
        return members

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's logits, ``(k, B, num_classes)``."""
        params, buffers = self._stacked()
        base = self._base[0]
        if self.mode == "vmap":
            def one(p: dict, b: dict, xx: torch.Tensor) -> torch.Tensor:
                return functional_call(base, (p, b), (xx,))
            try:
                return torch.vmap(one, in_dims=(0, 0, None))(params, buffers, x)
            except (RuntimeError, NotImplementedError) as e:
                warnings.warn(f"Committee: torch.vmap cannot run this member architecture "
                              f"({type(e).__name__}: {str(e).splitlines()[0]}); running the "
                              "members one after the other instead")
                self.mode = "loop"
        return torch.stack([m(x) for m in self._loop_members(params, buffers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.member_logits(x).float(), dim=-1)     # (k, B, C)
        return torch.logsumexp(logp, dim=0) - math.log(self.k)

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s own state dict (one slice of the stacked tensors)."""
        return {n: t[i].clone() for n, t in self.stacked.state_dict().items()}

    def extra_repr(self) -> str:
        return f"k={self.k}, member={type(self._base[0]).__name__}, mode={self.mode}"


def _check_same_architecture(members: list[nn.Module]) -> None:
    first = members[0]
    shapes = {n: (tuple(t.shape), t.dtype) for n, t in first.state_dict().items()}
    for i, m in enumerate(members[1:], 1):
        if type(m) is not type(first):
            raise ValueError(f"committee members must share one architecture: member {i} is a "
                             f"{type(m).__name__}, member 0 a {type(first).__name__}")
        other = {n: (tuple(t.shape), t.dtype) for n, t in m.state_dict().items()}
        if other != shapes:
            diff = sorted(set(other.items()) ^ set(shapes.items()))[:3]
            raise ValueError(f"committee members must share one architecture: member {i}'s "
                             f"weights differ in shape from member 0's (e.g. {diff})")


# ---- as a zoo member -------------------------------------------------------------------------

def committee_arch(member_arch: dict[str, Any], member_names: Sequence[str]) -> dict[str, Any]:
    """The checkpoint ``arch`` of a committee of ``member_names`` (all of ``member_arch``)."""
    return {"kind": KIND, "member_arch": dict(member_arch), "k": len(member_names),
            "members": list(member_names)}

