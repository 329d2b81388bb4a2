"""Pipelines with host programs: `run "hi" | tee x`, `cat notes.txt | run "summarise:"`, `ls -l`.

A pipeline that names a program the shell does not know, or redirects errors (`2>`), runs as
/bin/sh would run it: one host process per stage (found on $PATH, arguments as typed, status 127
when not found, 126 when not executable), connected by OS pipes, with `<`, `>`, `>>`, `2>`, `2>>`
opened by the shell. An llmos command in such a pipeline runs as the same program the CLI runs
(`python -m llmos.shell.cli run ...`, userland/bin): its stdin is the previous stage's bytes,
streamed into the process's open stdin as they arrive. Shell builtins that change the shell
(cd, fg, jobs, ...) cannot be stages.

Job control, as bash does it: every pipeline is a process group of its own; a foreground one is
given the terminal (tcsetpgrp), so the terminal's Ctrl-C and Ctrl-Z go to its processes (and
`llmos run` passes them on to its kernel process), and the shell takes the terminal back when
the job ends or stops. `fg`, `bg`, `kill %N` signal the group (stop = SIGTSTP, so `llmos run`
stops its kernel process too). A waiter thread collects the stages with waitpid(WUNTRACED), so a
stop is seen; the job's status is the last stage's (128+N after signal N).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading

from llmos.kernel import abi
from llmos.shell.jobs import RUNNING, STOPPED, Job, JobTable
from llmos.shell.parse import Command, Pipeline
from llmos.shell.streams import CommandError

# kernel signals (abi) → what a host process gets
HOST_SIGNALS = {abi.SIGINT: signal.SIGINT, abi.SIGTERM: signal.SIGTERM, abi.SIGKILL: signal.SIGKILL,
                abi.SIGSTOP: signal.SIGTSTP, abi.SIGCONT: signal.SIGCONT}


def needs_host(p: Pipeline, known) -> bool:
    """True when the pipeline names a host program or redirects errors."""
    return any(c.name not in known or c.redirect("2>", "2>>") for c in p.commands)


def host_argv(cmd: Command, llmos_commands, builtins) -> list[str]:
    """The argv a stage executes: an llmos command as the CLI; echo as the host's; a shell
    builtin that changes the shell is refused (CommandError 2)."""
    argv = list(cmd.argv)
    if cmd.name in llmos_commands and cmd.name != "sh":        # `sh` is the host's /bin/sh
        if cmd.nice is not None and cmd.name == "run":
            argv = [argv[0], "--nice", str(cmd.nice), *argv[1:]]
        return [sys.executable, "-m", "llmos.shell.cli", *argv]
    if cmd.name in builtins and cmd.name != "echo":
        raise CommandError(f"llmos: {cmd.name}: a shell builtin cannot be a stage of a pipeline with host "
                           f"programs", 2)
    return argv if cmd.nice is None else ["nice", "-n", str(cmd.nice), *argv]


def _open(redirect, default):
    if redirect is None:
        return default
    mode = {"<": "rb", ">": "wb", ">>": "ab", "2>": "wb", "2>>": "ab"}[redirect.op]
    try:
        return open(redirect.target, mode)
    except OSError as e:
        raise CommandError(f"llmos: {redirect.target}: {e.strerror}") from None


def start(p: Pipeline, argvs: list[list[str]], jobs: JobTable) -> Job:
    """Start every stage; returns the job (its waiter thread finishes it). Raises CommandError
    (127 not found, 126 not executable) after ending the stages already started."""
    procs: list[subprocess.Popen] = []
    files = []
    prev = None
    group = 0                                   # the first stage leads the job's process group
    try:
        for k, (cmd, argv) in enumerate(zip(p.commands, argvs)):
            last = k == len(argvs) - 1
            stdin = _open(cmd.redirect("<"), prev) if k == 0 else prev
            stdout = _open(cmd.redirect(">", ">>"), None) if last else subprocess.PIPE
            stderr = _open(cmd.redirect("2>", "2>>"), None)
            files += [f for f in (stdin, stdout, stderr) if f not in (None, subprocess.PIPE, prev)]
            try:
                proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                        process_group=group, restore_signals=True)
            except FileNotFoundError:
                raise CommandError(f"llmos: {cmd.name}: command not found (help lists the commands)",
                                   127) from None
            except PermissionError:
                raise CommandError(f"llmos: {cmd.name}: Permission denied", 126) from None
            except OSError as e:
                raise CommandError(f"llmos: {cmd.name}: {e.strerror}", 126 if e.errno == errno.ENOEXEC else 1) \
                    from None
            if prev is not None:
                prev.close()                    # the next stage holds it now
            prev = proc.stdout
            procs.append(proc)
            if group == 0:
                group = proc.pid
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        if prev is not None:
            prev.close()
        raise
    finally:
        for f in files:
            f.close()
    job = jobs.add(str(Pipeline(p.commands)), [proc.pid for proc in procs], kind="host", background=p.background)
    job.pgid = procs[0].pid
    threading.Thread(target=_wait_all, args=(jobs, job, procs), name=f"host-{job.id}", daemon=True).start()
    return job


def _wait_all(jobs: JobTable, job: Job, procs: list[subprocess.Popen]) -> None:
    """Reap every stage (noticing stops and continues); the job's status is the last stage's."""
    status, last, left = 0, procs[-1].pid, {p.pid: p for p in procs}
    while left:
        try:
            pid, st = os.waitpid(-job.pgid, os.WUNTRACED | os.WCONTINUED)
        except ChildProcessError:
            break
        if os.WIFSTOPPED(st):
            jobs.mark(job, STOPPED)
        elif os.WIFCONTINUED(st):
            job.state = RUNNING
        elif pid in left:
            rc = os.waitstatus_to_exitcode(st)
            left.pop(pid).returncode = rc
            job.live.discard(pid)
            if pid == last:
                status = 128 - rc if rc < 0 else rc
    jobs.finish(job, status)


def give_terminal(job: Job) -> int | None:
    """Make the job's group the terminal's foreground (the shell's fd, or None without one)."""
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
            return None
        os.tcsetpgrp(fd, job.pgid)
        return fd
    except (OSError, ValueError):
        return None


def take_terminal(fd: int | None) -> None:
    if fd is not None:
        try:
            os.tcsetpgrp(fd, os.getpgrp())
        except OSError:
            pass


def send(job: Job, sig: int) -> None:
    """Send a kernel-numbered signal to a host job's process group."""
    try:
        os.killpg(job.pgid, HOST_SIGNALS.get(sig, sig))
    except (ProcessLookupError, PermissionError):
        pass
