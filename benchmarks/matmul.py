"""`llmos bench matmul`: GFLOP/s of the quantized matmul kernels on random weights of each type.

    llmos bench matmul --shape 3072x2048 --tokens 1,64 --threads 1,2 [--types Q4_1,Q8_0] [--isa avx2] [--a8]

One QLinear per type (drivers/quant.py: row-grouped where the kernels have the layout, Q5_K in
GGML's blocks), its fp16 scales set to 0.01 and its quants random; the best of five timed rounds
of ~0.2 s ("pool went solo": the kernels' thread pool ran alone for a while because a worker
lagged, as `bench forward` reports it). `--isa` builds another code path of the kernels for an A/B
run on the same CPU: one of drivers/quant.py's ISA_BUILDS (avx2 on an AVX-512 CPU, no-amx on an
AMX one, avx512-simde, scalar), or compiler flags such as `--isa=-mno-avx512vnni`. `--a8` times each
type a second time with 8-bit activations (the 'a8' dtype's QLinear; its rows say 'a8'), where the
kernels have vpdpbusd. The kernels' pool threads are fixed once per process, so `--threads` runs each
count in a child process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

# GGML type: (id, bytes a block, weights a block, offsets of the block's fp16 scales)
TYPES = {"Q4_0": (2, 18, 32, (0,)), "Q4_1": (3, 20, 32, (0, 2)), "Q5_0": (6, 22, 32, (0,)),
         "Q5_1": (7, 24, 32, (0, 2)), "Q8_0": (8, 34, 32, (0,)), "Q4_K": (12, 144, 256, (0, 2)),
         "Q5_K": (13, 176, 256, (0, 2)), "Q6_K": (14, 210, 256, (208,))}


def random_weights(name: str, N: int, K: int, seed: int = 0):
    import numpy as np
    qtype, bb, be, scales = TYPES[name]
    w = np.random.default_rng(seed).integers(0, 256, size=(N, K // be, bb), dtype=np.uint8)
    for o in scales:
        w[:, :, o:o + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return qtype, w.reshape(N, -1)


def run_one(types: list[str], N: int, K: int, tokens: list[int], threads: int, a8: bool = False) -> None:
    import torch
    from ..drivers import quant
    lib = quant.kernels()
    if lib is None:
        raise SystemExit("llmos bench matmul: the quantized kernels could not be built (see the log)")
    lib.llmos_quant_set_threads(threads)
    modes = [False, True] if a8 and quant.act8_supported() else [False]
    if a8 and len(modes) == 1:
        print("# --a8: these kernels have no vpdpbusd; 13-bit rows only", flush=True)
    for T in tokens:
        x = torch.randn(T, K, generator=torch.Generator().manual_seed(T))
        for name, act8 in ((n, m) for n in types for m in modes):
            lin = quant.QLinear([random_weights(name, N, K)], K, act8=act8)
            for _ in range(3):
                lin(x)
            best, n, solo = float("inf"), 3, quant.pool_stragglers()
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(n):
                    lin(x)
                best = min(best, (time.perf_counter() - t0) / n)
                n = max(1, int(0.2 / best))
            solo = quant.pool_stragglers() - solo
            kernels = quant.kernel_isa() + (" a8" if act8 else "")
            print(f"{kernels:<19} {threads:>7} {T:>6} {name:<5} {best * 1e3:9.3f} ms "
                  f"{2 * N * K * T / best / 1e9:8.1f} GFLOP/s" + (f"  (pool went solo {solo}x)" if solo else ""),
                  flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench matmul", description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="3072x2048", help="N x K of the weight matrix")
    ap.add_argument("--tokens", default="1,64", help="comma-separated token counts (1: the GEMV)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--types", default="Q4_1,Q8_0,Q4_K,Q6_K", help=f"of {','.join(TYPES)}")
    ap.add_argument("--isa", default="", help="another build of the kernels: an ISA_BUILDS name or -m flags")
    ap.add_argument("--a8", action="store_true", help="also time each type with 8-bit activations (dtype a8)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv[1:])
    N, K = (int(v) for v in a.shape.lower().split("x"))
    types = a.types.split(",")
    bad = [t for t in types if t not in TYPES]
    if bad or K % 256 and any(TYPES[t][2] == 256 for t in types):
        ap.error(f"unknown types {bad}" if bad else "K-quants need K a multiple of 256")
    if a.isa:
        from ..drivers import quant
        if a.isa not in quant.ISA_BUILDS:
            quant.ISA_BUILDS[a.isa] = tuple(a.isa.split())
        os.environ["LLMOS_QUANT"] = a.isa
    if a.child:
        run_one(types, N, K, [int(t) for t in a.tokens.split(",")], a.child, a.a8)
        return 0
    from ..drivers.cpu import cpu_features, isa_summary
    print(f"cpu {cpu_features()['model']} ({isa_summary()})  weights {N} x {K}")
    print(f"{'kernels':<19} threads tokens type  {'time':>12} {'rate':>16}")
    for th in a.threads.split(","):
        cmd = [sys.executable, "-m", "llmos.benchmarks.matmul", *argv[1:], "--child", th]
        rc = subprocess.run(cmd).returncode
        if rc:
            return rc
    return 0


if __name__ == "__main__":         # the child of one thread count
    sys.exit(main(["matmul", *sys.argv[1:]]))
