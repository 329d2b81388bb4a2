"""`llmos bench KIND ...`: one table from benchmark name to the module that runs it."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "forward": ("llmos.benchmarks.forward", "decode-step speed of the driver per dtype and batch"),
    "serve":   ("llmos.benchmarks.serve",   "serving throughput and latency (in-process or through the ABI)"),
    "syscall": ("llmos.benchmarks.syscall", "syscall round-trip latency next to a raw pyzmq echo"),
    "checkpoint": ("llmos.benchmarks.checkpoint", "checkpoint/restore time and size vs re-prefilling"),
    "boot":    ("llmos.benchmarks.boot",    "serve --daemon to the first token, and RSS at idle"),
    "matmul":  ("llmos.benchmarks.matmul",  "GFLOP/s of the quantized matmul kernels per type, tokens, threads"),
    "quality": ("llmos.benchmarks.quality", "reference tokens and perplexity per path and matmul input grid"),
}


def main(argv: list[str]) -> int:
    rest = argv[1:]
    if not rest or rest[0] not in BENCHMARKS:
        print("usage: llmos bench {" + ",".join(BENCHMARKS) + "} [OPTIONS]", file=sys.stderr)
        for name, (_, help_) in BENCHMARKS.items():
            print(f"  {name:<8} {help_}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[rest[0]][0])
    return int(module.main(rest) or 0)
