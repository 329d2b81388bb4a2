"""What this CPU can do, read once at start-up: the instruction-set extensions that decide which
matmul kernel the driver builds (drivers/quant.py), shown by `uname`, the bench header and the
kernel log.

``cpu_features()`` returns a dict: ``model`` (the CPU's name), ``cores`` (logical CPUs), and one
boolean per extension that matters here (avx2, fma, f16c, avx512f, avx512bw, avx512vl,
avx512_vnni, avx_vnni, avx512_bf16, amx_bf16, amx_int8). Linux only reads /proc/cpuinfo; elsewhere
the flags are all False and the kernels fall back to their scalar path.
"""

from __future__ import annotations

import functools
import os
import platform

FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
         "avx512_bf16", "amx_bf16", "amx_int8")


def parse_cpuinfo(text: str) -> dict:
    """Features from the text of /proc/cpuinfo (the first processor's 'flags' and 'model name')."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    out = {"model": model or platform.processor() or platform.machine()}
    out.update({f: f in flags for f in FLAGS})
    return out


@functools.cache
def cpu_features() -> dict:
    """This machine's CPU features (cached for the process)."""
    try:
        with open("/proc/cpuinfo") as f:
            feats = parse_cpuinfo(f.read())
    except OSError:
        feats = parse_cpuinfo("")
    feats["cores"] = os.cpu_count() or 1
    return feats


def isa_summary(feats: dict | None = None) -> str:
    """One short line: the extensions present, e.g. 'avx2 fma f16c' or 'avx512_vnni amx_int8 ...'."""
    feats = cpu_features() if feats is None else feats
    return " ".join(f for f in FLAGS if feats.get(f)) or "no vector extensions"
