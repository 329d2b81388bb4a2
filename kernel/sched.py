"""Scheduling policy: who is in the batch, how many tokens each gets this step, who is preempted.
(Over 300 lines: one policy - placement, admission, budget, eviction - whose parts share state.)

Design rules
  * Iteration-level: every step has a token budget (max_step_tokens). Decodes of running processes
    are served first, then prefill chunks, so a long prompt never stalls the decodes.
  * Fair share by weighted virtual time, as Linux's EEVDF (the successor of CFS): nice maps to the
    CFS weight table; a process is charged 1024/weight of virtual time per generated token; it
    asks for slices of `slice_tokens` tokens and its virtual deadline is vruntime + slice*1024/weight.
    The virtual clock V is the weight-averaged vruntime of the runnable processes; a process is
    eligible when vruntime <= V. Arrivals and wake-ups are placed at V (no credit for sleeping).
  * Fair share between users first (CFS group scheduling, flattened): every user with runnable
    processes has the weight of one nice-0 process, split among its processes by their nice
    weights (_clock sets p.weight each step). So when the batch is contended, a user with one
    process and a user with thirty get equal shares of the tokens; nice orders a user's own.
    When everyone fits, nobody is held back (work-conserving).
  * The batch (max_running places): free places go to the READY processes with the earliest
    eligible deadlines. When it is full, an eligible READY process takes the place of the worst
    running one (highest nice, then latest deadline) if it has a lower nice (priority preemption)
    or an earlier deadline (its fair turn). This is also the aging: a waiting process's vruntime
    stands still while V moves on, so it becomes eligible and its deadline the earliest; nothing
    starves, whatever its nice. A process that loses its place keeps its KV until memory is wanted.
  * Admission reserves memory: a process enters the batch only if the pool (plus what may be
    evicted for it) holds its context and its next slice, on top of what the running processes
    will grow into during theirs; so admissions do not evict each other as they grow.
  * Memory: a process that cannot get blocks may evict others' KV, worst first: STOPPED, then
    SLEEPING, then READY holders, then RUNNING ones that rank below it. Each victim is swapped to
    host or dropped for recompute, whichever is estimated cheaper (measured swap bandwidth vs
    measured prefill speed). Nothing is evicted unless the blocks it frees are enough (never
    preempt to admit what will not fit).
  * Latency goals (kernel/latency.py): a process with a time-per-token target is served first, in
    steps sized by the online step-time model to fit the tightest target, the others' share of
    the step capped by what the last sized step measured (halved on a miss, one more on a hit);
    its prefill runs alone (time to first token). One that becomes runnable while a step
    without such a process is in flight preempts that step (on_urgent).
Runs on the engine's owner thread. Cost per step is O(running) plus O(waiting) for the clock.
"""

from __future__ import annotations

import heapq
import time

from .kvcache import owner_namespace
from .latency import StepModel, target_s
from .proc import Process, ProcState, admit, dispatch, preempt

# Linux kernel/sched/core.c sched_prio_to_weight: nice -20 .. 19 (each step about 1.25x).
WEIGHTS = (88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916,
           9548, 7620, 6100, 4904, 3906, 3121, 2501, 1991, 1586, 1277,
           1024, 820, 655, 526, 423, 335, 272, 215, 172, 137,
           110, 87, 70, 56, 45, 36, 29, 23, 18, 15)
NICE_0 = 1024
_EVICT_ORDER = {ProcState.STOPPED: 0, ProcState.SLEEPING: 1, ProcState.READY: 2, ProcState.RUNNING: 3}


def weight(nice: int) -> int:
    return WEIGHTS[nice + 20]


class Scheduler:
    def __init__(self, config, kv, procs, limits=None):
        """limits (kernel/limits.py): a user over its tokens_per_min does not run until under it."""
        self.config, self.kv, self.procs, self.limits = config, kv, procs, limits
        self.held: set[str] = set()               # owners throttled this step
        self.step_model = StepModel()             # step seconds vs tokens (kernel/latency.py)
        self.slice = config.slice_tokens
        self.running: dict[int, Process] = {}     # pid -> process holding a place in the batch
        self.ready: dict[int, Process] = {}       # pid -> runnable, not in the batch
        self.arrivals: dict[int, Process] = {}    # pid -> NEW, admitted at the next schedule()
        self.V = 0.0                              # virtual clock
        self.swap_s_per_block = kv.storage.bytes_per_block / config.swap_bytes_per_s
        self.prefill_s_per_token = 1.0 / config.prefill_tokens_per_s
        self.counters = dict(steps=0, preempt_swap=0, preempt_recompute=0, displaced=0)
        self.plain_step = False                   # the last plan holds no latency-sensitive process
        self.sized = None                         # (target s, extra tokens) of the last plan, if sized
        self.extra_cap = 1 << 30                  # others' tokens a sized step may hold (AIMD)
        self.on_urgent = None                     # called when one becomes runnable meanwhile
        self._shares_stale = True                 # the runnable set or a nice changed: _clock resplits
        self._charged: dict[str, int] = {}        # owner -> tokens charged since note_charges()

    # ---- membership (engine calls these from mutators and commit) ---------------------------
    def enqueue(self, p: Process) -> None:
        """p is NEW (admitted at the next schedule) or has just become READY (wake, cont)."""
        p.weight = weight(p.nice)
        self._shares_stale = True
        if p.state is ProcState.NEW:
            self.arrivals[p.pid] = p
        elif p.state is ProcState.READY:
            self._place(p)
            self.ready[p.pid] = p
        else:
            raise RuntimeError(f"enqueue: pid {p.pid} is {p.state.name}")
        if self.plain_step and self.on_urgent is not None and self.step_model.ready() \
                and target_s(p, self.step_model) is not None:
            self.on_urgent()        # the step in flight (if any) stops at its next layer

    def dequeue(self, p: Process) -> None:
        """p left the runnable set (sleep, stop, exit)."""
        self._shares_stale = True
        self.running.pop(p.pid, None)
        self.ready.pop(p.pid, None)
        self.arrivals.pop(p.pid, None)

    def renice(self, p: Process, nice: int) -> None:
        p.nice, p.weight = nice, weight(nice)
        p.deadline = p.vruntime + self.slice * NICE_0 / p.weight
        self._shares_stale = True

    def charge(self, p: Process, tokens: int) -> None:
        """p generated `tokens` tokens: advance its virtual time (and deadline when due). The
        owner's token count reaches the limits at note_charges() (the engine calls it once a step)."""
        p.vruntime += tokens * NICE_0 / p.weight
        self._charged[p.owner] = self._charged.get(p.owner, 0) + tokens
        if p.vruntime >= p.deadline:
            p.deadline = p.vruntime + self.slice * NICE_0 / p.weight

    def note_charges(self) -> None:
        """Hand the tokens charged since the last call to the limits (kernel/limits.py)."""
        charged, self._charged = self._charged, {}
        if self.limits is not None:
            for owner, n in charged.items():
                self.limits.note_tokens(owner, n)

    def observe(self, prefill_tokens: int, seconds: float, tokens: int = 0) -> None:
        """A measured step: a decode-only one feeds the step-time model (a prefill token costs a
        fraction of a decode token, so mixing them would bend the line), a mostly prefill one
        the recompute estimate."""
        if prefill_tokens == 0:
            self.step_model.observe(tokens, seconds)
        if self.sized is not None:      # a step sized for a latency goal: correct the model's guess
            target, extra = self.sized  # by what the step measured (halve on a miss, creep up)
            self.extra_cap = extra // 2 if seconds > target else extra + 1
        if prefill_tokens >= 64 and seconds > 0:
            self.prefill_s_per_token = 0.8 * self.prefill_s_per_token + 0.2 * seconds / prefill_tokens

    def _place(self, p: Process) -> None:
        p.vruntime = max(p.vruntime, self.V)
        p.deadline = p.vruntime + self.slice * NICE_0 / p.weight

    # ---- the step ----------------------------------------------------------------------------
    def schedule(self) -> list[tuple[Process, int]]:
        """Pick this step's work: [(process, number of new tokens)], KV blocks already appended."""
        for p in list(self.arrivals.values()):
            admit(p)
            self._place(p)
            self.ready[p.pid] = p
        self.arrivals.clear()
        if not self.running and not self.ready:
            return []
        self.counters["steps"] += 1
        self._hold_throttled()
        self._clock()
        if self.ready:
            self._fill_batch()
        return self._build()

    def _hold_throttled(self) -> None:
        """The owners over a token-rate limit this step: their processes keep their places but
        run no tokens, and none of theirs is admitted to the batch."""
        self.held = set()
        if self.limits is not None and self.limits.has_rates():
            owners = {p.owner for g in (self.running, self.ready) for p in g.values()}
            self.held = {o for o in owners if self.limits.throttled(o)}

    def _clock(self) -> None:
        """Set V; first resplit the users' shares (p.weight) if the runnable set or a nice changed."""
        procs = [*self.running.values(), *self.ready.values()]
        if self._shares_stale:
            per_owner: dict[str, int] = {}
            for p in procs:
                per_owner[p.owner] = per_owner.get(p.owner, 0) + WEIGHTS[p.nice + 20]
            for p in procs:
                p.weight = NICE_0 * WEIGHTS[p.nice + 20] / per_owner[p.owner]   # the user's share, split
            self._shares_stale = False
        ws = wv = 0.0
        for p in procs:
            w = p.weight
            ws += w
            wv += w * p.vruntime
        if ws:
            self.V = wv / ws

    def _rank(self, p: Process):
        return (p.vruntime > self.V, p.deadline, p.pid)

    @staticmethod
    def _badness(p: Process):
        return (p.nice, p.deadline, p.pid)

    def _fill_batch(self) -> None:
        free = self.config.max_running - len(self.running)
        k = min(len(self.ready), max(free, 0) + 4)
        promised = sum(map(self._need, self.running.values()))   # what the batch will grow into
        for c in heapq.nsmallest(k, self.ready.values(), key=self._rank):
            if c.owner in self.held:
                continue
            if free > 0:
                if not self._fits(c, promised):
                    break
                promised += self._need(c)
                self._dispatch(c)
                free -= 1
                continue
            worst = max(self.running.values(), key=self._badness)
            if c.vruntime > self.V or not (c.nice < worst.nice or c.deadline < worst.deadline):
                break
            if not self._fits(c, promised):
                break
            promised += self._need(c)
            del self.running[worst.pid]
            preempt(worst)
            self.ready[worst.pid] = worst
            self.counters["displaced"] += 1
            self._dispatch(c)

    def _dispatch(self, p: Process) -> None:
        del self.ready[p.pid]
        dispatch(p)
        self.running[p.pid] = p

    def _need(self, p: Process) -> int:
        """Blocks p needs for its whole context plus the tokens of its next slice (admitting
        only what can run a slice keeps admissions from evicting each other as they grow)."""
        t = self.kv.tables.get(p.pid)
        grow = max(1, min(p.params.max_tokens - p.turn_tokens, self.slice))
        total = min(-(-(len(p.tokens) + grow) // self.kv.block_size), self.kv.num_blocks)
        return max(0, total - (len(t.blocks) if t else 0))

    def _fits(self, p: Process, promised: int) -> bool:
        """Could p get the blocks for its whole context without taking them from a running
        process of equal or higher priority?"""
        need = self._need(p) + promised
        if need <= self.kv.available():
            return True
        return need <= self.kv.available() + sum(r for _, r in self._victims(p, (), strict=True))

    def _build(self) -> list[tuple[Process, int]]:
        budget = self.config.max_step_tokens
        decodes, prefills, urgent = [], [], []
        model = self.step_model if self.step_model.ready() else None
        held, decode, prefill = self.held, decodes.append, prefills.append
        for p in self.running.values():     # target_s is None unless p has latency_ms or a negative nice
            if model is not None and (p.latency_ms is not None or p.nice < 0) and p.owner not in held:
                target = target_s(p, model)
                if target is not None:
                    urgent.append((target, p.pid, p))
                    continue
            if len(p.tokens) - p.computed == 1:
                decode(p)
            else:
                prefill(p)
        self.plain_step, self.sized = not urgent, None
        if urgent:          # latency goals: serve them first, size the step to the tightest one
            urgent.sort(key=lambda e: e[:2])
            need = sum(len(p.tokens) - p.computed for _, _, p in urgent)
            extra = 0       # alone: a prefill (its time to first token), or the model lacks a small step
            if model.knows_small() and need == len(urgent):
                extra = min(max(0, model.tokens_within(urgent[0][0]) - need), self.extra_cap)
                self.sized = (urgent[0][0], extra)
            budget = min(budget, need + extra)
        if len(decodes) > budget:
            decodes.sort(key=self._rank)
        prefills.sort(key=self._rank)
        plan: list[tuple[Process, int]] = []
        planned: set[int] = set()
        if urgent:          # the others get at most `extra` (a prefix hit may leave budget over)
            budget = min(extra, self._serve([p for _, _, p in urgent], budget, plan, planned))
        self._serve(decodes + prefills, budget, plan, planned)
        return plan

    def _serve(self, queue: list[Process], budget: int, plan: list, planned: set) -> int:
        """Plan `queue`'s tokens in order within `budget`; returns the budget left."""
        held, RUNNING, tables, reserve = self.held, ProcState.RUNNING, self.kv.tables, self.kv.reserve
        for p in queue:
            if budget <= 0:
                break
            if p.state is not RUNNING or p.owner in held:
                continue                         # evicted by one ahead of it, or throttled
            t = tables.get(p.pid)
            if t is not None and t.blocks and t.swapped is None:      # the common case: running on
                n = min(len(p.tokens) - p.computed, budget)
                if reserve(p.pid, p.computed, n):    # it lacks blocks: evict for them if that suffices
                    n = self._fit(p, n, planned, strict=False)
            else:
                n = self._start(p, budget, planned)
            if n:
                plan.append((p, n))
                planned.add(p.pid)
                budget -= n
            elif p.state is ProcState.RUNNING and not self.kv.holds(p.pid):
                del self.running[p.pid]          # no memory to start: give the place back
                preempt(p)
                self.ready[p.pid] = p
        return budget

    def _start(self, p: Process, budget: int, planned) -> int:
        """Get p, which holds no blocks in the pool (fresh, recomputing or swapped out), the blocks
        for its next tokens, evicting only lower priorities if that suffices; return how many
        tokens it runs this step (0: none, it waits)."""
        kv, pid = self.kv, p.pid
        t = kv.tables.get(pid)
        if p.computed == 0 and t is None:
            hit = kv.match_prefix(pid, p.tokens, owner_namespace(p.owner))
            p.computed, p.stats.cached = hit, p.stats.cached + hit
        if kv.is_swapped(pid):
            n_blocks = len(kv.tables[pid].swapped[1])
            if not self._ensure(n_blocks, p, planned, True):
                return 0
            t0 = time.perf_counter()
            kv.swap_in(pid)
            self._learn_swap(n_blocks, time.perf_counter() - t0)
        return self._fit(p, min(len(p.tokens) - p.computed, budget), planned, strict=True)

    def _fit(self, p: Process, n: int, planned, strict: bool) -> int:
        """Reserve p's blocks for its next n tokens, evicting others (see _victims) if that
        suffices; n, or 0 when they cannot be had (nothing changed)."""
        kv = self.kv
        need = kv.reserve(p.pid, p.computed, n)
        if need and not (self._ensure(need, p, planned, strict) and kv.reserve(p.pid, p.computed, n) == 0):
            return 0
        return n

    def _ensure(self, need: int, p: Process, planned, strict: bool) -> bool:
        kv = self.kv
        if need <= kv.available():
            return True
        victims = self._victims(p, planned, strict)
        if need > kv.available() + sum(r for _, r in victims):
            return False
        for q, _ in victims:
            self._evict(q)
            if need <= kv.available():
                return True
        return need <= kv.available()

    def _victims(self, p: Process, planned, strict: bool) -> list[tuple[Process, int]]:
        """Processes whose KV p may take, worst first, with the blocks each would free. Running
        ones only if they rank below p (strict: only if their nice is higher)."""
        out = []
        mine = self._badness(p)
        for pid in self.kv.tables:
            q = self.procs.get(pid)
            if q is None or q is p or pid in planned or q.state not in _EVICT_ORDER:
                continue
            if q.state is ProcState.RUNNING and (q.nice <= p.nice if strict else self._badness(q) <= mine):
                continue
            r = self.kv.swap_cost(pid)
            if r:
                out.append((q, r))
        out.sort(key=lambda e: (_EVICT_ORDER[e[0].state], -e[0].nice, -e[0].deadline, -e[0].pid))
        return out

    def _evict(self, q: Process) -> None:
        """Free q's exclusive blocks: swap them out or drop them for recompute."""
        kv, pid, mode = self.kv, q.pid, self.config.preempt_mode
        blocks = kv.swap_cost(pid)
        swap = kv.can_swap_out(pid) and (
            mode == "swap" or (mode == "auto" and 2 * blocks * self.swap_s_per_block
                               < q.computed * self.prefill_s_per_token))
        if swap:
            t0 = time.perf_counter()
            kv.swap_out(pid)
            self._learn_swap(blocks, time.perf_counter() - t0)
            q.stats.swaps += 1
            self.counters["preempt_swap"] += 1
        else:
            kv.free(pid)
            q.computed = 0
            self.counters["preempt_recompute"] += 1
        if q.state is ProcState.RUNNING:
            del self.running[pid]
            preempt(q)
            self.ready[pid] = q

    def _learn_swap(self, blocks: int, seconds: float) -> None:
        if blocks and seconds > 0:
            self.swap_s_per_block = 0.8 * self.swap_s_per_block + 0.2 * seconds / blocks

    def check_invariants(self) -> None:
        """Raise AssertionError unless the queues and the process states agree: RUNNING iff in
        running, READY iff in ready, NEW iff in arrivals; the batch within max_running; only live
        processes hold KV; no process has computed more tokens than it has (debug/test builds)."""
        assert len(self.running) <= self.config.max_running, "batch over max_running"
        queued = (self.running, self.ready, self.arrivals)
        for q, state in zip(queued, (ProcState.RUNNING, ProcState.READY, ProcState.NEW)):
            for pid, p in q.items():
                assert self.procs.get(pid) is p and p.state is state, f"{p} queued as {state.name}"
        assert sum(map(len, queued)) == len(set().union(*queued)), "a process is in two queues"
        for p in self.procs:
            assert p.computed <= len(p.tokens), f"{p} computed {p.computed} > {len(p.tokens)} tokens"
            assert p.state not in (ProcState.RUNNING, ProcState.READY, ProcState.NEW) or \
                any(p.pid in q for q in queued), f"{p} is runnable but in no queue"
        for pid in self.kv.tables:
            p = self.procs.get(pid)
            assert p is not None and p.alive, f"pid {pid} holds KV after exit"

    def stats(self) -> dict:
        return dict(running=len(self.running), ready=len(self.ready) + len(self.arrivals),
                    vclock=self.V, swap_s_per_block=self.swap_s_per_block,
                    prefill_s_per_token=self.prefill_s_per_token, **self.counters)
