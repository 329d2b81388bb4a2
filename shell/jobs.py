"""Job control bookkeeping: the shell's table of jobs, their states and the `+`/`-` order.

A job is one pipeline the shell started: one or more kernel processes plus the threads that
stream their output. The table only records; sh.py decides (it sends the signals, then calls
`mark`). The current job (`%+`) is the one most recently stopped or put in the background, as in
bash; `%-` is the one before it. Job numbers count up from 1 and are reused once the table is empty
below them (bash: the next number is one more than the highest in use).

Thread use: pump threads call `finish`; everything else runs on the shell's main thread. One lock
guards the table.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Callable

from llmos.shell.parse import JobSpec, ParseError, parse_jobspec

RUNNING, STOPPED, DONE = "Running", "Stopped", "Done"


class JobError(LookupError):
    """A job spec that names no job; str(e) is the shell message without the command prefix."""


def describe_status(status: int) -> str:
    """The word `jobs` prints for a finished job: Done, Exit N, Killed, Interrupt, Terminated..."""
    if status == 0:
        return DONE
    if status > 128:
        names = {signal.SIGKILL: "Killed", signal.SIGINT: "Interrupt", signal.SIGTERM: "Terminated",
                 signal.SIGHUP: "Hangup"}
        try:
            sig = signal.Signals(status - 128)
        except ValueError:
            return f"Exit {status}"
        return names.get(sig, sig.name)
    return f"Exit {status}"


@dataclass
class Job:
    id: int
    text: str                                   # the command line, as the shell shows it
    pids: list[int]                             # kernel processes, in pipeline order
    kind: str = "run"                           # 'run' (output streamed), 'chat' (interactive), 'host'
    state: str = RUNNING
    status: int | None = None                   # exit status once every process has ended
    done: threading.Event = field(default_factory=threading.Event)
    background: bool = False                    # started with '&' or continued with bg
    resume: Callable[[], int] | None = None     # chat jobs: the loop `fg` re-enters
    notified: bool = False                      # a Done line was printed (or it ran in the fg)
    live: set[int] = field(default_factory=set)  # pids spawned and not yet reaped (readers update)
    interrupted: bool = False                   # SIGINT was forwarded: start no further stage
    pgid: int = 0                               # a host job's process group (host.py)

    def line(self, mark: str = " ") -> str:
        state = describe_status(self.status) if self.status is not None else self.state
        amp = " &" if self.state == RUNNING and self.status is None and self.background else ""
        return f"[{self.id}]{mark}  {state:<23} {self.text}{amp}"


class JobTable:
    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._order: list[int] = []             # most recent first: [current, previous, ...]
        self._lock = threading.Lock()
        self.on_finish: Callable[[Job], None] | None = None   # called on the reader's thread

    def add(self, text: str, pids: list[int], *, kind: str = "run", background: bool = False) -> Job:
        with self._lock:
            job = Job(max(self._jobs, default=0) + 1, text, list(pids), kind, background=background,
                      live=set(pids))
            self._jobs[job.id] = job
            self._order.insert(0 if background else len(self._order), job.id)
            return job

    def __iter__(self):
        with self._lock:
            return iter(sorted(self._jobs.values(), key=lambda j: j.id))

    def __len__(self) -> int:
        return len(self._jobs)

    def mark_of(self, job: Job) -> str:
        with self._lock:
            if self._order and self._order[0] == job.id:
                return "+"
            if len(self._order) > 1 and self._order[1] == job.id:
                return "-"
            return " "

    def get(self, spec: str | JobSpec | None) -> Job:
        """The job a spec names (None: the current job). Raises JobError."""
        if isinstance(spec, str):
            try:
                spec = parse_jobspec(spec)
            except ParseError as e:
                raise JobError(str(e)) from None
        with self._lock:
            if spec is None or spec.number is None:
                k = 1 if spec is not None and spec.which == "-" else 0
                if len(self._order) <= k:
                    raise JobError(f"{spec or '%+'}: no such job" if spec else "no current job")
                return self._jobs[self._order[k]]
            if spec.number not in self._jobs:
                raise JobError(f"{spec}: no such job")
            return self._jobs[spec.number]

    def by_pid(self, pid: int) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if pid in j.pids), None)

    def mark(self, job: Job, state: str, *, background: bool | None = None) -> None:
        """Record RUNNING/STOPPED; a stopped or backgrounded job becomes the current one."""
        with self._lock:
            job.state = state
            if background is not None:
                job.background = background
            if (state == STOPPED or job.background) and job.id in self._order:
                self._order.remove(job.id)
                self._order.insert(0, job.id)

    def finish(self, job: Job, status: int) -> None:
        """Every process of the job has ended (called from the pump that saw the last one end)."""
        with self._lock:
            job.status, job.state = status, DONE
        job.done.set()
        if self.on_finish is not None:
            self.on_finish(job)

    def remove(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
            if job.id in self._order:
                self._order.remove(job.id)

    def reap_finished(self) -> list[tuple[Job, str]]:
        """Remove finished jobs; return (job, mark) for those whose end was not yet shown."""
        out = []
        for job in list(self):
            if job.status is not None:
                mark = self.mark_of(job)
                self.remove(job)
                if not job.notified:
                    out.append((job, mark))
        return out
