"""Where the shell's lines come from: the interactive prompt, or a script (`-c`, a file, stdin).

Interactive: a prompt_toolkit session with history in $LLMOS_HOME/history (default
~/.cache/llmos), tab completion (complete.py), and the prompt `llmos(MODEL kv N%)$ ` read fresh
from the kernel each time. A line left open (a quote, a trailing `|` or `\\`) asks `> ` for more.
Ctrl-C clears the line; Ctrl-Z does nothing; Ctrl-D is `exit`; a first exit with jobs alive only warns (bash).
Background output is drawn above the prompt (patch_stdout) instead of through it.

Scripts run as sh runs them: each complete command as soon as it is read, a syntax error ends
the script with status 2 (`NAME: line N: ...`), and at the end the shell waits for running
background jobs so that their output is not lost; the status is the last command's.
"""

from __future__ import annotations

from llmos.shell.builtins import ShellExit
from llmos.shell.jobs import RUNNING, STOPPED
from llmos.shell.parse import ParseError, parse
from llmos.shell.runner import error_text
from llmos.shell.streams import TERMINAL
from llmos.userland.bin import free

PROMPT_REFRESH_S = 1.0


class SyntaxStop(Exception):
    """A script's syntax error (already reported): it stops there with status 2, as in sh."""


def run_lines(sh, text: str, name: str) -> int:
    """Run the commands in text, each as soon as it is complete (`source` and scripts). Returns
    the last status; a syntax error is reported and raises SyntaxStop; ShellExit passes through."""
    lines, chunk, start = text.splitlines(keepends=True), "", 1
    for n, line in enumerate(lines, 1):
        chunk += line
        try:
            pipelines = parse(chunk)
        except ParseError as e:
            if e.incomplete and n < len(lines):
                continue
            sh.warn(f"{name}: line {start}: {e}")
            sh.status = 2
            raise SyntaxStop from None
        chunk, start = "", n + 1
        sh.run_all(pipelines)
    return sh.status


def run_script(sh, text: str, name: str) -> int:
    """Run the commands in text; return the shell's exit status (after ending every job)."""
    try:
        run_lines(sh, text, name)
        for job in [j for j in sh.jobs if j.state == RUNNING and j.live]:
            sh.wait_job(job)
    except SyntaxStop:
        return sh.leave(2)
    except ShellExit as e:
        return sh.leave(e.status)
    except KeyboardInterrupt:
        return sh.leave(130)
    return sh.leave(sh.status)


def interact(sh) -> int:
    """Read and run lines until exit; return the exit status."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    from llmos.shell.complete import ShellCompleter
    sh.home.mkdir(parents=True, exist_ok=True)
    keys = KeyBindings()
    keys.add("c-z")(lambda event: None)             # Ctrl-Z at the prompt: nothing to stop (bash)
    session = PromptSession(history=FileHistory(str(sh.home / "history")), key_bindings=keys,
                            completer=ShellCompleter(sh), complete_while_typing=False,
                            refresh_interval=PROMPT_REFRESH_S)
    sh.history = session.history
    sh.jobs.on_finish = sh.job_finished            # say "[1]+ Done ..." as soon as it happens
    try:
        sh.client                                   # connect now (starting a kernel if need be)
    except OSError as e:
        sh.warn(f"llmos: {error_text(e)}")
    exit_warned = False
    while True:
        sh.notify_jobs()
        TERMINAL.end_line()
        try:
            text = read_line(session, lambda: prompt_text(sh))
        except EOFError:
            TERMINAL.write("exit\n")
            text = "exit"
        if text is None:
            continue
        try:
            sh.execute(text)
            exit_warned = False
        except ShellExit as e:
            alive = [j for j in sh.jobs if j.live or j.state == STOPPED]
            if alive and not exit_warned:
                stopped = any(j.state == STOPPED for j in alive)
                sh.warn(f"There are {'stopped' if stopped else 'running'} jobs.")
                exit_warned = True
                continue
            return sh.leave(e.status)


def read_line(session, label) -> str | None:
    """A complete line (asking `> ` for more while it is open); None after Ctrl-C."""
    from prompt_toolkit.patch_stdout import patch_stdout
    text = ""
    while True:
        try:
            with patch_stdout(raw=True):
                text += session.prompt(label)
        except KeyboardInterrupt:
            return None
        try:
            parse(text)
        except ParseError as e:
            if e.incomplete:
                text, label = text + "\n", "> "
                continue
        return text


def prompt_text(sh) -> str:
    """`llmos(MODEL kv N%)$ `, or `llmos(no kernel)$ ` (never starts a kernel). Redrawn every
    PROMPT_REFRESH_S, so the KV share follows running jobs; one decimal below 10 % (free.percent)."""
    client = sh.link.try_connect()
    try:
        kv = client.meminfo()["kv"] if client else None
    except OSError:
        sh.link.drop()
        kv = None
    if kv is None:
        return "llmos(no kernel)$ "
    return f"llmos({client.info.get('model') or '?'} kv {free.percent(kv['used'], kv['total'])})$ "
