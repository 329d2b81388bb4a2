"""Processes: the state enum, one owner function per transition, the output channel, the table.
(Over 300 lines: the process record, its states and one function per transition, tied together by the diagram below.)

State diagram (each arrow is made by exactly one function below, called by the module named):

            spawn/fork                       admit (sched)
    ─────────────────────▶ NEW ───────────────────────────────▶ READY ◀──────────┐
                            │                                   │  ▲             │ wake (engine:
                            │ sleep (fork of a sleeping session) │  │ preempt     │  write, or turn
                            ▼                      dispatch      ▼  │ (sched)     │  end with input
                         SLEEPING ◀──── sleep ──────────────── RUNNING           │  queued)
                         (session,     (engine: turn ended,                      │
                          KV kept)      SIGINT to a session)   SLEEPING ─────────┘
    stop (engine, SIGSTOP): NEW/READY/RUNNING/SLEEPING ──▶ STOPPED
    cont (engine, SIGCONT): STOPPED ──▶ READY (or SLEEPING if it was sleeping with no input)
    exit (engine: stop condition, signal, error): any live state ──▶ ZOMBIE
    reap (ProcTable.remove): ZOMBIE ──▶ gone (pids are never reused within a boot); by wait(), or
        by init (the kernel's reaper) at once for the non-detached processes it holds (see
        Process.holder); a detached zombie waits for its owner's wait()

RUNNING means "holds a place in the batch"; a running process whose turn was skipped in a step
(token budget, fairness) stays RUNNING. READY may still hold its KV (resident or swapped) or none
(new, or dropped for recompute). Every transition bumps `epoch` when it leaves RUNNING, so the
engine can drop a step result for a process that was preempted, stopped or killed meanwhile.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field


class ProcState(enum.Enum):
    NEW = "NEW"
    READY = "READY"
    RUNNING = "RUNNING"
    SLEEPING = "SLEEPING"
    STOPPED = "STOPPED"
    ZOMBIE = "ZOMBIE"


LIVE = frozenset(s for s in ProcState if s is not ProcState.ZOMBIE)
INIT = 0        # Process.holder of orphans: the kernel's reaper reaps them as soon as they exit


@dataclass
class ExitStatus:
    reason: str                     # "eos" | "length" | "stop" | "signal" | "error"
    signal: int | None = None       # the signal number when reason == "signal"
    message: str = ""               # what went wrong when reason == "error"

    def as_dict(self) -> dict:
        return {"reason": self.reason, "signal": self.signal, "message": self.message}


@dataclass
class ProcStats:
    arrival: float = 0.0            # time.monotonic() at spawn
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens: int = 0                 # tokens generated (all turns)
    prefilled: int = 0              # tokens run through the model as prompt (recompute included)
    cached: int = 0                 # prompt tokens served from the prefix cache
    preemptions: int = 0
    swaps: int = 0
    state_time: dict = field(default_factory=dict)   # state name -> seconds spent there


class OutputChannel:
    """Text a process produced that nobody has read yet, with turn boundaries and EOF.

    Writer: the engine (put, end_turn, close). Reader: the syscall layer (take / read).
    A read never crosses a turn boundary: text of the next turn waits for the next read.
    A process that asked for logprobs also puts one entry per token (drivers/output.py's
    logprob_entry); take_logprobs() hands over those of the segment the next take() reads."""

    def __init__(self):
        self._segments: deque[list] = deque([["", False]])   # [text, ends_turn, entries?]
        self.eof = False            # the process exited; nothing more will be put

    def put(self, text: str, entry: list | None = None) -> None:
        if text:
            self._segments[-1][0] += text
        if entry is not None:
            seg = self._segments[-1]
            if len(seg) == 2:
                seg.append([])
            seg[2].append(entry)

    def take_logprobs(self) -> list | None:
        """The logprob entries put with the text the next take() returns (consumed), or None."""
        seg = self._segments[0]
        if len(seg) < 3 or not seg[2]:
            return None
        entries, seg[2] = seg[2], []
        return entries

    def end_turn(self) -> None:
        self._segments[-1][1] = True
        self._segments.append(["", False])

    def close(self) -> None:
        self.eof = True

    @property
    def pending(self) -> str:
        return self._segments[0][0]

    @property
    def turn_ended(self) -> bool:
        return self._segments[0][1]

    def ready(self) -> bool:
        """True when a read would return something (text, a turn end, or EOF)."""
        return bool(self.pending) or self.turn_ended or (self.eof and len(self._segments) == 1)

    def take(self) -> tuple[str, bool, bool]:
        """(text, turn_end, eof): the text up to the next turn boundary, consuming it.
        eof is True only when the process has exited and no text is left after this read."""
        text, ends = self._segments[0][:2]
        if ends:
            self._segments.popleft()
        else:
            self._segments[0][0] = ""
        return text, ends, self.eof and len(self._segments) == 1 and not self._segments[0][0]

    def read(self) -> str:
        return self.take()[0]

    def unread(self, text: str, turn_end: bool, entries: list | None = None) -> None:
        """Put back what take() (and take_logprobs(): entries) returned, for a read reply that never
        reached its reader, ahead of everything put since: put back newest first, the order holds."""
        if turn_end:
            self._segments.appendleft([text, True] + ([list(entries)] if entries else []))
            return
        seg = self._segments[0]
        seg[0] = text + seg[0]
        if entries:
            if len(seg) == 2:
                seg.append([])
            seg[2][:0] = entries


class Process:
    __slots__ = (
        # identity: set at spawn, never changed
        "pid", "ppid", "owner", "command", "session", "detached", "params",
        # process group (Unix pgid): its own pid, or a group it joined at spawn; fork inherits it
        "pgid",
        # constrained decoding (drivers/grammar.py): the compiled grammar (from params) and this
        # turn's matcher state; engine (commit) and procops (new turn, fork) only
        "grammar", "matcher",
        # who reaps it: the session that spawned/forked it, INIT, or None (the engine's caller)
        "holder",
        # accounting and output: engine
        "stats", "channel", "exit",
        # tokens: engine (commit, write); read by sched and kvcache
        "prompt_ids", "output_ids", "logprobs", "tokens", "computed", "turn_start", "turn_tokens",
        "pending_input", "stdin_open", "stdin_tail", "feeding", "output", "generator",
        "seed", "forks",
        # scheduling: sched (nice via renice)
        "state", "nice", "weight", "vruntime", "deadline", "epoch", "was_sleeping",
        "_since",
        # latency goal (kernel/latency.py): set at spawn or by the LATENCY syscall; sched reads it
        "latency_ms",
    )

    def __init__(self, pid: int, prompt_ids: list[int], params, *, ppid: int = 0, owner: str = "",
                 command: str = "", session: bool = False, detached: bool = False, nice: int = 0,
                 holder: int | None = None, pgid: int | None = None):
        self.pid, self.ppid, self.owner, self.command = pid, ppid, owner, command
        self.pgid = pid if pgid is None else pgid
        self.grammar = self.matcher = None
        self.holder = holder
        self.session, self.detached, self.params = session, detached, params
        now = time.monotonic()
        self.stats = ProcStats(arrival=now)
        self.channel = OutputChannel()
        self.exit: ExitStatus | None = None
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.logprobs: list[float] = []              # per output token, when params.logprobs
        self.tokens: list[int] = list(prompt_ids)    # everything in context: prompt, turns, output
        self.computed = 0                            # leading tokens whose KV is in the pool
        self.turn_start = len(self.tokens)           # where this turn's generated tokens begin
        self.turn_tokens = 0                         # tokens generated in this turn
        self.pending_input: list[tuple[list[int], bool]] = []  # (ids, feed-only) written while busy
        self.stdin_open = False                      # spawned with stdin: write() feeds the prompt
        self.stdin_tail: list[int] = []              # appended by close() before generating
        self.feeding = False                         # this turn only prefills input (no sampling)
        self.output = None                           # drivers.output.TurnOutput of this turn
        self.generator = None                        # torch.Generator when seeded
        self.seed = getattr(params, "seed", None)
        self.forks = 0                               # children forked so far (their seeds)
        self.state = ProcState.NEW
        self.nice, self.weight = nice, 1024
        self.vruntime = self.deadline = 0.0
        self.epoch = 0
        self.was_sleeping = False                    # STOPPED from SLEEPING: cont goes back there
        self._since = now
        self.latency_ms: float | None = None         # time-per-token target (None: from nice)

    def __repr__(self) -> str:
        return f"<Process {self.pid} {self.state.name} nice={self.nice} {len(self.tokens)} tokens>"

    @property
    def alive(self) -> bool:
        return self.state is not ProcState.ZOMBIE


# ---- transitions: one function each ------------------------------------------------------------

def _move(p: Process, to: ProcState, allowed: tuple[ProcState, ...], who: str) -> None:
    if p.state not in allowed:
        raise RuntimeError(f"{who}: pid {p.pid} is {p.state.name}, not "
                           f"{'/'.join(s.name for s in allowed)}")
    now = time.monotonic()
    st = p.stats.state_time
    st[p.state.name] = st.get(p.state.name, 0.0) + now - p._since
    if p.state is ProcState.RUNNING:
        p.epoch += 1
    p.state, p._since = to, now


def admit(p: Process) -> None:
    """NEW → READY (sched: first time the scheduler sees it)."""
    _move(p, ProcState.READY, (ProcState.NEW,), "admit")


def dispatch(p: Process) -> None:
    """READY → RUNNING (sched: given a place in the batch)."""
    _move(p, ProcState.RUNNING, (ProcState.READY,), "dispatch")


def preempt(p: Process) -> None:
    """RUNNING → READY (sched: priority, fairness or memory)."""
    _move(p, ProcState.READY, (ProcState.RUNNING,), "preempt")
    p.stats.preemptions += 1


def sleep(p: Process) -> None:
    """RUNNING/READY/NEW → SLEEPING (engine: a session's turn ended; SIGINT to a session)."""
    _move(p, ProcState.SLEEPING, (ProcState.RUNNING, ProcState.READY, ProcState.NEW), "sleep")


def wake(p: Process) -> None:
    """SLEEPING → READY (engine: input was written)."""
    _move(p, ProcState.READY, (ProcState.SLEEPING,), "wake")


def stop(p: Process) -> None:
    """NEW/READY/RUNNING/SLEEPING → STOPPED (engine: SIGSTOP)."""
    p.was_sleeping = p.state is ProcState.SLEEPING
    _move(p, ProcState.STOPPED, (ProcState.NEW, ProcState.READY, ProcState.RUNNING,
                                 ProcState.SLEEPING), "stop")


def cont(p: Process) -> None:
    """STOPPED → READY, or → SLEEPING when it stopped while sleeping (engine: SIGCONT)."""
    to = ProcState.SLEEPING if p.was_sleeping else ProcState.READY
    _move(p, to, (ProcState.STOPPED,), "cont")


def exit_(p: Process, status: ExitStatus) -> None:
    """any live state → ZOMBIE (engine); closes the output channel."""
    _move(p, ProcState.ZOMBIE, tuple(LIVE), "exit")
    p.exit = status
    p.channel.close()


class ProcTable:
    """pid → Process. Pids count up from 1 and are never reused within a boot."""

    def __init__(self, max_procs: int, pids: "ProcTable | None" = None):
        """pids: a table whose pid numbers this one shares (several models' tables, one pid space:
        kernel/models.py)."""
        self.max_procs = max_procs
        self._procs: dict[int, Process] = {}
        self._next = pids._next if pids is not None else [1]     # [next pid], shared by reference

    @property
    def _next_pid(self) -> int:
        return self._next[0]

    @_next_pid.setter
    def _next_pid(self, pid: int) -> None:
        self._next[0] = pid

    def new_pid(self) -> int:
        pid, self._next_pid = self._next_pid, self._next_pid + 1
        return pid

    def claim(self, pid: int) -> int:
        """Hand out this pid, unused in this boot (a session restored at boot keeps its pid);
        new_pid() counts on from above it."""
        if pid < 1 or pid in self._procs:
            raise RuntimeError(f"proc table: pid {pid} cannot be claimed")
        self._next_pid = max(self._next_pid, pid + 1)
        return pid

    def count_from(self, pid: int) -> int:
        """new_pid() hands out nothing below pid (a boot goes on from the last one's numbers);
        returns the next pid it will hand out."""
        self._next_pid = max(self._next_pid, pid)
        return self._next_pid

    def full(self) -> bool:
        return len(self._procs) >= self.max_procs

    def add(self, p: Process) -> None:
        if p.pid in self._procs:
            raise RuntimeError(f"proc table: pid {p.pid} already present")
        self._procs[p.pid] = p

    def get(self, pid: int) -> Process | None:
        return self._procs.get(pid)

    def all(self) -> list[Process]:
        return list(self._procs.values())

    def remove(self, pid: int) -> Process:
        """ZOMBIE → gone (reap)."""
        p = self._procs[pid]
        if p.state is not ProcState.ZOMBIE:
            raise RuntimeError(f"reap: pid {pid} is {p.state.name}, not ZOMBIE")
        st = p.stats.state_time
        st["ZOMBIE"] = st.get("ZOMBIE", 0.0) + time.monotonic() - p._since
        return self._procs.pop(pid)

    def __len__(self) -> int:
        return len(self._procs)

    def __iter__(self):
        return iter(list(self._procs.values()))
