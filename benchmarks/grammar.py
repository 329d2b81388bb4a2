"""`llmos bench serve --grammar json`: constrained decoding throughput next to unconstrained, in
one run, at batch 1 and at batch N (the workload of benchmarks/serve.py).

The constrained processes follow a JSON schema (an object holding an array of short strings with
more items required than --output-len tokens can hold), so every process runs exactly
--output-len tokens in both runs and the batches keep the same size. Runs alternate
(unconstrained, constrained; batch 1, then batch N) and use fresh prompts each, so neither gets
the other's prefix-cache hits. Printed: the vocabulary build and grammar compile times, output
tok/s of each run, the ratio, and the kernel's schedule time per step (which includes filling
the grammar masks of the whole batch).
"""

from __future__ import annotations

import json
import time

from ..drivers.grammar import Constraint
from ..drivers.sampler import SamplingParams

SCHEMA = {"type": "object", "required": ["notes"], "additionalProperties": False,
          "properties": {"notes": {"type": "array", "minItems": 1000,
                                   "items": {"type": "string", "maxLength": 24}}}}


def compare(engine, prompts, args, run_workload) -> dict:
    """prompts(n, seed) -> prompt ids; run_workload(engine, ids, output_len, params) -> figures."""
    grammars = engine.ops.grammars
    t0 = time.perf_counter()
    grammars.vocabulary()
    vocab_s = time.perf_counter() - t0
    constraint = Constraint.from_wire("json_schema", SCHEMA)
    compile_s = grammars.compile(constraint).compile_s
    free = SamplingParams(max_tokens=args.output_len, ignore_eos=True)
    bound = SamplingParams(max_tokens=args.output_len, constraint=constraint)
    rows, seed = [], args.seed + 1000
    for batch in sorted({1, args.num_procs}):
        row = {"batch": batch}
        for name, params in (("unconstrained", free), ("json", bound)):
            seed += 1
            k = run_workload(engine, prompts(batch, seed), args.output_len, params)
            row[name] = {key: k[key] for key in ("output_throughput", "steps", "schedule_ms_per_step",
                                                 "duration_s")}
        for name in ("unconstrained", "json"):
            row[name]["ms_per_step"] = row[name]["duration_s"] / row[name]["steps"] * 1e3
        row["ratio"] = row["json"]["output_throughput"] / row["unconstrained"]["output_throughput"]
        row["step_time_ratio"] = row["json"]["ms_per_step"] / row["unconstrained"]["ms_per_step"]
        rows.append(row)
    return {"vocabulary_build_s": vocab_s, "compile_ms": compile_s * 1e3, "schema": SCHEMA, "rows": rows}


def report(res: dict, head: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**head, "grammar": res}))
        return
    print(f"{head['model']} on {head['device']} ({head['dtype']}): grammar json vs unconstrained")
    print(f"  vocabulary build    {res['vocabulary_build_s'] * 1e3:.0f} ms (once per kernel)")
    print(f"  grammar compile     {res['compile_ms']:.2f} ms (then cached)")
    for r in res["rows"]:
        u, j = r["unconstrained"], r["json"]
        print(f"  batch {r['batch']:>3}: {u['output_throughput']:7.1f} tok/s unconstrained, "
              f"{j['output_throughput']:7.1f} tok/s json = {100 * r['ratio']:.1f} %   "
              f"(steps {u['steps']} / {j['steps']}, fewer with forced tokens)")
        print(f"             per step {u['ms_per_step']:.1f} / {j['ms_per_step']:.1f} ms "
              f"({100 * (r['step_time_ratio'] - 1):+.1f} %), of which schedule incl. masks "
              f"{u['schedule_ms_per_step']:.2f} / {j['schedule_ms_per_step']:.2f} ms")
