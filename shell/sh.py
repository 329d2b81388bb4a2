"""The llmos shell: parse a line, run its pipelines as jobs over kernel processes.
(Over 300 lines: the Shell owns the foreground and the job table; its methods share that state.)

    llmos                      interactive (history in $LLMOS_HOME/history, completion, job control)
    llmos -c 'run "hi" ; ps'   run the commands, exit with the last one's status
    llmos script.llsh          the same for a file (a syntax error stops it, as in sh)

Files: parse.py (grammar) → sh.py (this: run pipelines, own the foreground) with builtins.py
(the command table; jobctl.py, monitor.py register into it), jobs.py (job table), runner.py /
chat.py (the threads that move text), streams.py (terminal, files, pipes), link.py (the kernel
connection, autostart), lines.py (prompt and scripts), complete.py, top.py; the commands that are also `llmos CMD`
(run, ps, kill, stat, free, uname, models) are userland/bin programs.

Design: every command is a builtin; `run` and `chat` start kernel processes, which the shell
tracks as jobs. Text moves on reader threads (runner.py, chat.py) with their
own kernel connections; the main thread only spawns, signals and waits. While a job is in the
foreground the terminal is in cooked mode, so Ctrl-C and Ctrl-Z reach the shell as SIGINT and
SIGTSTP: the handlers only record them, and the foreground wait (wait_fg) forwards SIGINT to the
job's processes (twice: SIGKILL) or stops them (SIGSTOP) and gives the prompt back. At the prompt
the terminal is raw (prompt_toolkit) and Ctrl-C just clears the line. A bad line, a failed
syscall, or a bug in a command is reported and the shell reads the next line; only `exit` (or
Ctrl-D) leaves, and a first `exit` with jobs alive only warns, as bash does. When no kernel is
running the shell starts one (`llmos serve --daemon`, model from --model / $LLMOS_MODEL, else the
kernel's default) and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from pathlib import Path

from llmos.kernel import abi
from llmos.shell import host, lines
from llmos.shell.builtins import BUILTINS, ShellExit, is_process_command, process_spec, run_builtin
from llmos.shell.chat import Chat
from llmos.shell.jobs import RUNNING, STOPPED, Job, JobTable
from llmos.shell.link import KernelLink
from llmos.shell.parse import Command, ParseError, Pipeline, parse
from llmos.shell.runner import ProcessSpec, Runner, error_text, warn
from llmos.shell.streams import TERMINAL, Capture, CommandError, output_for, read_file
from llmos.userland import lib
from llmos.userland.program import UsageError

STOPPED_STATUS = 128 + signal.SIGTSTP
FG_POLL_S = 0.02        # a foreground wait looks at the signals its handler queued this often


class Failure(CommandError):
    """A CommandError whose message already says who failed (printed as is)."""


class Shell:
    def __init__(self, *, interactive: bool, model: str | None = None, autostart: bool = True):
        self.interactive = interactive
        self.tty = sys.stdin.isatty()
        self.home = Path(os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos")
        self.jobs = JobTable()
        self.status = 0
        self.link = KernelLink(model, autostart)
        self._fg = False                    # a foreground wait is forwarding signals
        self._fg_job: Job | None = None     # the job that has the terminal
        self._pending: list[int] = []       # signals received during it, not yet forwarded

    # --- the kernel (link.py) -----------------------------------------------------------------
    @property
    def client(self):
        """The main thread's connection (a kernel is started if none is running)."""
        return self.link.client

    def connect(self):
        return self.link.connect()

    # --- running lines ------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        warn(message)

    def execute(self, text: str, where: str = "llmos") -> int:
        """Parse and run text; report every failure. Raises only ShellExit."""
        try:
            pipelines = parse(text)
        except ParseError as e:
            self.warn(f"{where}: {e}")
            self.status = 2
            return 2
        return self.run_all(pipelines)

    def run_all(self, pipelines: list[Pipeline]) -> int:
        for p in pipelines:
            if not self.interactive:
                self.jobs.reap_finished()
            self.status = self.run_guarded(p)
        return self.status

    def run_guarded(self, p: Pipeline) -> int:
        name = p.commands[0].name
        self._pending.clear()
        try:
            return self.run_pipeline(p)
        except ShellExit:
            raise
        except Failure as e:
            self.warn(e.message)
            return e.status
        except CommandError as e:
            self.warn(f"{name}: {e.message}")
            return e.status
        except UsageError as e:
            self.warn(f"{name}: {e}")
            return 2
        except KeyboardInterrupt:
            TERMINAL.write("\n")
            return 130
        except OSError as e:
            self.warn(f"{name}: {error_text(e)}")
            if isinstance(e, (ConnectionError, lib.KernelNotAnswering)) or e.errno == errno.EACCES:
                self.link.drop()
            return 1
        except Exception as e:          # a bug in a command must not take the shell down
            self.warn(f"llmos: internal error in {name}: {type(e).__name__}: {e}")
            return 1

    def run_pipeline(self, p: Pipeline) -> int:
        if host.needs_host(p, BUILTINS):
            return self.run_host(p)
        cmds = list(p.commands)
        for c in cmds:
            if c.name not in BUILTINS:
                raise Failure(f"llmos: {c.name}: command not found (help lists the commands)", 127)
        for c in cmds[1:]:
            if c.name != "run":
                raise Failure(f"{c.name}: cannot read a pipe (only run reads its input)", 2)
        first, last = cmds[0], cmds[-1]
        try:
            stdin = read_file(first.redirect("<").target) if first.redirect("<") else None
        except CommandError as e:
            raise Failure(f"llmos: {e.message}") from None
        if not is_process_command(first.name):
            if first.nice is not None:
                raise Failure(f"nice: {first.name}: not a process command (nice runs run or chat)", 2)
            if len(cmds) == 1:
                out = self._output(last)
                try:
                    return run_builtin(self, first, out, stdin)
                finally:
                    out.close()
            capture = Capture()
            status = run_builtin(self, first, capture, stdin)
            if status:
                return status
            stdin, cmds = capture.text, cmds[1:]
        if cmds[0].name == "chat":
            if len(p.commands) > 1:
                raise Failure("chat: cannot be part of a pipeline (chat < FILE takes turns from a file)", 2)
            return self.start_chat(cmds[0], p.background, stdin)
        specs = [self._spec(c) for c in cmds]
        if None in specs:                   # run -h
            return 0
        out = self._output(last)
        with self.signals_deferred():               # a Ctrl-C now is forwarded once the job exists
            try:
                pid = specs[0].spawn(self.client, stdin)
            except BaseException:
                out.close()
                raise
            job = self.jobs.add(str(Pipeline(p.commands)), [pid], background=p.background)
            Runner(self.connect, self.jobs, job, specs, out).start()
        if p.background:
            self._pending.clear()
            TERMINAL.write(f"[{job.id}] {pid}\n")
            return 0
        return self.foreground(job)

    def run_host(self, p: Pipeline) -> int:
        """A pipeline with host programs (host.py): OS processes and pipes, as /bin/sh runs it."""
        from llmos.shell.cli import COMMANDS
        try:
            argvs = [host.host_argv(c, COMMANDS, BUILTINS) for c in p.commands]
            sys.stdout.flush()
            with self.signals_deferred():
                job = host.start(p, argvs, self.jobs)
        except CommandError as e:
            raise Failure(e.message, e.status) from None
        if p.background:
            self._pending.clear()
            TERMINAL.write(f"[{job.id}] {job.pids[-1]}\n")
            return 0
        return self.foreground(job)

    def _output(self, cmd: Command):
        try:
            return output_for(cmd.redirect(">", ">>"))
        except CommandError as e:
            raise Failure(f"llmos: {e.message}") from None

    def _spec(self, cmd: Command, session: bool = False) -> ProcessSpec | None:
        args = BUILTINS[cmd.name].parse(list(cmd.argv[1:]), TERMINAL)
        return None if args is None else process_spec(cmd, args, session)

    def start_chat(self, cmd: Command, background: bool, stdin: str | None) -> int:
        spec = self._spec(cmd, session=True)
        if spec is None:
            return 0
        if spec.words:
            raise CommandError("takes no prompt words (type the turns at its prompt, or chat < FILE)", 2)
        out = self._output(cmd)
        job = self.jobs.add(str(cmd), [], kind="chat", background=background)
        chat = Chat(self, spec, out, job)
        if stdin is not None:                       # scripted: one turn per non-empty line
            chat.feed([line for line in stdin.splitlines() if line.strip()])
            if background:
                TERMINAL.write(f"[{job.id}] chat\n")
                return 0
            return self.foreground(job)
        job.resume = chat.foreground
        if background:                              # it would read the terminal: stop it (SIGTTIN)
            self.jobs.mark(job, STOPPED)
            TERMINAL.write(job.line(self.jobs.mark_of(job)) + "\n")
            return 0
        return self.foreground(job)

    # --- jobs -----------------------------------------------------------------------------------
    def foreground(self, job: Job) -> int:
        """Give the job the terminal until it ends or stops; its exit status (148: stopped).
        A chat job runs its own loop (job.resume); any other is waited for with Ctrl-C/Ctrl-Z
        forwarded to its processes."""
        self._fg_job = job
        try:
            if job.kind == "host":
                status = self.foreground_host(job)
            elif job.resume is not None:
                status = job.resume()
            else:
                status = STOPPED_STATUS if self.wait_fg(job, job.done) == "stopped" else job.status
        finally:
            self._fg_job = None
        return self._finish_fg(job, status)

    def foreground_host(self, job: Job) -> int:
        """A host job has the terminal (its Ctrl-C/Ctrl-Z go to it) until it ends or stops; without
        a terminal the shell forwards the signals it gets."""
        tty = host.give_terminal(job)
        self._fg = True
        try:
            while not job.done.wait(0.05) and job.state != STOPPED:
                while self._pending:
                    sig = self._pending.pop(0)
                    if sig == signal.SIGTSTP:
                        self.jobs.mark(job, STOPPED)
                    job.interrupted = job.interrupted or sig == signal.SIGINT
                    host.send(job, abi.SIGSTOP if sig == signal.SIGTSTP else abi.SIGINT)
        finally:
            self._fg = False
            host.take_terminal(tty)
        if job.status == 128 + signal.SIGINT:
            TERMINAL.at_line_start = False      # the terminal echoed ^C: the prompt starts a new line
        if job.status is None and job.state == STOPPED:
            self.jobs.mark(job, STOPPED, background=False)
            TERMINAL.write("\n" + job.line(self.jobs.mark_of(job)) + "\n")
            return STOPPED_STATUS
        return job.status

    def _finish_fg(self, job: Job, status: int) -> int:
        if status == STOPPED_STATUS and job.state == STOPPED:
            return status
        TERMINAL.end_line()
        job.notified = True
        if job.status is not None:
            self.jobs.remove(job)
        if job.interrupted and not self.interactive:
            raise ShellExit(130)            # Ctrl-C ends a script too, as in sh
        return status

    @contextlib.contextmanager
    def signals_deferred(self):
        """Record Ctrl-C/Ctrl-Z instead of raising (for wait_fg to forward) inside the block."""
        outer, self._fg = self._fg, True
        try:
            yield
        finally:
            self._fg = outer

    def wait_fg(self, job: Job, event) -> str | None:
        """Block until event; forward SIGINT (twice: SIGKILL); SIGTSTP stops the job → 'stopped'.
        A signal is forwarded within FG_POLL_S (the handler only queues it): waits of 0.2 s let a
        job that was ending anyway finish first, and its Ctrl-C was lost (exit 0, not 130)."""
        self._fg, interrupts = True, 0
        try:
            while not event.wait(FG_POLL_S):
                while self._pending:
                    sig = self._pending.pop(0)
                    if sig == signal.SIGTSTP:
                        self.stop_job(job)
                        return "stopped"
                    interrupts += 1
                    TERMINAL.at_line_start = False      # the terminal echoed ^C
                    job.interrupted = job.kind != "chat" or not job.resume
                    self.signal_job(job, abi.SIGINT if interrupts == 1 else abi.SIGKILL)
                if event is not job.done and job.done.is_set():
                    return None
        finally:
            self._fg = False
        return None

    def stop_job(self, job: Job) -> None:
        self.signal_job(job, abi.SIGSTOP)
        self.jobs.mark(job, STOPPED, background=False)
        TERMINAL.write("\n")
        TERMINAL.write(job.line(self.jobs.mark_of(job)) + "\n")

    def signal_job(self, job: Job, sig: int) -> None:
        """Signal the job's processes (a host job's process group through host.send)."""
        if job.kind == "host":
            host.send(job, sig)
            return
        for pid in sorted(job.live):
            try:
                self.client.kill(pid, sig)
            except ProcessLookupError:
                pass                        # it ended meanwhile; its reader reaps it

    def wait_job(self, job: Job) -> int:
        """`wait`: block until the job ends (Ctrl-C stops waiting, not the job)."""
        while not job.done.wait(0.2):
            pass
        return job.status

    def adopt(self, pid: int, text: str, out=TERMINAL) -> Job:
        """Make a process this shell did not spawn (a fork's child) a background job."""
        session = self.client.stat(pid).get("session", False)
        job = self.jobs.add(text, [pid], kind="chat" if session else "run", background=True)
        if session:
            job.resume = Chat(self, ProcessSpec("", text, session=True), out, job).foreground
        else:
            Runner(self.connect, self.jobs, job, [None], out).start()
        return job

    def refresh_jobs(self) -> None:
        """Bring job states up to date with the kernel (a process stopped by someone else)."""
        live = [j for j in self.jobs if j.live and j.kind != "host"]
        if not live:
            return
        states = {p["pid"]: p["state"] for p in self.client.ps()}
        for job in live:
            mine = [states.get(pid) for pid in job.live if pid in states]
            if mine and all(s == "STOPPED" for s in mine) and job.state != STOPPED:
                self.jobs.mark(job, STOPPED)
            elif mine and any(s != "STOPPED" for s in mine) and job.state == STOPPED:
                self.jobs.mark(job, RUNNING, background=True)

    def notify_jobs(self) -> None:
        for job, mark in self.jobs.reap_finished():
            TERMINAL.end_line()
            TERMINAL.write(job.line(mark) + "\n")

    def job_finished(self, job: Job) -> None:
        """A job ended (reader thread): say so now, as `set -b` does, unless it has the terminal."""
        if job is self._fg_job or job.notified:
            return
        mark = self.jobs.mark_of(job)
        job.notified = True
        self.jobs.remove(job)
        TERMINAL.end_line()
        TERMINAL.write(job.line(mark) + "\n")

    def leave(self, status: int) -> int:
        """End every job (SIGTERM; its readers reap), close the connection, return status."""
        jobs = [j for j in self.jobs if j.live]
        if jobs and self.link.connected is not None:
            for job in jobs:
                try:
                    self.signal_job(job, abi.SIGTERM)
                except OSError:
                    break
            for job in jobs:
                job.done.wait(2)
        self.link.drop()
        return status

    def on_signal(self, signum, frame) -> None:
        if self._fg:
            self._pending.append(signum)
            job = self._fg_job
            if signum == signal.SIGINT and job is not None and (job.kind != "chat" or not job.resume):
                job.interrupted = True          # its output stops now, not when SIGINT is forwarded
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt


@contextlib.contextmanager
def own_terminal():
    """Lead a process group of our own that has the terminal, as job-control shells do: the host
    programs of a foreground pipeline share it and get the terminal's Ctrl-C and Ctrl-Z (in a
    process group without a parent outside it, an orphaned one, the kernel drops a terminal's
    SIGTSTP to programs that do not catch it). The terminal goes back to its group at the end."""
    fd = sys.stdin.fileno()
    try:
        before = os.tcgetpgrp(fd)
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:
        before = None                       # a session leader, or no terminal: stay as we are
    try:
        yield
    finally:
        if before is not None:
            try:
                os.tcsetpgrp(fd, before)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    """`llmos sh [-c COMMANDS | SCRIPT]` (argv[0] is the name the CLI dispatched)."""
    argv = list(sys.argv if argv is None else argv)
    ap = argparse.ArgumentParser(prog="llmos", description="the llmos shell: LLM processes as jobs")
    ap.add_argument("-c", dest="commands", metavar="COMMANDS", help="run COMMANDS and exit")
    ap.add_argument("--model", default=os.environ.get("LLMOS_MODEL"),
                    help="model of run and chat (loaded on first use), and of the kernel started when "
                         "none is running (env LLMOS_MODEL)")
    ap.add_argument("--no-start", action="store_true", help="never start a kernel")
    ap.add_argument("script", nargs="?", help="a file of shell commands")
    args = ap.parse_args(argv[1:])
    if args.model:              # run and chat use it, also on a kernel already running another
        os.environ["LLMOS_MODEL"] = args.model
    interactive = args.commands is None and args.script is None and sys.stdin.isatty()
    sh = Shell(interactive=interactive, model=args.model, autostart=not args.no_start)
    signal.signal(signal.SIGINT, sh.on_signal)
    if interactive:
        signal.signal(signal.SIGTSTP, sh.on_signal)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        with own_terminal():
            return lines.interact(sh)
    if args.commands is not None:
        return lines.run_script(sh, args.commands, "llmos: -c")
    if args.script is None:
        return lines.run_script(sh, sys.stdin.read(), "llmos: stdin")
    try:
        text = Path(args.script).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"llmos: {args.script}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 127
    return lines.run_script(sh, text, f"llmos: {args.script}")


if __name__ == "__main__":
    sys.exit(main())
