"""What every userland command shares, so that `llmos CMD` and the shell's CMD are one program.

A command module in userland/bin has `main(argv, io=None) -> int`; argv[0] is its name. The CLI
calls it with no io (stdout, stderr, a connection of its own); the shell passes an IO that writes
to the job's output (terminal, `>` file, next pipe stage) and lends the shell's connection. Either
way the same parser reads the options (`ArgParser`: errors are raised, never sys.exit), the same
code makes the calls and the same formatting prints the result (`table`: plain aligned text,
never cut to a terminal's width, so `llmos ps | grep RUNNING` sees every column).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable


class UsageError(Exception):
    """Bad options or arguments (exit status 2); str(e) is the message without the program name."""


class _Help(Exception):
    """-h/--help was answered."""


class ArgParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, and writes its help to `help_out`."""

    def __init__(self, prog: str, description: str, usage: str | None = None):
        super().__init__(prog=prog, description=description, usage=usage, add_help=True,
                         exit_on_error=False, allow_abbrev=False)
        self.help_out = sys.stdout

    def error(self, message: str):
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            raise UsageError(message.strip())
        raise _Help()

    def print_help(self, file=None):
        self.help_out.write(self.format_help())

    def read(self, argv: list[str]) -> argparse.Namespace | None:
        """Parse argv (without the name); None when -h was answered. Raises UsageError."""
        try:
            return self.parse_intermixed_args(argv)
        except _Help:
            return None
        except argparse.ArgumentError as e:
            raise UsageError(str(e)) from None


class _Stderr:
    def write(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()


class IO:
    """Where a command writes and whom it calls. The CLI's default: stdout, stderr and a client
    of its own (connected on first use, closed by `close`)."""

    def __init__(self, prog: str, out=None, err=None, client: Callable[[], object] | None = None,
                 lost: Callable[[], None] | None = None, hint: str | None = None):
        self.prog = prog                                # the name errors begin with
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else _Stderr()
        self._client_fn, self._client, self._own = client, None, client is None
        self.lost = lost or (lambda: None)              # the connection is gone (the shell drops it)
        self.hint = hint or f"{prog} -h shows the usage"
        self.status = 0

    @property
    def client(self):
        if self._client is None:
            if self._client_fn is not None:
                self._client = self._client_fn()
            else:
                from llmos.userland import lib
                self._client = lib.Client(client=self.prog.replace(" ", "-"))
        return self._client

    def write(self, text: str) -> None:
        self.out.write(text)

    def json(self, value) -> None:
        self.out.write(json.dumps(value, indent=1) + "\n")

    def error(self, message: str, status: int = 1) -> None:
        """Report one failure and go on; the command's status becomes `status`."""
        self.err.write(f"{self.prog}: {message}\n")
        self.status = status

    def close(self) -> None:
        if self._own and self._client is not None:
            self._client.close()
        self._client = None


def run(argv: list[str], io: IO, parser: ArgParser, body: Callable[[argparse.Namespace, IO], int]) -> int:
    """Parse argv[1:] with parser and run body; report usage errors (2) and failed syscalls (1)."""
    from llmos.userland import lib
    parser.help_out = io.out
    try:
        args = parser.read(list(argv[1:]))
        if args is None:
            return 0
        return body(args, io) or io.status
    except UsageError as e:
        io.error(f"{e} ({io.hint})", 2)
        return 2
    except BrokenPipeError:         # our reader left (`llmos ps | head`), not a syscall: the CLI
        raise                       # ends as SIGPIPE would (shell/cli.py)
    except OSError as e:
        io.error(error_text(e))
        if isinstance(e, (ConnectionError, lib.KernelNotAnswering)):
            io.lost()
        return 1
    finally:
        io.close()


def error_text(e: OSError, pid: int | None = None) -> str:
    """A failed syscall in a shell's words: `(42) - No such process` for a pid."""
    if pid is not None and isinstance(e, ProcessLookupError):
        return f"({pid}) - No such process"
    if pid is not None and isinstance(e, PermissionError) and "belongs to" in str(e.strerror):
        return f"({pid}) - Operation not permitted"
    return str(e.strerror or e)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], right=frozenset()) -> str:
    """Columns padded to their widest cell, never truncated; a left-aligned last column is ragged."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(r, widths, header)]
        if header[-1] not in right:
            cells[-1] = r[-1]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def size(n: float) -> str:
    """Bytes as ls -h does: 812B, 4.0K, 192.0M, 24.0G."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}P"


def uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 86400 \
        else f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
