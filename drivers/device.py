"""Where the model runs and how much KV memory fits there.

CPU by default, CUDA when present and asked for (or `auto`). Free memory comes from psutil on the
host and from ``torch.cuda.mem_get_info`` / pynvml on a GPU; the kernel sizes its KV pool with
``kv_blocks_that_fit``.
"""

from __future__ import annotations

import functools

import psutil
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# LlamaModel.load's dtype names (the --dtype choices): auto, quantized weights with 8-bit or 13-bit
# activations, or every matrix dequantised once.
MODEL_DTYPES = ("auto", "a8", "a13", "fp32", "bf16")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → cuda if available, else cpu. Raises ValueError for an unusable name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' asked for, but torch sees no CUDA GPU")
        return torch.device(name)
    raise ValueError(f"unknown device '{name}' (use auto, cpu or cuda[:N])")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' → bf16 where matmuls run fast in bf16, fp32 otherwise."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}' (use auto, fp32 or bf16)")
    return DTYPES[name]


def memory_info(device: torch.device) -> dict:
    """Free/total bytes of host memory and, on a GPU, of the device."""
    vm = psutil.virtual_memory()
    info = {"host_total": vm.total, "host_available": vm.available}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(gpu_total=total, gpu_free=free, gpu_name=torch.cuda.get_device_name(device))
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            info["gpu_used_all_processes"] = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        except Exception:
            pass  # pynvml is optional detail; torch's numbers above are authoritative
    return info


def gpus() -> list[dict]:
    """Memory of each GPU as NVML reports it (all processes); [] without NVML or a GPU."""
    try:
        import pynvml
        pynvml.nvmlInit()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            m = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                        "total": m.total, "used": m.used, "free": m.free})
        return out
    except Exception:           # no driver, no library, no device: nothing to report
        return []


def kv_blocks_that_fit(bytes_per_block: int, fraction: float, device: torch.device) -> int:
    """How many KV blocks fit in `fraction` of the device's free memory (at least 1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"KV memory fraction must be in (0, 1], got {fraction}")
    info = memory_info(device)
    free = info["gpu_free"] if device.type == "cuda" else info["host_available"]
    return max(1, int(free * fraction) // bytes_per_block)
