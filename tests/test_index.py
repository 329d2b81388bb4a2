"""userland/index: the chunker (line numbers, sizes, coverage) and the store (sqlite + faiss:
replace, remove, search, persistence, a lost .faiss file, bad use). No kernel: vectors here are
random unit vectors, so the expected neighbours are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from llmos.userland.index.chunk import chunks
from llmos.userland.index.store import Index

# ---- chunker -----------------------------------------------------------------------------------

lines_st = st.lists(st.one_of(st.just(""), st.just("   "), st.text(st.characters(blacklist_categories=("Cs",),
                                                                           blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                                                                   min_size=1, max_size=120)),
                    max_size=60)


@settings(max_examples=200, deadline=None)
@given(lines=lines_st, max_chars=st.integers(1, 300))
def test_chunks_cover_every_nonblank_line_once_with_its_number(lines, max_chars):
    text = "\n".join(lines)
    cs = chunks(text, max_chars)
    file_lines = text.splitlines()
    seen = []
    for c in cs:
        assert 1 <= c.start <= c.end <= len(file_lines)
        body = c.text.split("\n")
        if c.start == c.end and len(file_lines[c.start - 1]) > max_chars:     # a long line's piece
            assert len(c.text) <= max_chars and c.text in file_lines[c.start - 1]
            seen.append(c.start)
            continue
        assert body == file_lines[c.start - 1:c.end], "line i of a chunk is line start+i of the file"
        assert len(c.text) <= max_chars
        assert body[0].strip() and body[-1].strip()
        seen += [c.start + i for i, line in enumerate(body) if line.strip()]
    want = [n for n, line in enumerate(file_lines, 1) if line.strip()]
    assert sorted(set(seen)) == want
    assert seen == sorted(seen)


def test_paragraphs_stay_together_and_small_ones_share_a_chunk():
    text = "alpha one\nalpha two\n\nbeta\n\n\ngamma gamma gamma\ngamma"
    assert [(c.start, c.end) for c in chunks(text, 30)] == [(1, 4), (7, 8)]
    assert [(c.start, c.end) for c in chunks(text, 1000)] == [(1, 8)]
    assert [(c.start, c.end) for c in chunks(text, 12)] == [(1, 1), (2, 2), (4, 4), (7, 7), (7, 7), (8, 8)]


def test_a_long_line_is_cut_into_pieces_carrying_its_number():
    cs = chunks("short\n" + "x" * 25 + "\nend", 10)
    assert [(c.start, c.end, len(c.text)) for c in cs] == [(1, 1, 5), (2, 2, 10), (2, 2, 10), (2, 2, 5), (3, 3, 3)]


def test_empty_and_blank_text_have_no_chunks():
    assert chunks("") == [] and chunks("\n \n\t\n") == []
    with pytest.raises(ValueError):
        chunks("x", 0)


# ---- store ---------------------------------------------------------------------------------------

def unit(rng, n, dim=16):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def fill(ix, rng, path, n=4):
    cs = chunks("\n\n".join(f"{path} paragraph {i}" for i in range(n)), 20)
    v = unit(rng, len(cs))
    ix.replace_file(path, "sha-" + path, 100, 2 * n - 1, cs, v)
    return cs, v


def test_search_finds_each_chunk_by_its_own_vector(tmp_path, rng):
    with Index(tmp_path, writable=True) as ix:
        data = {p: fill(ix, rng, p) for p in ("/d/a.txt", "/d/b.txt", "/e/c.txt")}
        for path, (cs, v) in data.items():
            for c, vec in zip(cs, v):
                top = ix.search(vec, 3)
                assert (top[0].path, top[0].start, top[0].text) == (path, c.start, c.text)
                assert top[0].score == pytest.approx(1.0, abs=1e-5)
                assert top[0].score >= top[1].score >= top[2].score
        assert [e.path for e in ix.files()] == ["/d/a.txt", "/d/b.txt", "/e/c.txt"]
        assert [e.path for e in ix.files("/d")] == ["/d/a.txt", "/d/b.txt"]
        assert ix.files("/d/a.txt")[0].chunks == 4 and ix.sha256("/d/b.txt") == "sha-/d/b.txt"


def test_replace_and_remove_leave_no_stale_chunks(tmp_path, rng):
    with Index(tmp_path, writable=True) as ix:
        old_cs, old_v = fill(ix, rng, "/a")
        _, b_v = fill(ix, rng, "/b")
        new_cs, new_v = fill(ix, rng, "/a", n=2)
        assert all(h.path != "/a" or h.text in {c.text for c in new_cs} for h in ix.search(old_v[3], 10))
        assert len(ix.search(old_v[0], 100)) == 6
        assert all(len(ix.search(v, 6)) == 6 for v in old_v)     # no stale vector takes a place
        assert ix.remove(["/b", "/nope"]) == 1
        assert {h.path for h in ix.search(new_v[0], 100)} == {"/a"}
        assert len(ix.search(b_v[0], 2)) == 2
        assert ix.clear() == 1 and ix.search(new_v[0]) == [] and ix.dim is None


def test_the_index_persists_and_a_lost_faiss_file_is_rebuilt(tmp_path, rng):
    with Index(tmp_path, writable=True) as ix:
        cs, v = fill(ix, rng, "/a")
        gen = ix.generation
    assert (tmp_path / f"vectors-{gen}.faiss").is_file()
    assert len(list(tmp_path.glob("vectors-*.faiss"))) == 1
    with Index(tmp_path) as ix:
        assert ix.search(v[2], 1)[0].start == cs[2].start
    (tmp_path / f"vectors-{gen}.faiss").unlink()             # a writer died before its flush
    with Index(tmp_path) as ix:
        assert ix.search(v[2], 1)[0].start == cs[2].start
    with Index(tmp_path, writable=True) as ix:                # a writer rebuilds and saves it
        assert ix.search(v[1], 1)[0].start == cs[1].start
    assert (tmp_path / f"vectors-{gen}.faiss").is_file()


def test_a_failed_write_rolls_back_both_stores(tmp_path, rng):
    with Index(tmp_path, writable=True) as ix:
        cs, v = fill(ix, rng, "/a")
        with pytest.raises(ValueError, match="dimension 8 for an index of dimension 16"):
            ix.replace_file("/a", "x", 1, 1, cs[:1], unit(rng, 1, dim=8))
        with pytest.raises(Exception):
            ix.replace_file("/a", None, 1, 1, cs[:1], v[:1])          # NOT NULL sha256
        assert ix.sha256("/a") == "sha-/a"
        assert ix.search(v[0], 1)[0].text == cs[0].text and len(ix.search(v[0], 100)) == 4


def test_reading_a_missing_index_and_writing_a_read_only_one(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="llmos index add"):
        Index(tmp_path / "none")
    with Index(tmp_path, writable=True) as ix:
        fill(ix, rng, "/a")
    with Index(tmp_path) as ix:
        with pytest.raises(PermissionError):
            ix.remove(["/a"])
        with pytest.raises(ValueError, match="dimension"):
            ix.search(np.ones(3), 1)
