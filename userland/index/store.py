"""The retrieval index: files, their chunks and the chunks' vectors, kept in $LLMOS_HOME/index.

Layout
    index.db            sqlite (stdlib): files(path, sha256, ...), chunks(file, lines, text,
                        vector as float32 bytes), meta(dim, generation). The source of truth.
    vectors-<gen>.faiss the faiss search structure for generation <gen> of index.db: an exact
                        inner-product index (IndexFlatIP, ids = chunk ids; vectors are unit length,
                        so inner product = cosine). Derived: rebuilt from index.db when missing
                        (a crash between the two writes loses nothing).
    lock                writers (add, rm) hold an exclusive flock for their whole run, so two
                        `llmos index add` never build a generation from different states.

Why faiss (measured on this 2-core AVX2 box, 384-d unit vectors, one query at a time): an exact
flat index answers in 1.6 ms at 10k chunks and 10 ms at 100k; sqlite-vec's vec0 took 5.8 / 52 ms
and cannot load at all into a Python built without sqlite extension loading (this one);
hnswlib ships no wheel (a compiler at install time), and HNSW insertion took 80 s for 100k
vectors - far more than its faster queries save at the size of a personal corpus.

Contract: every write (replace_file, remove, clear) is one sqlite transaction, mirrored in the
writer's in-memory faiss index; the writer saves that as vectors-<gen>.faiss when it closes
(flush). search(vector, k) returns at most k hits, best first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chunk import Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, lines INTEGER NOT NULL, indexed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, file INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file);
"""


def default_dir() -> Path:
    """$LLMOS_HOME/index ($LLMOS_HOME defaults to ~/.cache/llmos, as the model cache does)."""
    return Path(os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos") / "index"


@dataclass(frozen=True)
class Hit:
    score: float       # cosine similarity to the query
    path: str
    start: int         # first line, 1-based
    end: int
    text: str


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int
    lines: int
    chunks: int
    indexed: float     # time.time() of the last (re)indexing


class Index:
    """An open index. Use as a context manager; writable=True takes the writers' lock."""

    def __init__(self, directory: str | Path | None = None, *, writable: bool = False):
        self.dir = Path(directory) if directory is not None else default_dir()
        self.writable = writable
        self._lock = None
        if writable:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.dir / "lock", "a")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        elif not (self.dir / "index.db").is_file():
            raise FileNotFoundError(2, f"no index at {self.dir} (build one with: llmos index add PATH)")
        self.db = sqlite3.connect(self.dir / "index.db", isolation_level=None)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.executescript(SCHEMA)
        self._faiss = None                # [generation, faiss index] once loaded
        self._dirty = False               # the in-memory index is newer than its file

    # ---- reading ----------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        return int(row[0]) if row else None

    @property
    def generation(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def files(self, under: str | None = None) -> list[FileEntry]:
        """Indexed files sorted by path (only those at or below `under` when given)."""
        rows = self.db.execute(
            "SELECT path, sha256, size, lines, (SELECT count(*) FROM chunks WHERE file = files.id), indexed "
            "FROM files ORDER BY path").fetchall()
        entries = [FileEntry(*r) for r in rows]
        return [e for e in entries if under is None or _below(e.path, under)]

    def sha256(self, path: str) -> str | None:
        row = self.db.execute("SELECT sha256 FROM files WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def search(self, vector, k: int = 5) -> list[Hit]:
        """The k chunks most similar to vector (a unit vector of the index's dimension)."""
        if self.dim is None:
            return []
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has dimension {q.shape[1]}, the index {self.dim}")
        index = self._search_index()
        if index.ntotal == 0:
            return []
        scores, ids = index.search(q, min(k, index.ntotal))
        hits = []
        for score, cid in zip(scores[0], ids[0]):
            row = self.db.execute("SELECT f.path, c.start, c.end, c.text FROM chunks c JOIN files f "
                                  "ON f.id = c.file WHERE c.id = ?", (int(cid),)).fetchone()
            if row is not None:
                hits.append(Hit(float(score), *row))
        return hits

    # ---- writing ----------------------------------------------------------------------------
    def replace_file(self, path: str, sha256: str, size: int, lines: int, chunks: list[Chunk],
                     vectors) -> None:
        """Put path's chunks and vectors in place of whatever the index held for it."""
        dim = self.dim
        vecs = np.asarray(vectors, dtype=np.float32).reshape(len(chunks), -1 if chunks else dim or 1)
        if chunks and dim is not None and vecs.shape[1] != dim:
            raise ValueError(f"vectors of dimension {vecs.shape[1]} for an index of dimension {dim} "
                             f"(the kernel's encoder changed? start afresh: llmos index rm --all)")
        with self._transaction() as index:
            if chunks and dim is None:
                self._set("dim", vecs.shape[1])
                index = self._faiss[1] = self._build()
            index.remove_ids(self._chunk_ids(path))
            self.db.execute("DELETE FROM files WHERE path = ?", (path,))
            fid = self.db.execute("INSERT INTO files (path, sha256, size, lines, indexed) VALUES (?, ?, ?, ?, ?)",
                                  (path, sha256, size, lines, time.time())).lastrowid
            ids = [self.db.execute("INSERT INTO chunks (file, start, end, text, vector) VALUES (?, ?, ?, ?, ?)",
                                   (fid, c.start, c.end, c.text, v.tobytes())).lastrowid
                   for c, v in zip(chunks, vecs)]
            if ids:
                index.add_with_ids(vecs, np.asarray(ids, dtype=np.int64))

    def remove(self, paths: list[str]) -> int:
        """Forget these files; returns how many the index held."""
        n = 0
        with self._transaction() as index:
            for p in paths:
                index.remove_ids(self._chunk_ids(p))
                n += self.db.execute("DELETE FROM files WHERE path = ?", (p,)).rowcount
        return n

    def clear(self) -> int:
        """Forget every file (and the dimension); returns how many there were."""
        with self._transaction():
            self.db.execute("DELETE FROM meta WHERE key = 'dim'")
            n = self.db.execute("DELETE FROM files").rowcount
            self._faiss[1] = self._build()
        return n

    def flush(self) -> None:
        """Write vectors-<generation>.faiss (and drop older ones) if this writer changed anything."""
        import faiss
        if not self._dirty:
            return
        index, gen = self._search_index(), self.generation
        path = self._faiss_path(gen)
        tmp = path.with_suffix(".tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        for old in self.dir.glob("vectors-*.faiss"):
            if old != path:
                old.unlink(missing_ok=True)
        self._dirty = False

    # ---- internals ----------------------------------------------------------------------------
    def _chunk_ids(self, path: str) -> np.ndarray:
        rows = self.db.execute("SELECT c.id FROM chunks c JOIN files f ON f.id = c.file WHERE f.path = ?",
                               (path,)).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def _set(self, key: str, value) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value = excluded.value", (key, str(value)))

    @contextlib.contextmanager
    def _transaction(self):
        """One sqlite transaction, with the in-memory faiss index kept in step (yielded)."""
        if not self.writable:
            raise PermissionError(1, "the index was opened read-only")
        self._search_index()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self._faiss[1]
            self._set("generation", self.generation + 1)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._faiss = None            # the in-memory index may be half changed: rebuild it
            raise
        self._faiss = [self.generation, self._faiss[1]]
        self._dirty = True

    def _faiss_path(self, gen: int) -> Path:
        return self.dir / f"vectors-{gen}.faiss"

    def _search_index(self):
        """The faiss index of the current generation: in memory, from its file, or rebuilt."""
        import faiss
        gen = self.generation
        if self._faiss is not None and self._faiss[0] == gen:
            return self._faiss[1]
        try:
            index = faiss.read_index(str(self._faiss_path(gen)))
        except RuntimeError:              # missing (a writer died before flush) or unreadable
            index = self._build()
            self._dirty = self.writable
        self._faiss = [gen, index]
        return index

    def _build(self):
        import faiss
        dim = self.dim or 1
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        rows = self.db.execute("SELECT id, vector FROM chunks").fetchall()
        if rows:
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            index.add_with_ids(vecs, ids)
        return index

    def close(self) -> None:
        if self.writable and self.db is not None:
            self.flush()
        self.db.close()
        if self._lock is not None:
            self._lock.close()          # releases the flock
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _below(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
