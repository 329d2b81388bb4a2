"""`llmos index add PATH... | ls [PATH] | rm PATH... | rm --all | search [-k N] "query"`

The retrieval index in $LLMOS_HOME/index (userland/index/store.py). `add` walks files and
directories (skipping hidden entries, binary files and files over 10 MB), cuts each text file into
chunks that remember their lines (userland/index/chunk.py), embeds the chunks with the kernel's
embed syscall and stores them. It is incremental: a file whose content hash is unchanged is
skipped, a changed one is re-chunked, and indexed files under an added directory that are gone from
disk are dropped. A progress bar (on a terminal) counts the chunks embedded.
Exit status: 0 on success, 1 when a path is missing or a call fails, 2 on bad usage.
`main(argv, io)` also runs inside the shell: io (userland/program.py's IO, or anything with
`out` and `err` that have write()) takes the output instead of stdout / stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from llmos.kernel import abi
from llmos.userland import lib
from llmos.userland.index.chunk import MAX_CHARS, chunks
from llmos.userland.index.store import Index

MAX_FILE_BYTES = 10 << 20
EMBED_TIMEOUT_S = abi.MAX_PARK_S + 10     # an embed call may take the kernel's whole park time
SKIP_DIRS = {"__pycache__", "node_modules"}


SUMMARY = "the retrieval index: add, ls, rm, search"


def parser(name: str = "index") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"llmos {name}", description="the retrieval index for llmos ask")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="index files and directories (incremental)")
    add.add_argument("paths", nargs="+")
    add.add_argument("--max-chars", type=int, default=MAX_CHARS, help=f"chunk size (default {MAX_CHARS})")
    ls = sub.add_parser("ls", help="list indexed files")
    ls.add_argument("path", nargs="?")
    rm = sub.add_parser("rm", help="forget files (a directory: everything under it)")
    rm.add_argument("paths", nargs="*")
    rm.add_argument("--all", action="store_true", help="forget everything")
    search = sub.add_parser("search", help="the chunks most similar to a query")
    search.add_argument("query", nargs="+")
    search.add_argument("-k", type=int, default=5, help="how many (default 5)")
    return ap


def main(argv: list[str], io=None) -> int:
    out, err = (io.out, io.err) if io is not None else (sys.stdout, sys.stderr)
    ap = parser(argv[0])
    try:
        args = ap.parse_args(argv[1:])
        if args.cmd == "add" and not 64 <= args.max_chars <= abi.MAX_EMBED_CHARS:
            ap.error(f"--max-chars must be in [64, {abi.MAX_EMBED_CHARS}]")
        if args.cmd == "rm" and bool(args.paths) == args.all:
            ap.error("give PATH... or --all")
        if args.cmd == "search" and not 1 <= args.k <= 100:
            ap.error("-k must be in [1, 100]")
    except SystemExit as e:                     # argparse has printed the usage or the help
        return int(e.code or 0)
    try:
        if args.cmd == "add":
            return add_paths(args.paths, args.max_chars, out, err)
        if args.cmd == "ls":
            return list_files(args.path, out)
        if args.cmd == "rm":
            return remove(args.paths, args.all, out, err)
        return search_index(" ".join(args.query), args.k, out)
    except (OSError, ValueError) as e:
        err.write(f"llmos index: {getattr(e, 'strerror', None) or e}\n")
        return 1


def shown(path: str) -> str:
    """A stored (absolute) path as the user reads it: relative when below the current directory."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ---- add ---------------------------------------------------------------------------------

def walk(root: Path):
    """Files under root (root itself when a file), sorted; hidden entries are skipped."""
    if not root.is_dir():
        yield root
        return
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x not in SKIP_DIRS)
        for f in sorted(files):
            if not f.startswith("."):
                yield Path(d) / f


def read_text(path: Path) -> tuple[bytes, str] | None:
    """(bytes, text) of a UTF-8 text file; None for binary, unreadable or huge files."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
        return (data, data.decode("utf-8")) if b"\0" not in data[:8192] else None
    except (OSError, UnicodeDecodeError):
        return None


def add_paths(paths: list[str], max_chars: int, out, err) -> int:
    missing = [p for p in paths if not os.path.exists(p)]
    for p in missing:
        err.write(f"llmos index: {p}: No such file or directory\n")
    roots = [Path(p).resolve() for p in paths if p not in missing]
    with lib.Client(client="llmos-index", call_timeout=EMBED_TIMEOUT_S) as k, Index(writable=True) as ix:
        todo, seen, unchanged, skipped = [], set(), 0, 0
        for root in roots:
            for f in walk(root):
                path = str(f)
                if path in seen:
                    continue
                seen.add(path)
                got = read_text(f)
                if got is None:
                    skipped += 1
                    continue
                data, text = got
                digest = hashlib.sha256(data).hexdigest()
                if ix.sha256(path) == digest:
                    unchanged += 1
                    continue
                todo.append((path, digest, len(data), text.count("\n") + 1, chunks(text, max_chars)))
        gone = [e.path for r in roots if r.is_dir() for e in ix.files(str(r))
                if e.path not in seen and not os.path.exists(e.path)]
        ix.remove(gone)
        n_chunks = embed_and_store(k, ix, todo)
    out.write(f"indexed {len(todo)} files ({n_chunks} chunks), {unchanged} unchanged, {skipped} skipped "
              f"(binary or too large), {len(gone)} removed\n")
    return 1 if missing else 0


def embed_and_store(k: lib.Client, ix: Index, todo: list) -> int:
    """Embed every chunk of the files in todo (batches span files) and store each file once
    all its chunks have vectors. Returns the number of chunks."""
    queue = [(i, c) for i, (*_, cs) in enumerate(todo) for c in cs]
    vectors: dict[int, list] = {i: [] for i in range(len(todo))}
    stored = 0

    def store_ready(upto: int) -> None:        # files whose chunks all lie before queue[upto]
        nonlocal stored
        last = queue[upto][0] if upto < len(queue) else len(todo)
        while stored < last:
            path, digest, size, lines, cs = todo[stored]
            ix.replace_file(path, digest, size, lines, cs, vectors.pop(stored))
            stored += 1

    with _progress(len(queue)) as advance:
        for s in range(0, len(queue), abi.MAX_EMBED_TEXTS):
            batch = queue[s:s + abi.MAX_EMBED_TEXTS]
            for (i, _), v in zip(batch, k.embed([c.text for _, c in batch])):
                vectors[i].append(v)
            advance(len(batch))
            store_ready(s + len(batch))
    store_ready(len(queue))
    return len(queue)


class _progress:
    """A rich progress bar over chunks on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __enter__(self):
        if sys.stderr.isatty() and self.total:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.bar = Progress("embedding", BarColumn(), MofNCompleteColumn(), "chunks",
                                TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            task = self.bar.add_task("embed", total=self.total)
            return lambda n: self.bar.advance(task, n)
        return lambda n: None

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


# ---- ls, rm, search ------------------------------------------------------------------------

def list_files(path: str | None, out) -> int:
    with Index() as ix:
        entries = ix.files(str(Path(path).resolve()) if path else None)
    for e in entries:
        out.write(f"{e.chunks:6d} chunks {e.lines:7d} lines {e.size:10d} bytes  {shown(e.path)}\n")
    return 0


def remove(paths: list[str], everything: bool, out, err) -> int:
    with Index(writable=True) as ix:
        if everything:
            out.write(f"removed {ix.clear()} files\n")
            return 0
        status, targets = 0, []
        for p in paths:
            under = [e.path for e in ix.files(str(Path(p).resolve()))]
            if not under:
                err.write(f"llmos index: {p}: not in the index\n")
                status = 1
            targets += under
        out.write(f"removed {ix.remove(targets)} files\n")
    return status


def search_index(query: str, k: int, out) -> int:
    with Index() as ix, lib.Client(client="llmos-index", call_timeout=EMBED_TIMEOUT_S) as kern:
        hits = ix.search(kern.embed([query])[0], k)
    for h in hits:
        first = h.text.strip().splitlines()[0] if h.text.strip() else ""
        out.write(f"{h.score:.3f}  {shown(h.path)}:{h.start}-{h.end}  {first[:80]}\n")
    return 0
