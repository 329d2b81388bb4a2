"""The shell's grammar: text → a list of pipelines. Pure functions, no I/O.
(Over 300 lines: one grammar - the tokenizer, the parser and the tree it builds.)

    script    := [item (SEP item)*]          SEP is ';', '&' or a newline
    item      := pipeline ['&']              '&' runs the pipeline as a background job
    pipeline  := command ('|' command)*      each command's output is the next one's input
    command   := ['nice' NICEOPT] (WORD | redirect)+
    redirect  := ('<' | '>' | '>>' | '2>' | '2>>') WORD   input from a file; output or errors to one

Words follow POSIX quoting as `shlex.split` reads it (single quotes literal; inside double quotes a
backslash escapes only '"' and '\\'; outside quotes it escapes any character), with two shell rules
shlex lacks: `#` starts a comment only at the start of a word, and backslash-newline joins lines.
The lexer is hand-written rather than `shlex.shlex(punctuation_chars=True)` because shlex forgets
whether a token was quoted, so `run "|"` would read as a pipe; `shlex.quote` is the inverse used by
`unparse` (and the round-trip property tests). There are no variables, globs or `&&`/`||`: a word
is exactly what was typed. `nice -n N cmd` is grammar (a prefix on any command, as in the shell
the user knows), so every command carries its niceness and `nice` needs no builtin of its own.

Errors raise ParseError(message, pos, incomplete): `incomplete` is True when more input could
complete the line (an open quote, a trailing `|`), so the interactive shell can ask for more.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

NICE_MIN, NICE_MAX, NICE_DEFAULT = -20, 19, 10
OPERATORS = ("&&", "||", ">>", ";", "&", "|", "<", ">", "\n")   # longest first
UNSUPPORTED = ("&&", "||")
REDIRECTS = ("<", ">", ">>", "2>", "2>>")
STDERR_OPS = ("2>>", "2>")                                      # only at the start of a word


class ParseError(ValueError):
    """A line the shell cannot read. str(e) is the shell-style message."""

    def __init__(self, message: str, pos: int = 0, incomplete: bool = False):
        super().__init__(message)
        self.message, self.pos, self.incomplete = message, pos, incomplete


@dataclass(frozen=True)
class Redirect:
    op: str          # '<', '>', '>>', '2>' or '2>>'
    target: str      # the file name, as typed (unquoted)
    pos: int = field(default=0, compare=False)   # offset of the operator in the line


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]                   # argv[0] is the command name; never empty
    redirects: tuple[Redirect, ...] = ()    # at most one '<', one of '>'/'>>', one of '2>'/'2>>'
    nice: int | None = None                 # from a `nice` prefix; None: not given

    @property
    def name(self) -> str:
        return self.argv[0]

    def redirect(self, *ops: str) -> Redirect | None:
        return next((r for r in self.redirects if r.op in ops), None)

    def __str__(self) -> str:
        words = [] if self.nice is None else ["nice", "-n", str(self.nice)]
        words += [shlex.quote(w) for w in self.argv]
        words += [f"{r.op} {shlex.quote(r.target)}" for r in self.redirects]
        return " ".join(words)


@dataclass(frozen=True)
class Pipeline:
    commands: tuple[Command, ...]           # never empty
    background: bool = False

    def __str__(self) -> str:
        return " | ".join(map(str, self.commands)) + (" &" if self.background else "")


@dataclass(frozen=True)
class Token:
    kind: str        # 'word' or 'op'
    text: str        # the word (quotes removed) or the operator
    pos: int         # offset of its first character in the line
    quoted: bool = field(default=False, compare=False)


def tokenize(line: str) -> list[Token]:
    """Split a line into words and operators (see the module docstring for the quoting rules)."""
    tokens: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == "\\" and line.startswith("\\\n", i):           # line continuation
            if i + 2 == n:
                raise ParseError("syntax error: unexpected end of input after `\\'", i, True)
            i += 2
        elif c in " \t\r":
            i += 1
        elif c == "#":                                          # a comment, to the end of line
            while i < n and line[i] != "\n":
                i += 1
        elif op := next((o for o in (*STDERR_OPS, *OPERATORS) if line.startswith(o, i)), None):
            tokens.append(Token("op", op, i))
            i += len(op)
        else:
            tok, i = _word(line, i)
            tokens.append(tok)
    return tokens


def _word(line: str, start: int) -> tuple[Token, int]:
    """Read one word from `start`; return it and the offset just after it."""
    out: list[str] = []
    i, n, quoted = start, len(line), False
    while i < n:
        c = line[i]
        if c in " \t\r\n;&|<>":
            break
        if c == "\\":
            if i + 1 >= n:
                raise ParseError("syntax error: unexpected end of input after `\\'", i, True)
            if line[i + 1] != "\n":                             # backslash-newline: joined
                out.append(line[i + 1])
            i += 2
        elif c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise ParseError("syntax error: unterminated quote `''", i, True)
            out.append(line[i + 1:end])
            i, quoted = end + 1, True
        elif c == '"':
            i, quoted = _double_quoted(line, i, out), True
        else:
            out.append(c)
            i += 1
    return Token("word", "".join(out), start, quoted), i


def _double_quoted(line: str, start: int, out: list[str]) -> int:
    i, n = start + 1, len(line)
    while i < n:
        c = line[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
            out.append(line[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    raise ParseError('syntax error: unterminated quote `"\'', start, True)


def parse(line: str) -> list[Pipeline]:
    """Parse a line (or a whole script) into pipelines, in order. Raises ParseError."""
    tokens = tokenize(line)
    pipelines: list[Pipeline] = []
    commands: list[Command] = []
    words: list[Token] = []
    redirects: list[Redirect] = []
    i = 0

    def end_command(at: Token | None) -> None:
        if not words:
            if redirects:
                raise ParseError("syntax error: a redirection needs a command", at.pos if at else len(line))
            if at is None:   # end of input after '|'
                raise ParseError("syntax error: unexpected end of input after `|'", len(line), True)
            raise ParseError(f"syntax error near unexpected token `{_show(at.text)}'", at.pos)
        commands.append(_command(words, redirects))
        words.clear()
        redirects.clear()

    def end_pipeline(at: Token | None, background: bool) -> None:
        if not commands and not words and not redirects:
            if at is not None and at.text != "\n":
                raise ParseError(f"syntax error near unexpected token `{_show(at.text)}'", at.pos)
            return                                              # an empty line or a blank item
        end_command(at)
        pipelines.append(Pipeline(_check_pipeline(commands), background))
        commands.clear()

    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == "word":
            words.append(tok)
        elif tok.text in UNSUPPORTED:
            raise ParseError(f"syntax error: `{tok.text}' is not supported (separate commands with `;')",
                             tok.pos)
        elif tok.text in REDIRECTS:
            if i + 1 >= len(tokens) or tokens[i + 1].kind != "word":
                nxt = tokens[i + 1] if i + 1 < len(tokens) else None
                where = f"`{_show(nxt.text)}'" if nxt and nxt.text != "\n" else "end of line"
                raise ParseError(f"syntax error: `{tok.text}' needs a file name, found {where}", tok.pos)
            i += 1
            redirects.append(_redirect(tok, tokens[i], redirects))
        elif tok.text == "|":
            end_command(tok)
            while i + 1 < len(tokens) and tokens[i + 1].kind == "op" and tokens[i + 1].text == "\n":
                i += 1                                          # a pipe continues on the next line
        elif tok.text in (";", "\n"):
            end_pipeline(tok, False)
        elif tok.text == "&":
            end_pipeline(tok, True)
        i += 1
    if commands and not words and not redirects:
        raise ParseError("syntax error: unexpected end of input after `|'", len(line), True)
    end_pipeline(None, False)
    return pipelines


def _redirect(op: Token, target: Token, seen: list[Redirect]) -> Redirect:
    def kind_of(o: str) -> str:
        return o.rstrip(">") + ">" if o != "<" else "<"          # '<', '>' or '2>'
    kind = kind_of(op.text)
    for r in seen:
        if kind_of(r.op) == kind:
            what = {"<": "input", ">": "output", "2>": "error output"}[kind]
            raise ParseError(f"syntax error: {what} already redirected to {shlex.quote(r.target)}", op.pos)
    if target.text == "":
        raise ParseError(f"syntax error: `{op.text}' needs a file name, found ''", target.pos)
    return Redirect(op.text, target.text, op.pos)


def _command(words: list[Token], redirects: list[Redirect]) -> Command:
    """Build a Command, peeling any `nice` prefixes (their adjustments add, as nested nice does)."""
    argv = [w.text for w in words]
    nice = None
    while argv and argv[0] == "nice" and not words[len(words) - len(argv)].quoted:
        pos = words[len(words) - len(argv)].pos
        adjustment, argv = _nice_option(argv[1:], pos)
        nice = adjustment + (nice or 0)
        if not argv:
            raise ParseError("nice: missing command (usage: nice [-n N] COMMAND ...)", pos)
    if nice is not None and not NICE_MIN <= nice <= NICE_MAX:
        raise ParseError(f"nice: adjustment {nice} is out of range ({NICE_MIN}..{NICE_MAX})",
                         words[0].pos)
    return Command(tuple(argv), tuple(redirects), nice)


def _nice_option(rest: list[str], pos: int) -> tuple[int, list[str]]:
    """Read nice's option from rest: -n N, -nN, -n=N, --adjustment[=]N or -N; none means +10."""
    if not rest:
        return NICE_DEFAULT, rest
    head = rest[0]
    if head in ("-n", "--adjustment"):
        if len(rest) < 2:
            raise ParseError(f"nice: option `{head}' needs a number", pos)
        return _nice_number(rest[1], pos), rest[2:]
    for prefix in ("--adjustment=", "-n=", "-n"):
        if head.startswith(prefix):
            return _nice_number(head[len(prefix):], pos), rest[1:]
    if head.startswith("-") and head[1:].isdigit():
        return _nice_number(head[1:], pos), rest[1:]
    if head.startswith("-") and head != "-":
        raise ParseError(f"nice: unknown option `{head}' (usage: nice [-n N] COMMAND ...)", pos)
    return NICE_DEFAULT, rest


def _nice_number(text: str, pos: int) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ParseError(f"nice: invalid adjustment `{text}'", pos) from None


def _check_pipeline(commands: list[Command]) -> tuple[Command, ...]:
    for k, cmd in enumerate(commands):
        if k > 0 and (r := cmd.redirect("<")):
            raise ParseError(f"{cmd.name}: `<' in a pipeline: only the first command reads a file", r.pos)
        if k < len(commands) - 1 and (r := cmd.redirect(">", ">>")):
            raise ParseError(f"{cmd.name}: `{r.op}' in a pipeline: only the last command writes a file",
                             r.pos)
    return tuple(commands)


def _show(op: str) -> str:
    return "newline" if op == "\n" else op


def unparse(pipelines: list[Pipeline]) -> str:
    """The inverse of parse: text that parses back to the same pipelines."""
    out = []
    for k, p in enumerate(pipelines):
        out.append(str(p))
        if k < len(pipelines) - 1 and not p.background:
            out.append(";")
    return " ".join(out)


@dataclass(frozen=True)
class JobSpec:
    """A job named by `%N` (number), `%%`/`%+`/`%` (current) or `%-` (previous)."""
    number: int | None = None
    which: str = "+"            # '+' current, '-' previous; used when number is None

    def __str__(self) -> str:
        return f"%{self.number}" if self.number is not None else f"%{self.which}"


def parse_jobspec(word: str) -> JobSpec:
    """`%N`, `%%`, `%+`, `%` or `%-` → JobSpec; anything else → ParseError."""
    if not word.startswith("%"):
        raise ParseError(f"{word}: not a job spec (use %N)")
    body = word[1:]
    if body in ("", "%", "+"):
        return JobSpec(None, "+")
    if body == "-":
        return JobSpec(None, "-")
    if body.isdigit() and body.isascii() and int(body) > 0:
        return JobSpec(int(body))
    raise ParseError(f"{word}: no such job")


def parse_target(word: str) -> int | JobSpec:
    """A process argument: a pid (positive integer) or a job spec. Raises ParseError."""
    if word.startswith("%"):
        return parse_jobspec(word)
    if word.isascii() and word.isdigit() and int(word) > 0:
        return int(word)
    raise ParseError(f"{word}: arguments must be process or job IDs")
