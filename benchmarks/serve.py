"""`llmos bench serve`: serving throughput and latency of the kernel engine, in this process.

Workload (as `vllm bench serve` with an infinite request rate): N processes spawned at once, each
with `--input-len` random prompt tokens and exactly `--output-len` output tokens (EOS ignored).
Reported: request and output-token throughput, TTFT / TPOT / ITL p50 and p99, preemptions, KV
usage (peak blocks, share of allocated slots holding tokens), prefix-cache hits.
`--baseline sequential` runs the first few of the same processes one at a time and prints the
ratio of output throughputs.

`--overhead 256,1024`: kernel time per step with that many processes decoding, without the
model: schedule (policy, block allocation, batch building) and commit (append, detokenise, stop
checks), with the step's tokens supplied by the benchmark instead of a forward pass.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time

from ..drivers.sampler import SamplingParams


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def prompts(n: int, length: int, vocab: int, seed: int, shared_prefix: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lo = min(260, vocab // 2)            # skip control and byte tokens of small vocabularies
    prefix = [rng.randrange(lo, vocab) for _ in range(shared_prefix)]
    return [prefix + [rng.randrange(lo, vocab) for _ in range(length - shared_prefix)] for _ in range(n)]


def run_workload(engine, ids: list[list[int]], output_len: int, params=None) -> dict:
    """Spawn every prompt at once, step until all exit; per-token timestamps from commit."""
    params = params or SamplingParams(max_tokens=output_len, ignore_eos=True)
    t0 = time.perf_counter()
    procs = [engine.spawn(p, params, command="bench") for p in ids]
    last = {p.pid: None for p in procs}
    itl, peak_used, util, sched_s, steps = [], 0, [], 0.0, 0
    while True:
        ts = time.perf_counter()
        plan = engine.schedule()
        sched_s += time.perf_counter() - ts
        if plan is None:
            break
        engine.commit(plan, engine.execute(plan))
        now = time.perf_counter()
        for p, _, _ in plan.entries:
            n = len(p.output_ids)
            if n and last.get(p.pid) is not None and n > last[p.pid][0]:
                itl.append(now - last[p.pid][1])
            if n:
                last[p.pid] = (n, now)
        steps += 1
        if steps % 8 == 1:
            s = engine.kv.stats()
            peak_used = max(peak_used, s["used"])
            util.append(s["slot_utilisation"])
    wall = time.perf_counter() - t0
    ttft = [p.stats.first_token_at - p.stats.arrival for p in procs]
    tpot = [(p.stats.last_token_at - p.stats.first_token_at) / (len(p.output_ids) - 1)
            for p in procs if len(p.output_ids) > 1]
    out_tokens = sum(len(p.output_ids) for p in procs)
    kv = engine.kv.stats()
    for p in procs:
        engine.reap(p.pid)
    ms = 1e3
    return {
        "requests": len(procs), "duration_s": wall, "steps": steps,
        "request_throughput": len(procs) / wall, "output_throughput": out_tokens / wall,
        "total_token_throughput": (out_tokens + sum(map(len, ids))) / wall,
        "ttft_ms": {"mean": statistics.fmean(ttft) * ms, "p50": pct(ttft, 50) * ms, "p99": pct(ttft, 99) * ms},
        "tpot_ms": {"mean": statistics.fmean(tpot) * ms if tpot else None,
                    "p50": pct(tpot, 50) * ms, "p99": pct(tpot, 99) * ms},
        "itl_ms": {"mean": statistics.fmean(itl) * ms if itl else None,
                   "p50": pct(itl, 50) * ms, "p99": pct(itl, 99) * ms},
        "preemptions": sum(p.stats.preemptions for p in procs),
        "swapped_blocks": kv["swapped_out"],
        "kv_blocks_total": kv["total"], "kv_blocks_peak_used": peak_used,
        "kv_slot_utilisation": statistics.fmean(util) if util else None,
        "prefix_hit_rate": kv["prefix_hit_rate"],
        "schedule_ms_per_step": sched_s / max(1, steps) * ms,
    }


def sequential(engine, ids: list[list[int]], output_len: int) -> dict:
    """The same processes one at a time: output tokens per second."""
    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    t0, out = time.perf_counter(), 0
    for p in ids:
        proc = engine.spawn(p, params, command="bench-seq")
        engine.run_until_idle()
        out += len(proc.output_ids)
        engine.reap(proc.pid)
    wall = time.perf_counter() - t0
    return {"requests": len(ids), "duration_s": wall, "output_throughput": out / wall}


def overhead(model, running: int, input_len: int, steps: int, config_kw: dict) -> dict:
    """Kernel time per decode step with `running` processes, tokens supplied without a forward."""
    from ..kernel.engine import Engine, StepResult
    from ..kernel.param import KernelConfig

    bs = 16
    blocks = running * (-(-(input_len + steps + 8) // bs) + 1) + 8
    cfg = KernelConfig(**{**config_kw, "num_blocks": blocks, "max_running": running,
                          "max_step_tokens": running * input_len})   # prefill all in one step
    engine = Engine(model, cfg)
    gc.freeze()     # as the kernel's boot does (kernel/main.py)
    vocab = model.tokenizer.vocab_size
    for ids in prompts(running, input_len, vocab, seed=1):
        engine.spawn(ids, SamplingParams(max_tokens=steps + 4, ignore_eos=True))
    tok = min(300, vocab - 1)
    sched_t, commit_t = [], []
    while len(sched_t) < steps:
        t = time.perf_counter()
        plan = engine.schedule()
        t1 = time.perf_counter()
        fake = StepResult([tok if s.want_logits else None for s in plan.seqs], [None] * len(plan.seqs))
        t2 = time.perf_counter()
        engine.commit(plan, fake)
        t3 = time.perf_counter()
        if all(n == 1 for _, _, n in plan.entries) and len(plan.entries) == running:
            sched_t.append(t1 - t)
            commit_t.append(t3 - t2)
    return {"running": running, "schedule_ms": statistics.median(sched_t) * 1e3,
            "commit_ms": statistics.median(commit_t) * 1e3,
            "schedule_p99_ms": pct(sched_t, 99) * 1e3}


def take_turns(engine, server, first: dict, ids: list[list[int]], args, vocab: int) -> list[dict]:
    """--vs with --rounds: round 1 pairs llmos's run (`first`) with llama-server's on `ids`; each
    later round runs llmos's engine, then llama-server, on new prompts (seed + round: no prefix-cache
    hits from an earlier round on either side). server(): a fresh llama-server (a context manager)
    each round: one that has served a round left requests of the next unanswered (llama.cpp
    0.3.36's server, -np 64). engine: None for one round. Returns per round {llmos, llama_server,
    ratio} (output tok/s ratio)."""
    rounds = []
    for r in range(args.rounds):
        if r:
            ids = prompts(args.num_procs, args.input_len, vocab, args.seed + r, args.shared_prefix)
        ours = first if r == 0 else run_workload(engine, ids, args.output_len)
        with server() as srv:
            theirs = srv.serve(ids, args.output_len)
        rounds.append({"llmos": ours, "llama_server": theirs,
                       "ratio": ours["output_throughput"] / theirs["output_throughput"]})
    return rounds


def main(argv: list[str]) -> int:
    if "--interactive" in argv:         # a nice -10 request idle vs under load (benchmarks/interactive.py)
        from .interactive import main as interactive
        return interactive(argv)
    if "--via" in argv:                 # `--via http`: through the gateway, next to the ABI (benchmarks/http.py)
        from .http import main as via
        return via(argv)
    ap = argparse.ArgumentParser(prog="llmos bench serve", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or .gguf path (default: smollm2)")
    ap.add_argument("-n", "--num-procs", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--shared-prefix", type=int, default=0, help="leading prompt tokens all share")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-running", type=int, default=256)
    ap.add_argument("--max-step-tokens", type=int, default=None)
    ap.add_argument("--kv-blocks", type=int, default=None)
    ap.add_argument("--preempt", default="auto", choices=["auto", "swap", "recompute"])
    ap.add_argument("--baseline", choices=["sequential"], default=None)
    ap.add_argument("--baseline-n", type=int, default=4, help="processes the baseline runs")
    ap.add_argument("--overhead", default=None, metavar="N,N",
                    help="only measure kernel time per step with these numbers running")
    ap.add_argument("--overhead-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--vs", nargs=2, metavar=("llama-server", "BINARY"), default=None,
                    help="also run llama-server (benchmarks/llamaserver.py says how to build it) on the "
                         "same file and workload, with as many slots as processes")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --vs: llmos and llama-server take turns this many times, new prompts each "
                         "round; the ratio printed is the rounds' median")
    ap.add_argument("--grammar", choices=["json"], default=None,
                    help="constrained vs unconstrained at batch 1 and N (benchmarks/grammar.py)")
    args = ap.parse_args(argv[1:])

    from ..drivers.catalog import DEFAULT_MODEL, resolve
    from ..drivers.gguf import ModelFileError
    from ..drivers.llama import LlamaModel
    from ..kernel.engine import Engine
    from ..kernel.param import KernelConfig

    try:
        path = resolve(args.model or DEFAULT_MODEL, pull_missing=True)
        model = LlamaModel.load(str(path), dtype=args.dtype, device=args.device)
        kw = dict(max_running=args.max_running, preempt_mode=args.preempt)
        if args.max_step_tokens:
            kw["max_step_tokens"] = args.max_step_tokens
        config = KernelConfig(num_blocks=args.kv_blocks, **kw).validate()
    except (ModelFileError, ValueError, OSError) as e:
        print(f"llmos bench serve: {e}", file=sys.stderr)
        return 1
    head = {"model": path.name, "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
            "weights": model.weight_format() if hasattr(model, "weight_format") else None}

    if args.overhead:
        rows = [overhead(model, int(n), args.input_len, args.overhead_steps, kw)
                for n in args.overhead.split(",")]
        if args.json:
            print(json.dumps({**head, "overhead": rows}))
        else:
            print(f"kernel time per decode step ({head['model']}, no forward)")
            for r in rows:
                print(f"  {r['running']:>5} running: schedule {r['schedule_ms']:.3f} ms "
                      f"(p99 {r['schedule_p99_ms']:.3f})  commit {r['commit_ms']:.3f} ms")
        return 0

    engine = Engine(model, config)
    gc.freeze()     # as the kernel's boot does (kernel/main.py): model and pool out of full GC passes
    if args.grammar:
        from . import grammar
        vocab = model.tokenizer.vocab_size
        grammar.report(grammar.compare(engine, lambda n, seed: prompts(n, args.input_len, vocab, seed),
                                       args, run_workload), head, args.json)
        return 0
    vocab = model.tokenizer.vocab_size
    ids = prompts(args.num_procs, args.input_len, vocab, args.seed, args.shared_prefix)
    res = {**head, "num_procs": args.num_procs, "input_len": args.input_len,
           "output_len": args.output_len, "kernel": run_workload(engine, ids, args.output_len)}
    if args.baseline:
        base = sequential(engine, ids[:args.baseline_n], args.output_len)
        res["baseline"] = {"kind": args.baseline, **base,
                           "ratio": res["kernel"]["output_throughput"] / base["output_throughput"]}
    if args.vs:
        if args.vs[0] != "llama-server" or args.rounds < 1:
            print("llmos bench serve: --vs takes 'llama-server BINARY', --rounds at least 1", file=sys.stderr)
            return 1
        import torch
        from .llamaserver import LlamaServer
        if args.rounds == 1:
            del engine, model
            gc.collect()               # the llmos model and pool are not needed while it runs
        def server():
            return LlamaServer(args.vs[1], str(path), args.num_procs, args.input_len + args.output_len + 16,
                               torch.get_num_threads())
        try:
            res["rounds"] = take_turns(engine if args.rounds > 1 else None, server, res["kernel"], ids, args, vocab)
        except (OSError, RuntimeError) as e:
            print(f"llmos bench serve: llama-server: {e}", file=sys.stderr)
            return 1
        res["llama_server"] = {**res["rounds"][0]["llama_server"],
                               "ratio": statistics.median(r["ratio"] for r in res["rounds"])}
    if args.json:
        print(json.dumps(res))
        return 0
    k = res["kernel"]
    print(f"{head['model']} on {head['device']} ({head['weights'] or head['dtype']}): {args.num_procs} processes, "
          f"{args.input_len} in / {args.output_len} out")
    print(f"  duration            {k['duration_s']:.2f} s in {k['steps']} steps")
    print(f"  request throughput  {k['request_throughput']:.2f} req/s")
    print(f"  output throughput   {k['output_throughput']:.1f} tok/s   "
          f"(total {k['total_token_throughput']:.1f} tok/s)")
    for name in ("ttft", "tpot", "itl"):
        d = k[f"{name}_ms"]
        print(f"  {name.upper():<5} ms           p50 {d['p50']:.1f}   p99 {d['p99']:.1f}")
    print(f"  preemptions         {k['preemptions']}  (blocks swapped out {k['swapped_blocks']})")
    print(f"  KV blocks           peak {k['kv_blocks_peak_used']} of {k['kv_blocks_total']}, "
          f"slots holding tokens {100 * (k['kv_slot_utilisation'] or 0):.1f} %")
    print(f"  prefix hit rate     {100 * k['prefix_hit_rate']:.1f} %")
    print(f"  schedule            {k['schedule_ms_per_step']:.3f} ms per step")
    if args.baseline:
        b = res["baseline"]
        print(f"  baseline sequential {b['output_throughput']:.1f} tok/s over {b['requests']} processes; "
              f"ratio {b['ratio']:.2f}x")
    if args.vs:
        v = res["llama_server"]
        print(f"  llama-server -np {args.num_procs}: {v['output_throughput']:.1f} tok/s ({v['duration_s']:.1f} s); "
              f"llmos / llama-server {res['rounds'][0]['ratio']:.2f}x")
        if args.rounds > 1:
            for i, r in enumerate(res["rounds"]):
                print(f"  round {i + 1}: llmos {r['llmos']['output_throughput']:.1f} tok/s, llama-server "
                      f"{r['llama_server']['output_throughput']:.1f} tok/s: {r['ratio']:.2f}x")
            print(f"  median of {args.rounds} rounds: llmos / llama-server {v['ratio']:.2f}x")
    return 0
