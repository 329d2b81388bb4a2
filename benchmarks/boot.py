"""`llmos bench boot`: from `llmos serve --daemon` to the first token, and the kernel's memory at idle.

llmos: a kernel is started on a temporary runtime dir (`llmos serve --daemon`, which returns once
the kernel answers), then one request asks for one token; reported: seconds to the daemon's
answer, seconds to the first token (from the start), the kernel's RSS at idle (after --settle
seconds), the GGUF's size and the KV pool's. `--vs llama.cpp` does the same in the same run for
llama.cpp on the same GGUF through llama-cpp-python (the optional `bench` extra): a fresh process
that loads the model (n_ctx as the kernel's context, same threads), generates one token, then
reports its RSS after the same settle time. llama-server itself is not built by that package;
its load path is the same library's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_CPP = r'''
import json, os, sys, time, psutil
t0 = time.perf_counter()
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=int(sys.argv[3]), verbose=False)
loaded = time.perf_counter() - t0
llm.create_completion("Hi", max_tokens=1)
first = time.perf_counter() - t0
time.sleep(float(sys.argv[4]))
print(json.dumps({"ready_s": loaded, "first_token_s": first,
                  "rss_mb": psutil.Process().memory_info().rss / 2**20}))
'''


def llmos_boot(model: str, settle: float, extra: list[str]) -> dict:
    import psutil
    from llmos.kernel import abi
    rt = Path(tempfile.mkdtemp(prefix="llmos-boot-"))
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt))
    cli = [sys.executable, "-m", "llmos.shell.cli"]
    t0 = time.perf_counter()
    r = subprocess.run(cli + ["serve", "--daemon", "--model", model, *extra], env=env,
                       capture_output=True, text=True)
    ready = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"the kernel did not start: {r.stderr.strip()[-400:]}")
    try:
        os.environ["LLMOS_RUNTIME_DIR"] = str(rt)
        from llmos.userland.lib import Client
        with Client(client="bench-boot") as k:
            pid = k.spawn("Hi", {"max_tokens": 1})
            k.wait(pid)
            first = time.perf_counter() - t0
            mem = k.meminfo()
            ctx = k.uname().get("max_context")
        time.sleep(settle)
        kpid = int(abi.pid_path(rt).read_text())
        rss = psutil.Process(kpid).memory_info().rss / 2**20
    finally:
        subprocess.run(cli + ["stop"], env=env, capture_output=True)
        shutil.rmtree(rt, ignore_errors=True)
    kv = mem.get("kv", mem)
    kv_mb = kv.get("total", 0) * kv.get("bytes_per_block", 0) / 2**20 if isinstance(kv, dict) else None
    return {"ready_s": ready, "first_token_s": first, "rss_mb": rss, "kv_pool_mb": kv_mb, "context": ctx}


def llama_cpp_boot(path: Path, ctx: int, threads: int, settle: float) -> dict:
    r = subprocess.run([sys.executable, "-c", LLAMA_CPP, str(path), str(ctx), str(threads), str(settle)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama-cpp-python failed: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench boot", description=__doc__.splitlines()[0])
    ap.add_argument("boot", nargs="?")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before RSS is read")
    ap.add_argument("--vs", choices=["llama.cpp"], default=None)
    ap.add_argument("--json", action="store_true")
    args, extra = ap.parse_known_args(argv)
    from llmos.drivers.catalog import resolve
    from llmos.drivers.cpu import cpu_features, isa_summary
    path = resolve(args.model, pull_missing=True)
    out = {"model": path.name, "gguf_mb": path.stat().st_size / 2**20,
           "llmos": llmos_boot(args.model, args.settle, extra)}
    if args.vs:
        out["llama.cpp"] = llama_cpp_boot(path, out["llmos"]["context"] or 8192, os.cpu_count() or 1, args.settle)
    if args.json:
        print(json.dumps(out))
        return 0
    f = cpu_features()
    print(f"# {f['model']}, {f['cores']} logical CPUs ({isa_summary(f)}); {path.name}, {out['gguf_mb']:.0f} MB")
    print(f"{'':<12} {'ready s':>8} {'first token s':>14} {'RSS at idle MB':>15}")
    for name in ("llmos", "llama.cpp"):
        if name in out:
            r = out[name]
            print(f"{name:<12} {r['ready_s']:>8.2f} {r['first_token_s']:>14.2f} {r['rss_mb']:>15.0f}")
    if out["llmos"]["kv_pool_mb"] is not None:
        print(f"llmos KV pool {out['llmos']['kv_pool_mb']:.0f} MB for a context of {out['llmos']['context']}")
    return 0
