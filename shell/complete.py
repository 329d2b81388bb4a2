"""Tab completion for the shell prompt: commands, their options, pids, job specs and file names.

The text before the cursor is read with the shell's own lexer (so quotes and operators count as
they will when the line runs); the words after the last `;`, `&` or `|` are the command being
typed. Options come from each builtin's argument parser, pids from the kernel's process table
(the user's own processes, with their command as the description), job specs from the job table,
and a word after `<`, `>` or `>>` completes as a file name.
"""

from __future__ import annotations

from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from llmos.kernel import abi
from llmos.shell.builtins import BUILTINS
from llmos.shell.parse import REDIRECTS, ParseError, tokenize

SEPARATORS = (";", "&", "|", "\n", "&&", "||")


def words_before_cursor(text: str) -> tuple[list[str], str, bool]:
    """(words of the current command before the word being typed, that word, after_redirect)."""
    toks = None
    for closing in ("", '"', "'"):
        try:
            toks = tokenize(text + closing)
            break
        except ParseError:
            continue
    if toks is None:
        return [], "", False
    current = ""
    if text and not text[-1].isspace() and toks and toks[-1].kind == "word":
        current = toks.pop().text
    start = max((i + 1 for i, t in enumerate(toks) if t.kind == "op" and t.text in SEPARATORS), default=0)
    cmd = toks[start:]
    after_redirect = bool(cmd) and cmd[-1].kind == "op" and cmd[-1].text in REDIRECTS
    words, i = [], 0
    while i < len(cmd):                         # drop redirections and their targets
        if cmd[i].kind == "op":
            i += 2
            continue
        words.append(cmd[i].text)
        i += 1
    while words[:1] == ["nice"]:                # the nice prefix: complete the command after it
        words = words[1:]
        if words[:1] and (words[0].startswith("-n") or words[0] == "--adjustment"):
            words = words[2:] if words[0] in ("-n", "--adjustment") else words[1:]
    return words, current, after_redirect


class ShellCompleter(Completer):
    def __init__(self, sh):
        self.sh = sh
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event):
        words, current, after_redirect = words_before_cursor(document.text_before_cursor)
        if after_redirect:
            yield from self.paths.get_completions(Document(current), complete_event)
            return
        if not words:
            for name in [*BUILTINS, "nice"]:
                if name.startswith(current):
                    yield Completion(name, -len(current), display_meta=_summary(name))
            return
        b = BUILTINS.get(words[0])
        if b is None:
            return
        if b.name == "help":
            yield from (Completion(n, -len(current)) for n in [*BUILTINS, "nice"] if n.startswith(current))
            return
        if current.startswith("-"):
            options = list(b.parser._option_string_actions)
            if b.name == "kill":
                options += [f"-{s}" for s in abi.SIGNALS] + ["-l", "-s"]
            for opt in sorted(set(options)):
                if opt.startswith(current):
                    yield Completion(opt, -len(current))
            return
        if b.name == "kill" and words[-1] == "-s":
            yield from (Completion(s, -len(current)) for s in abi.SIGNALS if s.startswith(current.upper()))
            return
        if b.takes_ids or b.name in ("fg", "bg"):
            yield from self._ids(current, pids=b.name not in ("fg", "bg"))

    def _ids(self, current: str, pids: bool):
        for job in list(self.sh.jobs):
            spec = f"%{job.id}"
            if spec.startswith(current):
                yield Completion(spec, -len(current), display_meta=job.text)
        if not pids:
            return
        for p in self.sh.link.own_processes():
            if str(p["pid"]).startswith(current):
                yield Completion(str(p["pid"]), -len(current),
                                 display_meta=f"{p['state']} {p['command']}")


def _summary(name: str) -> str:
    return BUILTINS[name].summary if name in BUILTINS else "run a command with a niceness"
