"""The step loop: schedule → execute → commit, and the mutators that change processes between steps.

Design rules
  * One owner thread calls everything here except execute(). execute(plan) is pure compute (model
    forward + sampling, reading only the plan) and may run in a worker thread; meanwhile the owner
    may call mutators, which change process fields and scheduler queues and may add block
    references (fork), but never free, move or write a block.
  * Blocks are taken, copied, swapped and freed only in schedule() (allocation, copy-on-write,
    swap, eviction) and commit() (prefix registration, freeing): never while a forward may use
    them (fork only shares the parent's blocks with the child's new table). A process
    that exits during execute keeps its blocks until commit's end (kill only sets state, as xv6).
  * A step's result for a process is applied only if the process is still RUNNING in the same
    epoch as when the plan was made (curio's identity check): preempted, stopped, interrupted or
    killed processes have their results dropped, and their KV slots past `computed` are stale.
  * Seeded sampling draws with a generator re-seeded per position (seed, position), so a dropped
    result, a preemption or a fork never shifts the random stream: same seed, same tokens.
  * Errors in one process (a failing forward for its sequence, a detokenizer error) become its
    exit status ("error"); the engine carries on with the others.
Mutators raise KernelError(errno, message) for bad requests; the syscall layer sends those back.
"""

from __future__ import annotations

import errno
import signal as _signal
import time
from dataclasses import dataclass, field, replace

import torch

from ..drivers.llama import SeqInput
from ..drivers.sampler import SamplingParams, StopMatcher, sample
from .kvcache import KVCache
from .param import NICE_MAX, NICE_MIN, KernelConfig
from .proc import (INIT, ExitStatus, Process, ProcState, ProcTable, cont, exit_, sleep, stop, wake)
from .sched import Scheduler

SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGKILL, _signal.SIGSTOP, _signal.SIGCONT)
CPU_KV_CAP = 4 << 30      # on a CPU the pool takes at most this much unless num_blocks says more


class KernelError(Exception):
    def __init__(self, err: int, message: str):
        super().__init__(err, message)
        self.errno, self.message = err, message

    def __str__(self) -> str:
        return self.message


def position_seed(seed: int, position: int) -> int:
    """splitmix64 of (seed, position): the seed of the draw for the token at `position`."""
    z = (seed + 0x9E3779B97F4A7C15 * (position + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


@dataclass
class StepPlan:
    entries: list[tuple[Process, int, int]]      # (process, epoch at planning, new tokens)
    seqs: list[SeqInput]
    params: list[SamplingParams]                 # one per seq with want_logits, in order
    generators: list
    seeds: list[int | None]
    prefill_tokens: int = 0


@dataclass
class StepResult:
    tokens: list[int | None]                     # per entry: the sampled token, or None
    logprobs: list[float | None]
    errors: dict[int, str] = field(default_factory=dict)    # entry index -> message
    seconds: float = 0.0


class Engine:
    def __init__(self, model, config: KernelConfig | None = None, on_wake=None):
        self.model, self.config = model, (config or KernelConfig()).validate()
        self.tokenizer = model.tokenizer
        cfg = self.config
        self.storage = model.new_kv(self._pool_blocks(), cfg.block_size)
        self.kv = KVCache(self.storage, prefix_cache=cfg.prefix_cache,
                          swap_blocks=cfg.swap_bytes // self.storage.bytes_per_block)
        self.procs = ProcTable(cfg.max_procs)
        self.sched = Scheduler(cfg, self.kv, self.procs)
        pool_tokens = self.storage.num_blocks * cfg.block_size
        self.max_context = min(model.config.context_length, cfg.max_context or pool_tokens, pool_tokens)
        self.on_wake = on_wake                    # callable(Process): new output or state change
        self._in_flight = False
        self._dead: list[Process] = []            # exited; blocks freed at the end of the step
        self.counters = dict(steps=0, tokens=0, prefill_tokens=0, busy_s=0.0)

    def _pool_blocks(self) -> int:
        cfg, model = self.config, self.model
        if cfg.num_blocks is not None:
            return cfg.num_blocks
        from ..drivers.device import kv_blocks_that_fit
        per_block = model.kv_bytes_per_token() * cfg.block_size
        n = kv_blocks_that_fit(per_block, cfg.kv_fraction, model.device)
        if model.device.type == "cpu":
            n = min(n, CPU_KV_CAP // per_block)
        ctx = min(model.config.context_length, cfg.max_context or model.config.context_length)
        return max(1, min(n, cfg.max_running * -(-ctx // cfg.block_size)))   # more is never used

    # ---- mutators ----------------------------------------------------------------------------
    def _get(self, pid: int) -> Process:
        p = self.procs.get(pid) if isinstance(pid, int) else None
        if p is None:
            raise KernelError(errno.ESRCH, f"no process {pid}")
        return p

    def _check_ids(self, ids, what: str) -> list[int]:
        v = self.tokenizer.vocab_size
        if not isinstance(ids, (list, tuple)) or not ids or not all(
                type(i) is int and 0 <= i < v for i in ids):
            raise KernelError(errno.EINVAL, f"{what} must be a non-empty list of token ids in [0, {v})")
        return list(ids)

    def _check_nice(self, nice) -> int:
        if type(nice) is not int or not NICE_MIN <= nice <= NICE_MAX:
            raise KernelError(errno.EINVAL, f"nice must be an int in [{NICE_MIN}, {NICE_MAX}], got {nice!r}")
        return nice

    def spawn(self, prompt_ids, params: SamplingParams | None = None, *, owner: str = "", nice: int = 0,
              session: bool = False, detached: bool = False, command: str = "", ppid: int = 0,
              stdin: bool = False, stdin_tail: list[int] | None = None,
              holder: int | None = None) -> Process:
        """A new process generating after prompt_ids. EINVAL, E2BIG (prompt too long), EAGAIN.
        stdin: the prompt stays open — write() appends to it (prefilled as it arrives) and close()
        appends stdin_tail (e.g. the chat template's end of the user turn) and starts generating."""
        ids = self._check_ids(prompt_ids, "prompt")
        params = params or SamplingParams()
        try:
            params.validate()
        except (ValueError, AttributeError) as e:
            raise KernelError(errno.EINVAL, f"sampling parameters: {e}") from None
        self._check_nice(nice)
        if len(ids) >= self.max_context:
            raise KernelError(errno.E2BIG, f"prompt too long ({len(ids)} >= {self.max_context} tokens,"
                                           f" the context)")
        if self.procs.full():
            raise KernelError(errno.EAGAIN, f"process table full ({self.procs.max_procs})")
        p = Process(self.procs.new_pid(), ids, params, ppid=ppid, owner=owner, command=command,
                    session=session, detached=detached, nice=nice, holder=holder)
        self._new_turn(p)
        p.stdin_open = p.feeding = stdin
        p.stdin_tail = list(stdin_tail or [])
        self.procs.add(p)
        self.sched.enqueue(p)
        return p

    def write(self, pid: int, token_ids) -> int:
        """Append input: to an open stdin (prefilled, no generation yet), else a turn to a session
        (it starts now if the session sleeps, else after this turn)."""
        p = self._get(pid)
        ids = self._check_ids(token_ids, "input")
        if not (p.session or p.stdin_open):
            raise KernelError(errno.EINVAL, f"process {pid} is not a session and has no open input")
        self._queue_input(p, ids, feed=p.stdin_open)
        return len(ids)

    def close(self, pid: int) -> None:
        """Close an open stdin: append its tail and start generating (EINVAL if not open)."""
        p = self._get(pid)
        if not p.stdin_open:
            raise KernelError(errno.EINVAL, f"process {pid} has no open input")
        p.stdin_open = False
        self._queue_input(p, p.stdin_tail, feed=False)

    def _queue_input(self, p: Process, ids: list[int], feed: bool) -> None:
        if not p.alive:
            raise KernelError(errno.EPIPE, f"process {p.pid} has exited")
        queued = sum(len(t) for t, _ in p.pending_input)
        if len(p.tokens) + queued + len(ids) >= self.max_context:
            raise KernelError(errno.E2BIG, f"{len(ids)} more tokens overflow the context of "
                                           f"{self.max_context} (holds {len(p.tokens) + queued})")
        p.pending_input.append((ids, feed))
        if p.state is ProcState.SLEEPING:
            self._next_turn(p)

    def signal(self, pid: int, sig: int) -> None:
        p = self._get(pid)
        if sig not in SIGNALS:
            raise KernelError(errno.EINVAL, f"unsupported signal {sig!r}")
        if not p.alive:
            return
        if sig in (_signal.SIGTERM, _signal.SIGKILL):
            self._exit(p, ExitStatus("signal", signal=int(sig)))
        elif sig == _signal.SIGINT:
            if not p.session:
                self._exit(p, ExitStatus("signal", signal=int(sig)))
            elif p.state is ProcState.STOPPED:
                if not p.was_sleeping:
                    self._flush(p)
                    p.channel.end_turn()
                    p.was_sleeping = True
                    self._wake(p)
            elif p.state is not ProcState.SLEEPING:
                self._flush(p)
                self._end_turn(p)
        elif sig == _signal.SIGSTOP:
            if p.state is not ProcState.STOPPED:
                self.sched.dequeue(p)
                stop(p)
                self._wake(p)
        elif sig == _signal.SIGCONT and p.state is ProcState.STOPPED:
            cont(p)
            if p.state is ProcState.READY:
                self.sched.enqueue(p)
            elif p.pending_input:
                self._next_turn(p)
            self._wake(p)

    def renice(self, pid: int, nice: int) -> None:
        p = self._get(pid)
        self.sched.renice(p, self._check_nice(nice))

    def fork(self, pid: int, holder: int | None = None) -> Process:
        """A child continuing from p's exact state (tokens, KV shared copy-on-write, the
        detokenizer and stop-string state of the turn) with its own seed."""
        p = self._get(pid)
        if not p.alive:
            raise KernelError(errno.ESRCH, f"process {pid} has exited")
        if self.procs.full():
            raise KernelError(errno.EAGAIN, f"process table full ({self.procs.max_procs})")
        cpid = self.procs.new_pid()
        p.forks += 1                              # the child's seed: (parent seed, nth fork)
        seed = None if p.seed is None else position_seed(p.seed, -p.forks)
        c = Process(cpid, p.prompt_ids, replace(p.params, seed=seed), ppid=p.pid, owner=p.owner,
                    command=p.command, session=p.session, detached=p.detached, nice=p.nice,
                    holder=holder)
        c.tokens, c.output_ids = list(p.tokens), list(p.output_ids)
        c.pending_input = [(list(t), feed) for t, feed in p.pending_input]
        c.stdin_open, c.stdin_tail, c.feeding = p.stdin_open, list(p.stdin_tail), p.feeding
        c.vruntime = p.vruntime
        if self.kv.fork(p.pid, cpid):
            c.computed = p.computed
        self._new_turn(c)
        c.turn_start, c.turn_tokens = p.turn_start, p.turn_tokens
        for tok in c.tokens[c.turn_start:]:       # replay the turn: same held-back text as p
            if tok not in self.tokenizer.stop_ids or p.params.ignore_eos:
                text = c.decoder.push(tok)
                if text and not c.matcher.stopped:
                    c.matcher.feed(text)
        self.procs.add(c)
        sleeping = p.state is ProcState.SLEEPING or (p.state is ProcState.STOPPED and p.was_sleeping)
        if sleeping:
            sleep(c)
        else:
            self.sched.enqueue(c)
        return c

    def orphan(self, holder: int) -> int:
        """The holder (a session) is gone: its processes go to init (reparent), which reaps each
        one once it is a zombie; live non-detached ones get SIGKILL. Returns how many it killed."""
        killed = 0
        for p in self.procs.all():
            if p.holder != holder or holder == INIT:
                continue
            p.holder = INIT
            if p.alive and not p.detached:
                self._exit(p, ExitStatus("signal", signal=int(_signal.SIGKILL)))
                killed += 1
            elif not p.alive and p not in self._dead:
                self.procs.remove(p.pid)
        return killed

    def reap(self, pid: int) -> Process:
        """Remove a ZOMBIE from the table and return it (its exit status is p.exit)."""
        p = self._get(pid)
        if p.alive:
            raise KernelError(errno.EAGAIN, f"process {pid} has not exited")
        return self.procs.remove(pid)

    # ---- turns and exits ----------------------------------------------------------------------
    def _new_turn(self, p: Process) -> None:
        p.turn_start, p.turn_tokens = len(p.tokens), 0
        p.decoder = self.tokenizer.stream()
        p.matcher = StopMatcher(p.params.stop)

    def _next_turn(self, p: Process) -> None:
        """A sleeping process takes its next queued input and becomes READY (or exits with
        "length" if its output since the write left no room for it in the context). Input to an
        open stdin is only prefilled; a closing input with no tail of its own recomputes the
        last token, whose logits start the generation."""
        ids, feed = p.pending_input.pop(0)
        if not ids:
            p.computed = min(p.computed, len(p.tokens) - 1)
            self.kv.truncate(p.pid, p.computed)
            ids = [p.tokens.pop()]
        if len(p.tokens) + len(ids) >= self.max_context:
            self._exit(p, ExitStatus("length", message="no room in the context for the input"))
            return
        p.tokens.extend(ids)
        self._new_turn(p)
        p.feeding = feed
        wake(p)
        self.sched.enqueue(p)
        self._wake(p)

    def _flush(self, p: Process) -> bool:
        """Push out text held by the detokenizer and the stop matcher; True if a stop matched."""
        if p.matcher.stopped:
            return True
        emit, stopped = p.matcher.feed(p.decoder.finish())
        p.channel.put(emit if stopped else emit + p.matcher.flush())
        return stopped

    def _end_turn(self, p: Process) -> None:
        """A session's generation is over: it sleeps, or takes its next queued input."""
        self.sched.dequeue(p)
        p.channel.end_turn()
        sleep(p)
        if p.pending_input:
            self._next_turn(p)
        self._wake(p)

    def _end_feed(self, p: Process) -> None:
        """Input written to an open stdin is prefilled: sleep until more input or close."""
        self.sched.dequeue(p)
        sleep(p)
        if p.pending_input:
            self._next_turn(p)
        self._wake(p)

    def _exit(self, p: Process, status: ExitStatus) -> None:
        self.sched.dequeue(p)
        exit_(p, status)
        self._dead.append(p)
        if not self._in_flight:
            self._reclaim()
        self._wake(p)

    def _reclaim(self) -> None:
        for p in self._dead:
            self.kv.free(p.pid)
            if p.holder == INIT and self.procs.get(p.pid) is p:     # init reaps its orphans
                self.procs.remove(p.pid)
        self._dead.clear()

    def _wake(self, p: Process) -> None:
        if self.on_wake is not None:
            self.on_wake(p)

    # ---- stepping -----------------------------------------------------------------------------
    def has_work(self) -> bool:
        s = self.sched
        return bool(s.running or s.ready or s.arrivals)

    def schedule(self) -> StepPlan | None:
        """Choose this step's work and make its KV writable; None when there is nothing to run."""
        if self._in_flight:
            raise RuntimeError("schedule() while a step is in flight (commit it first)")
        self._reclaim()
        work = self.sched.schedule()
        if not work:
            return None
        plan = StepPlan([], [], [], [], [])
        for p, n in work:
            start = p.computed
            want = start + n == len(p.tokens) and not p.feeding
            plan.entries.append((p, p.epoch, n))
            # the table's own list, not a copy: only schedule/commit ever change it
            plan.seqs.append(SeqInput(p.tokens[start:start + n], start,
                                      self.kv.tables[p.pid].blocks, want))
            if n > 1 or start < p.turn_start:
                plan.prefill_tokens += n
            if want:
                plan.params.append(p.params)
                if p.seed is not None and p.generator is None:
                    p.generator = torch.Generator(device=self.model.device)
                plan.generators.append(p.generator)
                plan.seeds.append(None if p.seed is None else position_seed(p.seed, start + n))
        self._in_flight = True
        return plan

    def execute(self, plan: StepPlan) -> StepResult:
        """Forward and sample. Pure compute; touches nothing but the plan, the model, the pool."""
        t0 = time.perf_counter()
        try:
            tokens, logprobs = self._run(plan.seqs, plan.params, plan.generators, plan.seeds)
            result = StepResult(tokens, logprobs)
        except Exception as e:              # isolate the failing sequences, one at a time
            result = StepResult([None] * len(plan.seqs), [None] * len(plan.seqs))
            row = 0
            for i, seq in enumerate(plan.seqs):
                sl = slice(row, row + 1) if seq.want_logits else slice(row, row)
                row += seq.want_logits
                try:
                    t, lp = self._run([seq], plan.params[sl], plan.generators[sl], plan.seeds[sl])
                    result.tokens[i], result.logprobs[i] = t[0], lp[0]
                except Exception as e1:
                    result.errors[i] = f"{type(e1).__name__}: {e1}" if len(plan.seqs) > 1 else \
                        f"{type(e).__name__}: {e}"
        result.seconds = time.perf_counter() - t0
        return result

    def _run(self, seqs, params, generators, seeds):
        logits = self.model.forward(seqs, self.storage)
        for g, s in zip(generators, seeds):
            if s is not None:
                g.manual_seed(s)
        res = sample(logits, params, generators) if params else None
        out_t, out_lp, row = [], [], 0
        for seq in seqs:
            if seq.want_logits:
                out_t.append(res.tokens[row])
                out_lp.append(res.logprobs[row] if res.logprobs else None)
                row += 1
            else:
                out_t.append(None)
                out_lp.append(None)
        return out_t, out_lp

    def commit(self, plan: StepPlan, result: StepResult) -> list[Process]:
        """Apply the results of live processes; deliver text; free blocks of the exited."""
        touched = []
        try:
            for i, (p, epoch, n) in enumerate(plan.entries):
                if p.epoch != epoch or p.state is not ProcState.RUNNING:
                    self.kv.truncate(p.pid, p.computed)         # stale: preempted or killed meanwhile
                    continue
                touched.append(p)
                if i in result.errors:
                    self._exit(p, ExitStatus("error", message=result.errors[i]))
                    continue
                try:
                    p.computed += n
                    self.kv.commit(p.pid, p.tokens, p.computed)
                    if n > 1 or plan.seqs[i].start_pos < p.turn_start:
                        p.stats.prefilled += n
                    if result.tokens[i] is not None:
                        self._deliver(p, result.tokens[i], result.logprobs[i])
                    elif p.feeding and p.computed == len(p.tokens):
                        self._end_feed(p)
                except Exception as e:
                    if p.alive:
                        self._exit(p, ExitStatus("error", message=f"{type(e).__name__}: {e}"))
            c = self.counters
            c["steps"] += 1
            c["busy_s"] += result.seconds
            c["prefill_tokens"] += plan.prefill_tokens
            self.sched.observe(plan.prefill_tokens, result.seconds)
        finally:
            self._in_flight = False
            self._reclaim()
        if self.config.check_invariants:
            self.kv.check_invariants()
        return touched

    def _deliver(self, p: Process, tok: int, logprob: float | None) -> None:
        now = time.monotonic()
        p.tokens.append(tok)
        p.output_ids.append(tok)
        p.turn_tokens += 1
        st = p.stats
        st.tokens += 1
        self.counters["tokens"] += 1
        st.last_token_at = now
        if st.first_token_at is None:
            st.first_token_at = now
        if p.params.logprobs:
            p.logprobs.append(logprob)
        self.sched.charge(p, 1)
        reason = None
        if tok in self.tokenizer.stop_ids and not p.params.ignore_eos:
            reason = "eos"
        else:
            text = p.decoder.push(tok)
            if text:
                emit, stopped = p.matcher.feed(text)
                p.channel.put(emit)
                reason = "stop" if stopped else None
        full = len(p.tokens) >= self.max_context
        if reason is None and (p.turn_tokens >= p.params.max_tokens or full):
            reason = "length"
        if reason is None:
            if p.channel.pending:
                self._wake(p)
            return
        if self._flush(p) and reason != "eos":
            reason = "stop"
        if p.session and not full:
            self._end_turn(p)
        else:
            self._exit(p, ExitStatus(reason))

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
