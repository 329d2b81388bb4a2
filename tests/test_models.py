"""Models as loadable modules (kernel/models.py) over a real socket: two tiny models resident at
once, each giving its solo greedy output; load on first use, unload, keep-alive, memory budget,
and the errors (ENOENT naming the catalog, ENOMEM naming the sizes, EBUSY, EPERM).

The default model is conftest's tiny llama; two more tiny GGUFs (another llama, a qwen2) are
written into a private $LLMOS_HOME/models, where the kernel finds them by name.
"""

from __future__ import annotations

import errno
import os
import gc
import time
import weakref

import pytest

from kernelkit import make_engine, prompt, solo
from test_server import ServerThread, wait_until
from tinyarch import build_arch_model
from tinymodel import build_tiny_model

from llmos.drivers.llama import LlamaModel
from llmos.kernel.procops import KernelError
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib

N = 12


def _load(path):
    return LlamaModel.load(path, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    d = tmp_path_factory.mktemp("home")
    (d / "models").mkdir()
    build_tiny_model(d / "models" / "tinyb.gguf", seed=7, n_layers=3)
    build_arch_model(d / "models" / "tinyq.gguf", "qwen2", seed=3)
    return d


@pytest.fixture
def srv(model, home, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(home))
    waits = WaitQueues()
    engine = make_engine(model, 64, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=0.3) as s:
        m = s.kernel.models
        m.load_model, m.keep_alive_s = _load, 60.0
        yield s


@pytest.fixture
def k(srv):
    with lib.Client(client="test", connect_timeout=30) as c:     # a loaded machine: hello may be slow
        yield c


def test_two_models_resident_each_gives_its_solo_greedy_output(srv, k, model, home):
    ids = prompt(1)
    ref = {None: solo(model, ids, N), "tinyb": solo(_load(str(home / "models" / "tinyb.gguf")), ids, N),
           "tinyq": solo(_load(str(home / "models" / "tinyq.gguf")), ids, N)}
    assert len({tuple(r) for r in ref.values()}) == 3          # three different models
    pids = {name: k.spawn(ids, {"max_tokens": N, "ignore_eos": True}, model=name) for name in ref}
    models = {p["pid"]: p["model"] for p in k.ps()}
    assert [models[pids[n]] for n in ref] == ["tiny-llama", "tinyb", "tinyq"]
    assert len(set(pids.values())) == 3                        # one pid space
    out = {n: "".join(k.stream(pid)) for n, pid in pids.items()}      # all three run together
    assert all(k.wait(pid)["tokens"] == N for pid in pids.values())
    views = {r.name: r.view for r in srv.kernel.models.residents()}
    for n, ids_out in ref.items():
        assert out[n] == views[n or "tiny-llama"].model.tokenizer.decode(ids_out), n
    rows = {m["name"]: m for m in k.models() if m.get("loaded")}
    assert set(rows) == {"tiny-llama", "tinyb", "tinyq"} and rows["tiny-llama"]["default"]
    assert all(r["weights_bytes"] > 0 and r["kv_bytes"] > 0 and r["procs"] == 0 for r in rows.values())
    assert rows["tinyb"]["unload_in_s"] > 0 and rows["tiny-llama"]["unload_in_s"] is None


def _unloaded(k, name) -> bool:
    try:
        k.unload(name)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno == errno.EBUSY and "computing a step" in str(e):
            return False
        raise


def test_load_unload_frees_the_model(srv, k):
    rec = k.load("tinyb")
    assert rec["loaded"] and rec["name"] == "tinyb" and not rec["default"]
    r = next(r for r in srv.kernel.models.residents() if r.name == "tinyb")
    pool, driver = weakref.ref(r.engine.storage), weakref.ref(r.view.model)
    used = srv.kernel.models.used()
    del r
    pid = k.spawn(prompt(2), {"max_tokens": 4, "ignore_eos": True}, model="tinyb")
    with pytest.raises(OSError) as e:                       # a live process: EBUSY
        k.unload("tinyb")
    assert e.value.errno == errno.EBUSY and "1 processes" in str(e.value)
    k.wait(pid)
    wait_until(lambda: _unloaded(k, "tinyb"), 10, "tinyb unloaded")
    assert "tinyb" not in {m["name"] for m in k.models() if m.get("loaded")}
    assert srv.kernel.models.used() == used - rec["weights_bytes"] - rec["kv_bytes"]
    gc.collect()
    assert pool() is None and driver() is None              # the KV pool and the weights are gone
    with pytest.raises(OSError) as e:
        k.unload("tinyb")
    assert e.value.errno == errno.ENOENT


def test_keep_alive_unloads_an_idle_model(srv, k):
    srv.kernel.models.keep_alive_s = 0.4
    pid = k.spawn(prompt(3), {"max_tokens": 4, "ignore_eos": True}, model="tinyq")
    k.wait(pid)
    assert "tinyq" in {m["name"] for m in k.models() if m.get("loaded")}
    wait_until(lambda: "tinyq" not in {m["name"] for m in k.models() if m.get("loaded")}, 10, "keep-alive")
    pid = k.spawn(prompt(3), {"max_tokens": 4, "ignore_eos": True}, model="tinyq")   # loaded again
    assert k.wait(pid)["tokens"] == 4


def test_a_busy_model_is_not_unloaded_by_keep_alive(srv, k):
    srv.kernel.models.keep_alive_s = 0.2
    pid = k.spawn(prompt(4), {"max_tokens": 4, "ignore_eos": True}, model="tinyq", session=True)
    time.sleep(1.0)                                         # a sleeping session holds it
    assert "tinyq" in {m["name"] for m in k.models() if m.get("loaded")}
    k.kill(pid, "KILL")
    k.wait(pid)
    wait_until(lambda: "tinyq" not in {m["name"] for m in k.models() if m.get("loaded")}, 10, "keep-alive")


def test_errors(srv, k, home):
    for call in (lambda: k.load("nosuch"), lambda: k.spawn("hi", model="nosuch")):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert "smollm2" in str(e.value) and "tinyb" in str(e.value)     # the catalog and the cache
    with pytest.raises(OSError) as e:
        k.unload("tiny-llama")
    assert e.value.errno == errno.ENOENT                     # not a cached name: only its path is
    path = str(home / "models" / "tinyb.gguf")
    with pytest.raises(KernelError) as e:                    # a path is for admins (this client is one)
        srv.call(srv.kernel.models.load, path, False)
    assert e.value.errno == errno.EPERM
    assert k.load(path)["name"] == "tinyb"
    with pytest.raises(OSError) as e:
        k.load("minilm")
    assert e.value.errno == errno.EINVAL                     # an encoder is no language model


def test_the_default_model_stays(srv, k, model):
    name = next(r.name for r in srv.kernel.models.residents() if r.default)
    with pytest.raises(KernelError) as e:
        srv.call(srv.kernel.models.unload, str(model.path), True)
    assert e.value.errno == errno.EBUSY and "default" in str(e.value)
    assert name == "tiny-llama"


def test_not_enough_memory_is_enomem_naming_the_sizes(srv, k):
    m = srv.kernel.models
    m.budget = m.used() + 1000
    with pytest.raises(OSError) as e:
        k.load("tinyb")
    assert e.value.errno == errno.ENOMEM and "needs" in str(e.value) and "budget" in str(e.value)
    assert "MiB" in str(e.value)
    with pytest.raises(OSError) as e:
        k.spawn(prompt(5), {"max_tokens": 2}, model="tinyb")
    assert e.value.errno == errno.ENOMEM


def test_an_idle_model_makes_room_for_another(srv, k):
    m = srv.kernel.models
    b = k.load("tinyb")
    m.budget = m.used() + 1              # no room beyond tinyb's (3 layers; tinyq has 2: it fits there)
    pid = k.spawn(prompt(6), {"max_tokens": 3, "ignore_eos": True}, model="tinyq")
    assert k.wait(pid)["tokens"] == 3
    loaded = {x["name"] for x in k.models() if x.get("loaded")}
    assert "tinyq" in loaded and "tinyb" not in loaded       # the idle one was unloaded for it


def test_a_slow_load_parks_then_says_so(srv, k, monkeypatch):
    import llmos.kernel.models as models_mod
    monkeypatch.setattr(models_mod, "LOAD_PARK_S", 0.3)
    srv.kernel.models.load_model = lambda p: (time.sleep(1.5), _load(p))[1]
    assert k.load("tinyb") == {"name": "tinyb", "loading": True}        # parked 0.3 s, then told
    assert [m["name"] for m in k.models() if m.get("loading")] == ["tinyb"]
    with pytest.raises(BlockingIOError) as e:                           # EAGAIN, naming the load
        k.spawn(prompt(7), {"max_tokens": 2}, model="tinyb")
    assert "still loading" in str(e.value)
    wait_until(lambda: "tinyb" in {m["name"] for m in k.models() if m.get("loaded")}, 20, "the load")
    assert k.wait(k.spawn(prompt(7), {"max_tokens": 2, "ignore_eos": True}, model="tinyb"))["tokens"] == 2


def test_more_errors(srv, k, home):
    (home / "models" / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(OSError) as e:
        k.load("broken")
    assert e.value.errno == errno.ENOEXEC and "broken" in str(e.value)
    with pytest.raises(OSError) as e:
        k.load(5)
    assert e.value.errno == errno.EINVAL
    pid = k.spawn(prompt(8), {"max_tokens": 2}, model="tinyb", session=True)
    with pytest.raises(OSError) as e:
        k.checkpoint(pid)
    assert e.value.errno == errno.EOPNOTSUPP and "default model" in str(e.value)
    k.kill(pid, "KILL")
    k.wait(pid)
    srv.kernel.models.load_model = None                     # a kernel that loads no other model
    wait_until(lambda: _unloaded(k, "tinyb"), 10, "tinyb unloaded")     # (after its last step)
    with pytest.raises(FileNotFoundError, match="only its default model"):
        k.load("tinyb")


def test_serve_options_keep_alive_and_models_memory():
    from llmos.kernel import main
    args = main._parser().parse_args(["--keep-alive", "2m", "--models-memory", "1.5G"])
    assert args.keep_alive == 120 and args.models_memory == 3 << 29
    assert main._parser().parse_args([]).keep_alive == 300
    for bad in (["--keep-alive", "0"], ["--keep-alive", "soon"], ["--models-memory", "-1G"], ["--models-memory", "x"]):
        with pytest.raises(SystemExit):
            main._parser().parse_args(bad)


def test_a_call_parked_on_a_load_whose_model_went_meanwhile_is_eagain(srv):
    import asyncio
    from types import SimpleNamespace
    from llmos.kernel.models import Resident

    def poll_after_the_load():
        m = srv.kernel.models
        done = asyncio.get_running_loop().create_future()
        done.set_result(Resident("gone", "/gone.gguf", None, 0, 0))   # loaded, then unloaded for room
        done.channel = SimpleNamespace(pid=-12345)
        return m.waiters(done, lambda r: "spawned").poll()
    with pytest.raises(KernelError) as e:
        srv.call(poll_after_the_load)
    assert e.value.errno == errno.EAGAIN and "unloaded again" in str(e.value)


def test_a_user_may_name_a_resident_model_by_its_path_but_not_load_one(srv, k, home):
    """A path is EPERM for a non-admin (the kernel would read a file for them), unless the model
    at that path is already resident: then nothing is read (`LLMOS_MODEL=/path llmos run`)."""
    models, path = srv.kernel.models, str(home / "models" / "tinyb.gguf")
    with pytest.raises(KernelError) as e:
        models.resolve(path, admin=False)
    assert e.value.errno == errno.EPERM
    k.load("tinyb")
    assert models.resolve(path, admin=False)[0] == os.path.realpath(path)
    k.unload("tinyb")
