"""`llmos bench syscall`: what a syscall costs, idle and under load, and serving through the ABI.

Default run (one kernel daemon started on a temporary runtime dir, or --connect to the running one):
  raw echo   a bare pyzmq ROUTER echo server in its own process and one DEALER client: the floor
  null       lib.Client().null() round trips from one client (decode, auth check, table, reply)
  loaded     the same null calls, spaced by --gap-ms, while --load-procs processes decode in one
             batch (the engine steps in a worker thread; the loop answers between GIL switches)
Targets: null p50 <= 100 us and <= 2x raw echo; loaded p99 <= 5 ms.

`--serve`: the `llmos bench serve` workload (N processes, random prompts of --input-len tokens,
exactly --output-len tokens out) through the ABI (AsyncClient: spawn all, one streaming reader
per process, wait), then in this process on the engine directly, same config; reports output
throughput of both and their ratio (target: ABI within 10 %), TTFT/TPOT/ITL p50/p99. Each is
warmed up first; the ABI runs first so that this process holds no model while the kernel runs
(on a 2-core box an idle torch runtime here cost the kernel ~20 %); the in-process loop runs in a
worker thread like the kernel's: on CPU the same loop measured 20-24 tok/s on the main thread
against 167-201 tok/s on a worker thread (SmolLM2-135M bf16, 16 x 64/32).
The machine is left a few seconds (--settle) after boot: the fresh KV pool's pages keep the host
busy, which showed as a 4x slower raw echo.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ECHO = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    s.send_multipart(s.recv_multipart())
"""


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def summary(lat_s: list[float], wall_s: float) -> dict:
    us = [x * 1e6 for x in lat_s]
    return {"n": len(us), "p50_us": pct(us, 50), "p99_us": pct(us, 99), "max_us": max(us),
            "calls_per_s": len(us) / wall_s}


def timed(fn, n: int, gap_s: float = 0.0) -> dict:
    lat, pc = [], time.perf_counter
    t0 = pc()
    for _ in range(n):
        t = pc()
        fn()
        lat.append(pc() - t)
        if gap_s:
            time.sleep(gap_s)
    return summary(lat, pc() - t0)


def raw_echo(rt: Path, n: int) -> dict:
    import zmq
    ep = f"ipc://{rt}/echo.sock"
    srv = subprocess.Popen([sys.executable, "-c", ECHO, ep], stdout=subprocess.PIPE, text=True)
    try:
        srv.stdout.readline()
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ep)
        payload = b"\x93\x01\x00\xc0"                  # the size of a msgpack null request

        def call():
            s.send(payload)
            s.recv()
        timed(call, 200)
        res = timed(call, n)
        s.close()
        ctx.term()
        return res
    finally:
        srv.kill()
        srv.wait()


class Daemon:
    """`llmos serve --daemon` on a temporary runtime dir (or nothing, with --connect)."""

    def __init__(self, args):
        self.args, self.rt, self.started = args, None, False

    def __enter__(self):
        if self.args.connect:
            from llmos.kernel import abi
            self.rt = abi.runtime_dir()
            return self
        self.rt = Path(tempfile.mkdtemp(prefix="llmos-bench-"))
        os.environ["LLMOS_RUNTIME_DIR"] = str(self.rt)
        cmd = [sys.executable, "-m", "llmos.shell.cli", "serve", "--daemon", "--model", self.args.model,
               "--dtype", self.args.dtype, "--device", self.args.device, "--lease", "2"]
        for flag, v in (("--kv-blocks", self.args.kv_blocks), ("--max-tokens-per-step", self.args.max_step_tokens)):
            if v:
                cmd += [flag, str(v)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"could not start the kernel: {r.stderr.strip()}")
        self.started = True
        time.sleep(self.args.settle)    # the host is still busy with the fresh KV pool's pages
        return self

    def __exit__(self, *exc):
        if self.started:
            subprocess.run([sys.executable, "-m", "llmos.shell.cli", "stop"], capture_output=True)
            shutil.rmtree(self.rt, ignore_errors=True)


def null_bench(args) -> dict:
    from llmos.userland import lib
    with Daemon(args) as d:
        echo = raw_echo(d.rt if not args.connect else Path(tempfile.mkdtemp(prefix="llmos-echo-")), args.n)
        with lib.Client(client="bench-syscall") as k:
            u = k.uname()
            timed(k.null, 200)
            idle = timed(k.null, args.n)
            res = {"model": u.get("model"), "device": u.get("device"), "dtype": u.get("dtype"),
                   "raw_echo": echo, "null": idle, "ratio_p50": idle["p50_us"] / echo["p50_us"]}
            if args.load_procs:
                res["loaded"] = loaded(k, u, args)
    return res


def loaded(k, u: dict, args) -> dict:
    """Null round trips while load_procs processes decode together."""
    vocab = u["model_config"]["vocab_size"]
    out_len = max(16, min(args.load_tokens, u["max_context"] - 40))
    pids = [k.spawn([min(300, vocab - 1) + i % 7] * 16, max_tokens=out_len, ignore_eos=True, command="bench-load")
            for i in range(args.load_procs)]
    try:
        deadline = time.monotonic() + 120
        while sum(p["state"] == "RUNNING" for p in k.ps()) < args.load_procs and time.monotonic() < deadline:
            time.sleep(0.02)
        before = {p["pid"]: p["tokens"] for p in k.ps()}
        t0 = time.monotonic()
        res = timed(k.null, args.load_calls, args.gap_ms / 1e3)
        dt = time.monotonic() - t0
        after = {p["pid"]: p["tokens"] for p in k.ps()}
        res["running"] = sum(p["state"] == "RUNNING" for p in k.ps())
        res["load_procs"] = args.load_procs
        res["engine_tokens_per_s"] = sum(after.get(p, 0) - before.get(p, 0) for p in pids) / dt
    finally:
        for p in pids:
            try:
                k.kill(p, "KILL")
                k.wait(p, 30)
            except OSError:
                pass
    return res


# ---- serving through the ABI ------------------------------------------------------------------

async def serve_abi(n: int, input_len: int, output_len: int, seed: int = 0, shared_prefix: int = 0) -> dict:
    """The `bench serve` workload through a running kernel; the same result keys as
    benchmarks.serve.run_workload where they can be measured from outside."""
    from llmos.userland.lib import AsyncClient
    from .serve import pct as spct, prompts
    k = await AsyncClient.connect(client="bench-serve-abi")
    try:
        u = await k.uname()
        ids = prompts(n, input_len, u["model_config"]["vocab_size"], seed, shared_prefix)
        params = {"max_tokens": output_len, "ignore_eos": True}
        first, last, itl, tokens = {}, {}, [], {}
        t0 = time.perf_counter()
        pids = await asyncio.gather(*[k.spawn(p, params, command="bench-abi") for p in ids])
        spawned = time.perf_counter()

        async def consume(pid):
            while True:
                r = await k.read(pid)
                now = time.perf_counter()
                if r["text"]:
                    if pid in last:
                        itl.append(now - last[pid])
                    first.setdefault(pid, now)
                    last[pid] = now
                if r["eof"]:
                    tokens[pid] = (await k.wait(pid))["tokens"]
                    return
        await asyncio.gather(*[consume(p) for p in pids])
        wall = time.perf_counter() - t0
    finally:
        await k.close()
    out = sum(tokens.values())
    ttft = [first[p] - t0 for p in pids if p in first]
    tpot = [(last[p] - first[p]) / (tokens[p] - 1) for p in pids if p in first and tokens[p] > 1]
    ms = 1e3
    return {"requests": n, "duration_s": wall, "spawn_s": spawned - t0,
            "request_throughput": n / wall, "output_throughput": out / wall,
            "ttft_ms": {"p50": spct(ttft, 50) * ms, "p99": spct(ttft, 99) * ms},
            "tpot_ms": {"p50": spct(tpot, 50) * ms, "p99": spct(tpot, 99) * ms},
            "itl_ms": {"p50": spct(itl, 50) * ms, "p99": spct(itl, 99) * ms}}


def serve_compare(args) -> dict:
    """Through the ABI, then in this process on the engine directly: same model, config and
    workload (the ABI first, so that this process holds no model while the kernel runs)."""
    with Daemon(args):
        asyncio.run(serve_abi(2, args.input_len, 4, args.seed + 1))                  # warm-up
        abi_res = asyncio.run(serve_abi(args.num_procs, args.input_len, args.output_len, args.seed))
    from llmos.drivers.catalog import resolve
    from llmos.drivers.llama import LlamaModel
    from llmos.kernel.engine import Engine
    from llmos.kernel.param import KernelConfig
    from .serve import prompts, run_workload
    model = LlamaModel.load(str(resolve(args.model, pull_missing=True)), dtype=args.dtype, device=args.device)
    kw = {k: v for k, v in (("num_blocks", args.kv_blocks), ("max_step_tokens", args.max_step_tokens)) if v}
    engine = Engine(model, KernelConfig(**kw).validate())
    gc.freeze()     # as the kernel's boot does (kernel/main.py)
    ids = prompts(args.num_procs, args.input_len, model.tokenizer.vocab_size, args.seed)
    # Stepped from a worker thread, as the kernel steps it: on CPU, torch here ran several times
    # slower when the same loop ran on the main thread (see the module docstring).
    with ThreadPoolExecutor(1) as pool:
        pool.submit(run_workload, engine, ids[:2], 4).result()          # warm-up
        inproc = pool.submit(run_workload, engine, ids, args.output_len).result()
    return {"num_procs": args.num_procs, "input_len": args.input_len, "output_len": args.output_len,
            "in_process": inproc, "abi": abi_res,
            "abi_vs_in_process": abi_res["output_throughput"] / inproc["output_throughput"]}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench syscall", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="catalog name or .gguf path for the kernel")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--kv-blocks", type=int)
    ap.add_argument("--max-step-tokens", type=int)
    ap.add_argument("--connect", action="store_true", help="use the running kernel instead of starting one")
    ap.add_argument("--settle", type=float, default=5.0, metavar="S",
                    help="seconds to let the machine settle after the kernel boots (its KV pool)")
    ap.add_argument("-n", type=int, default=5000, help="null calls (idle) and echo round trips")
    ap.add_argument("--load-procs", type=int, default=32, help="processes decoding during the loaded run (0: skip)")
    ap.add_argument("--load-tokens", type=int, default=400, help="tokens each load process may generate")
    ap.add_argument("--load-calls", type=int, default=2000)
    ap.add_argument("--gap-ms", type=float, default=1.0, help="pause between loaded calls")
    ap.add_argument("--serve", action="store_true", help="compare serving in-process and through the ABI")
    ap.add_argument("--num-procs", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv[1:])
    try:
        res = serve_compare(args) if args.serve else null_bench(args)
    except (RuntimeError, OSError) as e:
        print(f"llmos bench syscall: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res))
    elif args.serve:
        a, b = res["in_process"], res["abi"]
        print(f"serve: {res['num_procs']} processes, {res['input_len']} in / {res['output_len']} out")
        for name, r in (("in-process", a), ("through ABI", b)):
            print(f"  {name:<12} {r['output_throughput']:8.1f} tok/s  {r['duration_s']:6.2f} s  "
                  f"TTFT p50 {r['ttft_ms']['p50']:.0f} ms  TPOT p50 {r['tpot_ms']['p50']:.1f} ms  "
                  f"ITL p99 {r['itl_ms']['p99']:.1f} ms")
        print(f"  ABI / in-process throughput: {res['abi_vs_in_process']:.3f}")
    else:
        print(f"syscall round trip ({res['model']} on {res['device']}/{res['dtype']})")
        for name in ("raw_echo", "null", "loaded"):
            if name in res:
                r = res[name]
                extra = (f"  [{r['running']}/{r['load_procs']} running, engine {r['engine_tokens_per_s']:.0f} tok/s]"
                         if name == "loaded" else "")
                print(f"  {name:<9} p50 {r['p50_us']:7.1f} us  p99 {r['p99_us']:8.1f} us  max {r['max_us']:8.1f} us"
                      f"  {r['calls_per_s']:8.0f} calls/s{extra}")
        print(f"  null / raw echo p50: {res['ratio_p50']:.2f}x")
    return 0
