"""The agent runtime (userland/agent): the calculator's whitelist, tools as limited subprocesses
(timeout, crash, CPU and memory limits, no network, the allowed directory, the shell off unless
enabled), unknown tools, actions constrained by the kernel's grammar on the tiny model with
results written back into the same session, fork-per-sub-task planning inside the agent's
process group; and (slow) SmolLM2 answering arithmetic through the calculator, greedily."""

from __future__ import annotations

import json
import sys
import time

import pytest

from llmos.kernel import abi
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from llmos.userland.agent import calc, forks, runtime, sandbox, tools
from llmos.userland.agent.tools import Tool
from kernelkit import make_engine
from test_server import ServerThread

PY = sys.executable


# ---- the calculator ----------------------------------------------------------------------------

@pytest.mark.parametrize("expr,value", [("23 * 47", "1081"), ("2 ** 10 - 24 / 4", "1018"), ("(1 + 2) * -3", "-9"),
                                        ("sqrt(16) + abs(-2)", "6"), ("0.1 + 0.2", "0.3"), ("7 // 2 + 7 % 2", "4"),
                                        ("2^8", "256"), ("max(3, 9, 4)", "9")])
def test_calculator_values(expr, value):
    assert calc.format_number(calc.evaluate(expr)) == value


@pytest.mark.parametrize("expr,words", [("__import__('os').system('true')", "not allowed"), ("x + 1", "expression: x"),
                                        ("(1).real", "not allowed"), ("9 ** 9 ** 9", "too large"), ("1 / 0", "ZeroDivision"),
                                        ("'a' * 3", "not allowed"), ("1 +", "not an arithmetic"), ("", "non-empty")])
def test_calculator_refuses(expr, words):
    with pytest.raises(calc.CalcError, match=words):
        calc.evaluate(expr)


# ---- tools in the sandbox ------------------------------------------------------------------------

def external(name, code):
    return Tool(name, "test tool", {"type": "object", "properties": {}}, command=(PY, "-c", code))


def test_builtin_tools_run_in_a_subprocess(tmp_path):
    (tmp_path / "notes.txt").write_text("line one\nline two\n")
    cfg = {"root": str(tmp_path)}
    assert sandbox.run(tools.BUILTINS["calculator"], {"expression": "6 * 7"}, cfg) == sandbox.Result(True, "42")
    assert sandbox.run(tools.BUILTINS["list_files"], {"path": "."}, cfg).output == "notes.txt"
    assert sandbox.run(tools.BUILTINS["read_file"], {"path": "notes.txt", "start": 2}, cfg).output == "line two"
    r = sandbox.run(tools.BUILTINS["read_file"], {"path": "../../etc/passwd"}, cfg)
    assert not r.ok and "outside the allowed directory" in r.output
    r = sandbox.run(tools.BUILTINS["shell"], {"command": "echo hi"}, cfg)
    assert not r.ok and "not enabled" in r.output
    assert sandbox.run(tools.BUILTINS["shell"], {"command": "echo hi"}, {**cfg, "allow_shell": True}).output.strip() == "hi"


def test_a_hung_tool_is_killed_at_its_timeout():
    t0 = time.monotonic()
    r = sandbox.run(external("sleepy", "import time; time.sleep(60)"), {}, {}, sandbox.Limits(timeout_s=1))
    assert not r.ok and "timed out after 1 s" in r.output
    assert time.monotonic() - t0 < 20                                  # killed, not waited for


def test_a_crashing_tool_is_an_error_result():
    r = sandbox.run(external("boom", "import os; os.abort()"), {}, {})
    assert not r.ok and "crashed (killed by SIGABRT)" in r.output
    r = sandbox.run(external("raises", "raise SystemExit(3)"), {}, {})
    assert not r.ok and "exit status 3" in r.output


def test_cpu_and_memory_limits():
    r = sandbox.run(external("spin", "while True: pass"), {}, {}, sandbox.Limits(cpu_s=1, timeout_s=30))
    assert not r.ok and "SIGXCPU" in r.output                        # RLIMIT_CPU, long before the timeout
    r = sandbox.run(external("hog", "x = bytearray(3 << 30)"), {}, {}, sandbox.Limits(memory_bytes=1 << 30))
    assert not r.ok and "MemoryError" in r.output


@pytest.mark.skipif(not sandbox.network_isolation(), reason="unshare -rn does not work here")
def test_no_network():
    code = "import socket; socket.create_connection(('127.0.0.1', 9), timeout=2)"
    r = sandbox.run(external("net", code), {}, {})
    assert not r.ok and ("unreachable" in r.output or "refused" in r.output.lower())
    code = "import socket; print(sorted(n for _, n in socket.if_nameindex()))"
    assert sandbox.run(external("ifaces", code), {}, {}).output == "['lo']"      # a namespace of its own


def test_unknown_tools_and_the_shell_off_by_default():
    with pytest.raises(ValueError, match="unknown tool 'nope'"):
        tools.builtin(["calculator", "nope"])
    with pytest.raises(ValueError, match="off unless enabled"):
        runtime.Agent(None, tools.builtin(["shell"]))
    agent = runtime.Agent(None, tools.builtin(["calculator"]))
    step = agent.call("nope", {})
    assert not step.ok and "unknown tool 'nope'" in step.output


# ---- the agent on the tiny model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv(model):
    waits = WaitQueues()
    engine = make_engine(model, 512, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=0.3) as s:
        yield s


@pytest.fixture
def k(srv):
    with lib.Client(user="alice", client="test") as c:
        yield c


def test_actions_are_tool_calls_or_answers_and_results_go_back_into_the_session(srv, k, tmp_path):
    crash = Tool("crash", "always crashes", {"type": "object", "properties": {}, "additionalProperties": False},
                 command=(PY, "-c", "import os; os.abort()"))
    agent = runtime.Agent(k, [*tools.builtin(["calculator"]), crash], max_steps=3, max_tokens=60)
    pid = agent.start("What is 2 + 2?")
    try:
        for _ in range(3):                                   # three turns of the same session
            action = json.loads("".join(k.stream(pid)))      # the grammar: always a whole action
            assert set(action) in ({"answer"}, {"tool", "args"}), action
            step = agent.call(action.get("tool", "crash"), action.get("args", {}))
            if action.get("tool", "crash") == "crash":
                assert not step.ok and "crashed" in step.output          # the agent goes on
            before = k.stat(pid)["tokens"]
            k.write(pid, {"role": "user", "content": runtime.result_message(step)})
            assert k.stat(pid)["state"] in ("READY", "RUNNING") and k.stat(pid)["tokens"] == before
        assert k.stat(pid)["session"] and k.stat(pid)["pgid"] == pid
    finally:
        agent.end(pid)


def test_fork_per_sub_task_in_the_agents_group(srv, k):
    parent = k.syscall(abi.Sys.SPAWN, [{"role": "user", "content": "Summarise: "}],
                       {"max_tokens": 8, "ignore_eos": True}, {"stdin": True})
    outs = forks.fork_join(k, parent, ["first part", "second part", "third part"])    # open stdin: text
    assert len(outs) == 3 and all(b.ok and b.text for b in outs)
    k.kill(parent, "KILL")
    k.wait(parent)
    # the children joined the parent's group while they ran: STOP of the group pauses them all
    parent = k.syscall(abi.Sys.SPAWN, [{"role": "user", "content": "x"}], {"max_tokens": 400, "ignore_eos": True},
                       {"stdin": True})
    kids = [k.fork(parent) for _ in range(2)]
    for c in kids:
        k.close_stdin(c)
    assert {p["pid"]: p["pgid"] for p in k.ps()}[kids[1]] == parent
    k.kill(-parent, "STOP")
    assert {p["pid"]: p["state"] for p in k.ps()}[kids[0]] == "STOPPED"
    k.kill(-parent, "KILL")
    for q in (parent, *kids):
        k.wait(q)


# ---- the real model --------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_answers_arithmetic_through_the_calculator(smollm2_path):
    from llmos.drivers.llama import LlamaModel
    model = LlamaModel.load(smollm2_path)
    waits = WaitQueues()
    engine = make_engine(model, 512, on_wake=waits.wake, check_invariants=False)
    with ServerThread(engine, model, waits) as s, lib.Client(user="alice", client="test") as c:
        del s
        for question, expected in (("What is 23 * 47?", "1081"), ("What is 1234 + 5678?", "6912")):
            out = runtime.Agent(c, tools.builtin(["calculator", "search"])).run(question)
            assert out.steps and out.steps[0].tool == "calculator" and out.steps[0].ok, out
            assert out.steps[0].output == expected and expected in (out.answer or ""), out
