"""Model FLOPs utilisation: achieved training FLOP/s as a share of what the hardware can do.

MFU = flops_per_token x tokens_per_s / peak. The numerator comes from `GPT.flops_per_token`
(6N + attention, as nanoGPT and torchtitan count it). The peak comes from a table of datasheet
dense bf16 tensor-core numbers for known GPUs; a CPU has no datasheet number worth trusting, so
its peak is measured once per process by timing large matrix multiplications.
"""

from __future__ import annotations

import functools
import time

import torch

# Dense (no 2:4 sparsity) bf16 peak FLOP/s per device, from the vendors' datasheets. Matched as
# substrings of torch.cuda.get_device_name, most specific first.
GPU_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM and NVL
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: V100 has no bf16 tensor cores
    ("T4", 65e12),  # fp16, likewise
)


def gpu_peak_flops(device_name: str) -> float | None:
    """Datasheet bf16 peak of the GPU called `device_name`, or None when it is not in the table."""
    for key, flops in GPU_PEAK_FLOPS:
        if key in device_name:
            return flops
    return None


@functools.cache
def measure_matmul_peak(
    size: int = 1024, dtype: torch.dtype = torch.float32, seconds: float = 0.5
) -> float:
    """FLOP/s of the fastest of repeated [size x size] @ [size x size] products on the CPU.

    Cached: measured once per process, with the thread count that training uses. The best
    repetition, not the mean, so a neighbour's burst of work lowers the estimate as little as
    possible.
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: thread pool start, page faults
    flops = 2 * size**3
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, flops / max(time.perf_counter() - start, 1e-12))
    return best


def peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s of one `device`: the table for a GPU (None if unknown), measured for a CPU."""
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return measure_matmul_peak()
    return None


def model_flops_utilization(
    flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float, devices: int = 1
) -> float:
    """Share (0..1) of `devices` x peak that `tokens_per_s` training tokens per second achieve."""
    if peak_flops_per_device <= 0 or devices < 1:
        raise ValueError("peak FLOP/s must be positive and devices at least 1")
    return flops_per_token * tokens_per_s / (peak_flops_per_device * devices)
