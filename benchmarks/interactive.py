"""`llmos bench serve --interactive`: does priority buy responsiveness?

Through a real kernel (`llmos serve --daemon` on a temporary runtime dir, as `bench syscall`): a
short nice -10 request (a 20-word prompt, 16 tokens, EOS ignored) is timed alone (idle), then
while N background processes (--input-len random tokens, --output-len tokens) generate. Printed:
time to first token and time per token, idle vs loaded and their ratios (targets: TTFT ≤ 1.5x,
time per token ≤ 2x), the same request at nice 0 under the same load for comparison, and the
background's output throughput while nothing else runs vs while the nice -10 request runs (what
the latency goal costs the rest; kernel/latency.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from types import SimpleNamespace

from ..kernel.abi import Sys

PROMPT = ("In two short sentences, explain why the sky looks blue on a clear day and why sunsets "
          "often look red or orange to us.")


async def _probe(k, nice: int, tokens: int) -> dict:
    """One request: seconds to its first token, per token after it, and in all."""
    t0 = time.perf_counter()
    pid = await k.syscall(Sys.SPAWN, PROMPT, {"max_tokens": tokens, "ignore_eos": True},
                          {"nice": nice, "command": "interactive"})
    first = last = None
    while True:
        r = await k.read(pid)
        now = time.perf_counter()
        if r["text"]:
            first = first or now
            last = now
        if r["eof"]:
            break
    n = (await k.wait(pid))["tokens"]
    return {"ttft_s": first - t0, "tpot_s": (last - first) / max(n - 1, 1), "total_s": last - t0}


def _median(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


async def _background_tokens(k, pids: set[int]) -> int:
    return sum(p["tokens"] for p in await k.ps() if p["pid"] in pids)


async def measure(args) -> dict:
    from ..userland.lib import AsyncClient
    from .serve import prompts
    k = await AsyncClient.connect(client="bench-interactive")
    try:
        await _probe(k, -10, 4)                                                    # warm-up
        idle = _median([await _probe(k, -10, args.tokens) for _ in range(args.repeat)])
        u = await k.uname()
        ids = prompts(args.num_procs, args.input_len, u["model_config"]["vocab_size"], args.seed)
        params = {"max_tokens": args.output_len, "ignore_eos": True}
        pids = set(await asyncio.gather(*[k.spawn(p, params, command="background") for p in ids]))
        while any(p["tokens"] == 0 for p in await k.ps() if p["pid"] in pids):    # past the prefills
            await asyncio.sleep(0.2)
        t0, n0 = time.perf_counter(), await _background_tokens(k, pids)
        await asyncio.sleep(args.window)
        alone = (await _background_tokens(k, pids) - n0) / (time.perf_counter() - t0)
        loaded, during = [], []
        preempted0 = (await k.meminfo())["engine"].get("preempted_steps", 0)
        for _ in range(args.repeat):
            t0, n0 = time.perf_counter(), await _background_tokens(k, pids)
            loaded.append(await _probe(k, -10, args.tokens))
            during.append((await _background_tokens(k, pids) - n0) / (time.perf_counter() - t0))
        preempted = (await k.meminfo())["engine"].get("preempted_steps", 0) - preempted0
        nice0 = _median([await _probe(k, 0, args.tokens) for _ in range(args.repeat)])
        still = sum(1 for p in await k.ps() if p["pid"] in pids and p["state"] != "ZOMBIE")
        for pid in pids:
            try:
                await k.kill(pid, 9)
                await k.wait(pid)
            except OSError:
                pass
    finally:
        await k.close()
    loaded = _median(loaded)
    return {"idle": idle, "loaded_nice_-10": loaded, "loaded_nice_0": nice0,
            "ttft_ratio": loaded["ttft_s"] / idle["ttft_s"], "tpot_ratio": loaded["tpot_s"] / idle["tpot_s"],
            "background_tok_s_alone": alone, "background_tok_s_during": statistics.median(during),
            "background_still_running": still, "num_procs": args.num_procs,
            "steps_preempted": preempted}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench serve --interactive", description=__doc__.splitlines()[0])
    ap.add_argument("--interactive", action="store_true")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("-n", "--num-procs", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16, help="tokens of the nice -10 request")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--window", type=float, default=3.0, help="seconds the background is timed alone")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--connect", action="store_true", help="use the running kernel")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args([a for a in argv[1:]])
    from .syscall import Daemon
    d = SimpleNamespace(connect=args.connect, model=args.model, dtype=args.dtype, device=args.device,
                        kv_blocks=None, max_step_tokens=None, settle=args.settle)
    with Daemon(d):
        out = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(out))
        return 0
    from ..drivers.cpu import cpu_features, isa_summary
    f = cpu_features()
    print(f"# {f['model']}, {f['cores']} logical CPUs ({isa_summary(f)}); model {args.model}, {args.dtype}")
    ms = 1e3
    print(f"{'request (20-word prompt, ' + str(args.tokens) + ' tokens)':<44} {'TTFT ms':>9} {'per token ms':>13} {'all ms':>8}")
    for name, r in (("nice -10, idle", out["idle"]), (f"nice -10, {args.num_procs} processes generating", out["loaded_nice_-10"]),
                    (f"nice 0,   {args.num_procs} processes generating", out["loaded_nice_0"])):
        print(f"{name:<44} {r['ttft_s'] * ms:>9.1f} {r['tpot_s'] * ms:>13.1f} {r['total_s'] * ms:>8.0f}")
    print(f"loaded / idle (nice -10): TTFT {out['ttft_ratio']:.2f}x (target <= 1.5x), "
          f"time per token {out['tpot_ratio']:.2f}x (target <= 2x)")
    print(f"background output: {out['background_tok_s_alone']:.1f} tok/s alone, "
          f"{out['background_tok_s_during']:.1f} tok/s while the nice -10 request runs; "
          f"{out['steps_preempted']} background steps preempted for its {args.repeat} arrivals; "
          f"{out['background_still_running']} of {args.num_procs} still generating at the end")
    return 0
