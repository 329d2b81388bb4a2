"""Process operations on the process table (xv6: proc.c): spawn, write, close, signal, renice,
fork, orphan, reap, and the turn and exit machinery that the engine's commit also uses.
(Over 300 lines: every operation on a process's life shares the turn and exit machinery here.)

Contracts:
  * Called on the engine's owner thread only. While a step is in flight (in_flight), an operation
    may change process fields and scheduler queues and may add block references (fork), but never
    free, move or write a block: a process that exits then keeps its blocks until reclaim() at the
    end of the step (kill only sets state, as xv6).
  * Arguments were validated at the boundary (kernel/syscalls.py): shapes and ranges are asserted
    here. What depends on the state of the table (no such process, not a session, the context is
    full, the table is full, the process exited) raises KernelError(errno, message).
  * One reaper: wait() reaps (reap); a process whose holder is gone belongs to init (orphan), and
    init reaps each of its processes as soon as it is a zombie whose blocks are freed (reclaim),
    except a detached one: it stays a zombie, with its exit status and unread output, until its
    owner (any connection of that user) reaps it by wait(). Zombies count toward the owner's
    max_procs limit (kernel/limits.py), so they cannot fill the table.
"""

from __future__ import annotations

import errno
from dataclasses import replace

from ..drivers.grammar import GrammarCompiler, GrammarError
from ..drivers.output import TurnOutput
from ..drivers.runner import position_seed
from ..drivers.sampler import SamplingParams
from . import abi
from .proc import INIT, ExitStatus, Process, ProcState, ProcTable, cont, exit_, sleep, stop, wake


class KernelError(Exception):
    def __init__(self, err: int, message: str):
        super().__init__(err, message)
        self.errno, self.message = err, message

    def __str__(self) -> str:
        return self.message


class ProcOps:
    def __init__(self, procs: ProcTable, sched, kv, tokenizer, max_context: int, on_wake=None,
                 on_exit=None):
        self.procs, self.sched, self.kv, self.tokenizer = procs, sched, kv, tokenizer
        self.max_context = max_context
        self.on_wake = on_wake                    # callable(Process): new output or state change
        self.on_exit = on_exit                    # callable(Process): it just became a ZOMBIE
        self.in_flight = False                    # a step is computing: blocks may not be freed
        self._dead: list[Process] = []            # exited; blocks freed at the end of the step
        self.grammars = GrammarCompiler(tokenizer)  # constraints -> compiled grammars (cached)

    def get(self, pid: int) -> Process:
        p = self.procs.get(pid)
        if p is None:
            raise KernelError(errno.ESRCH, f"no process {pid}")
        return p

    def _assert_ids(self, ids) -> None:
        v = self.tokenizer.vocab_size
        assert ids and all(type(i) is int and 0 <= i < v for i in ids), "token ids checked at the boundary"

    # ---- the operations ----------------------------------------------------------------------
    def spawn(self, prompt_ids, params: SamplingParams | None = None, *, owner: str = "", nice: int = 0,
              session: bool = False, detached: bool = False, command: str = "", ppid: int = 0,
              stdin: bool = False, stdin_tail: list[int] | None = None,
              holder: int | None = None, pgid: int | None = None) -> Process:
        """A new process generating after prompt_ids. E2BIG (prompt too long), EAGAIN (table full).
        stdin: the prompt stays open — write() appends to it (prefilled as it arrives) and close()
        appends stdin_tail (e.g. the chat template's end of the user turn) and starts generating.
        holder: the session that will reap it (None: the caller of this method; INIT: init).
        pgid: the process group it joins (None: a new group, its own pid). A grammar in params
        (params.constraint) that does not compile is EINVAL naming the problem."""
        self._assert_ids(prompt_ids)
        params = params or SamplingParams()
        assert params.validate() is params and abi.NICE_MIN <= nice <= abi.NICE_MAX
        if len(prompt_ids) >= self.max_context:
            raise KernelError(errno.E2BIG, f"prompt too long ({len(prompt_ids)} >= {self.max_context} "
                                           f"tokens, the context)")
        if self.procs.full():
            raise KernelError(errno.EAGAIN, f"process table full ({self.procs.max_procs})")
        grammar = None
        if params.constraint is not None:
            try:
                grammar = self.grammars.compile(params.constraint)
            except GrammarError as e:
                raise KernelError(errno.EINVAL, f"{e}"[:400]) from None
        p = Process(self.procs.new_pid(), list(prompt_ids), params, ppid=ppid, owner=owner,
                    command=command, session=session, detached=detached, nice=nice, holder=holder,
                    pgid=pgid)
        p.grammar = grammar
        self.new_turn(p)
        p.stdin_open = p.feeding = stdin
        p.stdin_tail = list(stdin_tail or [])
        self.procs.add(p)
        self.sched.enqueue(p)
        return p

    def write(self, pid: int, token_ids) -> int:
        """Append input: to an open stdin (prefilled, no generation yet), else a turn to a session
        (it starts now if the session sleeps, else after this turn)."""
        p = self.get(pid)
        self._assert_ids(token_ids)
        if not (p.session or p.stdin_open):
            raise KernelError(errno.EINVAL, f"process {pid} is not a session and has no open input")
        self._queue_input(p, list(token_ids), feed=p.stdin_open)
        return len(token_ids)

    def close(self, pid: int) -> None:
        """Close an open stdin: append its tail and start generating (EINVAL if not open)."""
        p = self.get(pid)
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
            self.next_turn(p)

    def signal(self, pid: int, sig: int) -> None:
        """abi.SIGINT ends a session's turn (other processes exit), SIGTERM/SIGKILL end the process,
        SIGSTOP suspends it (its place in the batch freed), SIGCONT resumes it."""
        p = self.get(pid)
        assert sig in abi.SIGNAL_NAMES, "signals checked at the boundary"
        if not p.alive:
            return
        if sig in (abi.SIGTERM, abi.SIGKILL) or (sig == abi.SIGINT and not p.session):
            self.exit(p, ExitStatus("signal", signal=int(sig)))
        elif sig == abi.SIGINT:
            if p.state is ProcState.STOPPED:
                if not p.was_sleeping:
                    self.flush(p)
                    p.channel.end_turn()
                    p.was_sleeping = True
                    self.wake(p)
            elif p.state is not ProcState.SLEEPING:
                self.flush(p)
                self.end_turn(p)
        elif sig == abi.SIGSTOP:
            if p.state is not ProcState.STOPPED:
                self.sched.dequeue(p)
                stop(p)
                self.wake(p)
        elif sig == abi.SIGCONT and p.state is ProcState.STOPPED:
            cont(p)
            if p.state is ProcState.READY:
                self.sched.enqueue(p)
            elif p.pending_input:
                self.next_turn(p)
            self.wake(p)

    def renice(self, pid: int, nice: int) -> None:
        assert abi.NICE_MIN <= nice <= abi.NICE_MAX, "nice checked at the boundary"
        self.sched.renice(self.get(pid), nice)

    def fork(self, pid: int, holder: int | None = None, params: SamplingParams | None = None) -> Process:
        """A child continuing from p's exact state (tokens, KV shared copy-on-write, queued input,
        the detokenizer and stop-string state of the turn) with its own seed. The child of a
        stopped process is not stopped: it runs (or sleeps, or takes its queued input) as p would.
        It joins p's process group and copies p's grammar matcher state.
        params: the child's own sampling params (e.g. another grammar) instead of p's, from its
        next turn: only while p is between turns (sleeping, or its stdin still open), else EBUSY;
        a grammar that does not compile is EINVAL."""
        p = self.get(pid)
        if not p.alive:
            raise KernelError(errno.ESRCH, f"process {pid} has exited")
        if self.procs.full():
            raise KernelError(errno.EAGAIN, f"process table full ({self.procs.max_procs})")
        grammar = p.grammar
        if params is not None:
            asleep = p.state is ProcState.SLEEPING or (p.state is ProcState.STOPPED and p.was_sleeping)
            if not (asleep or p.stdin_open):
                raise KernelError(errno.EBUSY, f"process {pid} is in a turn: fork with other params "
                                               f"only between its turns")
            assert params.validate() is params
            try:
                grammar = None if params.constraint is None else self.grammars.compile(params.constraint)
            except GrammarError as e:
                raise KernelError(errno.EINVAL, f"{e}"[:400]) from None
        cpid = self.procs.new_pid()
        p.forks += 1                              # the child's seed: (parent seed, nth fork)
        seed = None if p.seed is None else position_seed(p.seed, -p.forks)
        own = params if params is not None and params.seed is not None else replace(params or p.params, seed=seed)
        c = Process(cpid, p.prompt_ids, own, ppid=p.pid, owner=p.owner, command=p.command, session=p.session,
                    detached=p.detached, nice=p.nice, holder=holder, pgid=p.pgid)
        c.grammar = grammar
        c.tokens, c.output_ids = list(p.tokens), list(p.output_ids)
        c.pending_input = [(list(t), feed) for t, feed in p.pending_input]
        c.stdin_open, c.stdin_tail, c.feeding = p.stdin_open, list(p.stdin_tail), p.feeding
        c.vruntime = p.vruntime
        if self.kv.fork(p.pid, cpid):
            c.computed = p.computed
        self.new_turn(c)
        c.turn_start, c.turn_tokens = p.turn_start, p.turn_tokens
        c.output.replay(c.tokens[c.turn_start:])  # the same held-back text as p
        if params is None:                        # (else new_turn gave it the new grammar's)
            c.matcher = p.matcher.copy() if p.matcher is not None else None
        self.procs.add(c)
        if p.state is ProcState.SLEEPING or (p.state is ProcState.STOPPED and p.was_sleeping):
            sleep(c)
            if c.pending_input:                   # written while p was stopped: take it now
                self.next_turn(c)
        else:
            self.sched.enqueue(c)
        return c

    def group(self, pgid: int) -> list[Process]:
        """The processes of a process group (zombies included), oldest first."""
        return [p for p in self.procs.all() if p.pgid == pgid]

    def orphan(self, holder: int) -> int:
        """The holder (a session) is gone: its processes go to init (reparent), which reaps each
        one once it is a zombie (a detached one is left to its owner's wait()); live non-detached
        ones get SIGKILL. Returns how many it killed."""
        assert holder != INIT
        killed = 0
        for p in self.procs.all():
            if p.holder != holder:
                continue
            p.holder = INIT
            if p.alive and not p.detached:
                self.exit(p, ExitStatus("signal", signal=abi.SIGKILL))
                killed += 1
            elif not p.alive and not p.detached and p not in self._dead:
                self.procs.remove(p.pid)
        return killed

    def reap(self, pid: int) -> Process:
        """Remove a ZOMBIE from the table and return it (its exit status is p.exit)."""
        p = self.get(pid)
        if p.alive:
            raise KernelError(errno.EAGAIN, f"process {pid} has not exited")
        return self.procs.remove(pid)

    # ---- turns and exits ----------------------------------------------------------------------
    def new_turn(self, p: Process) -> None:
        p.turn_start, p.turn_tokens = len(p.tokens), 0
        p.output = TurnOutput(self.tokenizer, p.params.stop, p.params.ignore_eos)
        p.matcher = p.grammar.matcher() if p.grammar is not None else None   # each turn: from the start

    def next_turn(self, p: Process) -> None:
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
            self.exit(p, ExitStatus("length", message="no room in the context for the input"))
            return
        p.tokens.extend(ids)
        self.new_turn(p)
        p.feeding = feed
        wake(p)
        self.sched.enqueue(p)
        self.wake(p)

    def flush(self, p: Process) -> bool:
        """Push out text held by the output processor; True if a stop string matched."""
        text, stopped = p.output.finish()
        p.channel.put(text)
        return stopped

    def end_turn(self, p: Process) -> None:
        """A session's generation is over: it sleeps, or takes its next queued input."""
        p.channel.end_turn()
        self.end_feed(p)

    def end_feed(self, p: Process) -> None:
        """Input written to an open stdin is prefilled: sleep until more input or close."""
        self.sched.dequeue(p)
        sleep(p)
        if p.pending_input:
            self.next_turn(p)
        self.wake(p)

    def exit(self, p: Process, status: ExitStatus) -> None:
        self.sched.dequeue(p)
        exit_(p, status)
        if self.on_exit is not None:
            self.on_exit(p)
        self._dead.append(p)
        if not self.in_flight:
            self.reclaim()
        self.wake(p)

    def reclaim(self) -> None:
        """Free the blocks of the processes that exited; init reaps its own at once (not detached
        ones: their owner's wait() does)."""
        for p in self._dead:
            self.kv.free(p.pid)
            if p.holder == INIT and not p.detached and self.procs.get(p.pid) is p:
                self.procs.remove(p.pid)
        self._dead.clear()

    def wake(self, p: Process) -> None:
        if self.on_wake is not None:
            self.on_wake(p)
