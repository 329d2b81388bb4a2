"""`translate [--to LANG] TEXT... | -f FILE`: translate paragraph by paragraph, all at once: one
process holds the instructions (prefilled once), a fork of it per paragraph translates that
paragraph, and the translations are printed in order.
"""

from __future__ import annotations

import sys

from llmos.userland import program
from llmos.userland.bin.summarize import forked_answers

SUMMARY = "translate text (a forked process per paragraph)"


def parser(prog: str = "translate") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("--to", default="French", help="the language to translate into (default French)")
    p.add_argument("-f", "--file", help="translate this file (- for stdin) instead of TEXT")
    p.add_argument("--max-tokens", type=int, default=200, help="tokens per paragraph (default 200)")
    p.add_argument("text", nargs="*")
    return p


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos translate")
    return program.run(argv, io, parser(io.prog), _translate)


def _translate(args, io: program.IO) -> int:
    if args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8", errors="replace").read()
        except OSError as e:
            io.error(f"{args.file}: {e.strerror}")
            return 1
    else:
        text = " ".join(args.text)
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise program.UsageError("nothing to translate")
    instructions = f"Translate the following text into {args.to}. Reply with the translation only.\n\n"
    parts = forked_answers(io, instructions, paragraphs, args.max_tokens, f"translate {args.to}")
    if parts is None:
        return 1
    io.write("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
