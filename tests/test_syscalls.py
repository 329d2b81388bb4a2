"""kernel/syscalls.py through a real server and the real engine on the tiny model.

Every test ends with every process killed and reaped, the KV pool back to zero used blocks with
its invariants holding, and the engine loop alive (the `clean` fixture).
"""

from __future__ import annotations

import errno
import math
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from llmos.kernel import abi
from llmos.kernel.abi import Sys
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from kernelkit import make_engine
from test_server import Raw, ServerThread, wait_until


@pytest.fixture(scope="module")
def srv(model):
    waits = WaitQueues()
    engine = make_engine(model, 128, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=0.3) as s:
        yield s


def _cleanup(srv):
    eng = srv.kernel.engine
    for p in eng.procs.all():
        if p.alive:
            eng.signal(p.pid, signal.SIGKILL)
    srv.server._work.set()


def _reap_all(srv) -> bool:
    eng = srv.kernel.engine
    for p in eng.procs.all():
        if not p.alive and p.pid not in srv.kernel.waits:
            eng.reap(p.pid)
    return len(eng.procs) == 0 and eng.kv.stats()["used"] == 0 and not eng.in_flight


@pytest.fixture(autouse=True)
def clean(srv):
    yield
    srv.call(_cleanup, srv)
    wait_until(lambda: srv.call(_reap_all, srv), what="all processes reaped and blocks freed")
    srv.call(srv.kernel.engine.kv.check_invariants)
    assert srv.server.crashed is None
    assert srv.thread.is_alive()


@pytest.fixture
def k(srv):
    with lib.Client(user="alice", client="test") as c:
        yield c


def err_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    assert ei.value.strerror            # every errno comes with a message
    return ei.value.errno


# ---- spawn / read / wait -----------------------------------------------------------------------

def test_spawn_stream_wait(k):
    twin = k.spawn("Hello world", max_tokens=12, ignore_eos=True)
    pid = k.spawn("Hello world", max_tokens=12, ignore_eos=True)
    text = "".join(k.stream(pid))
    st = k.wait(pid)
    assert st == {"pid": pid, "reason": "length", "signal": None, "message": "", "tokens": 12}
    wait_until(lambda: k.stat(twin)["state"] == "ZOMBIE")
    assert text and text == k.read(twin)["text"]          # streamed in pieces = read in one go
    k.wait(twin)
    assert err_of(k.wait, pid) == errno.ESRCH          # reaped


def test_spawn_from_token_ids(k):
    ids = k.tokenize("Hello world", add_bos=True)
    a = k.spawn(ids, max_tokens=6, ignore_eos=True, command="ids")
    b = k.spawn("Hello world", max_tokens=6, ignore_eos=True)
    assert k.stat(a)["command"] == "ids" and k.stat(a)["prompt_tokens"] == k.stat(b)["prompt_tokens"]
    assert "".join(k.stream(a)) == "".join(k.stream(b))
    k.wait(a), k.wait(b)


def test_same_seed_same_text(k):
    texts = []
    for _ in range(2):
        pid = k.spawn([{"role": "user", "content": "tell me"}], max_tokens=10, temperature=1.0, seed=7,
                      ignore_eos=True)
        texts.append("".join(k.stream(pid)))
        k.wait(pid)
    assert texts[0] == texts[1]


@pytest.mark.parametrize("prompt, params, opts, err", [
    ("", None, None, errno.EINVAL),                                          # empty prompt
    (123, None, None, errno.EINVAL),
    ([], None, None, errno.EINVAL),
    ([{"role": "user"}], None, None, errno.EINVAL),
    ([{"role": "user", "content": 5}], None, None, errno.EINVAL),
    ([{"role": "user", "content": "x", "extra": 1}], None, None, errno.EINVAL),
    ("x" * (abi.MAX_TEXT_CHARS + 1), None, None, errno.E2BIG),
    ("word " * 600, None, None, errno.E2BIG),                                # > context (512)
    ([1, "x"], None, None, errno.EINVAL),                                  # ids and junk
    ([10**6], None, None, errno.EINVAL),                                     # id outside the vocab
    ([5] * 600, None, None, errno.E2BIG),
    ("hi", {"max_tokens": 0}, None, errno.EINVAL),
    ("hi", {"max_tokens": -5}, None, errno.EINVAL),
    ("hi", {"max_tokens": 2**70}, None, errno.EINVAL),                     # the client refuses to encode
    ("hi", {"temperature": math.nan}, None, errno.EINVAL),
    ("hi", {"temperature": "hot"}, None, errno.EINVAL),
    ("hi", {"colour": 1}, None, errno.EINVAL),
    ("hi", {"stop": ["a"] * 17}, None, errno.EINVAL),
    ("hi", {"seed": -1}, None, errno.EINVAL),
    ("hi", [1], None, errno.EINVAL),
    ("hi", None, {"nice": 20}, errno.EINVAL),
    ("hi", None, {"nice": True}, errno.EINVAL),
    ("hi", None, {"session": 1}, errno.EINVAL),
    ("hi", None, {"command": "x" * 300}, errno.EINVAL),
    ("hi", None, {"whatever": 1}, errno.EINVAL),
])
def test_spawn_rejects_bad_arguments(k, prompt, params, opts, err):
    assert err_of(k.syscall, Sys.SPAWN, prompt, params, opts) == err


def test_read_parks_until_output_and_times_out(k):
    pid = k.spawn([{"role": "user", "content": "hi"}], max_tokens=4, session=True, ignore_eos=True)
    first = "".join(k.stream(pid))                      # one turn, then the session sleeps
    t0 = time.monotonic()
    assert err_of(k.read, pid, 0.2) == errno.ETIMEDOUT
    assert 0.15 < time.monotonic() - t0 < 2
    assert k.write(pid, {"role": "user", "content": "again"}) > 0
    r = k.read(pid, 5)                                  # woken by the engine, not by polling
    assert r["text"] or r["turn_end"]
    second = "".join(k.stream(pid))
    assert k.stat(pid)["tokens"] == 8 and first and second   # two turns of text, 4 tokens each
    assert err_of(k.write, pid, "") == errno.EINVAL
    k.kill(pid, "TERM")
    assert k.wait(pid, 5)["signal"] == signal.SIGTERM


def test_read_after_exit_reports_eof(k):
    twin = k.spawn("abc", max_tokens=3, ignore_eos=True)
    want = "".join(k.stream(twin))
    k.wait(twin)
    pid = k.spawn("abc", max_tokens=3, ignore_eos=True)
    wait_until(lambda: k.stat(pid)["state"] == "ZOMBIE")
    chunks = []
    while True:
        r = k.read(pid, 1)
        chunks.append(r["text"])
        if r["eof"]:
            break
    assert want and chunks == [want]                    # all of it, then eof with the last text
    assert k.read(pid, 1) == {"text": "", "eof": True, "turn_end": False}
    k.wait(pid)


def test_wait_times_out_then_collects_the_signal(k):
    pid = k.spawn("count", max_tokens=400, ignore_eos=True)
    k.kill(pid, "STOP")
    assert k.stat(pid)["state"] == "STOPPED"
    assert err_of(k.wait, pid, 0.1) == errno.ETIMEDOUT
    k.kill(pid, "CONT")
    k.kill(pid, signal.SIGKILL)
    assert k.wait(pid, 5)["reason"] == "signal"


def test_wait_on_a_detached_process_gets_its_status(k, srv):
    pid = k.spawn("x", max_tokens=30, ignore_eos=True, detached=True)
    k.kill(pid, "STOP")
    r = Raw(srv.endpoint)
    try:
        assert r.call(1, Sys.HELLO, srv.token, "alice")[1] == 0
        r.send(abi.encode_request(2, Sys.WAIT, pid, 10))       # parks
        assert not r.s.poll(100)
        k.kill(pid, "CONT")
        rid, err, st = r.reply(10)
        assert (rid, err, st["reason"], st["tokens"]) == (2, 0, "length", 30)
        assert err_of(k.stat, pid) == errno.ESRCH                # the engine reaped it itself
    finally:
        r.close()


def test_write_to_a_non_session_or_dead_process(k):
    pid = k.spawn("x", max_tokens=2, ignore_eos=True)
    assert err_of(k.write, pid, "more") == errno.EINVAL
    k.wait(pid)
    s = k.spawn("x", max_tokens=2, session=True, ignore_eos=True)
    k.kill(s, "KILL")
    wait_until(lambda: k.stat(s)["state"] == "ZOMBIE")
    assert err_of(k.write, s, "more") == errno.EPIPE



def test_open_stdin_streams_a_prompt_in(k):
    """spawn(stdin=True) prefills as text is written; close_stdin starts the answer; a chat
    prompt fed as token ids in pieces answers exactly as the whole prompt does."""
    ids = k.tokenize("one two three four five six", add_bos=True)
    whole = k.spawn(ids, max_tokens=6, ignore_eos=True)
    want = "".join(k.stream(whole))
    k.wait(whole)
    pid = k.spawn(ids, max_tokens=6, ignore_eos=True, stdin=True)
    wait_until(lambda: k.stat(pid)["state"] == "SLEEPING")
    assert k.stat(pid)["tokens"] == 0                       # prefilled, nothing generated
    chat = k.spawn([{"role": "user", "content": "tell me"}], max_tokens=3, stdin=True)
    k.write(chat, " more")
    k.close_stdin(chat)
    assert k.wait(chat)["reason"] in ("length", "eos")
    assert err_of(k.close_stdin, chat) == errno.ESRCH       # reaped
    assert err_of(k.write, pid, 7) == errno.EINVAL          # text or messages only
    k.close_stdin(pid)                                      # no tail: the last token restarts it
    assert "".join(k.stream(pid)) == want
    assert err_of(k.close_stdin, pid) == errno.EINVAL       # already closed
    k.wait(pid)

# ---- ownership, signals, nice, fork ------------------------------------------------------------

def test_other_owners_get_eperm(k, srv):
    pid = k.spawn("mine", max_tokens=200, ignore_eos=True, nice=5)
    with lib.Client(user="bob") as bob:
        for call, args in [(bob.kill, (pid,)), (bob.read, (pid, 0.1)), (bob.wait, (pid, 0.1)),
                           (bob.nice, (pid, 0)), (bob.fork, (pid,)), (bob.write, (pid, "x"))]:
            assert err_of(call, *args) == errno.EPERM, call.__name__
        assert bob.stat(pid)["owner"] == "alice"              # visible, not touchable
        assert any(p["pid"] == pid for p in bob.ps())
    k.kill(pid, "KILL")
    k.wait(pid)


def test_signals_and_nice(k):
    pid = k.spawn("go", max_tokens=400, ignore_eos=True)
    assert err_of(k.syscall, Sys.KILL, pid, 1) == errno.EINVAL
    assert err_of(k.syscall, Sys.KILL, pid, 7) == errno.EINVAL
    assert err_of(k.nice, pid, 20) == errno.EINVAL
    assert err_of(k.syscall, Sys.KILL, pid, "TERM") == errno.EINVAL
    assert err_of(k.nice, pid, -21) == errno.EINVAL
    k.nice(pid, 10)
    assert k.stat(pid)["nice"] == 10
    k.kill(pid, "STOP")
    assert k.stat(pid)["state"] == "STOPPED"
    k.kill(pid, "CONT")
    assert k.stat(pid)["state"] in ("READY", "RUNNING", "ZOMBIE")
    k.kill(pid, "INT")                                  # not a session: SIGINT ends it
    st = k.wait(pid, 5)
    assert (st["reason"], st["signal"]) == ("signal", signal.SIGINT)


def test_fork_shares_then_diverges(k):
    pid = k.spawn("fork me", max_tokens=30, ignore_eos=True)
    k.kill(pid, "STOP")
    child = k.fork(pid)
    assert child != pid and k.stat(child)["ppid"] == pid
    k.kill(pid, "CONT")
    a, b = k.wait(pid, 10), k.wait(child, 10)
    assert a["tokens"] == b["tokens"] == 30
    assert err_of(k.fork, pid) == errno.ESRCH


def test_unknown_pids(k):
    for call in (k.kill, k.stat, k.fork, lambda p: k.read(p, 0.1), lambda p: k.wait(p, 0.1)):
        assert err_of(call, 10**9) == errno.ESRCH
        assert err_of(call, -3) == (errno.ESRCH if call == k.kill else errno.EINVAL)   # kill: group 3
        assert err_of(call, 0) == errno.EINVAL


# ---- info calls --------------------------------------------------------------------------------

def test_info_calls(k, srv):
    ids = k.tokenize("hello there")
    assert ids and all(type(i) is int for i in ids)
    assert k.detokenize(ids) == "hello there"
    assert err_of(k.detokenize, [10**6]) == errno.EINVAL
    assert err_of(k.syscall, Sys.DETOKENIZE, "abc") == errno.EINVAL
    assert err_of(k.syscall, Sys.DETOKENIZE, [0] * (abi.MAX_TOKEN_IDS + 1)) == errno.E2BIG
    assert err_of(k.syscall, Sys.TOKENIZE, "x", "yes") == errno.EINVAL
    mi = k.meminfo()
    assert mi["kv"]["total"] == 128 and mi["host"]["total"] > 0 and isinstance(mi["gpu"], list)
    u = k.uname()
    assert u["sysname"] == "llmos" and u["abi"] == abi.ABI_VERSION and u["uptime_s"] > 0
    assert k.models()[0]["loaded"] is True
    assert k.ps() == []


# ---- leases ------------------------------------------------------------------------------------

# Both processes are sessions, which never exit by themselves: only the lease can end `a`.
DOOMED = """
import sys
from llmos.userland import lib
k = lib.Client(user="alice", client="doomed")
a = k.spawn("stream forever", max_tokens=400, ignore_eos=True, session=True)
d = k.spawn("detached", max_tokens=400, ignore_eos=True, detached=True, session=True)
print(a, d, flush=True)
for text in k.stream(a):
    pass
"""


def test_client_killed_mid_stream_loses_its_processes_but_not_detached_ones(k, srv):
    used0 = srv.call(lambda: srv.kernel.engine.kv.stats()["used"])
    child = subprocess.Popen([sys.executable, "-c", DOOMED], stdout=subprocess.PIPE, text=True)
    try:
        a, d = map(int, child.stdout.readline().split())
        wait_until(lambda: k.stat(a)["tokens"] > 5, what="streaming")
        child.kill()
        child.wait()
        wait_until(lambda: all(p["pid"] != a for p in k.ps()), timeout=10, what="process reclaimed")
        assert k.stat(d)["state"] in ("READY", "RUNNING", "SLEEPING")   # detached: nohup semantics
        k.kill(d, "KILL")
        wait_until(lambda: srv.call(lambda: srv.kernel.engine.kv.stats()["used"]) == used0,
                   what="blocks back to the free count")
    finally:
        child.kill()
        child.wait()


# ---- fuzzing every syscall's arguments -----------------------------------------------------------

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.integers(-3, 40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30) | st.binary(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "max_tokens", "temperature", "seed", "stop", "nice",
                         "session", "detached", "command", "x"]), kids, max_size=3),
    max_leaves=8)
plausible = {
    Sys.SPAWN: st.tuples(st.sampled_from(["hi", [{"role": "user", "content": "yo"}]]),
                         st.fixed_dictionaries({"max_tokens": st.integers(-1, 3)}) | junk, junk),
    Sys.KILL: st.tuples(st.integers(0, 40), st.sampled_from([2, 9, 15, 18, 19, 0, 99]) | junk),
    Sys.NICE: st.tuples(st.integers(0, 40), st.integers(-30, 30) | junk),
    Sys.WRITE: st.tuples(st.integers(0, 40), st.sampled_from(["x", {"role": "user", "content": "y"}]) | junk),
}


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_every_syscall_gets_an_errno_and_leaks_nothing(srv, data):
    r = Raw(srv.endpoint)
    try:
        assert r.call(1, Sys.HELLO, srv.token, "fuzz")[1] == 0
        for i in range(4):
            no = data.draw(st.sampled_from([s for s in Sys if s not in (Sys.SHUTDOWN, Sys.HELLO)]))
            if no in plausible and data.draw(st.booleans()):
                args = list(data.draw(plausible[no]))
            else:
                args = data.draw(st.lists(junk, max_size=4))
            if no in (Sys.READ, Sys.WAIT):      # keep parks short: a valid timeout becomes 10 ms
                if len(args) == 1:
                    args.append(0.01)           # (the default, None, parks up to MAX_PARK_S)
                if len(args) >= 2 and type(args[1]) in (int, float) and math.isfinite(args[1]) and args[1] >= 0:
                    args[1] = 0.01
            if no == Sys.SPAWN and args and isinstance(args[1] if len(args) > 1 else None, dict):
                args[1] = dict(args[1], max_tokens=2) if "max_tokens" not in args[1] else args[1]
            rid, err, value = r.call(10 + i, no, *args)
            assert rid == 10 + i and type(err) is int
            if err:
                assert isinstance(value, str) and value, (no, args, err)
        assert r.call(99, Sys.NULL) == (99, 0, None)
    finally:
        r.close()
    srv.call(_cleanup, srv)
    wait_until(lambda: srv.call(_reap_all, srv), what="reaped")
    assert srv.server.crashed is None


# ---- defects found by the adversarial probe (issue 9) ----------------------------------------------

def test_a_forked_child_of_a_stopped_process_runs_its_queued_input(k):
    pid = k.spawn([{"role": "user", "content": "count"}], max_tokens=4, ignore_eos=True, stdin=True)
    wait_until(lambda: k.stat(pid)["state"] == "SLEEPING")
    k.kill(pid, "STOP")
    k.close_stdin(pid)
    child = k.fork(pid)
    assert k.wait(child, 10)["tokens"] == 4                    # it ran: no timeout
    k.kill(pid, "CONT")
    assert k.wait(pid, 10)["tokens"] == 4


def test_a_frame_over_the_limit_is_answered_with_its_request_id(srv):
    r = Raw(srv.endpoint)
    try:
        assert r.call(1, Sys.HELLO, srv.token, "alice")[1] == 0
        rid, err, msg = r.call(5, Sys.SPAWN, "x" * abi.MAX_FRAME_BYTES)
        assert (rid, err) == (5, errno.E2BIG) and "exceeds" in msg
    finally:
        r.close()


def test_deeply_nested_arguments_are_einval_and_logged_once(k, srv, caplog):
    pid = k.spawn("x", max_tokens=400, ignore_eos=True)
    deep = 0
    for _ in range(1000):
        deep = [deep]
    r = Raw(srv.endpoint)
    try:
        assert r.call(1, Sys.HELLO, srv.token, "alice")[1] == 0
        with caplog.at_level("INFO", logger="llmos.kernel"):
            for i, args in enumerate([(pid, deep), (pid, deep), (pid, {"x": deep}), (deep,)]):
                no = (Sys.KILL, Sys.READ, Sys.WAIT, Sys.FORK)[i]
                rid, err, msg = r.call(10 + i, no, *args)
                assert (rid, err) == (10 + i, errno.EINVAL), msg
            assert r.call(20, Sys.SPAWN, "x", {"stop": deep})[1] == errno.EINVAL
        noted = [rec for rec in caplog.records if "nested" in rec.getMessage() or rec.exc_text]
        assert len(noted) <= 1 and not any("Traceback" in rec.getMessage() for rec in caplog.records)
        assert k.stat(pid)["state"] != "ZOMBIE"
    finally:
        r.close()


def test_a_prompt_that_is_not_utf8_is_named_as_such(k):
    latin1 = "caf\xe9".encode("latin-1")
    with pytest.raises(OSError) as ei:
        k.spawn(latin1.decode("utf-8", "surrogateescape"))
    assert ei.value.errno == errno.EINVAL and "not UTF-8 (byte 0xe9" in ei.value.strerror
    with pytest.raises(OSError) as ei:
        k.syscall(Sys.SPAWN, latin1)
    assert ei.value.errno == errno.EINVAL and "UTF-8" in ei.value.strerror


ORPHANED = """
from llmos.userland import lib
k = lib.Client(user="alice", client="doomed")
pid = k.spawn("a session", max_tokens=2, ignore_eos=True, session=True)
"".join(k.stream(pid))                   # its turn is over: it sleeps, and the engine is idle
print(pid, flush=True)
input()
"""


def test_a_waiter_on_an_orphan_gets_its_status_from_init(k, srv):
    """The spawning client vanishes; its process is killed and reaped by init at the lease's end.
    Another connection of the same user that waits for it meanwhile still gets its status."""
    child = subprocess.Popen([sys.executable, "-c", ORPHANED], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    r = Raw(srv.endpoint)
    try:
        pid = int(child.stdout.readline())
        assert r.call(1, Sys.HELLO, srv.token, "alice")[1] == 0
        r.send(abi.encode_request(2, Sys.WAIT, pid, 10))
        assert r.call(3, Sys.NULL) == (3, 0, None)            # the wait is parked (frames in order)
        child.kill()
        child.wait()
        rid, err, st = r.reply(10)
        assert (rid, err, st["reason"], st["signal"]) == (2, 0, "signal", signal.SIGKILL)
        assert err_of(k.stat, pid) == errno.ESRCH             # init reaped it
    finally:
        r.close()
        child.kill()
        child.wait()
