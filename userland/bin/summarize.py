"""`summarize [--chunk-chars N] [--max-tokens N] FILE|-`: summarise a document by map-reduce
over forks: one process holds the instructions (its prompt left open, prefilled once), a fork of
it per chunk gets that chunk (the instructions' KV shared copy-on-write; all chunks summarised
together in the kernel's batch), and one more process joins the partial summaries.
"""

from __future__ import annotations

import sys

from llmos.kernel.abi import Sys
from llmos.userland import program

SUMMARY = "summarise a file (map-reduce over forked processes)"
MAP = "Summarize this part of a document in two sentences.\n\n"
REDUCE = "Combine these partial summaries of one document into one short summary:\n\n"


def parser(prog: str = "summarize") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("--chunk-chars", type=int, default=2000, help="characters per chunk (default 2000)")
    p.add_argument("--max-tokens", type=int, default=120, help="tokens per partial summary (default 120)")
    p.add_argument("file", help="the file to summarise (- for stdin)")
    return p


def pieces(text: str, size: int) -> list[str]:
    """Paragraphs packed into chunks of at most ~size characters (a long paragraph is cut)."""
    out, cur = [], ""
    for para in (p.strip() for p in text.split("\n\n")):
        while len(para) > size:
            out, para = out + ([cur] if cur else []) + [para[:size]], para[size:]
            cur = ""
        if para and len(cur) + len(para) + 2 > size:
            out, cur = out + [cur], ""
        cur = f"{cur}\n\n{para}" if cur and para else (cur or para)
    return out + ([cur] if cur else [])


def forked_answers(io: program.IO, instructions: str, inputs: list[str], max_tokens: int, name: str) -> list[str] | None:
    """The map step shared with translate: a held-open prompt, a fork of it per input
    (userland/agent/forks.py), answers in order; None (each failure said on stderr) if any failed."""
    from llmos.userland.agent.forks import fork_join
    k = io.client
    parent = k.syscall(Sys.SPAWN, [{"role": "user", "content": instructions}],
                       {"max_tokens": max_tokens, "temperature": 0}, {"stdin": True, "command": name})
    try:
        branches = fork_join(k, parent, inputs)
    finally:
        k.kill(parent, "KILL")
        k.wait(parent)
    for i, b in enumerate(branches, 1):
        if not b.ok:
            io.error(f"part {i} of {len(branches)}: {b.text}")
    return None if not all(b.ok for b in branches) else [b.text.strip() for b in branches]


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos summarize")
    return program.run(argv, io, parser(io.prog), _summarize)


def _summarize(args, io: program.IO) -> int:
    if args.chunk_chars < 200:
        raise program.UsageError("--chunk-chars must be at least 200")
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8", errors="replace").read()
    except OSError as e:
        io.error(f"{args.file}: {e.strerror}")
        return 1
    chunks = pieces(text, args.chunk_chars)
    if not chunks:
        io.error(f"{args.file}: nothing to summarise")
        return 1
    parts = forked_answers(io, MAP, chunks, args.max_tokens, f"summarize {args.file}"[:40])
    if parts is None:
        return 1
    if len(parts) == 1:
        io.write(parts[0] + "\n")
        return 0
    k = io.client
    pid = k.spawn([{"role": "user", "content": REDUCE + "\n\n".join(parts)}],
                  {"max_tokens": args.max_tokens * 2, "temperature": 0})
    for piece in k.stream(pid):
        io.write(piece)
    io.write("\n")
    k.wait(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
