"""Running `run` pipelines: what a process is asked to do (ProcessSpec) and the thread that moves
a job's text (Runner).

Every job gets its own reader thread with its own kernel connection, so the shell's main thread
is never inside a read when the user presses Ctrl-C or Ctrl-Z: a read interrupted on the client
side would lose the text the kernel already handed over. The reader is the only one that calls
read() and wait() for its processes, so every process the shell starts is reaped by it.

Pipes: `run A | run B` streams A's text, as it is produced, into the buffer that becomes B's
input; B is spawned when A ends, with its prompt words followed by A's text. (The ABI has no
"open stdin" for a non-session process, so B cannot start prefilling before A's end; see the
issue note.) A stage that ends by a signal or an error ends the pipeline with its status.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field

from llmos.kernel import abi
from llmos.shell.jobs import STOPPED, Job, JobTable
from llmos.shell.streams import TERMINAL, Capture, CommandError, Stream


def exit_status(st: dict) -> int:
    """A wait() result as a shell status: 0 for a normal end, 128+N for signal N, 1 for an error."""
    if st.get("reason") == "signal":
        return 128 + (st.get("signal") or signal.SIGTERM)
    return 1 if st.get("reason") == "error" else 0


def error_text(e: OSError, pid: int | None = None) -> str:
    """An OSError from a syscall in a shell's words: `(42) - No such process` for a pid."""
    if pid is not None and isinstance(e, ProcessLookupError):
        return f"({pid}) - No such process"
    if pid is not None and isinstance(e, PermissionError) and "belongs to" in str(e.strerror):
        return f"({pid}) - Operation not permitted"
    return str(e.strerror or e)


@dataclass
class ProcessSpec:
    """A `run` or `chat` command, resolved: the prompt words and how to sample."""
    words: str                                  # the prompt typed on the command line (may be '')
    command: str                                # shown by ps
    params: dict = field(default_factory=dict)  # SamplingParams fields
    system: str | None = None
    nice: int = 0
    raw: bool = False                           # the prompt is raw text, not a chat message
    session: bool = False

    def prompt(self, stdin: str | None = None):
        """The spawn prompt: the words, then a blank line and the input text (a pipe or `<`)."""
        body = "\n\n".join(x for x in (self.words, stdin) if x)
        if not body.strip():
            raise CommandError("missing prompt (type it after the command, or pipe or `<` text in)", 2)
        if self.raw:
            return body
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": body}]

    def spawn(self, client, stdin: str | None = None) -> int:
        return client.spawn(self.prompt(stdin), self.params or None, nice=self.nice,
                            session=self.session, command=self.command)


def warn(message: str) -> None:
    TERMINAL.end_line()
    print(message, file=sys.stderr, flush=True)


def drain(client, pid: int, out: Stream, on_turn_end=None) -> dict:
    """Copy pid's text to out until it exits, then reap it. Returns the wait() status dict."""
    while True:
        r = client.read(pid)
        out.write(r["text"])
        if r["turn_end"] and on_turn_end is not None:
            on_turn_end()
        if r["eof"]:
            return client.wait(pid)


class Runner(threading.Thread):
    """Reads a `run` pipeline's processes in order; the last one's text goes to the job's output."""

    def __init__(self, connect, jobs: JobTable, job: Job, stages: list[ProcessSpec], out: Stream):
        super().__init__(name=f"job-{job.id}", daemon=True)
        self.connect, self.jobs, self.job, self.stages, self.out = connect, jobs, job, stages, out

    def run(self) -> None:
        status, client = 1, None
        try:
            client = self.connect()
            status = self._stages(client)
        except CommandError as e:
            warn(f"run: {e.message}")
            status = e.status
        except OSError as e:
            warn(f"llmos: job {self.job.id}: {error_text(e)}")
        finally:
            self.job.live.clear()
            if self.out is not TERMINAL:
                self.out.close()
            if client is not None:
                client.close()
            self.jobs.finish(self.job, status)

    def _stages(self, client) -> int:
        job, text = self.job, None
        for k, spec in enumerate(self.stages):
            if k == 0:
                pid = job.pids[0]
            else:
                if job.interrupted:
                    return 128 + signal.SIGINT
                try:
                    pid = spec.spawn(client, text)
                except OSError as e:
                    raise CommandError(error_text(e)) from None
                job.pids.append(pid)
                job.live.add(pid)
                if job.state == STOPPED:            # stopped while this stage was being started
                    client.kill(pid, abi.SIGSTOP)
            sink = self.out if k == len(self.stages) - 1 else Capture()
            st = drain(client, pid, sink)
            job.live.discard(pid)
            if st.get("reason") == "error":
                warn(f"run: process {pid} failed: {st.get('message')}")
            status = exit_status(st)
            if status:
                return status
            text = sink.text if isinstance(sink, Capture) else None
        return 0
