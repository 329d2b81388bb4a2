"""`llmos bench forward`: the driver's decode and prefill speed, per dtype and batch size,
optionally next to llama.cpp on the same GGUF with the same threads (`--vs llama.cpp`).

Decode: each of B sequences holds `--context` tokens in the paged KV pool and brings one new
token; one step is one ``LlamaModel.forward``. Prefill: one fresh sequence of `--prefill` tokens.
Printed next to batch 1 is the machine's bound: weight bytes one step streams ÷ memory bandwidth
measured in the same run (a large tensor copy). `--count-ops` counts the torch ops of one decode
step (a TorchDispatchMode counter) and the quantized-kernel calls. The header names the CPU, its
features (drivers/cpu.py) and the kernel code path (drivers/quant.py).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..drivers.catalog import DEFAULT_MODEL, resolve
from ..drivers.cpu import cpu_features, isa_summary
from ..drivers.device import pick_device
from ..drivers.gguf import ModelFileError
from ..drivers.llama import LlamaModel, SeqInput
from ..drivers.quant import kernel_isa, pool_stragglers


def memory_bandwidth(nbytes: int = 1 << 29, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Bytes/s of a large copy on `device` (read + write counted), best of `repeats`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if src.is_cuda else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def _sync(model: LlamaModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def decode_step_seconds(model: LlamaModel, batch: int, context: int, steps: int,
                        block_size: int = 16) -> float:
    """Median seconds of one decode step of `batch` sequences at `context` tokens, the logits into
    one buffer as the kernel's runner keeps them (drivers/runner.py)."""
    per_seq = -(-(context + steps + 4) // block_size)
    kv = model.new_kv(batch * per_seq + 1, block_size)
    tables = [list(range(1 + i * per_seq, 1 + (i + 1) * per_seq)) for i in range(batch)]
    logits = torch.empty(batch * model.config.vocab_size) if model.device.type == "cpu" else None
    times = []
    for step in range(steps + 2):
        seqs = [SeqInput([1 + (i + step) % 100], context + step, tables[i]) for i in range(batch)]
        t = time.perf_counter()
        model.forward(seqs, kv, logits_out=logits)
        _sync(model)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def prefill_seconds(model: LlamaModel, n: int, repeats: int = 3, block_size: int = 16) -> float:
    """Best seconds of prefilling one fresh sequence of n tokens."""
    blocks = -(-n // block_size)
    kv = model.new_kv(blocks + 1, block_size)
    seq = SeqInput([1 + i % 100 for i in range(n)], 0, list(range(1, blocks + 1)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        model.forward([seq], kv)
        _sync(model)
        best = min(best, time.perf_counter() - t)
    return best


class OpCounter(TorchDispatchMode):
    """Counts aten ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(model: LlamaModel, context: int = 32) -> tuple[int, int]:
    """(torch ops, calls from Python into the C kernels) of one batch-1 decode step: a fused
    layer (drivers/fused.py) counts as one call, as does a QLinear (all its weight parts) and the
    replay of a captured step (drivers/cudagraph.py). The step runs once uncounted first (on a
    GPU that captures it)."""
    from ..drivers import cudagraph, quant
    lib = quant.kernels()
    calls = collections.Counter()
    patched = []                                    # (object, attribute, original)

    def count(obj, attr):
        fn = getattr(obj, attr)
        patched.append((obj, attr, fn))
        setattr(obj, attr, lambda *a, _fn=fn: (calls.update([attr]), _fn(*a))[1])

    if lib is not None:
        for name in ("llmos_rope", "llmos_dequant_rows", "llmos_kv_store", "llmos_paged_attention"):
            count(lib, name)
        for lin in {id(m): m for m in model._linears()}.values():
            if isinstance(lin, quant.QLinear):
                count(lin, "_call")
        fused = model._fused_layers() if hasattr(model, "_fused_layers") else None
        if fused is not None:
            count(fused, "_layer")
    count(cudagraph.StaticStep, "run")
    kv = model.new_kv(-(-(context + 2) // 16) + 1, 16)
    seq = SeqInput([5], context, list(range(1, -(-(context + 2) // 16) + 1)))
    model.forward([seq], kv)
    calls.clear()
    try:
        with OpCounter() as counter:
            model.forward([seq], kv)
    finally:
        for obj, attr, fn in reversed(patched):
            setattr(obj, attr, fn)
    return sum(counter.ops.values()), sum(calls.values())


def compile_layers(model: LlamaModel, context: int) -> float:
    """Replaces model._compute (the layers and head of an eager step) by torch.compile's build of
    it, dynamic shapes; returns the seconds the compile and a decode and prefill warm-up took."""
    t = time.perf_counter()
    model._compute = torch.compile(model._compute, dynamic=True)
    decode_step_seconds(model, 2, context, 1)
    prefill_seconds(model, 64, repeats=1)
    return time.perf_counter() - t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench forward", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batch", default="1,64", help="comma-separated decode batch sizes")
    ap.add_argument("--context", type=int, default=256, help="tokens already in each sequence's KV")
    ap.add_argument("--prefill", type=int, default=512, help="prefill length (0: skip)")
    ap.add_argument("--dtype", default="auto,fp32", help="comma-separated: auto (a8 or a13 by the model), a8 (quantized"
                    " weights, 8-bit activations), a13 (quantized, 13-bit activations), fp32, bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--vs", choices=("llama.cpp",), help="also run llama.cpp on the same file")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --vs: the first dtype and llama.cpp take turns this many times; ratios per "
                         "round and their median")
    ap.add_argument("--count-ops", action="store_true", help="count torch ops per decode step")
    ap.add_argument("--compile", action="store_true",
                    help="also time the torch path's layers under torch.compile ('/compiled' rows)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv[1:])
    if args.rounds < 1 or (args.rounds > 1 and not args.vs):
        print("llmos bench forward: --rounds takes a count of at least 1, more than 1 only with --vs")
        return 1
    try:
        path = resolve(args.model, pull_missing=True)
        batches = [int(b) for b in args.batch.split(",")]
    except (ModelFileError, ValueError) as e:
        print(f"llmos bench forward: {e}")
        return 1
    threads = torch.get_num_threads()
    try:
        device = pick_device(args.device)
    except ValueError as e:
        print(f"llmos bench forward: {e}")
        return 1
    bandwidth = memory_bandwidth(device=device)
    say = (lambda *a, **k: None) if args.json else (lambda *a, **k: print(*a, **k, flush=True))
    say(f"cpu {cpu_features()['model']} ({isa_summary()})  kernels {kernel_isa()}  threads {threads}")
    if device.type == "cuda":
        say(f"gpu {torch.cuda.get_device_name(device)}  torch {torch.__version__}")
    say(f"model {path.name}  context {args.context}  memory bandwidth {bandwidth / 1e9:.1f} GB/s")
    say(f"{'engine':<20} {'figure':<12} {'ms':>9} {'tok/s':>9} {'bound tok/s':>12}")
    results = []

    solo = [pool_stragglers()]

    def record(engine, figure, sec, tokens, bound=None, round_=1):
        episodes, solo[0] = pool_stragglers() - solo[0], pool_stragglers()
        results.append({"engine": engine, "figure": figure, "ms": sec * 1e3, "tokens_per_s": tokens / sec,
                        "bound_tokens_per_s": bound, "pool_solo_episodes": episodes, "round": round_})
        say(f"{engine:<20} {figure:<12} {sec * 1e3:>9.2f} {tokens / sec:>9.1f} "
            f"{'' if bound is None else f'{bound:12.1f}'}"
            f"{f'  (thread pool went solo {episodes}x: a worker lagged)' if episodes else ''}")

    labels: dict[str, str] = {}     # dtype -> its engine's name, one per dtype asked for

    def llmos_rows(dtype, round_=1):
        """Loads the model in dtype and records its decode rows and prefill (every mode in round 1)."""
        gc.unfreeze()   # the last model's objects collectable again
        model = LlamaModel.load(str(path), dtype=dtype, device=str(device))
        gc.freeze()     # as the kernel's boot does (kernel/main.py): the model out of full GC passes
        if dtype not in labels:     # the arithmetic it runs; the dtype asked for too where two run the same
            name = f"llmos-{'a8' if model.act8 else 'a13'}" if model.quantized else f"llmos-{dtype}"
            labels[dtype] = name if name not in labels.values() else f"{name}({dtype})"
        engine = labels[dtype]
        if round_ == 1:
            say(f"# {engine}: {model.weight_format()}, weights {model.weight_bytes() / 1e6:.1f} MB")
        # on a GPU, decode with CUDA graphs (drivers/cudagraph.py) and without ('/eager')
        modes = [(engine, True), (f"{engine}/eager", False)] if model.device.type == "cuda" else [(engine, True)]
        if args.compile and model.quantized and round_ == 1:
            say(f"# {engine}: --compile left out: each layer is one C call, nothing for torch.compile to fuse")
        elif args.compile and round_ == 1:
            modes.append((f"{engine}/compiled", False))
        for name, graphs in modes[:1] if round_ > 1 else modes:
            model.cuda_graphs = graphs
            compiled = name.endswith("/compiled")
            if compiled:
                say(f"# {name}: compiled and warmed in {compile_layers(model, args.context):.1f} s")
            elif args.count_ops and round_ == 1:
                ops, calls = count_ops(model)
                results.append({"engine": name, "torch_ops_per_decode_step": ops, "kernel_calls": calls})
                say(f"# {name}: one batch-1 decode step = {ops} torch ops + {calls} kernel calls")
            for b in batches:
                sec = decode_step_seconds(model, b, args.context, args.steps)
                record(name, f"decode b{b}", sec, b,
                       bandwidth / model.decode_weight_bytes(b) if b == 1 else None, round_)
            if args.prefill and name != f"{engine}/eager":     # a GPU's prefill is eager in both modes
                record(name, f"prefill {args.prefill}", prefill_seconds(model, args.prefill), args.prefill,
                       round_=round_)

    def llama_cpp_rows(round_):
        from .llamacpp import measure
        tok_s = measure(str(path), threads, max(args.prefill, args.context + max(batches) * (args.steps + 4)) + 64,
                        batches, args.context, args.steps, args.prefill)
        for b in batches:
            record("llama.cpp", f"decode b{b}", b / tok_s[f"decode b{b}"], b, round_=round_)
        if args.prefill:
            record("llama.cpp", f"prefill {args.prefill}", args.prefill / tok_s[f"prefill {args.prefill}"],
                   args.prefill, round_=round_)

    for dtype in args.dtype.split(","):
        llmos_rows(dtype)
    if args.vs:
        llama_cpp_rows(1)
        for round_ in range(2, args.rounds + 1):
            say(f"# round {round_}")
            llmos_rows(args.dtype.split(",")[0], round_)
            llama_cpp_rows(round_)
        say("ratios (llmos / llama.cpp, tok/s):")
        base = {(r["round"], r["figure"]): r["tokens_per_s"] for r in results if r.get("engine") == "llama.cpp"}
        by_row = collections.defaultdict(list)
        for r in results:
            if r.get("engine", "").startswith("llmos") and (r.get("round"), r.get("figure")) in base:
                r["vs_llama_cpp"] = r["tokens_per_s"] / base[(r["round"], r["figure"])]
                by_row[(r["engine"], r["figure"])].append(r["vs_llama_cpp"])
        for (engine, figure), ratios in by_row.items():
            rounds = f"   median of {len(ratios)} rounds: {statistics.median(ratios):.2f}x" if len(ratios) > 1 else ""
            say(f"  {engine:<20} {figure:<12} {' / '.join(f'{x:.2f}x' for x in ratios)}{rounds}")
    if args.json:
        print(json.dumps({"model": path.name, "context": args.context, "threads": threads,
                          "cpu": cpu_features(), "kernels": kernel_isa(),
                          "memory_bandwidth": bandwidth, "results": results}))
    return 0
