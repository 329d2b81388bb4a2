"""Where a command's text goes: the terminal, a file (`>`, `>>`), or a capture feeding a pipe.

Every writer (builtins on the main thread, job readers on their own threads) writes through a
Stream. The terminal stream looks sys.stdout up at each write, so while the prompt is on screen
(prompt_toolkit's patch_stdout) background output is drawn above the prompt instead of through it,
and it remembers whether the cursor is at the start of a line so the shell can end a partial line
before printing its prompt.
"""

from __future__ import annotations

import re
import sys
import abc
import threading

# Control characters other than newline and tab: model output is untrusted text, and an escape
# sequence written raw to a terminal can rewrite the screen or the window title. Files get it raw.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class CommandError(Exception):
    """A command failed with a message for the user; the shell prints `NAME: message`."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.message, self.status = message, status


class Stream(abc.ABC):
    """Where a job's text goes."""

    @abc.abstractmethod
    def write(self, text: str) -> None:
        """Take text; never blocks on the kernel."""

    def close(self) -> None:
        pass


class Terminal(Stream):
    """The shell's standard output (thread-safe; on a terminal control characters show as U+FFFD)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at_line_start = True
        self.tty = bool(sys.__stdout__ and sys.__stdout__.isatty())

    def write(self, text: str) -> None:
        if not text:
            return
        if self.tty:
            text = _CONTROL.sub("\ufffd", text)
        with self._lock:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):      # reader gone, or stdout closed at exit
                return
            self.at_line_start = text.endswith("\n")

    def raw(self, text: str) -> None:
        """Write control sequences as they are (the shell's own: clear)."""
        with self._lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.at_line_start = True

    def end_line(self) -> None:
        """Finish a partial line (a reply that did not end with a newline)."""
        if not self.at_line_start:
            self.write("\n")


class FileStream(Stream):
    """A file opened for `>` (truncate) or `>>` (append). Raises CommandError if it cannot open."""

    def __init__(self, path: str, append: bool = False):
        try:
            self._f = open(path, "a" if append else "w", encoding="utf-8")
        except OSError as e:
            raise CommandError(f"{path}: {e.strerror}") from None
        self.path = path
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.write(text)
                self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


class Capture(Stream):
    """Collects text in memory: the output of one pipeline stage, the input of the next."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> None:
        self._parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self._parts)


def read_file(path: str) -> str:
    """The text of a `<` file. Raises CommandError with the shell's wording."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise CommandError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}") from None


def output_for(redirect) -> Stream:
    """The stream for a command's `>`/`>>` redirect, or the terminal when there is none."""
    if redirect is None:
        return TERMINAL
    return FileStream(redirect.target, append=redirect.op == ">>")


TERMINAL = Terminal()
