"""Running `run` pipelines: the thread that moves a job's text (Runner). What a process is asked
to do (ProcessSpec) is userland/bin/run.py's, shared with `llmos run`.

Every job gets its own reader thread with its own kernel connection, so the shell's main thread
is never inside a read when the user presses Ctrl-C or Ctrl-Z: a read interrupted on the client
side would lose the text the kernel already handed over. The reader is the only one that calls
read() and wait() for its processes, so every process the shell starts is reaped by it.

Pipes: `run A | run B` spawns B at once with its prompt open (spawn stdin=True): its words and a
blank line. A's text is written into B's stdin a line at a time as A produces it, so B prefills
while A generates; when A ends, close_stdin() starts B's answer. B's prompt is thus the same text
as `run "B words\n\nA's text"`, tokenized a line at a time. A stage that ends by a signal or an
error ends the pipeline with its status, and the stages after it are ended.
"""

from __future__ import annotations

import sys
import threading

from llmos.kernel import abi
from llmos.shell.jobs import STOPPED, Job, JobTable
from llmos.shell.streams import TERMINAL, CommandError, Stream
from llmos.userland.bin.run import ProcessSpec, exit_status  # noqa: F401  (chat, sh use them from here)
from llmos.userland.program import UsageError, error_text


class PipeWriter(Stream):
    """A pipe between two processes: the writer's text goes into the reader's open stdin a line
    at a time (line-buffered, as a Unix pipe to a terminal program); close() sends the rest and
    ends the input. If the reader is gone, the writer gets SIGTERM (as SIGPIPE would)."""

    def __init__(self, client, writer: int, reader: int):
        self.client, self.writer, self.reader = client, writer, reader
        self._buf, self.broken = "", False

    def write(self, text: str) -> None:
        self._buf += text
        while (cut := self._buf.find("\n") + 1):
            self._send(self._buf[:cut])
            self._buf = self._buf[cut:]

    def _send(self, text: str) -> None:
        if self.broken or not text:
            return
        try:
            self.client.write(self.reader, text)
        except OSError:
            self.broken = True
            try:
                self.client.kill(self.writer, abi.SIGTERM)
            except OSError:
                pass

    def close(self) -> None:
        self._send(self._buf)
        self._buf = ""
        if not self.broken:
            self.client.close_stdin(self.reader)


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


class JobOutput(Stream):
    """The last stage's text on its way to the job's output. While the job is in the background on
    the terminal only whole lines are written (a partial line drawn above the prompt would be
    erased by the next redraw, or run into another command's output); nothing is written once
    Ctrl-C was forwarded; `end` finishes the answer's last line, so `>>` appends whole lines and
    the next output starts on a line of its own."""

    def __init__(self, job: Job, out: Stream):
        self.job, self.out, self._held, self._last = job, out, "", "\n"

    def write(self, text: str) -> None:
        if not text or self.job.interrupted:
            return
        self._last = text[-1]
        text, self._held = self._held + text, ""
        if self.out is TERMINAL and self.job.background:
            cut = text.rfind("\n") + 1
            text, self._held = text[:cut], text[cut:]
        if text:
            self.out.write(text)

    def end(self) -> None:
        if self.job.interrupted:
            return
        if self._held:
            self.out.write(self._held)
            self._held = ""
        if self._last != "\n":
            self.out.write("\n")
            self._last = "\n"


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
        except UsageError as e:
            warn(f"run: {e}")
            status = 2
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
        """Every later stage starts now with its input open; each stage's text streams into the
        next one's stdin while it is generated, so the reader prefills as the writer writes."""
        job = self.job
        pids = [job.pids[0]]
        for spec in self.stages[1:]:
            try:
                pid = spec.spawn(client, open_input=True)
            except OSError as e:
                self._end(client, pids[1:])
                raise CommandError(error_text(e)) from None
            pids.append(pid)
            job.pids.append(pid)
            job.live.add(pid)
            if job.state == STOPPED:                # stopped while this stage was being started
                client.kill(pid, abi.SIGSTOP)
        for k, pid in enumerate(pids):
            last = k == len(pids) - 1
            sink = JobOutput(job, self.out) if last else PipeWriter(client, pid, pids[k + 1])
            try:
                st = drain(client, pid, sink)
            finally:
                if last:
                    sink.end()
            job.live.discard(pid)
            if st.get("reason") == "error":
                warn(f"run: process {pid} failed: {st.get('message')}")
            status = exit_status(st)
            if status:
                self._end(client, pids[k + 1:])
                return status
            if not last:
                sink.close()
        return 0

    def _end(self, client, pids: list[int]) -> None:
        """A stage failed: the stages after it end too (their input will never be complete)."""
        for pid in pids:
            try:
                client.kill(pid, abi.SIGTERM)
                client.wait(pid)
            except OSError:
                pass
            self.job.live.discard(pid)
