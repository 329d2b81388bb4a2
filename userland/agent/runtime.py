"""The agent loop: one session process whose every turn is constrained (a JSON schema, the
kernel's grammars) to a tool call or a final answer; tools run in the sandbox; each result is
written back into the same session (its KV kept: only the result is prefilled).

    {"tool": NAME, "args": {...}}     call a tool (args follow the tool's own JSON schema)
    {"plan": [SUB-TASK, ...]}         (with plan=True) answer independent sub-tasks in parallel
    {"answer": TEXT}                  the final answer

Planning (forks.py): a plan action forks the session once per sub-task (the children share its
KV copy-on-write: the whole conversation so far is never prefilled again), writes each child its
sub-task, constrains each child to an answer (fork with the answer's grammar), runs them
together in the kernel's batch, reaps them and writes their answers, in order, back into the
session as one result; then the loop goes on. A child that fails is an error line in that
result. Every process an agent makes is in its session's process group, so `kill -STOP -PGID`
pauses the whole agent, children included, and `kill -CONT -PGID` resumes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from llmos.kernel.abi import Sys

from . import forks, sandbox
from .tools import Tool

SYSTEM = """You are an agent. You cannot do arithmetic in your head: for any calculation, first call
the calculator. Reply with one JSON object: {{"tool": NAME, "args": {{...}}}} to call a tool, or
{{"answer": TEXT}} once a tool result gives you the answer.
Tools:
{tools}"""

PLANNING = """
A question with independent parts may be split: reply {"plan": [QUESTION, QUESTION, ...]}, each
QUESTION one part asked in full words (it is answered alone, in parallel); you then get the answers."""

PLAN_EXAMPLE = [
    {"role": "user", "content": "What is the capital of Spain, and what is the capital of Japan?"},
    {"role": "assistant", "content": '{"plan":["What is the capital of Spain?","What is the capital of Japan?"]}'},
]

ANSWER = {"type": "object", "additionalProperties": False, "required": ["answer"],
          "properties": {"answer": {"type": "string", "maxLength": 1000}}}

# Worked calls shown as earlier turns: a 135M model copies the latest turns' shape, so these end
# with a call, never with an answer (which it would then give at once, unchecked).
EXAMPLE = [
    {"role": "user", "content": "What is 12 * 7?"},
    {"role": "assistant", "content": '{"tool":"calculator","args":{"expression":"12 * 7"}}'},
    {"role": "user", "content": "How much is 350 / 14 + 3?"},
    {"role": "assistant", "content": '{"tool":"calculator","args":{"expression":"350 / 14 + 3"}}'},
]


@dataclass
class Step:
    tool: str
    args: dict
    ok: bool
    output: str


@dataclass
class Outcome:
    answer: str | None                       # None: no answer within max_steps, or the session ended
    steps: list[Step] = field(default_factory=list)
    pid: int = 0
    error: str = ""


class Agent:
    def __init__(self, client, tools: list[Tool], *, root: str = ".", allow_shell: bool = False,
                 max_steps: int = 6, max_tokens: int = 200, limits: sandbox.Limits = sandbox.Limits(),
                 examples: bool = True, trace=None, plan: bool = False, max_subtasks: int = 4,
                 subtask_timeout_s: float | None = None, plan_first: bool = False):
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        if any(t.needs == "shell" for t in tools) and not allow_shell:
            raise ValueError("the shell tool is off unless enabled (allow_shell)")
        self.k, self.tools = client, {t.name: t for t in tools}
        self.cfg = {"root": str(root), "allow_shell": allow_shell}
        self.max_steps, self.max_tokens, self.limits = max_steps, max_tokens, limits
        self.examples = examples
        self.trace = trace or (lambda step: None)
        if not 2 <= max_subtasks <= 16:
            raise ValueError("max_subtasks must be in [2, 16]")
        self.plan, self.max_subtasks, self.subtask_timeout_s = plan or plan_first, max_subtasks, subtask_timeout_s
        self.plan_first = plan_first         # the first step must be a plan (then any action)

    def action_schema(self) -> dict:
        """A tool call (one branch per tool, its arguments by its schema), a plan (when planning
        is on) or a final answer."""
        calls = [{"type": "object", "additionalProperties": False, "required": ["tool", "args"],
                  "properties": {"tool": {"const": t.name}, "args": t.parameters}} for t in self.tools.values()]
        return {"anyOf": [*calls, *([self.plan_schema()] if self.plan else []), self.answer_schema()]}

    def answer_schema(self) -> dict:
        return ANSWER

    def plan_schema(self) -> dict:
        tasks = {"type": "array", "minItems": 2, "maxItems": self.max_subtasks,
                 "items": {"type": "string", "minLength": 1, "maxLength": 300}}
        return {"type": "object", "additionalProperties": False, "required": ["plan"], "properties": {"plan": tasks}}

    def messages(self, question: str) -> list[dict]:
        listing = "\n".join(f"- {t.name}: {t.description}" for t in self.tools.values())
        system = SYSTEM.format(tools=listing or "(none)") + (PLANNING if self.plan else "")
        return [{"role": "system", "content": system},
                *(PLAN_EXAMPLE if self.examples and self.plan else []),
                *(EXAMPLE if self.examples and "calculator" in self.tools else []),
                {"role": "user", "content": question}]

    def params(self, schema: dict) -> dict:
        return {"json_schema": schema, "max_tokens": self.max_tokens, "temperature": 0}

    def start(self, question: str, pgid: int | None = None) -> int:
        """The agent's session process (greedy, constrained to actions: with plan_first, its
        first turn to a plan); its own process group."""
        params = self.params(self.plan_schema() if self.plan_first else self.action_schema())
        opts = {"session": True, "command": "agent " + " ".join(question.split())[:40]}
        if pgid is not None:
            opts["pgid"] = pgid
        return self.k.syscall(Sys.SPAWN, self.messages(question), params, opts)

    def run(self, question: str) -> Outcome:
        out = Outcome(None, pid=self.start(question))
        try:
            return self.loop(out.pid, out)
        finally:
            self.end(out.pid)

    def loop(self, pid: int, out: Outcome | None = None) -> Outcome:
        """Read actions from the session and act until an answer (or max_steps tool calls).
        out.pid is the session: after a plan_first agent's plan, a fork of it that takes any
        action (the first one ended; the conversation's KV shared, not prefilled again)."""
        out = out or Outcome(None, pid=pid)
        for _ in range(self.max_steps + 1):
            pid = out.pid
            text = "".join(self.k.stream(pid))
            try:
                action = json.loads(text)
            except ValueError:
                out.error = f"the turn ended before a whole action (max_tokens {self.max_tokens}?): {text[:200]!r}"
                return out
            if "answer" in action:
                out.answer = action["answer"]
                return out
            if len(out.steps) == self.max_steps:
                out.error = f"no answer after {self.max_steps} tool calls"
                return out
            if "plan" in action:
                step = self.fork_plan(pid, action["plan"])
            else:
                step = self.call(action["tool"], action["args"])
            out.steps.append(step)
            self.trace(step)
            if self.plan_first and len(out.steps) == 1:
                out.pid = self.k.syscall(Sys.FORK, pid, self.params(self.action_schema()))
                self.end(pid)
            self.k.write(out.pid, {"role": "user", "content": result_message(step)})
        return out

    def call(self, name: str, args: dict) -> Step:
        tool = self.tools.get(name)
        if tool is None:
            return Step(name, args, False, f"unknown tool {name!r} (known: {', '.join(self.tools)})")
        r = sandbox.run(tool, args, self.cfg, self.limits)
        return Step(name, args, r.ok, r.output)

    def fork_plan(self, pid: int, tasks: list[str]) -> Step:
        """Answer each sub-task in a fork of the sleeping session pid (constrained to an answer),
        all at once; the step's output lists the answers (or errors) in the plan's order."""
        params = self.params(self.answer_schema())
        inputs = [{"role": "user", "content": subtask_message(t)} for t in tasks]
        branches = forks.fork_join(self.k, pid, inputs, params, self.subtask_timeout_s)
        answers = [answer_of(b) for b in branches]
        lines = [f"{i}. {t}: {'' if ok else 'error: '}{a}" for i, (t, (ok, a)) in enumerate(zip(tasks, answers), 1)]
        return Step("plan", {"tasks": tasks, "pids": [b.pid for b in branches]},
                    all(ok for ok, _ in answers), "\n".join(lines))

    def end(self, pid: int) -> None:
        try:
            self.k.kill(pid, "KILL")
            self.k.wait(pid)
        except OSError:
            pass


def subtask_message(task: str) -> str:
    return f'{task}\nReply {{"answer": "..."}} with the answer to this question alone.'


def answer_of(b: forks.Branch) -> tuple[bool, str]:
    """(ok, the answer or what went wrong) of a sub-task's child."""
    if not b.ok:
        return False, b.text
    try:
        return True, json.loads(b.text)["answer"]
    except (ValueError, KeyError, TypeError):
        return False, f"no whole answer (max_tokens?): {b.text[:200]!r}"


def result_message(step: Step) -> str:
    """What the session reads after a tool call (a small model needs the way on spelled out)."""
    if step.tool == "plan":
        return (f"Answers to the parts of the plan:\n{step.output}\nIf this answers the question, reply "
                f'{{"answer": "..."}} with it.')
    if not step.ok:
        return f"Error from {step.tool}: {step.output}\nFix the call, or use another tool."
    return (f"Result of {step.tool}: {step.output}\nIf this answers the question, reply "
            f'{{"answer": "..."}} with it.')

