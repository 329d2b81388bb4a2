"""Sessions outlive the kernel, and the fault tests that need a real kernel process.

A `llmos serve` subprocess on the tiny model with its own $LLMOS_HOME: `llmos stop` checkpoints
every session with its KV and the next boot restores them under their pids; after a SIGKILL in the
middle of 20 running processes each session's conversation is on disk (written as turns complete)
and is re-prefilled at boot (so its next answer may differ in the last bits of fp32 from one
computed incrementally: no exactness is claimed there), and its client reattaches and goes on.
The CLI's checkpoint / hibernate / restore / ps -a, and a checkpoint on a full disk (a file size
limit, RLIMIT_FSIZE, on the kernel): a clear errno, no file left, the process runs on.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from llmos.kernel import abi
from llmos.userland import lib
from llmos.userland.bin.restore import header


def llmos(*args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def base():
    d = Path(tempfile.mkdtemp(prefix="llmos-ck-"))
    yield d
    shutil.rmtree(d, ignore_errors=True) if not os.environ.get("KEEP") else print(d)


@pytest.fixture(scope="module")
def env(base):
    return dict(os.environ, LLMOS_RUNTIME_DIR=str(base / "rt"), LLMOS_HOME=str(base / "home"),
                PYTHONUNBUFFERED="1")


def boot(env, model, fsize: int | None = None, extra=()) -> subprocess.Popen:
    """A kernel in the foreground (so the test can SIGKILL it), answering once this returns;
    extra: more `serve` arguments."""
    limit = None if fsize is None else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize)))
    k = subprocess.Popen([sys.executable, "-m", "llmos.kernel.main", "serve", "--model", model, "--kv-blocks",
                          "256", "--block-size", "4", "--dtype", "fp32", "--lease", "30", *extra], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=limit)
    rt = Path(env["LLMOS_RUNTIME_DIR"])
    deadline = time.monotonic() + 60
    while not (abi.pid_path(rt).exists() and abi.pid_path(rt).read_text().strip() == str(k.pid)):
        assert k.poll() is None, k.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return k


def client(env) -> lib.Client:
    os.environ["LLMOS_RUNTIME_DIR"] = env["LLMOS_RUNTIME_DIR"]
    return lib.Client(client="test-ckpt")


def turn(k, pid, text=None) -> str:
    if text is not None:
        k.write(pid, [{"role": "user", "content": text}])
    return "".join(k.stream(pid))


def journal(env, pid) -> dict | None:
    files = list(Path(env["LLMOS_HOME"], "checkpoints").glob(f"*/session-{pid}.ckpt"))
    return header(files[0]) if files else None


def wait_journal(env, pid, out_tokens: int) -> None:
    """Until the session's file holds its last turn (out_tokens generated in all)."""
    deadline = time.monotonic() + 30
    while len((journal(env, pid) or {}).get("process", {}).get("output_ids", ())) != out_tokens:
        assert time.monotonic() < deadline, "the session's turn was not written"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _restore_env():
    saved = os.environ.get("LLMOS_RUNTIME_DIR")
    yield
    if saved is None:
        os.environ.pop("LLMOS_RUNTIME_DIR", None)
    else:
        os.environ["LLMOS_RUNTIME_DIR"] = saved


def test_sessions_survive_stop_and_sigkill(env, tiny_model_path):
    model = str(tiny_model_path)
    kern = boot(env, model)
    hi = [{"role": "user", "content": "hello, who are you?"}]
    with client(env) as k:
        sessions = [k.spawn(hi, max_tokens=8, session=True, seed=s, temperature=0.7 * (s > 0)) for s in range(3)]
        twins = [k.spawn(hi, max_tokens=8, session=True, seed=s, temperature=0.7 * (s > 0)) for s in range(3)]
        said = {p: turn(k, p) for p in sessions + twins}
        second = {t: turn(k, t, "tell me more") for t in twins}   # uninterrupted: the reference
        state = {p: k.stat(p) for p in sessions}
    r = llmos("stop", env=env)
    assert r.returncode == 0, r.stderr
    kern.wait(30)

    kern = boot(env, model)                                      # clean stop: restored with KV
    with client(env) as k:
        ps = {p["pid"]: p for p in k.ps()}
        assert set(ps) == set(sessions + twins)                  # under their pids
        fresh = k.spawn("x", max_tokens=1)
        assert fresh > max(sessions + twins)                     # pids go on, never repeat
        for s, t in zip(sessions, twins):
            assert ps[s]["state"] == "SLEEPING" and ps[s]["swapped"] and ps[s]["owner"] == state[s]["owner"]
            assert ps[s]["tokens"] == state[s]["tokens"]
            assert said[s] == said[t]
            second[s] = turn(k, s, "tell me more")
            assert second[s] == second[t]                        # exactly as if never stopped
            wait_journal(env, s, k.stat(s)["tokens"])
        busy = [k.spawn(f"story {i}", max_tokens=400, ignore_eos=True, detached=True) for i in range(20)]
        deadline = time.monotonic() + 60
        while not all(k.stat(b)["tokens"] > 0 for b in busy):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        kern.send_signal(signal.SIGKILL)                         # 20 processes mid-generation
        kern.wait(10)

    kern = boot(env, model)                                      # crash: conversations re-prefilled
    try:
        with client(env) as k:
            ps = {p["pid"]: p for p in k.ps()}
            assert set(ps) == set(sessions + twins)              # sessions only: the 20 are gone
            assert k.spawn("x", max_tokens=1) > max(busy)        # no pid of the crashed boot repeats
            for s, t in zip(sessions, twins):
                text = k.detokenize(journal(env, s)["process"]["tokens"])
                assert said[s] in text and second[s] in text     # what the client was shown
                assert not ps[s]["swapped"] and ps[s]["blocks"] == 0
                before = k.stat(s)["tokens"]
                k.write(s, [{"role": "user", "content": "and then?"}])
                while not (r := k.read(s))["turn_end"]:          # the client reattaches: it goes on
                    assert not r["eof"]
                assert k.stat(s)["tokens"] > before and k.stat(s)["state"] == "SLEEPING"
    finally:
        assert llmos("stop", env=env).returncode == 0
        kern.wait(30)


def test_cli_hibernate_restore_and_ps_a(env, tiny_model_path):
    kern = boot(env, str(tiny_model_path))
    try:
        with client(env) as k:
            twin = k.spawn("Once upon a time", max_tokens=60, ignore_eos=True)
            want = "".join(k.stream(twin))
            pid = k.spawn("Once upon a time", max_tokens=60, ignore_eos=True, command="tale")
            got = k.read(pid)["text"]
            k.kill(pid, "STOP")                                          # the tiny model is quick
            r = llmos("hibernate", str(pid), env=env)
            assert r.returncode == 0, r.stderr
            name = r.stdout.split(" as ")[1].split()[0]
            assert f"restore {name}" in r.stdout
            assert pid not in {p["pid"] for p in k.ps()}                  # its memory is free
            assert k.meminfo()["kv"]["used"] == 0
            ps = llmos("ps", "-a", env=env).stdout
            row = next(line for line in ps.splitlines() if "HIBERNATED" in line)         # sessions' files are not
            assert row.split()[0] == str(pid) and f"restore {name}" in row and "tale" in row
            assert name in llmos("restore", "-l", env=env).stdout
            r = llmos("restore", name, env=env)
            assert r.returncode == 0 and r.stdout.startswith(f"restored {name} as pid "), r.stderr
            new = int(r.stdout.split()[-1])
            got += "".join(k.stream(new))
            assert got == want                                           # as if never parked
            assert "HIBERNATED" not in llmos("ps", "-a", env=env).stdout  # its file is gone
            bad = llmos("restore", name, env=env)
            assert bad.returncode == 1 and "No such file" in bad.stderr
            r = llmos("checkpoint", str(new), "keep", env=env)
            assert r.returncode == 1 and "No such process" in r.stderr    # it exited (a zombie: no state)
            assert llmos("hibernate", "99999", env=env).stderr.strip().endswith("(99999) - No such process")
    finally:
        llmos("stop", env=env)
        kern.wait(30)


def test_disk_full_during_checkpoint(tmp_path, tiny_model_path):
    """The kernel runs under RLIMIT_FSIZE (the disk is 'full' past 1 KiB per file): EFBIG, no
    file or temp file left, the process keeps running to its exact end."""
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(tmp_path / "rt"), LLMOS_HOME=str(tmp_path / "home"))
    kern = boot(env, str(tiny_model_path), fsize=1024)
    try:
        with client(env) as k:
            twin = k.spawn("Once upon a time", max_tokens=80, ignore_eos=True)
            want = "".join(k.stream(twin))
            pid = k.spawn("Once upon a time", max_tokens=80, ignore_eos=True)
            got = k.read(pid)["text"]
            k.kill(pid, "STOP")
            with pytest.raises(OSError) as ei:
                k.checkpoint(pid, "big")
            assert ei.value.errno == errno.EFBIG and "big.ckpt" in ei.value.strerror
            assert not [f for f in (tmp_path / "home").rglob("*") if ".ckpt" in f.name]   # nothing half-written
            with pytest.raises(OSError) as ei:
                llmos_hib = subprocess.run([sys.executable, "-m", "llmos.shell.cli", "hibernate", str(pid)],
                                           env=env, capture_output=True, text=True, timeout=60)
                raise OSError(llmos_hib.returncode, llmos_hib.stderr)
            assert ei.value.errno == 1 and "File too large" in ei.value.strerror
            assert k.stat(pid)["state"] != "STOPPED"                   # hibernate continued it
            got += "".join(k.stream(pid))
            assert got == want
    finally:
        llmos("stop", env=env)
        kern.wait(30)
