"""The embed syscall (19) over a real ZeroMQ socket (test_server's ServerThread): the kernel's
encoder service on the tiny generated BERT, bad input, a missing or corrupt model, and a slow
check with the real MiniLM that the event loop keeps answering while the encoder runs."""

from __future__ import annotations

import errno
import shutil
import threading
import time

import numpy as np
import pytest

import tinybert
from llmos.drivers.bert import Encoder, EncoderService
from llmos.kernel import abi
from llmos.kernel.abi import Sys
from llmos.userland import lib
from test_server import ServerThread

TEXTS = ["hello world", "the kernel process memory", "", "a little cat " * 40]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return tinybert.build_tiny_bert(tmp_path_factory.mktemp("tinybert") / "tiny-bert")


@pytest.fixture
def srv(tiny_bert):
    with ServerThread() as s:
        s.kernel.embedder = EncoderService(tiny_bert)
        yield s
        s.kernel.embedder.close()


@pytest.fixture
def k(srv):
    with lib.Client(client="test-embed") as c:
        yield c


def test_embed_is_syscall_19():
    assert Sys.EMBED == 19 and lib.Client.embed.__doc__


def test_embed_returns_the_encoders_unit_vectors(k, tiny_bert):
    got = np.asarray(k.embed(TEXTS))
    np.testing.assert_allclose(got, Encoder.load(tiny_bert).encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_the_limits_themselves_are_accepted(k):
    assert len(k.embed(["x"] * abi.MAX_EMBED_TEXTS)) == abi.MAX_EMBED_TEXTS
    assert len(k.embed(["y" * abi.MAX_EMBED_CHARS])) == 1


@pytest.mark.parametrize("texts, err, message", [
    ([], errno.EINVAL, "non-empty list of str"),
    ("hello", errno.EINVAL, "non-empty list of str"),
    ({"a": 1}, errno.EINVAL, "non-empty list of str"),
    (["ok", 3], errno.EINVAL, "text must be a str, not int"),
    (["ok", None], errno.EINVAL, "text must be a str, not NoneType"),
    (["x"] * (abi.MAX_EMBED_TEXTS + 1), errno.E2BIG, f"{abi.MAX_EMBED_TEXTS + 1} texts exceed {abi.MAX_EMBED_TEXTS}"),
    (["ok", "y" * (abi.MAX_EMBED_CHARS + 1)], errno.E2BIG, f"exceeds {abi.MAX_EMBED_CHARS}"),
])
def test_bad_input_is_an_errno(k, texts, err, message):
    with pytest.raises(OSError, match=message) as e:
        k.syscall(Sys.EMBED, texts)
    assert e.value.errno == err
    assert k.embed(["still serving"])


def test_arity(k):
    for args in ((), (["a"], ["b"])):
        with pytest.raises(OSError) as e:
            k.syscall(Sys.EMBED, *args)
        assert e.value.errno == errno.EINVAL


def test_the_model_comes_from_llmos_embed_model_on_first_use(srv, tiny_bert, monkeypatch):
    srv.kernel.embedder.close()
    srv.kernel.embedder = None
    monkeypatch.setenv("LLMOS_EMBED_MODEL", str(tiny_bert))
    with lib.Client() as c:
        assert len(c.embed(["first use"])[0]) == 32
    assert srv.kernel.embedder.source == str(tiny_bert)


def test_a_model_not_pulled_is_enoent_naming_the_command(srv, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))        # an empty model cache
    srv.kernel.embedder = EncoderService("minilm")
    with lib.Client() as c:
        with pytest.raises(FileNotFoundError, match="llmos pull minilm"):
            c.embed(["x"])
        assert c.null() is None


def test_a_corrupt_model_is_enoexec_and_fixing_it_needs_no_restart(srv, tiny_bert, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_bert, d)
    good = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(good[: len(good) // 2])
    srv.kernel.embedder = EncoderService(d)
    with lib.Client() as c:
        with pytest.raises(OSError, match="model.safetensors: unreadable safetensors") as e:
            c.embed(["x"])
        assert e.value.errno == errno.ENOEXEC
        (d / "model.safetensors").write_bytes(good)
        assert len(c.embed(["x"])) == 1


@pytest.mark.slow
def test_the_event_loop_answers_while_the_encoder_runs():
    """The most texts a call takes, 256 word pieces each, keep the real MiniLM busy for seconds;
    null calls on another connection are answered meanwhile, each in far less time."""
    from llmos.drivers import catalog
    with ServerThread() as s:
        s.kernel.embedder = EncoderService(catalog.pull("minilm"))
        with lib.Client(call_timeout=abi.MAX_PARK_S) as c:      # a loaded machine is slow
            c.embed(["load the model first"])
            done, lat = threading.Event(), []

            def nulls():
                with lib.Client() as c2:
                    while not done.is_set():
                        t = time.perf_counter()
                        c2.null()
                        lat.append(time.perf_counter() - t)
                        time.sleep(0.01)

            th = threading.Thread(target=nulls)
            th.start()
            t = time.perf_counter()
            n = abi.MAX_EMBED_TEXTS
            c.embed([" ".join(f"word{i}{j} scheduler" for j in range(150)) for i in range(n)])
            took = time.perf_counter() - t
            done.set()
            th.join()
        s.kernel.embedder.close()
    print(f"embed of {n} x 256 word pieces: {took:.2f} s; {len(lat)} null calls meanwhile, "
          f"max {max(lat) * 1e3:.1f} ms")
    assert len(lat) >= 5 and max(lat) < took / 2
