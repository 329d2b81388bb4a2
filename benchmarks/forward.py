"""`llmos bench forward`: decode-step time of the driver, per dtype and batch size.

Each of B sequences holds `--context` tokens in the paged KV pool and brings one new token; one
step is one ``LlamaModel.forward``. Printed next to each batch-1 figure is the machine's bound:
weight bytes one step streams ÷ memory bandwidth measured in the same run (a large tensor copy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ..drivers.catalog import DEFAULT_MODEL, resolve
from ..drivers.gguf import ModelFileError
from ..drivers.llama import LlamaModel, SeqInput


def memory_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes/s of a large copy (read + write counted), best of `repeats`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def decode_step_seconds(model: LlamaModel, batch: int, context: int, steps: int,
                        block_size: int = 16) -> float:
    """Median seconds of one decode step of `batch` sequences at `context` tokens."""
    per_seq = -(-(context + steps + 4) // block_size)
    kv = model.new_kv(batch * per_seq + 1, block_size)
    tables = [list(range(1 + i * per_seq, 1 + (i + 1) * per_seq)) for i in range(batch)]
    times = []
    for step in range(steps + 2):
        seqs = [SeqInput([1 + (i + step) % 100], context + step, tables[i]) for i in range(batch)]
        t = time.perf_counter()
        model.forward(seqs, kv)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench forward", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batch", default="1,8,64,256", help="comma-separated batch sizes")
    ap.add_argument("--context", type=int, default=256, help="tokens already in each sequence's KV")
    ap.add_argument("--dtype", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv[1:])
    try:
        path = resolve(args.model, pull_missing=True)
        batches = [int(b) for b in args.batch.split(",")]
    except (ModelFileError, ValueError) as e:
        print(f"llmos bench forward: {e}")
        return 1
    bandwidth = memory_bandwidth()
    results = []
    if not args.json:
        print(f"model {path.name}  context {args.context}  threads {torch.get_num_threads()}  "
              f"memory bandwidth {bandwidth / 1e9:.1f} GB/s")
        print(f"{'dtype':<6} {'batch':>5} {'ms/step':>9} {'tok/s':>9} {'bound tok/s':>12}")
    for dtype in args.dtype.split(","):
        model = LlamaModel.load(str(path), dtype=dtype, device=args.device)
        for b in batches:
            sec = decode_step_seconds(model, b, args.context, args.steps)
            bound = bandwidth / model.decode_weight_bytes(b) if b == 1 else None
            results.append({"dtype": dtype, "batch": b, "ms_per_step": sec * 1e3,
                            "tokens_per_s": b / sec, "bound_tokens_per_s": bound})
            if not args.json:
                print(f"{dtype:<6} {b:>5} {sec * 1e3:>9.2f} {b / sec:>9.1f} "
                      f"{'' if bound is None else f'{bound:12.1f}'}", flush=True)
        del model
    if args.json:
        print(json.dumps({"model": path.name, "context": args.context, "device": args.device,
                          "memory_bandwidth": bandwidth, "results": results}))
    return 0
