"""`llmos ask [-k N] [--max-tokens N] [--temperature T] [--seed S] "question"`

Answers a question from the retrieval index (`llmos index add` builds it): the question is
embedded by the kernel (embed syscall), the k most similar chunks are retrieved, and a generation
is spawned in the kernel with them as numbered sources. Its answer streams to stdout with every
citation [n] it makes rewritten to [file:line]; a "Sources:" list (file:first-last line and a
similarity score for each chunk given to the model) follows.
Ctrl-C sends SIGINT to the process, a second one SIGKILL. Exit status: 0 when answered, 1 on an
error (no index, no kernel, embedding model not pulled), 2 on bad usage, 130 after SIGINT.
`main(argv, io)` also runs inside the shell: io (userland/program.py's IO, or anything with
`out` and `err` that have write()) takes the output instead of stdout / stderr.
"""

from __future__ import annotations

import argparse
import re
import sys

from llmos.kernel import abi
from llmos.userland import lib
from llmos.userland.bin.index import EMBED_TIMEOUT_S, shown
from llmos.userland.index.store import Hit, Index

SYSTEM = ("Answer the question using only the numbered sources. Cite the source of each fact with "
          "its number in brackets, like [1]. If the sources do not contain the answer, say so.")
CITATION = re.compile(r"\[(\d{1,3})\]")


def prompt(question: str, hits: list[Hit]) -> list[dict]:
    """The chat messages: the system rule, then the sources and the question."""
    sources = "\n\n".join(f"[{i}] {shown(h.path)}:{h.start}\n{h.text}" for i, h in enumerate(hits, 1))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"}]


class Citations:
    """Streaming rewrite of [n] into [file:line]; text after an unclosed '[' waits for more."""

    def __init__(self, hits: list[Hit]):
        self.labels = {str(i): f"{shown(h.path)}:{h.start}" for i, h in enumerate(hits, 1)}
        self.held = ""

    def feed(self, text: str) -> str:
        text, self.held = self.held + text, ""
        cut = text.rfind("[")
        if cut >= 0 and "]" not in text[cut:] and len(text) - cut <= 4:
            text, self.held = text[:cut], text[cut:]
        return CITATION.sub(lambda m: f"[{self.labels.get(m.group(1), m.group(1))}]", text)

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


SUMMARY = "answer a question from the index, citing file:line"


def parser(name: str = "ask") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"llmos {name}", description="answer a question from the retrieval index")
    ap.add_argument("question", nargs="*", help="the question (default: read stdin)")
    ap.add_argument("-k", type=int, default=4, help="how many chunks to give the model (default 4)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--seed", type=int)
    return ap


def main(argv: list[str], io=None) -> int:
    out, err = (io.out, io.err) if io is not None else (sys.stdout, sys.stderr)
    ap = parser(argv[0])
    try:
        args = ap.parse_args(argv[1:])
        question = " ".join(args.question) if args.question else \
            (sys.stdin.read() if io is None and not sys.stdin.isatty() else "")
        question = " ".join(question.split())
        if not question:
            ap.error("no question given")
        if not 1 <= args.k <= 20:
            ap.error("-k must be in [1, 20]")
    except SystemExit as e:                     # argparse has printed the usage or the help
        return int(e.code or 0)
    params = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.seed is not None:
        params["seed"] = args.seed
    try:
        with Index() as ix, lib.Client(client="llmos-ask", call_timeout=EMBED_TIMEOUT_S) as k:
            hits = ix.search(k.embed([question])[0], args.k)
            if not hits:
                err.write("llmos ask: the index is empty (add files with: llmos index add PATH)\n")
                return 1
            pid = k.spawn(prompt(question, hits), params, command="ask " + question[:40])
            status = _stream(k, pid, Citations(hits), out)
    except (OSError, ValueError) as e:
        err.write(f"llmos ask: {getattr(e, 'strerror', None) or e}\n")
        return 1
    out.write("\nSources:\n" + "".join(f"  [{i}] {shown(h.path)}:{h.start}-{h.end}  ({h.score:.2f})\n"
                                      for i, h in enumerate(hits, 1)))
    if status["reason"] == "error":
        err.write(f"llmos ask: process {pid} failed: {status['message']}\n")
        return 1
    return 128 + status["signal"] if status["reason"] == "signal" and status["signal"] else 0


def _stream(k: lib.Client, pid: int, cite: Citations, out) -> dict:
    """Print pid's answer with citations rewritten until it exits; Ctrl-C → SIGINT, twice → SIGKILL."""
    interrupts = 0
    while True:
        try:
            for text in k.stream(pid):
                out.write(cite.feed(text))
                if hasattr(out, "flush"):
                    out.flush()
            status = k.wait(pid)
            break
        except KeyboardInterrupt:
            interrupts += 1
            k.kill(pid, abi.SIGINT if interrupts == 1 else abi.SIGKILL)
    out.write(cite.flush() + "\n")
    return status
