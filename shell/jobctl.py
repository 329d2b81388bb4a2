"""Job control and signals: jobs, fg, bg, wait, kill, renice, fork.

The commands that act on the shell's jobs and on kernel processes by pid or job spec (`%N`, `%+`,
`%-`). They only decide and call: signals go out through the shell (Shell.signal_job, the main
connection), states are recorded in the job table, and the foreground wait is Shell.foreground.
Errors read as the Unix tools' do: `kill: (42) - No such process`, `fg: %3: no such job`.
"""

from __future__ import annotations

from llmos.kernel import abi
from llmos.shell import builtins
from llmos.shell.builtins import ArgParser, Invocation, builtin
from llmos.shell.jobs import RUNNING, STOPPED, JobError
from llmos.shell.parse import NICE_MAX, NICE_MIN, Command, JobSpec, ParseError, parse, parse_target
from llmos.shell.streams import TERMINAL, CommandError, output_for
from llmos.userland import program
from llmos.userland.bin import kill as kill_cmd
from llmos.userland.bin.run import exit_status
from llmos.userland.program import error_text


def job_of(inv: Invocation, spec: str | None):
    """The job a spec names (None: the current one); CommandError in the shell's words."""
    try:
        return inv.sh.jobs.get(spec)
    except JobError as e:
        raise CommandError(str(e) if spec else "current: no such job") from None


def command_of(job) -> str:
    """A job's command line without its redirections (a fork's child writes where fork says)."""
    try:
        p = parse(job.text)[0]
    except (ParseError, IndexError):
        return job.text
    return " | ".join(str(Command(c.argv, (), c.nice)) for c in p.commands)


def id_args(p: ArgParser, nargs: str = "*") -> None:
    p.add_argument("ids", nargs=nargs, metavar="ID", help="a pid or a job spec (%%N, %%+, %%-)")


@builtin("jobs", "list the shell's jobs", options=lambda p: (
        p.add_argument("-l", action="store_true", help="show pids too"),
        p.add_argument("-p", action="store_true", help="show only pids")))
def jobs(inv: Invocation) -> int:
    inv.sh.refresh_jobs()
    table = inv.sh.jobs
    for job in list(table):
        mark = table.mark_of(job)
        if inv.args.p:
            inv.out.write("".join(f"{pid}\n" for pid in job.pids))
            continue
        line = job.line(mark)
        if inv.args.l:
            line = line.replace(f"[{job.id}]{mark} ", f"[{job.id}]{mark} {','.join(map(str, job.pids)) or '-'} ", 1)
        inv.out.write(line + "\n")
        if job.status is not None:
            job.notified = True
    table.reap_finished()
    return 0


@builtin("fg", "continue a job in the foreground", usage="fg [JOB]",
         options=lambda p: p.add_argument("job", nargs="?", help="%%N (default: the current job)"))
def fg(inv: Invocation) -> int:
    job = job_of(inv, inv.args.job)
    TERMINAL.write(job.text + "\n")
    if job.state == STOPPED:
        inv.sh.signal_job(job, abi.SIGCONT)
    inv.sh.jobs.mark(job, RUNNING, background=False)
    return inv.sh.foreground(job)


@builtin("bg", "continue stopped jobs in the background", usage="bg [JOB...]",
         options=lambda p: p.add_argument("jobs", nargs="*", help="%%N (default: the current job)"))
def bg(inv: Invocation) -> int:
    for spec in inv.args.jobs or [None]:
        try:
            job = job_of(inv, spec)
        except CommandError as e:
            inv.error(e.message)
            continue
        if job.state == RUNNING and job.background:
            inv.error(f"job {job.id} already in background")
            continue
        inv.sh.signal_job(job, abi.SIGCONT)
        inv.sh.jobs.mark(job, RUNNING, background=True)
        inv.out.write(f"[{job.id}]{inv.sh.jobs.mark_of(job)} {job.text} &\n")
    return inv.status


@builtin("wait", "wait for jobs or processes to end (default: every running job)",
         usage="wait [ID...]", takes_ids=True, options=id_args)
def wait(inv: Invocation) -> int:
    status = 0
    if not inv.args.ids:
        for job in [j for j in inv.sh.jobs if j.state == RUNNING]:
            status = inv.sh.wait_job(job)
        return status
    for word in inv.args.ids:
        try:
            target = parse_target(word)
            if isinstance(target, JobSpec):
                status = inv.sh.wait_job(job_of(inv, word))
            elif (job := inv.sh.jobs.by_pid(target)) is not None:
                status = inv.sh.wait_job(job)
            else:
                status = exit_status(inv.sh.client.wait(target))
        except (ParseError, CommandError) as e:
            inv.error(str(e), 2)
            status = 2
        except ProcessLookupError:
            inv.error(f"pid {word} is not a child of this shell", 127)
            status = 127
    return status


# --- signals and priorities -------------------------------------------------------------------

def targets(inv: Invocation, words: list[str]):
    """Yield (word, pids, job) per argument; bad ones are reported via inv.error."""
    for word in words:
        try:
            target = parse_target(word)
            if isinstance(target, JobSpec):
                job = job_of(inv, word)
                yield word, sorted(job.live), job
            else:
                yield word, [target], inv.sh.jobs.by_pid(target)
        except (ParseError, CommandError) as e:
            inv.error(str(e))


def kill(inv: Invocation) -> int:
    """userland/bin/kill.py's parsing and sending, with job specs and the job table's states."""
    io = builtins.program_io(inv)
    try:
        sig, words = kill_cmd.parse(list(inv.cmd.argv[1:]))
    except program.UsageError as e:
        raise CommandError(str(e), 2) from None
    if sig is None:
        inv.out.write(kill_cmd.signal_list())
        return 0
    for word in [w for w in words if w.startswith("-")]:         # -PGID: a process group
        try:
            kill_cmd.send(io, sig, [kill_cmd.pid_of(word)])
        except program.UsageError as e:
            inv.error(str(e))
    for word, pids, job in targets(inv, [w for w in words if not w.startswith("-")]):
        if job is not None and job.kind == "host":
            inv.sh.signal_job(job, sig)         # host processes: OS signals (host.py)
        else:
            kill_cmd.send(io, sig, pids)
        if job is not None and sig in (abi.SIGSTOP, abi.SIGCONT):
            inv.sh.jobs.mark(job, STOPPED if sig == abi.SIGSTOP else RUNNING,
                             background=True if sig == abi.SIGCONT else None)
    return io.status or inv.status


builtins.BUILTINS["kill"] = builtins.Builtin("kill", kill_cmd.SUMMARY + " or jobs", kill_cmd.parser("kill"),
                                             kill, takes_ids=True, raw_args=True)


@builtin("renice", "change the nice value of running processes or jobs",
         usage="renice [-n] N ID...", takes_ids=True, raw_args=True,
         options=lambda p: p.add_argument("ids", nargs="*", metavar="ID"))
def renice(inv: Invocation) -> int:
    words = list(inv.cmd.argv[1:])
    words = words[1:] if words[:1] in (["-n"], ["--priority"]) else words
    if len(words) < 2:
        raise CommandError("usage: renice [-n] N ID...", 2)
    try:
        nice = int(words[0])
    except ValueError:
        raise CommandError(f"invalid priority `{words[0]}'", 2) from None
    if not NICE_MIN <= nice <= NICE_MAX:
        raise CommandError(f"priority {nice} is out of range ({NICE_MIN}..{NICE_MAX})", 2)
    for word, pids, _ in targets(inv, words[1:]):
        for pid in pids:
            try:
                old = inv.sh.client.stat(pid)["nice"]
                inv.sh.client.nice(pid, nice)
            except OSError as e:
                inv.error(error_text(e, pid))
                continue
            inv.out.write(f"{pid} (process ID) old priority {old}, new priority {nice}\n")
    return inv.status


@builtin("fork", "copy a process (KV shared copy-on-write); the child becomes a job",
         usage="fork ID [> FILE]   (the child's text goes where fork's output goes)", takes_ids=True,
         options=lambda p: id_args(p, None))
def fork(inv: Invocation) -> int:
    for word, pids, job in targets(inv, [inv.args.ids]):
        if not pids:
            raise CommandError(f"{word}: no live process to fork")
        try:
            child = inv.sh.client.fork(pids[-1])
        except OSError as e:
            raise CommandError(error_text(e, pids[-1])) from None
        redirect = inv.cmd.redirect(">", ">>")
        text = f"{command_of(job) if job else 'pid ' + str(pids[-1])} (fork of {pids[-1]})" \
            + (f" {redirect.op} {redirect.target}" if redirect else "")
        new = inv.sh.adopt(child, text, output_for(redirect))
        TERMINAL.write(f"[{new.id}] {child}\n")
    return inv.status
