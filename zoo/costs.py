"""Measured cost of one model on this machine: MACs, parameters, size, latency, throughput, memory.

Everything here is counted or timed, never typed in:

- ``count_macs``: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 for one input. The
  counter skips quantized ops, so compressed checkpoints are counted on their plain-VGG twin
  stored under ``arch["float_arch"]``.
- ``count_params``: parameters and non-zero parameters from ``state_dict()`` (quantized and
  packed weights included).
- ``time_latency`` / ``time_throughput``: warm-up, then the median of repeats on data already
  in memory and normalised, under ``torch.inference_mode()``, with a per-model time budget.
- ``peak_memory_mb``: peak resident memory added by one inference at the big batch, measured
  in a fresh subprocess (so earlier models do not pollute it).
- ``measure_cost``: all of the above for one checkpoint -> ``common.tables.ModelCost``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from common.tables import ModelCost
from zoo.checkpoint import build_from_arch, file_sha256, load_model

MB = 1e6  # sizes and memory are reported in MB = 10^6 bytes


@dataclass
class CostSettings:
    """How costs are measured; recorded beside the figures."""

    threads: int = 2
    device: str = "cpu"
    throughput_batch: int = 256
    min_latency_runs: int = 20       # batch-1 runs timed after warm-up (at least)
    max_latency_runs: int = 200
    min_throughput_repeats: int = 3  # big-batch repeats timed after warm-up (at least)
    max_throughput_repeats: int = 10
    budget_s: float = 10.0           # soft cap on timing per model; minimum repeats still run
    memory: str = "rss"              # "rss" (fresh subprocess) or "off"

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.throughput_batch < 1:
            raise ValueError(f"throughput_batch must be >= 1, got {self.throughput_batch}")
        if self.memory not in ("rss", "off"):
            raise ValueError(f"memory must be 'rss' or 'off', got {self.memory!r}")
        if self.min_latency_runs < 1 or self.min_throughput_repeats < 1:
            raise ValueError("min_latency_runs and min_throughput_repeats must be >= 1")


# ---- counting ------------------------------------------------------------------------------

@torch.inference_mode()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a zero input of ``input_shape`` (batch incl.).

    FLOPs counted by ``FlopCounterMode`` (conv: 2*Hout*Wout*Cout*Cin*k*k per image; linear:
    2*in*out; biases, ReLU and pooling are not counted) divided by two. Quantized ops are not
    counted by torch: call this on the float model.
    """
    from torch.utils.flop_counter import FlopCounterMode
    model = model.eval()
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(*input_shape, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def macs_model(arch: dict[str, Any]) -> tuple[nn.Module, str]:
    """The module to count MACs on for a checkpoint's ``arch`` and a word saying which it is.

    Plain VGGs, committees (k float members) and ``resized`` variants (float, they shrink their
    input themselves) are counted as they are; other compressed kinds on ``arch["float_arch"]`` (a plain VGG of the same
    shape). Without ``float_arch`` the compressed module itself is counted, with a warning,
    because quantized ops would be missed.
    """
    kind = arch.get("kind", "vgg")
    if kind == "vgg":
        return build_from_arch(arch), "model"
    if kind == "committee":
        # float members run batched (vmap turns the k convs into one grouped conv, which the
        # counter counts in full): k times one member's MACs
        return build_from_arch(arch), "model"
    if kind == "resized":
        # a float module that resizes its input first: counted as it runs (its float_arch
        # twin would be fed the dataset-sized input and overcount)
        return build_from_arch(arch), "model"
    if isinstance(arch.get("float_arch"), dict):
        return build_from_arch(arch["float_arch"]), "float_arch"
    warnings.warn(f"arch kind {kind!r} has no 'float_arch'; counting MACs on the module itself "
                  "(quantized ops are not counted by torch, so this undercounts)")
    return build_from_arch(arch), "model (no float_arch)"


def _weight_tensors(state: dict[str, Any], param_names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) of every weight-like entry of a state dict.

    Counted: named parameters, keys ending in ``weight``/``bias`` (quantized modules keep their
    weights as quantized tensors, not parameters) and tensors inside packed tuples (quantized
    Linear's ``_packed_params``). Not counted: BN running stats, scales, zero points, counters.
    A pruning re-parametrisation (``weight_orig`` + ``weight_mask``) counts as its masked weight.
    """
    for key, value in state.items():
        last = key.rsplit(".", 1)[-1]
        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                if torch.is_tensor(v):
                    yield f"{key}[{i}]", v
        elif torch.is_tensor(value):
            if last.endswith("_mask"):
                continue
            if last.endswith("_orig"):
                mask = state.get(key[: -len("_orig")] + "_mask")
                yield key, value * mask if torch.is_tensor(mask) else value
            elif key in param_names or last in ("weight", "bias"):
                yield key, value


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) from the model's state dict, quantized weights included.

    A quantized weight is zero where its integer equals the zero point, i.e. where
    ``dequantize() == 0``.
    """
    names = {n for n, _ in model.named_parameters()}
    total = nonzero = 0
    for _, t in _weight_tensors(model.state_dict(), names):
        total += t.numel()
        values = t.dequantize() if t.is_quantized else t
        nonzero += int(torch.count_nonzero(values))
    return total, nonzero


# ---- timing --------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _timed_runs(model: nn.Module, x: torch.Tensor, min_runs: int, max_runs: int,
                budget_s: float, warmup: int) -> list[float]:
    """Seconds of each timed forward pass: ``warmup`` untimed runs, then between ``min_runs``
    and ``max_runs`` timed ones, as many as fit in ``budget_s`` (estimated from the warm-up)."""
    device = x.device
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        model(x)
    _sync(device)
    per_run = (time.perf_counter() - t0) / max(1, warmup)
    n = int(budget_s / per_run) if per_run > 0 else max_runs
    n = max(min_runs, min(max_runs, n))
    times = []
    for _ in range(n):
        start = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_latency(model: nn.Module, x1: torch.Tensor, settings: CostSettings,
                 budget_s: float | None = None) -> dict[str, float]:
    """Median latency in ms of one image ``x1`` (1, C, H, W), already normalised, plus spread."""
    if x1.shape[0] != 1:
        raise ValueError(f"latency is measured at batch 1, got a batch of {x1.shape[0]}")
    budget = settings.budget_s / 3 if budget_s is None else budget_s
    times = _timed_runs(model, x1, settings.min_latency_runs, settings.max_latency_runs,
                        budget, warmup=3)
    return {"latency_ms_b1": 1000 * statistics.median(times), "latency_runs": len(times),
            "latency_ms_b1_p10": 1000 * _quantile(times, 0.1),
            "latency_ms_b1_p90": 1000 * _quantile(times, 0.9)}


def time_throughput(model: nn.Module, xb: torch.Tensor, settings: CostSettings,
                    budget_s: float | None = None) -> dict[str, float]:
    """Images per second at batch ``len(xb)`` (median of repeats), data already normalised."""
    budget = 2 * settings.budget_s / 3 if budget_s is None else budget_s
    times = _timed_runs(model, xb, settings.min_throughput_repeats,
                        settings.max_throughput_repeats, budget, warmup=1)
    med = statistics.median(times)
    return {"images_per_second": len(xb) / med, "throughput_repeats": len(times),
            "throughput_seconds_median": med,
            "throughput_spread": (max(times) - min(times)) / med if med > 0 else 0.0}


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


# ---- memory --------------------------------------------------------------------------------

_MEMORY_WORKER = "from zoo.costs import _memory_worker; _memory_worker()"


def peak_memory_mb(checkpoint: str | Path, input_shape: tuple[int, ...], threads: int,
                   timeout_s: float = 300.0) -> dict[str, Any]:
    """Peak resident memory (MB) added by one inference on an ``input_shape`` batch.

    Runs in a fresh Python process so earlier models do not pollute the figure: load the model
    and a random normalised batch, trim the heap, reset the peak-RSS mark, run one forward pass
    under ``inference_mode`` and read the new peak minus the RSS before it (activations, oneDNN
    scratch and weights re-packed on first use). Returns ``{"peak_memory_mb", "memory_method"}``;
    NaN (with a warning) when the subprocess fails.
    """
    job = json.dumps({"checkpoint": str(checkpoint), "shape": list(input_shape),
                      "threads": threads})
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        out = subprocess.run([sys.executable, "-c", _MEMORY_WORKER, job], capture_output=True,
                             text=True, timeout=timeout_s, env=env, check=True)
        d = json.loads(out.stdout.strip().splitlines()[-1])
        return {"peak_memory_mb": float(d["peak_added_mb"]),
                "memory_method": f"rss-subprocess/{d['method']}"}
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError) as e:
        detail = getattr(e, "stderr", "") or ""
        warnings.warn(f"peak-memory subprocess failed for {checkpoint}: {e} {detail[-500:]}")
        return {"peak_memory_mb": float("nan"), "memory_method": "failed"}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Give freed heap pages back to the OS so inference cannot reuse them unseen (glibc)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_worker() -> None:
    """Subprocess body of ``peak_memory_mb``: prints one JSON line.

    After loading, the heap is trimmed and the peak-RSS mark reset (``/proc/self/clear_refs``),
    so the figure is ``VmHWM - VmRSS`` around one forward pass; where the mark cannot be reset,
    ``ru_maxrss`` before/after is used (then the load's own peak may hide part of inference).
    """
    import gc
    import resource
    job = json.loads(sys.argv[1])
    torch.set_num_threads(int(job["threads"]))
    model, ckpt = load_model(job["checkpoint"])
    x = torch.randn(*job["shape"])
    del ckpt
    gc.collect()
    _trim_heap()
    method = "VmHWM" if _reset_peak_rss() else "ru_maxrss"
    if method == "VmHWM":
        before = _status_kb("VmRSS")
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        model(x)
    if method == "VmHWM":
        after = _status_kb("VmHWM")
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_added_mb": max(0, after - before) * 1024 / MB,
                      "rss_before_mb": before * 1024 / MB, "method": method}))


# ---- machine and the whole measurement -----------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(settings: CostSettings) -> dict[str, Any]:
    """What the costs were measured on: CPU, cores, threads, torch, device, load, time."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                            "threads": settings.threads, "torch": torch.__version__,
                            "python": platform.python_version(), "device": settings.device,
                            "throughput_batch": settings.throughput_batch,
                            "memory_method": ("peak RSS added by one inference, fresh subprocess"
                                              if settings.memory == "rss" else "not measured"),
                            "size_unit": "MB = 1e6 bytes",
                            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
                                timespec="seconds")}
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    if settings.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(settings.device))
    return info


def _big_batch(images: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` images from ``images`` (tiled when there are fewer)."""
    if len(images) == 0:
        raise ValueError("no images to time the model on; the split is empty")
    reps = math.ceil(batch / len(images))
    return images.repeat(reps, 1, 1, 1)[:batch] if reps > 1 else images[:batch]


def measure_cost(name: str, checkpoint: str | Path, images: torch.Tensor,
                 settings: CostSettings, checkpoint_sha256: str | None = None) -> ModelCost:
    """Measure every cost of one checkpoint on normalised float images ``(N, C, H, W)``.

    ``images`` should be real inputs of the run (e.g. the val split) already normalised; the
    first image is the batch-1 input, the first ``throughput_batch`` (tiled if fewer) the big
    batch. Thread count is set to ``settings.threads`` for the measurement and restored after.
    """
    checkpoint = Path(checkpoint)
    device = torch.device(settings.device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        model, ckpt = load_model(checkpoint, device=device)
        params, nonzero = count_params(model)
        counted, macs_on = macs_model(ckpt["arch"])
        macs = count_macs(counted, (1, *images.shape[1:]))
        del counted
        x1 = images[:1].to(device)
        xb = _big_batch(images, settings.throughput_batch).to(device)
        lat = time_latency(model, x1, settings)
        thr = time_throughput(model, xb, settings)
        if settings.memory == "off":
            mem = {"peak_memory_mb": float("nan"), "memory_method": "off"}
        elif device.type == "cuda":
            mem = {"peak_memory_mb": _cuda_peak_mb(model, xb),
                   "memory_method": "cuda max_memory_allocated"}
        else:
            mem = peak_memory_mb(checkpoint, tuple(xb.shape), settings.threads)
    finally:
        torch.set_num_threads(old_threads)
    extra = {"checkpoint_sha256": checkpoint_sha256 or file_sha256(checkpoint),
             "threads": settings.threads, "device": settings.device, "macs_counted_on": macs_on,
             "arch_kind": ckpt["arch"].get("kind", "vgg"), "input_shape": list(images.shape[1:]),
             "memory_method": mem["memory_method"],
             **{k: v for k, v in lat.items() if k != "latency_ms_b1"},
             **{k: v for k, v in thr.items() if k != "images_per_second"}}
    return ModelCost(name=name, params=params, nonzero_params=nonzero, macs=macs,
                     size_mb=checkpoint.stat().st_size / MB,
                     latency_ms_b1=lat["latency_ms_b1"],
                     images_per_second=thr["images_per_second"],
                     throughput_batch=settings.throughput_batch,
                     peak_memory_mb=mem["peak_memory_mb"], extra=extra)


@torch.inference_mode()
def _cuda_peak_mb(model: nn.Module, xb: torch.Tensor) -> float:
    torch.cuda.synchronize(xb.device)
    base = torch.cuda.memory_allocated(xb.device)
    torch.cuda.reset_peak_memory_stats(xb.device)
    model(xb)
    torch.cuda.synchronize(xb.device)
    return (torch.cuda.max_memory_allocated(xb.device) - base) / MB
