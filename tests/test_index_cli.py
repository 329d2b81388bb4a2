"""`llmos index` and `llmos ask` end to end: a real `llmos serve --daemon` on the tiny Llama with
the tiny generated BERT as its encoder ($LLMOS_EMBED_MODEL), the index in a temporary $LLMOS_HOME.

The tiny encoder's vectors carry no meaning, but identical text gives an identical vector, so a
query equal to a chunk's text must find that chunk first (score 1): the plumbing from files to
chunks, kernel embeddings, the index and back to file:line is checked exactly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import tinybert
from llmos.kernel import abi

DOCS = {
    "notes/alpha.txt": "Alpha notes.\n\nThe first paragraph of alpha talks about rivers and boats.\n"
                       "It has two lines.\n\n" + "\n".join(f"filler line {i} of alpha" for i in range(40)),
    "notes/beta.md": "# Beta\n\nbeta is a short file about mountains\n",
    "gamma.py": "def gamma(x):\n    return x * 2\n\n\nclass Delta:\n    pass\n",
}


BETA = "# Beta\n\nbeta is a short file about mountains"      # notes/beta.md's one chunk, verbatim


def llmos(*args, env, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def world(tiny_model_path, tmp_path_factory):
    """(env, corpus dir) with a daemon running; the index starts empty."""
    base = tmp_path_factory.mktemp("index-cli")
    rt = Path(tempfile.mkdtemp(prefix="llmos-i-"))          # short: AF_UNIX paths are limited
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt), LLMOS_HOME=str(base / "home"), PYTHONUNBUFFERED="1",
               LLMOS_EMBED_MODEL=str(tinybert.build_tiny_bert(base / "tiny-bert")))
    corpus = base / "corpus"
    r = llmos("serve", "--daemon", "--model", str(tiny_model_path), "--kv-blocks", "256", "--block-size", "4",
              "--dtype", "fp32", env=env, cwd=base)
    assert r.returncode == 0, r.stderr
    pid = int(abi.pid_path(rt).read_text())
    yield env, corpus
    llmos("stop", env=env, cwd=base)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    shutil.rmtree(rt, ignore_errors=True)


@pytest.fixture
def corpus(world):
    env, d = world
    shutil.rmtree(d, ignore_errors=True)
    for name, text in DOCS.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    (d / "blob.bin").write_bytes(b"\x00\x01binary")
    (d / ".hidden.txt").write_text("never indexed")
    yield env, d
    llmos("index", "rm", "--all", env=env, cwd=d)


def test_add_ls_and_incremental_updates(corpus):
    env, d = corpus
    r = llmos("index", "add", ".", env=env, cwd=d)
    assert r.returncode == 0, r.stderr
    assert re.match(r"indexed 3 files \(\d+ chunks\), 0 unchanged, 1 skipped .*, 0 removed", r.stdout), r.stdout
    ls = llmos("index", "ls", env=env, cwd=d)
    assert [line.split()[-1] for line in ls.stdout.splitlines()] == ["gamma.py", "notes/alpha.txt", "notes/beta.md"]
    assert "gamma.py" in llmos("index", "ls", "gamma.py", env=env, cwd=d).stdout
    again = llmos("index", "add", ".", env=env, cwd=d)
    assert "indexed 0 files (0 chunks), 3 unchanged" in again.stdout
    (d / "notes/beta.md").write_text("# Beta\n\nbeta now talks about valleys\n")
    (d / "gamma.py").unlink()
    changed = llmos("index", "add", "notes", ".", env=env, cwd=d)
    assert "indexed 1 files (1 chunks), 1 unchanged" in changed.stdout and "1 removed" in changed.stdout
    assert [line.split()[-1] for line in llmos("index", "ls", env=env, cwd=d).stdout.splitlines()] \
        == ["notes/alpha.txt", "notes/beta.md"]


def test_search_finds_a_chunk_by_its_own_text_at_its_lines(corpus):
    env, d = corpus
    llmos("index", "add", ".", env=env, cwd=d)
    para = "Alpha notes.\n\nThe first paragraph of alpha talks about rivers and boats.\nIt has two lines."
    r = llmos("index", "search", "-k", "3", para, env=env, cwd=d)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0].split()
    assert first[0] == "1.000" and first[1] == "notes/alpha.txt:1-4", r.stdout
    assert len(r.stdout.splitlines()) == 3
    r = llmos("index", "search", BETA, env=env, cwd=d)
    assert r.stdout.split()[1] == "notes/beta.md:1-3"


def test_a_missing_path_is_reported_and_the_rest_indexed(corpus):
    env, d = corpus
    r = llmos("index", "add", "nope.txt", "gamma.py", env=env, cwd=d)
    assert r.returncode == 1 and "nope.txt: No such file or directory" in r.stderr
    assert "indexed 1 files" in r.stdout


def test_rm(corpus):
    env, d = corpus
    llmos("index", "add", ".", env=env, cwd=d)
    r = llmos("index", "rm", "notes", env=env, cwd=d)
    assert r.returncode == 0 and r.stdout.strip() == "removed 2 files"
    r = llmos("index", "rm", "notes", env=env, cwd=d)
    assert r.returncode == 1 and "notes: not in the index" in r.stderr
    assert llmos("index", "rm", env=env, cwd=d).returncode == 2
    assert llmos("index", "rm", "--all", env=env, cwd=d).stdout.strip() == "removed 1 files"


def test_ask_streams_an_answer_and_cites_the_retrieved_chunks(corpus):
    env, d = corpus
    llmos("index", "add", ".", env=env, cwd=d)
    r = llmos("ask", "-k", "2", "--max-tokens", "8", BETA, env=env, cwd=d)
    assert r.returncode == 0, r.stderr
    answer, sources = r.stdout.split("\nSources:\n")
    lines = sources.splitlines()
    assert len(lines) == 2 and lines[0].split()[:2] == ["[1]", "notes/beta.md:1-3"], r.stdout


def test_ask_and_search_without_an_index(world, tmp_path):
    env, _ = world
    fresh = dict(env, LLMOS_HOME=str(tmp_path / "empty-home"))
    for args in (("ask", "anything?"), ("index", "search", "x"), ("index", "ls")):
        r = llmos(*args, env=fresh, cwd=tmp_path)
        assert r.returncode == 1 and "no index at" in r.stderr and "llmos index add" in r.stderr, args
    llmos("index", "add", str(tmp_path / "nothing-here"), env=fresh, cwd=tmp_path)   # creates an empty index
    r = llmos("ask", "anything?", env=fresh, cwd=tmp_path)
    assert r.returncode == 1 and "the index is empty" in r.stderr


def test_citations_are_rewritten_while_streaming():
    from llmos.userland.bin.ask import Citations
    from llmos.userland.index.store import Hit
    c = Citations([Hit(0.9, os.path.abspath("a.txt"), 3, 5, "x"), Hit(0.8, "/elsewhere/b.md", 10, 12, "y")])
    pieces = ["Rivers [", "1] flow", "; see [2", "] and [3] and [", "x] [1"]
    out = "".join(c.feed(p) for p in pieces) + c.flush()
    assert out == "Rivers [a.txt:3] flow; see [/elsewhere/b.md:10] and [3] and [x] [1"


def test_main_writes_to_the_io_it_is_given(corpus, monkeypatch):
    """How the shell runs them: main(argv, io) with io.out / io.err, in the shell's process."""
    import io as _io
    from types import SimpleNamespace

    from llmos.userland.bin import ask as ask_cmd, index as index_cmd
    env, d = corpus
    llmos("index", "add", ".", env=env, cwd=d)
    for key in ("LLMOS_RUNTIME_DIR", "LLMOS_HOME", "LLMOS_EMBED_MODEL"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(d)

    def io():
        return SimpleNamespace(out=_io.StringIO(), err=_io.StringIO())
    a, b, c = io(), io(), io()
    assert index_cmd.main(["index", "search", "-k", "1", BETA], a) == 0
    assert a.out.getvalue().split()[1] == "notes/beta.md:1-3" and not a.err.getvalue()
    assert index_cmd.main(["index", "rm", "nope"], b) == 1 and "nope: not in the index" in b.err.getvalue()
    assert ask_cmd.main(["ask", "-k", "1", "--max-tokens", "4", BETA], c) == 0
    assert "\nSources:\n  [1] notes/beta.md:1-3" in c.out.getvalue()
