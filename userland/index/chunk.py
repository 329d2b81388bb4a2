"""Text -> chunks that remember their lines (what `llmos ask` cites as file:line).

Contract: ``chunks(text, max_chars)`` covers every non-blank line of text exactly once, in order;
each chunk is a run of whole lines (line numbers 1-based, inclusive) of at most max_chars
characters, except that a single longer line is cut into pieces that all carry its number.
Paragraphs (runs of lines between blank lines) are kept together when they fit, and consecutive
small paragraphs share a chunk (with the blank lines between them, so line i of a chunk's text
is line start + i of the file); a chunk never starts or ends on a blank line.

The default size keeps a chunk within the encoder's 256 tokens for ordinary prose and code.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CHARS = 800


@dataclass(frozen=True)
class Chunk:
    start: int         # first line, 1-based
    end: int           # last line, inclusive
    text: str


def chunks(text: str, max_chars: int = MAX_CHARS) -> list[Chunk]:
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    out: list[Chunk] = []
    cur: list[tuple[int, str]] = []          # (line number, line) of the chunk being built
    size = 0

    def flush():
        nonlocal cur, size
        while cur and not cur[-1][1].strip():
            cur.pop()
        if cur:
            out.append(Chunk(cur[0][0], cur[-1][0], "\n".join(line for _, line in cur)))
        cur, size = [], 0

    lines = text.splitlines()
    for para in _paragraphs(lines):
        para_size = sum(len(line) + 1 for _, line in para)
        gap = [(n, lines[n - 1]) for n in range(cur[-1][0] + 1, para[0][0])] if cur else []
        if cur and size + sum(len(line) + 1 for _, line in gap) + para_size > max_chars:
            flush()
        if para_size <= max_chars:
            if cur:                                      # keep the blank lines between them
                cur += gap
                size += sum(len(line) + 1 for _, line in gap)
            cur += para
            size += para_size
            continue
        for n, line in para:                             # a paragraph too big for one chunk
            if len(line) > max_chars:
                flush()
                out += [Chunk(n, n, line[i:i + max_chars]) for i in range(0, len(line), max_chars)]
                continue
            if cur and size + len(line) + 1 > max_chars:
                flush()
            cur.append((n, line))
            size += len(line) + 1
        flush()
    flush()
    return out


def _paragraphs(lines: list[str]) -> list[list[tuple[int, str]]]:
    paras, cur = [], []
    for n, line in enumerate(lines, 1):
        if line.strip():
            cur.append((n, line))
        elif cur:
            paras.append(cur)
            cur = []
    if cur:
        paras.append(cur)
    return paras
