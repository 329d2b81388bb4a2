"""The user commands (userland/bin) as the CLI and the shell run them: one set of options and one
output per command, plain full-width tables, --json, the daemon start/stop program, and the client
library's limits (a request over the frame limit fails at once; a dead kernel is noticed in ~2 s).

One kernel daemon on the tiny model serves the module (its own runtime dir); tests that stop or
kill a kernel start their own.
"""

from __future__ import annotations

import errno
import json
import os
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


def llmos(env: dict, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def start_kernel(model: str, rt: Path, *extra: str) -> dict:
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt), LLMOS_HOME=str(rt / "home"), PYTHONUNBUFFERED="1")
    r = llmos(env, "serve", "--daemon", "--model", model, "--kv-blocks", "256", "--dtype", "fp32", *extra,
              timeout=180)
    assert r.returncode == 0, r.stderr
    return env


@pytest.fixture(scope="module")
def kernel(tiny_model_path):
    rt = Path(tempfile.mkdtemp(prefix="llmos-c-", dir="/tmp"))
    env = start_kernel(tiny_model_path, rt)
    saved = os.environ.get("LLMOS_RUNTIME_DIR")
    os.environ["LLMOS_RUNTIME_DIR"] = str(rt)
    try:
        yield env
    finally:
        llmos(env, "stop")
        os.environ.pop("LLMOS_RUNTIME_DIR") if saved is None else os.environ.__setitem__("LLMOS_RUNTIME_DIR", saved)
        shutil.rmtree(rt, ignore_errors=True)


@pytest.fixture
def k(kernel):
    with lib.Client(client="test-commands") as c:
        yield c
        for p in c.ps():
            try:
                c.kill(p["pid"], "KILL")
                c.wait(p["pid"], 10)
            except OSError:
                pass


# --- one implementation per command -----------------------------------------------------------

def test_run_takes_the_shells_options_in_the_cli(kernel, k):
    r = llmos(kernel, "run", "-n", "5", "--ignore-eos", "--stop", "never-said", "-t", "0", "hello")
    assert r.returncode == 0, r.stderr
    shell = llmos(kernel, "-c", 'run -n 5 --ignore-eos --stop never-said -t 0 hello')
    assert shell.returncode == 0, shell.stderr
    assert r.stdout == shell.stdout and r.stdout.endswith("\n")      # same answer, same last newline
    pid = k.spawn([{"role": "user", "content": "hello"}], {"max_tokens": 5, "ignore_eos": True})
    assert "".join(k.stream(pid)) + "\n" == r.stdout.rstrip("\n") + "\n"
    k.wait(pid)
    bad = llmos(kernel, "run", "-n", "x", "hi")
    assert bad.returncode == 2 and "llmos run: argument -n/--max-tokens: invalid int value: 'x'" in bad.stderr


def test_ps_kill_models_same_output_in_cli_and_shell(kernel, k):
    pid = k.spawn("a session", max_tokens=2, session=True, command="samejob")
    "".join(k.stream(pid))
    cli, shell = llmos(kernel, "ps"), llmos(kernel, "-c", "ps")
    assert cli.returncode == shell.returncode == 0
    strip_age = [[line.split()[:9] for line in out.stdout.splitlines()] for out in (cli, shell)]
    assert strip_age[0] == strip_age[1]                                 # same columns, same rows
    from llmos.userland.bin.ps import COLUMNS
    assert cli.stdout.split()[:len(COLUMNS)] == list(COLUMNS)
    assert {"PID", "PPID", "USER", "STATE", "NI", "PROMPT", "OUT", "KV", "TOK/S", "AGE", "COMMAND"} <= set(COLUMNS)
    assert llmos(kernel, "kill", "-l").stdout == llmos(kernel, "-c", "kill -l").stdout == \
        " 2) SIGINT  9) SIGKILL 15) SIGTERM 18) SIGCONT 19) SIGSTOP\n"
    gone = llmos(kernel, "kill", "99999"), llmos(kernel, "-c", "kill 99999")
    assert gone[0].stderr == "llmos kill: (99999) - No such process\n"
    assert gone[1].stderr == "kill: (99999) - No such process\n"
    models = llmos(kernel, "models"), llmos(kernel, "-c", "models")
    assert models[0].stdout == models[1].stdout and models[0].stdout.split()[:4] == ["NAME", "LOADED", "SIZE",
                                                                                    "WEIGHTS"]


def test_ps_is_full_width_when_not_a_terminal(kernel, k):
    command = "a-command-name-much-wider-than-any-terminal-column-" + "x" * 120
    pid = k.spawn("a session", max_tokens=2, session=True, command=command)
    "".join(k.stream(pid))
    r = llmos(dict(kernel, COLUMNS="60"), "ps")
    row = next(line for line in r.stdout.splitlines() if line.split()[0] == str(pid))
    assert row.endswith(command) and "…" not in r.stdout and "SLEEPING" in row


def test_json_output_for_scripts(kernel, k):
    pid = k.spawn("a session", max_tokens=2, session=True, command="jsonjob")
    "".join(k.stream(pid))
    procs = json.loads(llmos(kernel, "ps", "--json").stdout)
    assert [p["command"] for p in procs if p["pid"] == pid] == ["jsonjob"] and "tok_s" in procs[0]
    st = json.loads(llmos(kernel, "stat", "--json", str(pid)).stdout)
    assert st[0]["pid"] == pid and st[0]["params"]["max_tokens"] == 2
    assert json.loads(llmos(kernel, "free", "--json").stdout)["kv"]["total"] == 256
    models = json.loads(llmos(kernel, "models", "--json").stdout)
    assert models[0]["loaded"] and models[0]["size"] > 0
    assert json.loads(llmos(kernel, "-c", "free --json").stdout)["kv"]["total"] == 256   # the shell's too


def test_decode_speed_leaves_out_time_stopped():
    from llmos.userland.bin.ps import decode_speed
    st = {"first_token_at": 100.0, "last_token_at": 110.0, "tokens": 11, "state_time": {"STOPPED": 5.0}}
    assert decode_speed(st) == pytest.approx(2.0)                       # 10 tokens in 5 s of running
    assert decode_speed(dict(st, state_time={})) == pytest.approx(1.0)


def test_background_job_output_reaches_the_terminal_in_whole_lines(monkeypatch):
    """At the prompt each write is drawn above it and the prompt redrawn: a partial line would be
    cut off there (issue 13: `1 / 4 / 5` on separate lines). A foreground job streams as it comes."""
    import io
    from llmos.shell.jobs import Job
    from llmos.shell.runner import JobOutput
    from llmos.shell.streams import TERMINAL
    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return len(text)
    monkeypatch.setattr(sys, "stdout", Recorder())
    job = Job(1, "run x &", [1], background=True)
    out = JobOutput(job, TERMINAL)
    for fragment in ["1, 2", ", 3\n4", ", 5", "\n6, 7"]:
        out.write(fragment)
    out.end()
    assert writes == ["1, 2, 3\n", "4, 5\n", "6, 7", "\n"]
    writes.clear()
    job.background = False
    out = JobOutput(job, TERMINAL)
    out.write("8, ")
    assert writes == ["8, "]


def test_library_exports_every_call_from_one_place():
    for name in ("spawn", "read", "write", "close_stdin", "wait", "kill", "stream", "shutdown"):
        assert name in lib.__all__ and callable(getattr(lib, name))
    stubs = {n for n in vars(lib._Stubs) if not n.startswith("_")}
    assert stubs <= set(lib.__all__)


# --- the client library's limits -------------------------------------------------------------

def test_a_prompt_over_the_frame_limit_fails_at_once_with_e2big(kernel, tmp_path):
    with lib.Client(call_timeout=3) as c:          # the kernel's nil-id answer would be a 3 s timeout
        with pytest.raises(OSError) as e:
            c.spawn("x" * (abi.MAX_FRAME_BYTES + 1))
        assert e.value.errno == errno.E2BIG and str(abi.MAX_FRAME_BYTES) in str(e.value)
        assert c.null() is None                    # the connection is still good
    big = tmp_path / "big.txt"
    big.write_text("word " * (abi.MAX_FRAME_BYTES // 4))
    with open(big) as f:
        r = llmos(kernel, "run", stdin=f, timeout=20)
    assert r.returncode == 1 and "frame limit" in r.stderr


def test_async_client_also_refuses_an_oversized_request(kernel):
    import asyncio

    async def go():
        async with await lib.AsyncClient.connect(call_timeout=3) as c:
            with pytest.raises(OSError) as e:
                await c.spawn("x" * (abi.MAX_FRAME_BYTES + 1))
            assert e.value.errno == errno.E2BIG
            return await c.null()
    assert asyncio.run(go()) is None


def test_a_dead_kernel_is_noticed_within_seconds(tiny_model_path, monkeypatch):
    rt = Path(tempfile.mkdtemp(prefix="llmos-x-", dir="/tmp"))
    try:
        env = start_kernel(tiny_model_path, rt)
        monkeypatch.setenv("LLMOS_RUNTIME_DIR", str(rt))
        kpid = int(abi.pid_path(rt).read_text())
        c = lib.Client()
        pid = c.spawn("a session", max_tokens=2, session=True)
        "".join(c.stream(pid))                              # it sleeps: a read now parks in the kernel
        os.kill(kpid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(ConnectionResetError, match="llmos serve --daemon"):
            c.read(pid)                                     # parked up to 60 s without the watch
        assert time.monotonic() - t0 < 10
        with pytest.raises(ConnectionResetError):
            c.ps()                                          # and every later call, at once
        c.close()
    finally:
        shutil.rmtree(rt, ignore_errors=True)
    assert env


# --- the daemon program ----------------------------------------------------------------------

def test_a_failed_boot_prints_only_this_boots_log(tmp_path):
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    abi.log_path(rt).write_text("12:00:00 llmos[1] AN EARLIER BOOT's line\n" * 50)
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt))
    r = llmos(env, "serve", "--daemon", "--model", str(tmp_path / "missing.gguf"))
    assert r.returncode == 1 and "no such model file" in r.stderr
    assert "EARLIER BOOT" not in r.stderr


def test_stop_without_a_kernel_says_so_plainly(tmp_path):
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(tmp_path / "rt"))
    r = llmos(env, "stop")
    assert r.returncode == 1 and "no llmos kernel" in r.stderr and "[Errno" not in r.stderr


def test_kernel_main_has_no_userland_in_it():
    text = (Path(__file__).resolve().parents[1] / "kernel" / "main.py").read_text()
    assert "userland" not in text.split('"""', 2)[2]                    # only the docstring names it


# --- models as loadable modules, chat sampling defaults, the catalog --------------------------

def test_run_and_chat_with_another_model_load_unload_models(kernel, k):
    from tinymodel import build_tiny_model
    build_tiny_model(Path(kernel["LLMOS_HOME"]) / "models" / "tinyb.gguf", seed=7, n_layers=3)
    r = llmos(kernel, "load", "tinyb")
    assert r.returncode == 0 and r.stdout.startswith("tinyb: weights "), r.stderr
    r = llmos(kernel, "run", "-m", "tinyb", "-t", "0", "-n", "5", "--ignore-eos", "hello")
    assert r.returncode == 0, r.stderr
    pid = k.spawn([{"role": "user", "content": "hello"}], {"max_tokens": 5, "ignore_eos": True}, model="tinyb")
    assert [p["model"] for p in k.ps() if p["pid"] == pid] == ["tinyb"]
    assert "".join(k.stream(pid)) + "\n" == r.stdout                  # tinyb's greedy answer
    k.wait(pid)
    default = llmos(kernel, "run", "-t", "0", "-n", "5", "--ignore-eos", "hello")
    assert default.stdout != r.stdout                                 # not the default model's
    shell = llmos(kernel, "-c", 'run -m tinyb -t 0 -n 5 --ignore-eos hello')
    assert shell.stdout == r.stdout, shell.stderr
    chosen = llmos(kernel, "--model", "tinyb", "-c", 'run -t 0 -n 5 --ignore-eos hello')   # a kernel
    assert chosen.stdout == r.stdout, chosen.stderr             # running another: not ignored
    assert llmos(dict(kernel, LLMOS_MODEL="tinyb"), "run", "-t", "0", "-n", "5", "--ignore-eos",
                 "hello").stdout == r.stdout
    rows = {m["name"]: m for m in json.loads(llmos(kernel, "models", "--json").stdout)}
    assert rows["tinyb"]["loaded"] and rows["tinyb"]["kv_bytes"] > 0 and rows["tinyb"]["procs"] == 0
    table = llmos(kernel, "models").stdout.splitlines()
    assert table[0].split() == ["NAME", "LOADED", "SIZE", "WEIGHTS", "KV", "PROCS", "UNLOAD", "PATH"]
    assert any(line.split()[:2] == ["tinyb", "yes"] for line in table)
    r = llmos(kernel, "-c", "chat -m tinyb -t 0 -n 3", input="hello\n")
    assert r.returncode == 0 and "chat" in r.stdout, r.stderr
    r = llmos(kernel, "unload", "tinyb")
    assert r.returncode == 0 and r.stdout.startswith("tinyb: unloaded"), r.stderr
    assert not {m["name"]: m for m in k.models()}.get("tinyb", {}).get("loaded")
    r = llmos(kernel, "unload", "tinyb")
    assert r.returncode == 1 and "llmos unload: tinyb: tinyb is not loaded" in r.stderr
    r = llmos(kernel, "run", "-m", "nosuch", "hi")
    assert r.returncode == 1 and "no model 'nosuch'" in r.stderr and "smollm2" in r.stderr


def test_pull_without_a_name_lists_the_catalog(kernel):
    for r in (llmos(kernel, "pull"), llmos(kernel, "-c", "pull")):
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["NAME", "CACHED", "DESCRIPTION"]
        assert {line.split()[0] for line in lines[1:]} >= {"smollm2", "gemma3"}
    r = llmos(kernel, "pull", "nosuch")
    assert r.returncode == 1 and "not in the catalog" in r.stderr


def test_chat_sampling_defaults_and_exact_greedy():
    from llmos.userland.bin import run
    p = run.parser()
    params = run.spec(p.read(["hi"]), "run hi").params
    assert params == {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "penalty_last_n": 64}
    assert run.spec(p.read(["-t", "0", "hi"]), "run hi").params == {"temperature": 0.0}     # exact greedy
    assert run.spec(p.read(["-t", "0", "--repeat-penalty", "1.3", "hi"]), "x").params == \
        {"temperature": 0.0, "repetition_penalty": 1.3}
    got = run.spec(p.read(["-t", "1.2", "--top-p", "0.5", "--min-p", "0.1", "-m", "gemma3", "hi"]), "x")
    assert got.params == {"temperature": 1.2, "top_p": 0.5, "min_p": 0.1, "repetition_penalty": 1.1,
                          "penalty_last_n": 64} and got.model == "gemma3"
