"""Helpers shared by the kernel tests: engines, greedy params, prompts, and solo runs (the
reference every batching, preemption and fork test compares with), and driver_greedy (n greedy
ids straight through the driver, which the real-model tests compare with a reference). The model is
conftest's."""

from __future__ import annotations

import signal

from llmos.benchmarks.quality import greedy as driver_greedy    # noqa: F401 (the real-model tests')
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


