"""Where a model runs, and a clock that is honest on a GPU.

CUDA kernels run asynchronously: ``time.perf_counter()`` around a forward pass measures only
the launch unless the device is synchronised first. Every clock in the executor and the cost
measurement calls ``synchronize`` on the model's device before it reads the time.
"""
from __future__ import annotations

import torch
from torch import nn


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"`` -> CUDA where available, else CPU; otherwise ``torch.device(device)``,
    with a clear error for a GPU that is not there."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU here; "
                         "use --device cpu (or auto)")
    return dev


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer; CPU for models without either
    (quantized models keep packed weights outside ``parameters()`` and run on CPU only)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    """A label for timing output: ``cpu`` or ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    return str(device)


def is_quantized(model: nn.Module) -> bool:
    """Whether the model holds quantized modules (int8 kernels: CPU only here)."""
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
               for m in model.modules())


def place(model: nn.Module, device: torch.device) -> torch.device:
    """Move a model to ``device`` and return where it runs: quantized models stay on the CPU
    (their int8 kernels exist only there), so a GPU evaluation times them on the CPU and says
    so."""
    if device.type != "cpu" and is_quantized(model):
        return torch.device("cpu")
    model.to(device)
    return device
