"""One small interface over ``torch.ao.quantization`` (deprecated upstream, works in 2.14.1).

Schemes: ``int8`` (post-training static, per-channel int8 weights, uint8 activations, x86
backend, conv+ReLU / linear+ReLU fused by FX), ``qat8`` (the same with fake-quant training)
and ``qat4`` (4-bit weights, fake-quant range -8..7 per output channel, 8-bit activations).
A converted model runs on the int8 kernels; ``qat4`` weights are stored packed two per byte
(``pack_int4``) with per-channel scales and unpacked into int8 kernels when loaded.
Everything that touches ``torch.ao`` lives here, so a move to torchao's PT2E stays local.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

BACKEND = "x86"
SCHEMES = ("int8", "qat8", "qat4")
INT4_MIN, INT4_MAX = -8, 7


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def set_backend() -> None:
    """Select the x86 quantized engine (fbgemm's successor) for every quantized op."""
    if BACKEND in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = BACKEND


def qconfig_mapping(scheme: str):
    """The QConfigMapping for a scheme (see module docstring)."""
    from torch.ao.quantization import (FakeQuantize, MovingAveragePerChannelMinMaxObserver,
                                       QConfig, get_default_qat_qconfig_mapping,
                                       get_default_qconfig_mapping)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {SCHEMES}")
    with _quiet():
        if scheme == "int8":
            return get_default_qconfig_mapping(BACKEND)
        mapping = get_default_qat_qconfig_mapping(BACKEND)
        if scheme == "qat8":
            return mapping
        act = mapping.global_qconfig.activation
        w4 = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver,
                                    quant_min=INT4_MIN, quant_max=INT4_MAX, dtype=torch.qint8,
                                    qscheme=torch.per_channel_symmetric, ch_axis=0)
        return mapping.set_global(QConfig(activation=act, weight=w4))


def prepare(model: nn.Module, example: torch.Tensor, scheme: str) -> nn.Module:
    """FX-prepare a float model: observers (``int8``) or fake-quant modules (``qat*``)."""
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx
    set_backend()
    with _quiet():
        if scheme == "int8":
            return prepare_fx(model.eval(), qconfig_mapping(scheme), (example,))
        return prepare_qat_fx(model.train(), qconfig_mapping(scheme), (example,))


@torch.no_grad()
def calibrate(prepared: nn.Module, batches: Iterator[torch.Tensor] | list[torch.Tensor]) -> None:
    """Run float batches through a prepared model so its observers see real activations."""
    prepared.eval()
    for x in batches:
        prepared(x)


def convert(prepared: nn.Module, scheme: str) -> nn.Module:
    """Convert a prepared model to int8 kernels; ``qat4`` weights are clamped to -8..7."""
    from torch.ao.quantization.quantize_fx import convert_fx
    set_backend()
    with _quiet():
        q = convert_fx(prepared.eval())
    if scheme == "qat4":
        clamp_int4(q)
    return q.eval()


def structure(float_model: nn.Module, example: torch.Tensor, scheme: str) -> nn.Module:
    """An uncalibrated converted model of the right structure (for ``load_state_dict``)."""
    p = prepare(float_model, example, scheme)
    p.eval()
    with torch.no_grad():
        p(example)  # observers need one pass to produce valid (placeholder) qparams
    return convert(p, scheme)


def quantize_dynamic_linear(model: nn.Module) -> nn.Module:
    """Dynamic int8 of every Linear (weights int8, activations quantised on the fly)."""
    from torch.ao.quantization import quantize_dynamic
    set_backend()
    with _quiet():
        return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


# ---- quantized weights -------------------------------------------------------------------

def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of quantized conv/linear modules (static or dynamic): have ``weight()``."""
    out = []
    for n, m in model.named_modules():
        mod = type(m).__module__
        if ("quantized" in mod and callable(getattr(m, "weight", None))
                and callable(getattr(m, "bias", None))):
            out.append((n, m))
    return out


@torch.no_grad()
def clamp_int4(model: nn.Module) -> None:
    """Clamp quantized weights to -8..7 (convert rounds max|w|/scale = 7.5 up to 8)."""
    for _, m in quantized_layers(model):
        w = m.weight()
        if w.qscheme() not in (torch.per_channel_symmetric, torch.per_channel_affine):
            raise ValueError("4-bit weights must be per-channel quantized")
        ints = w.int_repr().clamp(INT4_MIN, INT4_MAX)
        m.set_weight_bias(_per_channel(ints, w.q_per_channel_scales(),
                                       w.q_per_channel_zero_points(), w.q_per_channel_axis()),
                          m.bias())


def _per_channel(ints: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
                 axis: int) -> torch.Tensor:
    return torch._make_per_channel_quantized_tensor(ints.to(torch.int8), scales.double(),
                                                    zero_points.long(), axis)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int tensor in -8..7 -> uint8 ``(ceil(n/2),)``, two values per byte (low nibble first)."""
    v = values.flatten().to(torch.int16)
    if v.numel() and (v.min() < INT4_MIN or v.max() > INT4_MAX):
        raise ValueError(f"values outside {INT4_MIN}..{INT4_MAX} cannot be packed in 4 bits")
    u = (v + 8).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, torch.zeros(1, dtype=torch.uint8)])
    return u[0::2] | (u[1::2] << 4)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_int4``: int8 ``(numel,)`` in -8..7."""
    lo = (packed & 0x0F).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    return (torch.stack([lo, hi], 1).flatten()[:numel] - 8).to(torch.int8)


class PackedInt4Model(nn.Module):
    """A converted ``qat4`` model that saves its weights packed at 4 bits.

    ``packed_state_dict()`` (what the checkpoint holds) replaces each quantized layer's int8
    weight by ``<layer>.w4`` (uint8, two weights per byte), ``<layer>.w4_scale`` (per output
    channel) and ``<layer>.w4_shape``; ``load_state_dict`` accepts that form (unpacking into
    the int8 kernels the model runs on) or the plain int8 ``state_dict()``.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def _layers(self) -> dict[str, nn.Module]:
        return dict(quantized_layers(self.inner))

    @staticmethod
    def _is_weight_key(key: str, layer: str) -> bool:
        return (key.startswith(f"{layer}.weight") or key.startswith(f"{layer}._packed")
                or key == f"{layer}.bias")

    def packed_state_dict(self) -> dict[str, torch.Tensor]:
        layers = self._layers()
        raw = self.inner.state_dict()
        out: dict[str, torch.Tensor] = {}
        for n, m in layers.items():
            w = m.weight()
            out[f"inner.{n}.w4"] = pack_int4(w.int_repr())
            out[f"inner.{n}.w4_scale"] = w.q_per_channel_scales().float()
            out[f"inner.{n}.w4_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
            b = m.bias()
            if b is not None:
                out[f"inner.{n}.bias"] = b.detach().clone()
        for k, v in raw.items():
            if not any(self._is_weight_key(k, n) for n in layers):
                out[f"inner.{k}"] = v
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not any(k.endswith(".w4") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict)
        layers = self._layers()
        rest = {k[len("inner."):]: v for k, v in state_dict.items() if k.startswith("inner.")}
        for n, m in layers.items():
            try:
                shape = tuple(int(s) for s in rest.pop(f"{n}.w4_shape"))
                packed, scales = rest.pop(f"{n}.w4"), rest.pop(f"{n}.w4_scale")
            except KeyError:
                raise KeyError(f"packed 4-bit state has no weights for layer {n!r}; the "
                               "checkpoint does not match its arch") from None
            bias = rest.pop(f"{n}.bias", None)
            ints = unpack_int4(packed, int(torch.tensor(shape).prod())).view(shape)
            zeros = torch.zeros(shape[0], dtype=torch.long)
            m.set_weight_bias(_per_channel(ints, scales, zeros, 0), bias)
        expected = {k for k in self.inner.state_dict()
                    if not any(self._is_weight_key(k, n) for n in layers)}
        if strict and set(rest) != expected:
            raise KeyError(f"packed 4-bit state mismatch: missing {sorted(expected - set(rest))}, "
                           f"unexpected {sorted(set(rest) - expected)}")
        full = self.inner.state_dict()  # unpacked weights set above, the rest from ``rest``
        full.update(rest)
        return self.inner.load_state_dict(full, strict=strict)
