"""THE table of shell commands: name → handler, argument parser and one-line help.

Every llmos command is a builtin: each runs in the shell process and turns its words into
syscalls; any other name is a host program (host.py). `run` and `chat` are the two that start kernel
processes; the shell (sh.py) wraps those in jobs, pipes and redirections, and this table gives
them their options. A handler gets an Invocation and returns an exit status; it writes its output
to `inv.out` (the terminal, a `>` file, or the next stage of a pipe) and reports a failure by
raising CommandError (the shell prints `NAME: message`) or by `inv.error(...)` when it goes on.
The parsers here are also what `help CMD` prints and what tab completion offers.

The table is filled by registration: this file holds run/chat and the shell's own commands (echo,
cd, export, source, history, clear, help, exit); jobctl.py the job and signal commands; monitor.py ps, top, free, uname, models.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from typing import Callable

from llmos.shell.parse import NICE_MAX, NICE_MIN, Command
from llmos.shell.streams import TERMINAL, CommandError, Stream
from llmos.userland import program
from llmos.userland.bin import run as run_cmd


class ShellExit(Exception):
    """`exit [N]`: leave the shell with status N."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


ArgParser = program.ArgParser           # one parser class for the shell's and the CLI's commands


@dataclass
class Invocation:
    sh: object                  # the Shell (sh.py): client, jobs, foreground(), signal_job()
    cmd: Command
    args: argparse.Namespace | None
    out: Stream
    stdin: str | None = None
    status: int = 0

    def error(self, message: str, status: int = 1) -> None:
        """Report one failure and go on (the command's status becomes `status`)."""
        self.sh.warn(f"{self.cmd.name}: {message}")
        self.status = status


@dataclass(frozen=True)
class Builtin:
    name: str
    summary: str
    parser: ArgParser
    fn: Callable[[Invocation], int] | None   # None: run/chat, which the shell runs as jobs
    takes_ids: bool = False                  # arguments are pids / job specs (for completion)
    raw_args: bool = False                   # the handler reads cmd.argv itself (kill -STOP 42)

    def parse(self, argv: list[str], out: Stream) -> argparse.Namespace | None:
        """Parse argv (without the name); None when -h was answered. Raises CommandError."""
        self.parser.help_out = out
        if self.raw_args:
            if argv[:1] in (["-h"], ["--help"]):
                out.write(self.parser.format_help())
                return None
            return argparse.Namespace()
        try:
            return self.parser.read(argv)
        except program.UsageError as e:
            raise CommandError(f"{e} (help {self.name} shows the usage)", 2) from None


BUILTINS: dict[str, Builtin] = {}


def builtin(name: str, summary: str, *, usage: str | None = None, takes_ids: bool = False,
            raw_args: bool = False, options: Callable[[ArgParser], None] | None = None):
    def register(fn):
        parser = ArgParser(name, summary, usage)
        if options:
            options(parser)
        BUILTINS[name] = Builtin(name, summary, parser, fn, takes_ids, raw_args)
        return fn
    return register


# --- the two commands that start processes (run as jobs by the shell) ---------------------------
# Their options are userland/bin/run.py's, the same as `llmos run`'s.

builtin("run", run_cmd.SUMMARY, options=run_cmd.options)(None)
builtin("chat", "a multi-turn session process (its KV stays resident); /exit leaves",
        options=run_cmd.sampling_options)(None)


def process_spec(cmd: Command, args: argparse.Namespace, session: bool) -> run_cmd.ProcessSpec:
    """The ProcessSpec for a parsed `run`/`chat` command (nice prefix over --nice)."""
    try:
        return run_cmd.spec(args, str(Command(cmd.argv)), cmd.nice, session)
    except program.UsageError as e:
        raise CommandError(str(e), 2) from None


# --- commands that are userland programs (userland/bin): the shell lends them its output and
# its connection, after turning job specs (%1) into pids -------------------------------------------

class _Warn:
    def write(self, text: str) -> None:
        TERMINAL.end_line()
        import sys
        sys.stderr.write(text)
        sys.stderr.flush()


def program_io(inv: "Invocation") -> program.IO:
    """The IO a userland program gets inside the shell."""
    return program.IO(inv.cmd.name, out=inv.out, err=_Warn(), client=lambda: inv.sh.client,
                      lost=inv.sh.link.drop, hint=f"help {inv.cmd.name} shows the usage")


def userland_program(module, *, takes_ids: bool = False, expand=None) -> None:
    """Register module (userland/bin/NAME.py) as the builtin NAME; expand(inv, words) may
    rewrite its arguments (job specs → pids) first."""
    name = module.__name__.rsplit(".", 1)[1]

    def fn(inv: Invocation) -> int:
        words = list(inv.cmd.argv[1:])
        if expand is not None:
            words = expand(inv, words)
        return module.main([name, *words], program_io(inv))
    BUILTINS[name] = Builtin(name, module.SUMMARY, module.parser(name), fn, takes_ids, raw_args=True)


# --- the rest of the table, in the order `help` lists it -----------------------------------------

from llmos.shell import jobctl, monitor  # noqa: E402,F401  (they register their commands)


# --- the shell itself -----------------------------------------------------------------------------

@builtin("echo", "print the words (-n: no newline)", options=lambda p: (
    p.add_argument("-n", action="store_true", dest="no_newline"), p.add_argument("words", nargs="*")))
def echo(inv: Invocation) -> int:
    inv.out.write(" ".join(inv.args.words) + ("" if inv.args.no_newline else "\n"))
    return 0


@builtin("help", "list the commands, or show how to use one", usage="help [COMMAND]",
         options=lambda p: p.add_argument("command", nargs="?"))
def help_(inv: Invocation) -> int:
    name = inv.args.command
    if name is None:
        lines = [f"  {b.name:<8} {b.summary}" for b in BUILTINS.values()]
        inv.out.write("llmos shell commands (help COMMAND for its options):\n" + "\n".join(lines) + "\n"
                      + HELP_FOOTER)
        return 0
    if name == "nice":
        inv.out.write(NICE_HELP)
        return 0
    if name not in BUILTINS:
        raise CommandError(f"no help topics match `{name}' (try: help)")
    inv.out.write(BUILTINS[name].parser.format_help())
    return 0


@builtin("exit", "leave the shell (jobs still running get SIGTERM)", usage="exit [N]",
         options=lambda p: p.add_argument("status", nargs="?", type=int))
def exit_(inv: Invocation) -> int:
    raise ShellExit(inv.args.status if inv.args.status is not None else inv.sh.status)


@builtin("cd", "change the shell's working directory (host programs and files follow it)", usage="cd [DIR]",
         options=lambda p: p.add_argument("dir", nargs="?"))
def cd(inv: Invocation) -> int:
    target = os.path.expanduser(inv.args.dir or "~")
    try:
        os.chdir(target)
    except OSError as e:
        raise CommandError(f"{inv.args.dir}: {e.strerror}") from None
    return 0


@builtin("export", "set environment variables for the programs the shell starts",
         usage="export [NAME=VALUE ...]", options=lambda p: p.add_argument("assignments", nargs="*"))
def export(inv: Invocation) -> int:
    if not inv.args.assignments:
        inv.out.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(os.environ.items())))
        return 0
    for word in inv.args.assignments:
        name, eq, value = word.partition("=")
        if not name.isidentifier():
            inv.error(f"`{word}': not a valid identifier")
        elif eq:
            os.environ[name] = value
    return inv.status


@builtin("source", "run the commands in FILE in this shell", usage="source FILE",
         options=lambda p: p.add_argument("file"))
def source(inv: Invocation) -> int:
    from llmos.shell import lines
    from llmos.shell.streams import read_file
    try:
        return lines.run_lines(inv.sh, read_file(inv.args.file), f"source: {inv.args.file}")
    except lines.SyntaxStop:
        return 2


@builtin("history", "the lines typed at the prompt, numbered", usage="history [N]",
         options=lambda p: p.add_argument("n", nargs="?", type=int))
def history(inv: Invocation) -> int:
    from prompt_toolkit.history import FileHistory
    past = list(reversed(list(FileHistory(str(inv.sh.home / "history")).load_history_strings())))
    start = max(0, len(past) - inv.args.n) if inv.args.n else 0
    inv.out.write("".join(f"{k + 1:5d}  {line}\n" for k, line in enumerate(past) if k >= start))
    return 0


@builtin("clear", "clear the terminal screen")
def clear(inv: Invocation) -> int:
    if inv.out is TERMINAL and TERMINAL.tty:
        TERMINAL.raw("\x1b[H\x1b[2J\x1b[3J")
    return 0


NICE_HELP = f"""usage: nice [-n N] COMMAND ...
run COMMAND with its niceness adjusted by N ({NICE_MIN} most favoured .. {NICE_MAX}; default 10)
"""
HELP_FOOTER = """
  nice -n N run ...   run with a niceness; CMD &: in the background; A | B: A's text into B
  > FILE, >> FILE: output to a file; < FILE: a file's text as the prompt (or chat turns)
  Ctrl-C interrupts the foreground process, Ctrl-Z stops it (fg/bg continue it)
"""


def run_builtin(sh, cmd: Command, out: Stream, stdin: str | None = None) -> int:
    """Run a (non-process) builtin. Raises CommandError/ShellExit/OSError for the shell to report."""
    b = BUILTINS[cmd.name]
    args = b.parse(list(cmd.argv[1:]), out)
    if args is None:
        return 0
    return b.fn(Invocation(sh, cmd, args, out, stdin))


def is_process_command(name: str) -> bool:
    return name in BUILTINS and BUILTINS[name].fn is None

