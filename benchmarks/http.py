"""`llmos bench serve --via http`: the `bench serve` workload through the gateway, next to the same
workload through the ABI, in one run.

A kernel daemon starts on a temporary runtime dir (as `bench syscall --serve` does) and a gateway
(`llmos gateway`, its own process) in front of it. Each round runs the workload - N processes,
random prompts of --input-len token ids, exactly --output-len tokens out (ignore_eos) - first
through the ABI (AsyncClient: spawn all, one streaming reader each) and then through HTTP
(`POST /v1/completions` with stream: true and include_usage, one streaming httpx client per
request, all at once). Reported: output throughput of both, their ratio (target >= 0.9), TTFT and
ITL p50/p99 as the clients saw them. Figures move with whatever else runs on the machine: compare
only the two columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from .syscall import Daemon, serve_abi


async def serve_http(url: str, n: int, input_len: int, output_len: int, seed: int = 0) -> dict:
    """The workload through the gateway's OpenAI completions endpoint with streaming clients."""
    import httpx

    from llmos.userland.lib import AsyncClient

    from .serve import pct, prompts
    k = await AsyncClient.connect(client="bench-http")
    vocab = (await k.uname())["model_config"]["vocab_size"]
    await k.close()
    ids = prompts(n, input_len, vocab, seed)
    first, itl, tokens = {}, [], {}
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=None) as http:
        async def one(i: int, prompt: list[int]):
            body = {"model": model_name, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            last = None
            async with http.stream("POST", "/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(f"request {i}: {chunk['error']['message']}")
                    now = time.perf_counter()
                    if chunk["choices"] and chunk["choices"][0]["text"]:
                        if last is not None:
                            itl.append(now - last)
                        first.setdefault(i, now)
                        last = now
                    if chunk.get("usage"):
                        tokens[i] = chunk["usage"]["completion_tokens"]
        model_name = (await http.get("/v1/models")).json()["data"][0]["id"]
        t0 = time.perf_counter()
        await asyncio.gather(*[one(i, p) for i, p in enumerate(ids)])
        wall = time.perf_counter() - t0
    ttft = [first[i] - t0 for i in first]
    ms = 1e3
    return {"requests": n, "duration_s": wall, "output_throughput": sum(tokens.values()) / wall,
            "ttft_ms": {"p50": pct(ttft, 50) * ms, "p99": pct(ttft, 99) * ms},
            "itl_ms": {"p50": pct(itl, 50) * ms, "p99": pct(itl, 99) * ms}}


def gateway(port: int) -> tuple[subprocess.Popen, str]:
    import httpx
    proc = subprocess.Popen([sys.executable, "-m", "llmos.shell.cli", "gateway", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {proc.stdout.read().strip()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the gateway did not answer /health")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench serve --via http", description=__doc__.splitlines()[0])
    ap.add_argument("--via", choices=["http"], default="http")
    ap.add_argument("--model", default="smollm2", help="catalog name or .gguf path for the kernel")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--kv-blocks", type=int)
    ap.add_argument("--max-step-tokens", type=int)
    ap.add_argument("-n", "--num-procs", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="ABI then HTTP, this many times")
    ap.add_argument("--port", type=int, default=18000)
    ap.add_argument("--settle", type=float, default=5.0, metavar="S")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv[1:])
    args.connect = False
    rounds = []
    try:
        with Daemon(args):
            proc, url = gateway(args.port)
            try:
                asyncio.run(serve_abi(2, args.input_len, 4, args.seed + 1))                    # warm-ups
                asyncio.run(serve_http(url, 2, args.input_len, 4, args.seed + 1))
                if not args.json:
                    print(f"serve via http: {args.num_procs} processes, {args.input_len} in / {args.output_len} "
                          f"out, {args.rounds} round(s), ABI then HTTP each", flush=True)
                for r in range(args.rounds):
                    a = asyncio.run(serve_abi(args.num_procs, args.input_len, args.output_len, args.seed + r))
                    show(r, "abi", a, args.json)
                    h = asyncio.run(serve_http(url, args.num_procs, args.input_len, args.output_len, args.seed + r))
                    show(r, "http", h, args.json)
                    rounds.append({"abi": a, "http": h, "ratio": h["output_throughput"] / a["output_throughput"]})
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    except (RuntimeError, OSError) as e:
        print(f"llmos bench serve --via http: {e}", file=sys.stderr)
        return 1
    res = {"num_procs": args.num_procs, "input_len": args.input_len, "output_len": args.output_len,
           "rounds": rounds, "http_vs_abi": sum(r["ratio"] for r in rounds) / len(rounds)}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"  HTTP / ABI output throughput: {res['http_vs_abi']:.3f}")
    return 0


def show(i: int, name: str, x: dict, quiet: bool) -> None:
    if not quiet:
        print(f"  {i + 1} {name:<5} {x['output_throughput']:8.1f} tok/s  {x['duration_s']:6.2f} s  "
              f"TTFT p50 {x['ttft_ms']['p50']:.0f} ms p99 {x['ttft_ms']['p99']:.0f} ms  "
              f"ITL p50 {x['itl_ms']['p50']:.1f} ms p99 {x['itl_ms']['p99']:.1f} ms", flush=True)
