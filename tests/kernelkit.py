"""Helpers shared by the kernel tests: engines, greedy params, prompts, and solo runs (the
reference every batching, preemption and fork test compares with). The model is conftest's."""

from __future__ import annotations

import signal

from llmos.drivers.sampler import SamplingParams
from llmos.kernel.engine import Engine
from llmos.kernel.param import KernelConfig


def make_engine(model, default_blocks: int, on_wake=None, **cfg) -> Engine:
    """An engine on `model` that checks the KV invariants after every step."""
    cfg.setdefault("num_blocks", default_blocks)
    cfg.setdefault("check_invariants", True)
    return Engine(model, KernelConfig(**cfg), on_wake=on_wake)


def greedy(n, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True, **kw)


def prompt(seed, n=20) -> list[int]:
    """A deterministic prompt of n token ids, different per seed."""
    return [3 + (seed * 7919 + i * 104729) % 500 for i in range(n)]


_solo: dict = {}


def solo(model, ids, n, **kw) -> list[int]:
    """Output ids of one greedy process alone on a fresh engine, uninterrupted: the reference."""
    key = (id(model), tuple(ids), n, tuple(sorted(kw.items())))
    if key not in _solo:
        e = make_engine(model, 128, prefix_cache=False)
        p = e.spawn(ids, greedy(n, **kw))
        e.run_until_idle()
        _solo[key] = p.output_ids
    return _solo[key]


def kill_and_reap(srv) -> bool:
    """On a ServerThread's loop: SIGKILL every live process, reap every zombie nobody waits for;
    True once the process table, the KV pool and swap are empty (poll it with wait_until)."""
    eng = srv.kernel.engine
    for p in eng.procs.all():
        if p.alive:
            eng.signal(p.pid, signal.SIGKILL)
        elif p.pid not in srv.kernel.waits:
            eng.reap(p.pid)
    srv.server._work.set()
    return len(eng.procs) == 0 and eng.kv.stats()["used"] == 0 and eng.kv.swap_used == 0


def driver_greedy(model, prompt: list[int], n: int) -> list[int]:
    """n greedy token ids after prompt, straight through the driver (no kernel): the real-model
    tests compare these with an independent reference."""
    from llmos.drivers.llama import SeqInput
    blocks = -(-(len(prompt) + n) // 16)
    kv, table = model.new_kv(blocks, 16), list(range(blocks))
    out, ids, pos = [], prompt, 0
    for _ in range(n):
        logits = model.forward([SeqInput(ids, pos, table)], kv)
        pos += len(ids)
        ids = [int(logits[0].argmax())]
        out.append(ids[0])
    return out
