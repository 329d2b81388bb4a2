"""Planning by fork (userland/agent/forks.py and the agent's plan action) through a real kernel
server on the tiny model: the children are forks of the agent's session (its ppid, its process
group, its prefix blocks shared), alive and generating together (one batch: fewer steps than
their tokens), joined in order; a killed child is an error entry, not a crash; `kill -STOP
-PGID` pauses every child; the fork syscall's params (EBUSY in a turn, EINVAL for a bad grammar);
an agent whose grammar allows only a plan forks, joins and goes on to its next turn; plan_first
(a plan, then any action in a fork of the session); `llmos agent
--plan`; and (slow) SmolLM2 splitting a two-part question into its parts, answered in order."""

from __future__ import annotations

import errno
import json
import time

import jsonschema
import pytest

from llmos.kernel.abi import Sys
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from llmos.userland.agent import forks, runtime
from kernelkit import make_engine
from test_agent import k, srv  # noqa: F401  (the agent tests' kernel and client fixtures)
from test_server import ServerThread

SHORT = {"type": "object", "required": ["answer"], "additionalProperties": False,
         "properties": {"answer": {"type": "string", "maxLength": 8}}}
TASKS = ["first part", "second part", "third part"]


def session(k, max_tokens=6) -> int:
    """A session that has answered its first turn and sleeps (as an agent between steps)."""
    pid = k.syscall(Sys.SPAWN, [{"role": "user", "content": "Plan the work on this question, please."}],
                    {"max_tokens": max_tokens, "temperature": 0}, {"session": True})
    "".join(k.stream(pid))
    return pid


def end(k, *pids):
    for p in pids:
        k.kill(p, "KILL")
        k.wait(p)


def msgs(tasks):
    return [{"role": "user", "content": t} for t in tasks]


def test_children_are_forks_that_run_together_and_join_in_order(k):
    parent = session(k)
    steps0 = k.syscall(Sys.COUNTERS)["engine"]["steps"]
    kids = forks.spread(k, parent, msgs(TASKS), {"max_tokens": 12, "ignore_eos": True})
    table = {p["pid"]: p for p in k.ps()}
    held = k.syscall(Sys.COUNTERS, True)["blocks"]["held"]
    for kid in kids:
        assert table[kid]["ppid"] == parent and table[kid]["pgid"] == table[parent]["pgid"] == parent
        assert table[kid]["state"] in ("READY", "RUNNING")                  # all alive at once
        full = held[str(parent)][:-1]                                       # the prefix's full blocks
        assert len(full) >= 4 and held[str(kid)][:len(full)] == full        # shared, not copied
    branches = forks.join(k, kids)
    assert [b.pid for b in branches] == kids and all(b.ok and b.text for b in branches)
    steps = k.syscall(Sys.COUNTERS)["engine"]["steps"] - steps0
    assert steps < 2 * 12, steps                             # one batch: 36 tokens in ~12-15 steps
    assert not {p["pid"] for p in k.ps()} & set(kids)        # every child reaped
    assert k.stat(parent)["state"] == "SLEEPING"             # the parent is untouched
    end(k, parent)


def test_stop_of_the_group_pauses_every_child_and_a_killed_child_is_an_error_entry(k):
    parent = session(k)
    kids = forks.spread(k, parent, msgs(TASKS), {"max_tokens": 60, "ignore_eos": True})
    k.kill(-parent, "STOP")
    table = {p["pid"]: p for p in k.ps()}
    assert all(table[c]["state"] == "STOPPED" for c in kids)
    made = [k.stat(c)["tokens"] for c in kids]
    time.sleep(0.3)
    assert [k.stat(c)["tokens"] for c in kids] == made                  # nothing runs while stopped
    k.kill(kids[1], "KILL")
    k.kill(-parent, "CONT")
    branches = forks.join(k, kids)
    assert [b.ok for b in branches] == [True, False, True]
    assert branches[1].text == "killed by SIGKILL" and branches[1].pid == kids[1]
    assert not {p["pid"] for p in k.ps()} & set(kids)
    end(k, parent)


def test_a_child_that_cannot_start_or_outlives_the_timeout_is_an_error_entry(k):
    parent = session(k)
    gone = session(k)
    end(k, gone)
    assert [b.ok for b in forks.fork_join(k, gone, msgs(TASKS[:1]))] == [False]        # ESRCH
    b, = forks.fork_join(k, parent, msgs(TASKS[:1]), {"max_tokens": 500, "ignore_eos": True}, timeout_s=0.2)
    assert not b.ok and b.text == "timed out" and b.pid not in {p["pid"] for p in k.ps()}
    end(k, parent)


def test_fork_params_over_the_abi(k):
    parent = session(k)
    kid = k.syscall(Sys.FORK, parent, {"json_schema": SHORT, "max_tokens": 30, "temperature": 0})
    k.write(kid, {"role": "user", "content": "answer"})
    jsonschema.validate(json.loads("".join(k.stream(kid))), SHORT)
    with pytest.raises(OSError) as ei:
        k.syscall(Sys.FORK, parent, {"json_schema": {"type": "nope"}})
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        k.syscall(Sys.FORK, parent, {"max_tokens": "many"})
    assert ei.value.errno == errno.EINVAL
    busy = k.syscall(Sys.SPAWN, "x", {"max_tokens": 400, "ignore_eos": True}, None)
    with pytest.raises(OSError) as ei:
        k.syscall(Sys.FORK, busy, {"max_tokens": 3})
    assert ei.value.errno == errno.EBUSY
    end(k, parent, kid, busy)


class PlanOnly(runtime.Agent):
    """A test agent whose grammar allows nothing but a plan (of given sub-tasks) and short answers:
    the tiny model's first action is then a plan, whatever its weights."""

    TASKS = ("north", "south")

    def action_schema(self):
        s = self.plan_schema()                 # two given sub-tasks (so that their answers differ)
        s["properties"]["plan"].update(prefixItems=[{"const": w} for w in self.TASKS], items=False)
        return s

    def answer_schema(self):
        return SHORT


def test_the_agent_plan_action_forks_the_session_and_goes_on(k, monkeypatch):
    seen, joined = [], []

    def fork_join(*a, **kw):                                 # the real one, its branches kept
        joined.extend(real(*a, **kw))
        return joined
    real = forks.fork_join
    monkeypatch.setattr(forks, "fork_join", fork_join)
    agent = PlanOnly(k, [], max_steps=1, max_tokens=60, plan=True, max_subtasks=3, trace=seen.append)
    assert "plan" in agent.messages("q")[0]["content"]
    pid = agent.start("Split this question in parts.")
    before = k.stat(pid)["tokens"]
    out = agent.loop(pid)
    step, = out.steps
    assert step.tool == "plan" and seen == [step]
    tasks, kids = step.args["tasks"], step.args["pids"]
    assert tasks == list(PlanOnly.TASKS) and len(kids) == 2 and all(c > pid for c in kids)
    assert len({b.text for b in joined}) == 2, joined        # (else the order check below is blind)
    lines = step.output.splitlines()
    assert [ln.split(". ", 1)[0] for ln in lines] == [str(i) for i in range(1, len(tasks) + 1)]
    assert [b.pid for b in joined] == kids
    for i, (line, task, b) in enumerate(zip(lines, tasks, joined), 1):   # each child's answer, in order
        assert line == f"{i}. {task}: {json.loads(b.text)['answer']}"    # (its grammar: an answer)
    assert step.ok
    # the joined answers went back into the session, which generated its next action from them
    assert out.error == "no answer after 1 tool calls" and k.stat(pid)["tokens"] > before
    assert not {p["pid"] for p in k.ps()} & set(kids)
    agent.end(pid)


class PlanFirst(runtime.Agent):
    def plan_schema(self):
        s = super().plan_schema()
        s["properties"]["plan"].update(prefixItems=[{"const": w} for w in PlanOnly.TASKS], items=False)
        return s

    def answer_schema(self):
        return SHORT


def test_plan_first_forces_a_plan_then_goes_on_in_a_fork_that_may_take_any_action(k):
    agent = PlanFirst(k, [], max_steps=2, max_tokens=60, plan_first=True)
    assert agent.plan and json.loads(json.dumps(agent.action_schema()))["anyOf"][-1] == SHORT
    pid = agent.start("Split this question in parts.")
    out = agent.loop(pid)
    assert out.steps[0].tool == "plan" and out.steps[0].args["tasks"] == list(PlanOnly.TASKS)
    assert out.answer is not None or len(out.steps) == 2, out                # a whole second action
    table = {p["pid"]: p for p in k.ps()}
    assert pid not in table and out.pid in table                            # the first session ended
    assert table[out.pid]["ppid"] == pid and table[out.pid]["pgid"] == pid  # its fork, in its group
    assert "anyOf" in k.stat(out.pid)["params"]["constraint"]["text"]        # every action allowed
    agent.end(out.pid)
    ran = PlanFirst(k, [], max_steps=2, max_tokens=60, plan_first=True).run("Split this question in parts.")
    assert ran.steps[0].tool == "plan" and ran.pid not in {p["pid"] for p in k.ps()}   # run ends the fork


def test_plan_answers_and_errors_in_order(k):
    assert runtime.answer_of(forks.Branch(5, True, '{"answer":"42"}')) == (True, "42")
    assert runtime.answer_of(forks.Branch(5, False, "killed by SIGKILL")) == (False, "killed by SIGKILL")
    ok, why = runtime.answer_of(forks.Branch(5, True, '{"answer":"4'))
    assert not ok and "no whole answer" in why
    with pytest.raises(ValueError, match="max_subtasks"):
        runtime.Agent(k, [], plan=True, max_subtasks=1)
    assert "plan" not in json.dumps(runtime.Agent(k, []).action_schema())
    assert "plan" in json.dumps(runtime.Agent(k, [], plan=True).action_schema())


@pytest.mark.slow
def test_smollm2_plan_children_answer_each_part_in_order(smollm2_path):
    from llmos.drivers.llama import LlamaModel
    model = LlamaModel.load(smollm2_path)
    waits = WaitQueues()
    engine = make_engine(model, 512, on_wake=waits.wake, check_invariants=False)
    with ServerThread(engine, model, waits) as s, lib.Client(user="alice", client="test") as c:
        del s
        out = runtime.Agent(c, [], max_steps=2, max_tokens=80, plan_first=True, max_subtasks=2).run(
            "What is the capital of France, and what is the capital of Italy?")   # the parts are the model's
        step = out.steps[0]
        assert step.tool == "plan" and step.ok, out
        lines = step.output.splitlines()
        assert len(lines) == 2 and lines[0].startswith("1. ") and lines[1].startswith("2. "), lines
        assert "France" in step.args["tasks"][0] and "Italy" in step.args["tasks"][1], lines   # the parts, in order
        assert "Paris" in lines[0].split(": ", 1)[1], lines     # (the 135M model answers Italy's part with "Italy")


def test_llmos_agent_plan_options(k):
    import io as _io

    from llmos.userland import program
    from llmos.userland.bin import agent
    err = _io.StringIO()
    io = program.IO("llmos agent", out=_io.StringIO(), err=err, client=lambda: k)
    assert agent.main(["agent", "--plan", "--max-subtasks", "1", "q"], io) == 2
    assert "max_subtasks must be in [2, 16]" in err.getvalue()
    assert agent.parser().parse_args(["--plan", "q"]).plan and not agent.parser().parse_args(["q"]).plan
