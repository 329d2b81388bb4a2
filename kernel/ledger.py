"""The kernel's counters for monitoring (syscall COUNTERS): per-user accounting and latency histograms.

Contracts
  - ``Ledger.exited(p)`` is called once per process, by the engine, when it becomes a ZOMBIE; the
    ledger keeps what the process leaves behind after it is reaped: tokens in and out, preemptions,
    the reason it ended, and its latencies, observed then into cumulative histograms per user:
    TTFT (first token - arrival), end-to-end (exit - arrival) and inter-token latency. ITL is kept
    as the process's exact total (last - first token) over its exact count (tokens - 1), the
    buckets getting that count at the process's mean: the histogram's sum and count are exact,
    its spread within one process is not recorded (the hot path stays untouched).
  - ``snapshot(engine)`` adds the live processes to the ledger's totals, so every counter in it is
    monotonic over time (a process is counted live until the step it exits in, then by the ledger).
  - Bucket bounds are vLLM's, so Prometheus dashboards made for it read these as they are.
Everything here runs on the engine's owner thread (the event loop): no locks.
"""

from __future__ import annotations

import bisect
import time

from .proc import ProcState

BUCKETS = {   # seconds; the upper bounds vLLM uses for the same histograms (+Inf implied)
    "ttft": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
             10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0],
    "itl": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            20.0, 40.0, 80.0],
    "e2e": [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
            240.0, 480.0, 960.0, 1920.0, 7680.0],
}
WAITING = (ProcState.NEW, ProcState.READY)


class Histogram:
    """Cumulative-by-construction counts per bucket (the last one is +Inf), a sum and a count."""

    def __init__(self, bounds: list[float]):
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * (len(bounds) + 1), 0.0, 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def as_dict(self) -> dict:
        return {"counts": list(self.counts), "sum": self.sum, "count": self.count}


class UserTotals:
    def __init__(self):
        self.prompt_tokens = self.generation_tokens = self.preemptions = self.cached_tokens = 0
        self.finished: dict[str, int] = {}
        self.hist = {name: Histogram(b) for name, b in BUCKETS.items()}


class Ledger:
    def __init__(self):
        self.users: dict[str, UserTotals] = {}

    def _user(self, name: str) -> UserTotals:
        u = self.users.get(name)
        if u is None:
            u = self.users[name] = UserTotals()
        return u

    def exited(self, p) -> None:
        """Account for process p, which has just exited."""
        u, st, now = self._user(p.owner), p.stats, time.monotonic()
        u.prompt_tokens += len(p.tokens) - len(p.output_ids)
        u.generation_tokens += st.tokens
        u.preemptions += st.preemptions
        u.cached_tokens += st.cached
        reason = p.exit.reason if p.exit is not None else "error"
        u.finished[reason] = u.finished.get(reason, 0) + 1
        u.hist["e2e"].observe(now - st.arrival)
        if st.first_token_at is not None:
            u.hist["ttft"].observe(st.first_token_at - st.arrival)
            if st.tokens > 1:
                u.hist["itl"].observe((st.last_token_at - st.first_token_at) / (st.tokens - 1), st.tokens - 1)

    def snapshot(self, engine, blocks: bool = False) -> dict:
        """Every counter (exited + live), per user; the KV pool; with blocks, who holds which block."""
        users = {}
        for name, u in self.users.items():
            users[name] = _row(u.prompt_tokens, u.generation_tokens, u.preemptions, u.cached_tokens)
            users[name]["finished"] = dict(u.finished)
            users[name].update({k: h.as_dict() for k, h in u.hist.items()})
        for p in engine.procs.all():
            if p.state is ProcState.ZOMBIE:
                continue
            r = users.setdefault(p.owner, {**_row(0, 0, 0, 0), "finished": {},
                                           **{k: Histogram(b).as_dict() for k, b in BUCKETS.items()}})
            r["prompt_tokens"] += len(p.tokens) - len(p.output_ids)
            r["generation_tokens"] += p.stats.tokens
            r["preemptions"] += p.stats.preemptions
            r["cached_tokens"] += p.stats.cached
            key = "waiting" if p.state in WAITING else p.state.name.lower()
            r[key] += 1
        kv, sched = engine.kv.stats(), engine.sched.stats()
        out = {"users": users, "buckets": BUCKETS,
               "kv": {k: kv[k] for k in ("total", "used", "cached", "free", "swapped", "swap_capacity",
                                         "block_size")},
               "prefix_cache": {"queries": kv["prefix_queried"], "hits": kv["prefix_hit"]},
               "preemptions": {"swap": sched["preempt_swap"], "recompute": sched["preempt_recompute"]},
               "engine": {k: engine.counters[k] for k in ("steps", "tokens", "prefill_tokens", "busy_s")}}
        if blocks:
            tables = engine.kv.tables
            out["blocks"] = {"held": {str(pid): list(t.blocks) for pid, t in tables.items() if t.blocks},
                             "cached": list(engine.kv.cached),
                             "swapped": {str(pid): len(t.swapped[1]) for pid, t in tables.items() if t.swapped}}
        return out


def _row(prompt: int, generation: int, preemptions: int, cached: int) -> dict:
    return {"running": 0, "waiting": 0, "sleeping": 0, "stopped": 0, "prompt_tokens": prompt,
            "generation_tokens": generation, "preemptions": preemptions, "cached_tokens": cached}
