"""End to end: a real `llmos serve --daemon` subprocess on a temporary runtime dir with the tiny
model, driven by the CLI (`llmos run/ps/kill/stop`) and the userland library."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from llmos.kernel import abi
from llmos.userland import lib


def llmos(*args, env, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def rt():
    d = Path(tempfile.mkdtemp(prefix="llmos-d-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def env(rt):
    return dict(os.environ, LLMOS_RUNTIME_DIR=str(rt), LLMOS_HOME=str(rt / "home"), PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def daemon(tiny_model_path, rt, env):
    r = llmos("serve", "--daemon", "--model", str(tiny_model_path), "--kv-blocks", "256", "--block-size", "4",
              "--lease", "0.5", "--dtype", "fp32", env=env)
    assert r.returncode == 0, r.stderr
    assert "kernel running" in r.stdout
    pid = int(abi.pid_path(rt).read_text())
    yield pid
    llmos("stop", env=env)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def k(daemon, rt, monkeypatch):
    monkeypatch.setenv("LLMOS_RUNTIME_DIR", str(rt))
    with lib.Client(client="test-daemon") as c:
        yield c


def test_runtime_dir_files_and_modes(daemon, rt):
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    assert stat.S_IMODE(abi.token_path(rt).stat().st_mode) == 0o600
    assert stat.S_ISSOCK(abi.socket_path(rt).stat().st_mode)
    log = abi.log_path(rt).read_text()
    steps = [line.split("boot: ")[1].split()[0] for line in log.splitlines() if "boot: " in line]
    assert steps == ["config", "driver", "KV", "engine", "models", "server", "loop"]


def test_a_second_kernel_is_refused(daemon, env, tiny_model_path):
    r = llmos("serve", "--daemon", "--model", str(tiny_model_path), env=env)
    assert r.returncode == 1 and f"already running (pid {daemon})" in r.stderr


def test_run_streams_the_answer(daemon, env):
    r = llmos("run", "--max-tokens", "8", "--temperature", "0", "--system", "be brief", "hello", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and len(r.stdout) > 1
    again = llmos("run", "--max-tokens", "8", "-t", "0", "--system", "be brief", "hello", env=env)
    assert again.stdout == r.stdout                     # greedy: same answer


def test_run_reads_stdin_and_reports_bad_options(daemon, env):
    r = llmos("run", "--raw", "--max-tokens", "3", env=env, input="Once upon a time")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    bad = llmos("run", "--temperature", "-1", "x", env=env)
    assert bad.returncode == 1 and "temperature" in bad.stderr
    assert llmos("run", env=env, input="").returncode == 2


def test_run_ctrl_c_sends_sigint(daemon, env, k):
    """Ctrl-C while it generates (1000 tokens, as many as the pool holds). run starts with SIGINT
    at its default, as under a terminal: pytest started in the background (`... &`, nohup) has it
    ignored, run would inherit that, and an ignored Ctrl-C lets it finish (exit 0)."""
    proc = subprocess.Popen([sys.executable, "-m", "llmos.shell.cli", "run", "--max-tokens", "1000", "--ignore-eos",
                             "go on"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not any(p["command"].startswith("run go on") and p["tokens"] > 0 for p in k.ps()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert not any(p["command"].startswith("run go on") for p in k.ps())     # waited for and reaped


def test_run_into_a_closed_pipe_exits_quietly_and_ends_its_process(daemon, env, k):
    """`llmos run ... | head -c 1`: the reader leaves early; run exits as SIGPIPE would (141, no
    traceback) and its process is not left generating."""
    r = subprocess.run(f"{sys.executable} -m llmos.shell.cli run --max-tokens 400 --ignore-eos "
                       f"'go on and on' | head -c 1", shell=True, env=env, capture_output=True,
                       timeout=60, executable="/bin/bash")      # bytes: one byte may be half a character
    err = r.stderr.decode(errors="replace")
    assert len(r.stdout) == 1 and "Traceback" not in err and "Broken pipe" not in err, err
    deadline = time.monotonic() + 10
    while any(p["command"].startswith("run go on and on") for p in k.ps()):
        assert time.monotonic() < deadline, k.ps()
        time.sleep(0.05)


def test_ps_and_kill(daemon, env, k):
    pid = k.spawn("a session", max_tokens=2, session=True, command="longjob")
    "".join(k.stream(pid))                               # a sleeping session: never exits by itself
    r = llmos("kill", "-STOP", str(pid), env=env)
    assert r.returncode == 0, r.stderr
    ps = llmos("ps", env=env)
    assert ps.returncode == 0
    row = next(line for line in ps.stdout.splitlines() if "longjob" in line)
    assert row.split()[0] == str(pid) and "STOPPED" in row
    assert llmos("kill", "-CONT", str(pid), env=env).returncode == 0
    assert k.stat(pid)["state"] == "SLEEPING"
    assert llmos("kill", "-s", "KILL", str(pid), env=env).returncode == 0
    assert k.wait(pid, 10)["signal"] == signal.SIGKILL
    bad = llmos("kill", "-HUP", "1", env=env)
    assert bad.returncode == 2 and "unknown signal" in bad.stderr
    gone = llmos("kill", "-9", "99999", env=env)
    assert gone.returncode == 1 and "(99999) - No such process" in gone.stderr   # as the shell says it


def test_another_users_process_is_eperm_across_clients(daemon, rt, k, monkeypatch):
    pid = k.spawn("mine", max_tokens=400, ignore_eos=True)
    with lib.Client(user="someone-else") as other:
        with pytest.raises(PermissionError):
            other.kill(pid)
    k.kill(pid, "KILL")
    k.wait(pid)


def test_uname_meminfo(k):
    u = k.uname()
    assert u["model"] == "tiny-llama" and u["device"] == "cpu" and u["config"]["num_blocks"] == 256
    assert k.meminfo()["kv"]["total"] == 256


# Parks read(sess) and wait(busy) on one connection; a null call behind them on the same
# connection is answered only after the kernel has handled (parked) both.
PARKER = """
import getpass
import zmq
from llmos.kernel import abi
s = zmq.Context().socket(zmq.DEALER)
s.connect(abi.kernel_endpoint())
s.send(abi.encode_request(1, abi.Sys.HELLO, abi.read_token(), getpass.getuser(), "parker"))
while (hello := abi.decode_reply(s.recv()))[0] != 1:
    pass
assert hello[1] == 0, hello
for rid, no, pid in ((2, abi.Sys.READ, {sess}), (3, abi.Sys.WAIT, {busy}), (4, abi.Sys.NULL, None)):
    s.send(abi.encode_request(rid, no, *([] if pid is None else [pid, 30])))
got = {{}}
while len(got) < 3:
    rid, err, value = abi.decode_reply(s.recv())
    if rid is not None:                     # (nil-id frames are liveness notices)
        got[rid] = [rid, err, value]
    if rid == 4:
        print("parked", flush=True)
print(repr(got[2]))
print(repr(got[3]))
"""


def test_stop_answers_parked_calls_and_cleans_up(daemon, rt, env, k):
    """Last test in this module: stopping with a parked read and a live process (stopped, so that
    it cannot finish its tokens before `llmos stop` arrives, however slow the host: CI once saw it
    end by length first)."""
    sess = k.spawn([{"role": "user", "content": "hi"}], max_tokens=3, session=True)
    "".join(k.stream(sess))                              # its turn is over: it sleeps
    busy = k.spawn("long", max_tokens=400, ignore_eos=True)
    k.kill(busy, "STOP")
    reader = subprocess.Popen([sys.executable, "-c", PARKER.format(sess=sess, busy=busy)],
                              env=env, stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "parked"    # the kernel has both calls parked
    r = llmos("stop", env=env)
    assert r.returncode == 0 and "stopped" in r.stdout, r.stderr
    out, _ = reader.communicate(timeout=10)
    read, wait = (eval(line) for line in out.splitlines())
    assert read == [2, 0, {"text": "", "eof": True, "turn_end": False}]   # the read got its answer
    assert wait == [3, 0, {"pid": busy, "reason": "signal", "signal": signal.SIGTERM, "message": "",
                           "tokens": wait[2]["tokens"]}]                   # busy got SIGTERM
    assert not any(p.exists() for p in (abi.pid_path(rt), abi.token_path(rt), abi.socket_path(rt)))
    assert "stopped" in abi.log_path(rt).read_text()
    with pytest.raises(ConnectionRefusedError, match="llmos serve --daemon"):
        lib.Client()
    ps = llmos("ps", env=env)
    assert ps.returncode == 1 and "llmos serve --daemon" in ps.stderr


def test_boot_failures_are_reported(tmp_path, tiny_model_path):
    rt = tmp_path / "rt"
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt))
    r = llmos("serve", "--daemon", "--model", str(tmp_path / "missing.gguf"), env=env)
    assert r.returncode == 1 and "no such model file" in r.stderr
    r = llmos("serve", "--daemon", "--model", str(tiny_model_path), "--kv-blocks", "16",
              "--socket", str(tmp_path / "no" / "such" / "dir" / "k.sock"), env=env)
    assert r.returncode == 1 and "cannot bind" in r.stderr
    assert sorted(p.name for p in rt.iterdir()) == ["kernel.log"]       # no token, pid file, socket
    assert llmos("stop", env=env).returncode == 1
