"""`llmos bench checkpoint`: checkpoint and restore a process's context, against re-prefilling it.

For each context length a session process holds N prompt tokens in the KV pool (prefix cache off,
so a prefill is a real one). Measured in the same run, median of --repeats:
  prefill     spawn → its N tokens computed (what a kernel without checkpoints pays to get back)
  checkpoint  snapshot (KV copied out) + encode + checksum + write with fsync + rename
  restore     read + verify + decode + install + the scheduler's swap-in of its blocks
and the file size. Figures are also given per 1k tokens of context.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from ..drivers.catalog import DEFAULT_MODEL, resolve
from ..drivers.device import MODEL_DTYPES
from ..drivers.gguf import ModelFileError
from ..drivers.llama import LlamaModel
from ..drivers.sampler import SamplingParams
from ..kernel import checkpoint as ck
from ..kernel.engine import Engine
from ..kernel.param import KernelConfig


def prefill(engine: Engine, ids: list[int]):
    """A session that prefills ids and samples one token; (process, seconds until it sleeps)."""
    t = time.perf_counter()
    p = engine.spawn(ids, SamplingParams(max_tokens=1, ignore_eos=True), session=True)
    engine.run_until_idle()
    return p, time.perf_counter() - t


def one(engine: Engine, model_path: str, n: int, directory: Path) -> dict:
    ids = [3 + (i * 7919) % (engine.tokenizer.vocab_size - 3) for i in range(n)]
    p, t_prefill = prefill(engine, ids)
    fp, layout = ck.fingerprint(model_path), ck.layout_of(engine.storage)
    path = directory / f"bench-{n}.ckpt"
    t = time.perf_counter()
    proc, k, v = ck.snapshot(engine, p)
    data = ck.encode(proc, k, v, fp, layout)
    ck.write(path, data)
    t_ckpt = time.perf_counter() - t
    engine.signal(p.pid, 9)
    engine.reap(p.pid)
    t = time.perf_counter()
    header, k, v = ck.decode(ck.read(path), fp, layout)
    q = ck.install(engine, header["process"], k, v, holder=None)
    engine.kv.swap_in(q.pid)                    # what the scheduler does before it runs q
    t_restore = time.perf_counter() - t
    assert q.computed == p.computed and not engine.kv.is_swapped(q.pid)
    engine.signal(q.pid, 9)
    engine.reap(q.pid)
    path.unlink()
    return {"tokens": n, "prefill_s": t_prefill, "checkpoint_s": t_ckpt, "restore_s": t_restore,
            "bytes": len(data)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench checkpoint", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="auto", choices=MODEL_DTYPES)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--context", default="512,1024,2048", help="comma-separated context lengths (tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where the files go (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv[1:])
    try:
        path = str(resolve(args.model, pull_missing=True))
        model = LlamaModel.load(path, dtype=args.dtype, device=args.device)
    except (ModelFileError, OSError, ValueError) as e:
        print(f"llmos bench checkpoint: {e}")
        return 1
    sizes = [int(x) for x in args.context.split(",")]
    ctx = min(model.config.context_length, max(sizes) + 16)
    engine = Engine(model, KernelConfig(num_blocks=-(-ctx // 16) * 2 + 8, prefix_cache=False,
                                        max_context=ctx, max_step_tokens=max(512, max(sizes))))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for n in sizes:
            runs = [one(engine, path, n, Path(d)) for _ in range(args.repeats)]
            rows.append({key: statistics.median(r[key] for r in runs) for key in runs[0]} | {"tokens": n})
    if args.json:
        print(json.dumps({"model": Path(path).name, "dtype": str(model.dtype), "rows": rows}))
        return 0
    print(f"{Path(path).name} on {model.device}/{str(model.dtype)[6:]}, median of {args.repeats}; "
          f"per 1k tokens in brackets")
    print(f"{'tokens':>7} {'prefill ms':>16} {'checkpoint ms':>16} {'restore ms':>16} {'file MiB':>14} "
          f"{'prefill/restore':>16}")
    for r in rows:
        k = 1000 / r["tokens"]
        print(f"{r['tokens']:>7} {_ms(r['prefill_s'], k):>16} {_ms(r['checkpoint_s'], k):>16} "
              f"{_ms(r['restore_s'], k):>16} {r['bytes'] / 2**20:>6.1f} [{r['bytes'] * k / 2**20:>5.1f}] "
              f"{r['prefill_s'] / r['restore_s']:>15.1f}x")
    return 0


def _ms(s: float, per_k: float) -> str:
    return f"{s * 1e3:.1f} [{s * 1e3 * per_k:.1f}]"
