"""The step loop: schedule → execute → commit (nano-vllm's step), over the process operations.

Design rules
  * One owner thread calls everything here except execute(). execute(plan) is pure compute (the
    model runner, drivers/runner.py, reading only the plan) and may run in a worker thread;
    meanwhile the owner may call the process operations (kernel/procops.py), which change
    process fields and scheduler queues and may add block references (fork), but never free,
    move or write a block.
  * Blocks are taken, copied, swapped and freed only in schedule() (allocation, copy-on-write,
    swap, eviction) and commit() (prefix registration, freeing): never while a forward may use
    them. A process that exits during execute keeps its blocks until commit's end.
  * A step's result for a process is applied only if the process is in the same epoch as when
    the plan was made (curio's identity check). Every transition out of RUNNING bumps the epoch
    (kernel/proc.py) and only schedule() puts a process back, so the same epoch means it has been
    RUNNING throughout: stopped, interrupted or killed processes have their results dropped, and
    their KV slots past `computed` are stale.
  * Errors in one process (a failing forward for its sequence, a detokenizer error) become its
    exit status ("error"); the engine carries on with the others.
  * With config.check_invariants (tests, debug) every commit checks the KV allocator's and the
    scheduler's invariants, and freed KV blocks are filled with junk (kvcache.JUNK).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..drivers.grammar import fill_masks
from ..drivers.llama import SeqInput
from ..drivers.runner import Batch, BatchResult, ModelRunner, position_seed
from .kvcache import KVCache
from .ledger import Ledger
from .limits import Limits
from .param import KernelConfig
from .proc import ExitStatus, Process, ProcState, ProcTable
from .procops import KernelError, ProcOps
from .sched import Scheduler

__all__ = ["Engine", "KernelError", "pool_blocks", "StepPlan", "StepResult", "position_seed"]

CPU_KV_CAP = 4 << 30      # on a CPU the pool takes at most this much unless num_blocks says more
StepResult = BatchResult


@dataclass
class StepPlan(Batch):
    entries: list[tuple[Process, int, int]] = field(default_factory=list)  # (process, epoch, tokens)
    prefill_tokens: int = 0


def pool_blocks(model, cfg: KernelConfig) -> int:
    """The KV pool a model gets by the config's rule: num_blocks, else kv_fraction of free memory
    (at most CPU_KV_CAP on a CPU, never more than max_running full contexts)."""
    if cfg.num_blocks is not None:
        return cfg.num_blocks
    from ..drivers.device import kv_blocks_that_fit
    per_block = model.kv_bytes_per_token() * cfg.block_size
    n = kv_blocks_that_fit(per_block, cfg.kv_fraction, model.device)
    if model.device.type == "cpu":
        n = min(n, CPU_KV_CAP // per_block)
    ctx = min(model.config.context_length, cfg.max_context or model.config.context_length)
    return max(1, min(n, cfg.max_running * -(-ctx // cfg.block_size)))   # more is never used


class Engine:
    def __init__(self, model, config: KernelConfig | None = None, on_wake=None, limits: Limits | None = None,
                 pids: ProcTable | None = None):
        """limits: per-user and per-group limits (kernel/limits.py); the scheduler throttles by them.
        pids: another engine's process table whose pid numbers this one shares (kernel/models.py)."""
        self.model, self.config = model, (config or KernelConfig()).validate()
        self.limits = limits or Limits()
        self.tokenizer = model.tokenizer
        cfg = self.config
        self.storage = model.new_kv(pool_blocks(model, cfg), cfg.block_size)
        self.kv = KVCache(self.storage, prefix_cache=cfg.prefix_cache,
                          swap_blocks=cfg.swap_bytes // self.storage.bytes_per_block,
                          junk_on_free=cfg.check_invariants)
        self.procs = ProcTable(cfg.max_procs, pids)
        self.sched = Scheduler(cfg, self.kv, self.procs, self.limits)
        self.runner = ModelRunner(model, self.storage)
        self.sched.on_urgent = self.runner.interrupt.set     # preempt a step for a latency goal
        pool_tokens = self.storage.num_blocks * cfg.block_size
        self.max_context = min(model.config.context_length, cfg.max_context or pool_tokens, pool_tokens)
        self.ledger = Ledger()                    # per-user totals of exited processes (COUNTERS)
        self.ops = ProcOps(self.procs, self.sched, self.kv, self.tokenizer, self.max_context,
                           on_wake=on_wake, on_exit=self.ledger.exited)
        o = self.ops                              # the process operations, as the engine's
        self.spawn, self.write, self.close, self.signal = o.spawn, o.write, o.close, o.signal
        self.renice, self.fork, self.orphan, self.reap = o.renice, o.fork, o.orphan, o.reap
        self.counters = dict(steps=0, tokens=0, prefill_tokens=0, busy_s=0.0, preempted_steps=0)

    @property
    def in_flight(self) -> bool:
        return self.ops.in_flight

    # ---- stepping -----------------------------------------------------------------------------
    def has_work(self) -> bool:
        s = self.sched
        return bool(s.running or s.ready or s.arrivals)

    def schedule(self) -> StepPlan | None:
        """Choose this step's work and make its KV writable; None when there is nothing to run."""
        if self.ops.in_flight:
            raise RuntimeError("schedule() while a step is in flight (commit it first)")
        self.ops.reclaim()
        work = self.sched.schedule()
        if not work:
            return None
        plan, constrained, prefill = StepPlan(), [], 0
        entries, seqs, rows = plan.entries, plan.seqs, plan.rows    # the hot loop: one per process
        tables = self.kv.tables
        for p, n in work:
            start, tokens = p.computed, p.tokens
            want = start + n == len(tokens) and not p.feeding
            entries.append((p, p.epoch, n))
            if n > 1 or start < p.turn_start:
                prefill += n
            # the table's own list, not a copy: only schedule/commit ever change it
            seqs.append(SeqInput(tokens[start:start + n], start, tables[p.pid].blocks, want))
            if not want:
                continue
            params = p.params           # a sampled row (drivers/runner.py Batch.rows)
            history = tokens[-params.penalty_last_n:] if params.penalized else None
            if p.seed is None:
                rows.append((params, None, None, history))
            else:
                if p.generator is None:
                    p.generator = self.runner.new_generator()
                rows.append((params, p.generator, position_seed(p.seed, start + n), history))
            if p.matcher is not None:
                constrained.append((len(rows) - 1, p.matcher))
        plan.prefill_tokens = prefill
        if constrained:         # grammar masks of the whole batch at once, on this thread (the
            masks = fill_masks([m for _, m in constrained])     # matchers are the owner's)
            for (row, _), mask in zip(constrained, masks):
                plan.masks[row] = mask
        if self.runner.interrupt.is_set():      # (clear() takes a lock: ~10 µs right after a forward)
            self.runner.interrupt.clear()
        self.ops.in_flight = True
        return plan

    def execute(self, plan: StepPlan) -> StepResult:
        """Forward and sample. Pure compute; touches nothing but the plan, the model, the pool."""
        return self.runner.run(plan)

    def commit(self, plan: StepPlan, result: StepResult) -> list[Process]:
        """Apply the results of live processes; deliver text; free blocks of the exited."""
        touched, ops, now = [], self.ops, time.monotonic()
        try:
            for i, (p, epoch, n) in enumerate(plan.entries):
                if p.epoch != epoch or result.preempted:    # it left RUNNING meanwhile (stopped,
                    self.kv.truncate(p.pid, p.computed)     # killed), or the step was preempted for
                    continue                                # a latency goal: the result is stale
                touched.append(p)
                if i in result.errors:
                    ops.exit(p, ExitStatus("error", message=result.errors[i]))
                    continue
                try:
                    p.computed += n
                    self.kv.commit(p.pid, p.tokens, p.computed)
                    if n > 1 or plan.seqs[i].start_pos < p.turn_start:
                        p.stats.prefilled += n
                    if result.tokens[i] is not None:
                        self._deliver(p, result.tokens[i], result.logprobs[i],
                                      result.tops[i] if result.tops else None, now)
                        if p.matcher is not None:
                            self._force(p, epoch, now)
                    elif p.feeding and p.computed == len(p.tokens):
                        ops.end_feed(p)
                except Exception as e:
                    if p.alive:
                        ops.exit(p, ExitStatus("error", message=f"{type(e).__name__}: {e}"))
            c = self.counters
            c["busy_s"] += result.seconds
            if result.preempted:
                c["preempted_steps"] += 1
            else:
                c["steps"] += 1
                c["prefill_tokens"] += plan.prefill_tokens
                self.sched.observe(plan.prefill_tokens, result.seconds, sum(n for _, _, n in plan.entries))
        finally:
            self.sched.note_charges()
            ops.in_flight = False
            ops.reclaim()
        if self.config.check_invariants:
            self.kv.check_invariants()
            self.sched.check_invariants()
        return touched

    def _force(self, p: Process, epoch: int, now: float) -> None:
        """Feed the tokens the grammar allows as the only continuation, without sampling (they
        are computed with the next step, as a chunk)."""
        for tok in p.matcher.forced():
            if p.epoch != epoch or p.state is not ProcState.RUNNING or p.matcher is None:
                return                                  # the turn ended
            self._deliver(p, tok, 0.0, None, now)

    def _deliver(self, p: Process, tok: int, logprob: float | None, top, now: float) -> None:
        """top: the sampler's [(id, logprob), ...] when p asked for top_logprobs; now: the step's
        time.monotonic(). Runs for every generated token: lookups are bound once."""
        matcher, params = p.matcher, p.params
        if matcher is not None and not matcher.consume(tok):        # a mask makes this impossible
            self.ops.exit(p, ExitStatus("error", message=f"grammar rejected token {tok}: {matcher.error}"))
            return
        p.tokens.append(tok)
        p.output_ids.append(tok)
        p.turn_tokens += 1
        st = p.stats
        st.tokens += 1
        self.counters["tokens"] += 1
        st.last_token_at = now
        if st.first_token_at is None:
            st.first_token_at = now
        self.sched.charge(p, 1)
        text, reason = p.output.push(tok)
        if params.logprobs:
            p.logprobs.append(logprob)
            p.channel.put(text, p.output.logprob_entry(tok, logprob, top, params.top_logprobs))
        elif text:
            p.channel.put(text)
        full = len(p.tokens) >= self.max_context
        if reason is None and matcher is not None and matcher.stopped:
            reason = "eos"                      # the grammar is complete and allows nothing more
        if reason is None and (p.turn_tokens >= params.max_tokens or full):
            reason = "length"
        if reason is None:
            if p.channel.pending:
                self.ops.wake(p)
            return
        if self.ops.flush(p) and reason != "eos":
            reason = "stop"
        if p.session and not full:
            self.ops.end_turn(p)
        else:
            self.ops.exit(p, ExitStatus(reason))

    def step(self) -> bool:
        """One whole step on this thread; False when there was nothing to run."""
        plan = self.schedule()
        if plan is None:
            return False
        self.commit(plan, self.execute(plan))
        return True

    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        steps = 0
        while steps < max_steps and self.step():
            steps += 1
        return steps

    def stats(self) -> dict:
        return dict(self.counters, max_context=self.max_context, procs=len(self.procs),
                    kv=self.kv.stats(), sched=self.sched.stats())
