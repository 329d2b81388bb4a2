"""`run [options] "prompt"`: run a prompt as a process and stream its answer (CLI and shell).

One set of options for `llmos run` and the shell's `run` (which also gives `chat` the sampling
ones), one ProcessSpec that turns them into a spawn, one exit status (0; 128+N after signal N;
1 on an error). The answer always ends with a newline, so `>>` appends make whole lines.

The CLI streams the answer to stdout. Its prompt is the words, then a blank line and stdin when
stdin is not a terminal: a file is read whole (too large: E2BIG at once), a pipe is streamed into
the process's open stdin a line at a time (it prefills as the text arrives; `cat f | llmos run
"summarise:"`). Ctrl-C sends SIGINT to the process and nothing more is printed (twice: SIGKILL);
Ctrl-Z stops the process (SIGSTOP) and this program with it; `fg` continues both (SIGCONT).
The shell runs the same spec as a job (shell/runner.py: pipes, background, redirection).
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from dataclasses import dataclass, field

from llmos.kernel import abi
from llmos.userland import program

SUMMARY = "run a prompt as a process and stream its answer"

# Sampling for conversation, as Ollama's defaults: greedy decoding of a small model loops ("Hola
# in Spanish! 😊" then 164 🌍), a little temperature with nucleus sampling and a mild penalty on
# the last 64 tokens does not. `-t 0` is exact greedy: none of these apply unless given.
CHAT_DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "penalty_last_n": 64}


def sampling_options(p: program.ArgParser) -> None:
    """The options run and chat share."""
    p.add_argument("-m", "--model", metavar="MODEL",
                   help="a catalog or cached model (default: $LLMOS_MODEL, `llmos --model`, else the "
                        "kernel's); loaded on first use")
    p.add_argument("-n", "--max-tokens", type=int, metavar="N", help="most tokens to generate")
    p.add_argument("-t", "--temperature", type=float, metavar="T",
                   help=f"default {CHAT_DEFAULTS['temperature']}; 0 = exact greedy (no top-p, no penalty)")
    p.add_argument("--top-k", type=int, metavar="K")
    p.add_argument("--top-p", type=float, metavar="P", help=f"default {CHAT_DEFAULTS['top_p']}")
    p.add_argument("--min-p", type=float, metavar="P")
    p.add_argument("--repeat-penalty", type=float, metavar="R",
                   help=f"default {CHAT_DEFAULTS['repetition_penalty']} (1 = off)")
    p.add_argument("--repeat-last-n", type=int, metavar="N",
                   help=f"tokens the penalty looks back over (default {CHAT_DEFAULTS['penalty_last_n']})")
    p.add_argument("-s", "--seed", type=int, metavar="S")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop at this text (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="generate until --max-tokens")
    p.add_argument("--system", metavar="TEXT", help="a system message before the prompt")
    p.add_argument("--nice", type=int, default=0, metavar="N", help=f"{abi.NICE_MIN} (favoured) .. {abi.NICE_MAX}")


def options(p: program.ArgParser) -> None:
    sampling_options(p)
    p.add_argument("--raw", action="store_true", help="send the prompt as raw text, no chat template")
    p.add_argument("prompt", nargs="*", help="the prompt; piped or `<` text follows it")


def parser(prog: str = "run") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    options(p)
    return p


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
    model: str | None = None                    # None: the kernel's default model

    def prompt(self, stdin: str | None = None, open_input: bool = False):
        """The spawn prompt: the words, then a blank line and the input text (a pipe or `<`).
        open_input: the input is still to come (written to the process as it arrives)."""
        body = "\n\n".join(x for x in (self.words, stdin) if x)
        if open_input:
            body = self.words + "\n\n" if self.words else ""
        elif not body.strip():
            raise program.UsageError("missing prompt (type it after the command, or pipe or `<` text in)")
        if self.raw:
            return body
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": body}]

    def spawn(self, client, stdin: str | None = None, open_input: bool = False) -> int:
        prompt = self.prompt(stdin, open_input)
        if open_input and self.raw and not prompt:
            raise program.UsageError("missing prompt (a raw pipe stage needs its own words)")
        if self.model is not None:              # wait here while the kernel loads it
            from llmos.userland.bin.load import load
            load(client, self.model)
        return client.spawn(prompt, self.params or None, nice=self.nice, session=self.session,
                            command=self.command, stdin=open_input, model=self.model)


def spec(args, command: str, nice: int | None = None, session: bool = False) -> ProcessSpec:
    """The ProcessSpec for parsed run/chat options (a shell's `nice` prefix wins over --nice)."""
    nice = args.nice if nice is None else nice
    if not abi.NICE_MIN <= nice <= abi.NICE_MAX:
        raise program.UsageError(f"--nice {nice} is out of range ({abi.NICE_MIN}..{abi.NICE_MAX})")
    params = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature),
                                ("top_k", args.top_k), ("top_p", args.top_p), ("min_p", args.min_p),
                                ("repetition_penalty", args.repeat_penalty),
                                ("penalty_last_n", args.repeat_last_n), ("seed", args.seed),
                                ("stop", args.stop), ("ignore_eos", args.ignore_eos or None))
              if v is not None}
    if args.temperature != 0:                   # -t 0 stays exact greedy
        params = {**CHAT_DEFAULTS, **params}
    shown = "".join(c if c.isprintable() else " " for c in command)[:abi.MAX_NAME_CHARS]
    return ProcessSpec(" ".join(getattr(args, "prompt", [])), shown, params, args.system, nice,
                       getattr(args, "raw", False), session,
                       args.model or os.environ.get("LLMOS_MODEL") or None)    # read now: `llmos --model`


def exit_status(st: dict) -> int:
    """A wait() result as a shell status: 0 for a normal end, 128+N for signal N, 1 for an error."""
    if st.get("reason") == "signal":
        return 128 + (st.get("signal") or signal.SIGTERM)
    return 1 if st.get("reason") == "error" else 0


# ---- the CLI -------------------------------------------------------------------------------------

def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos run")
    return program.run(argv, io, parser(io.prog), lambda args, io: _run(args, io, argv))


def _run(args, io: program.IO, argv: list[str]) -> int:
    s = spec(args, "run " + " ".join(" ".join(args.prompt).split())[:40])
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin
    piped = stdin is not None and stat.S_ISFIFO(os.fstat(stdin.fileno()).st_mode) and not s.raw
    first = ""
    if piped:
        first = stdin.readline()                    # the prompt is not empty, or it is an error
        if not first and not s.words:
            raise program.UsageError("missing prompt (type it after the command, or pipe or `<` text in)")
    client = io.client
    if piped and first:
        pid = s.spawn(client, open_input=True)
        for line in _lines(first, stdin):
            client.write(pid, line)
        client.close_stdin(pid)
    else:
        pid = s.spawn(client, stdin.read() if stdin is not None else None)
    status = Foreground(io, pid).stream()
    if status.get("reason") == "error":
        io.error(f"process {pid} failed: {status.get('message')}")
    return exit_status(status)


def _lines(first: str, rest):
    yield first
    yield from rest


class Foreground:
    """Stream one process to io until it exits; Ctrl-C → SIGINT (then print nothing more; twice:
    SIGKILL); Ctrl-Z → SIGSTOP it and stop this program, SIGCONT both on `fg`."""

    def __init__(self, io: program.IO, pid: int):
        self.io, self.pid, self.interrupts, self._ctl = io, pid, 0, None

    def _control(self):
        """A second connection for signals: the main one may be inside a read."""
        if self._ctl is None:
            from llmos.userland import lib
            self._ctl = lib.Client(client="llmos-run-ctl")
        return self._ctl

    def _on_tstp(self, signum, frame) -> None:
        ctl = self._control()
        ctl.kill(self.pid, abi.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)        # stopped here until SIGCONT
        signal.signal(signal.SIGTSTP, self._on_tstp)
        ctl.kill(self.pid, abi.SIGCONT)

    def stream(self) -> dict:
        client, last = self.io.client, "\n"
        old = signal.signal(signal.SIGTSTP, self._on_tstp) if _main_thread() else None
        try:
            while True:
                try:
                    for text in client.stream(self.pid):
                        if not self.interrupts:
                            self.io.write(text)
                            _flush(self.io.out)
                            last = text[-1]
                    status = client.wait(self.pid)
                    break
                except KeyboardInterrupt:
                    self.interrupts += 1
                    client.kill(self.pid, abi.SIGINT if self.interrupts == 1 else abi.SIGKILL)
        finally:
            if old is not None:
                signal.signal(signal.SIGTSTP, old)
            if self._ctl is not None:
                self._ctl.close()
        if last != "\n":
            self.io.write("\n")
        return status


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _flush(out) -> None:
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()
