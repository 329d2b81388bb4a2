"""The agent loop: one session process whose every turn is constrained (a JSON schema, the
kernel's grammars) to a tool call or a final answer; tools run in the sandbox; each result is
written back into the same session (its KV kept: only the result is prefilled).

    {"tool": NAME, "args": {...}}     call a tool (args follow the tool's own JSON schema)
    {"answer": TEXT}                  the final answer

Planning: map(pid, prompts) forks a process once per sub-task (the children share its KV
prefix copy-on-write and run in parallel in the kernel's batch), writes each child its sub-task
and joins their answers in order. Every process an agent makes is in its session's process
group, so `kill -STOP -PGID` pauses the whole agent and `kill -CONT -PGID` resumes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from llmos.kernel.abi import Sys

from . import sandbox
from .tools import Tool

SYSTEM = """You are an agent. You cannot do arithmetic in your head: for any calculation, first call
the calculator. Reply with one JSON object: {{"tool": NAME, "args": {{...}}}} to call a tool, or
{{"answer": TEXT}} once a tool result gives you the answer.
Tools:
{tools}"""

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
                 examples: bool = True, trace=None):
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        if any(t.needs == "shell" for t in tools) and not allow_shell:
            raise ValueError("the shell tool is off unless enabled (allow_shell)")
        self.k, self.tools = client, {t.name: t for t in tools}
        self.cfg = {"root": str(root), "allow_shell": allow_shell}
        self.max_steps, self.max_tokens, self.limits = max_steps, max_tokens, limits
        self.examples = examples and "calculator" in self.tools
        self.trace = trace or (lambda step: None)

    def action_schema(self) -> dict:
        """A tool call (one branch per tool, its arguments by its schema) or a final answer."""
        calls = [{"type": "object", "additionalProperties": False, "required": ["tool", "args"],
                  "properties": {"tool": {"const": t.name}, "args": t.parameters}} for t in self.tools.values()]
        answer = {"type": "object", "additionalProperties": False, "required": ["answer"],
                  "properties": {"answer": {"type": "string", "maxLength": 1000}}}
        return {"anyOf": [*calls, answer]}

    def messages(self, question: str) -> list[dict]:
        listing = "\n".join(f"- {t.name}: {t.description}" for t in self.tools.values())
        return [{"role": "system", "content": SYSTEM.format(tools=listing)},
                *(EXAMPLE if self.examples else []), {"role": "user", "content": question}]

    def start(self, question: str, pgid: int | None = None) -> int:
        """The agent's session process (greedy, constrained to actions); its own process group."""
        params = {"json_schema": self.action_schema(), "max_tokens": self.max_tokens, "temperature": 0}
        opts = {"session": True, "command": "agent " + " ".join(question.split())[:40]}
        if pgid is not None:
            opts["pgid"] = pgid
        return self.k.syscall(Sys.SPAWN, self.messages(question), params, opts)

    def run(self, question: str) -> Outcome:
        pid = self.start(question)
        try:
            return self.loop(pid)
        finally:
            self.end(pid)

    def loop(self, pid: int) -> Outcome:
        """Read actions from the session and act until an answer (or max_steps tool calls)."""
        out = Outcome(None, pid=pid)
        for _ in range(self.max_steps + 1):
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
            step = self.call(action["tool"], action["args"])
            out.steps.append(step)
            self.trace(step)
            self.k.write(pid, {"role": "user", "content": result_message(step)})
        return out

    def call(self, name: str, args: dict) -> Step:
        tool = self.tools.get(name)
        if tool is None:
            return Step(name, args, False, f"unknown tool {name!r} (known: {', '.join(self.tools)})")
        r = sandbox.run(tool, args, self.cfg, self.limits)
        return Step(name, args, r.ok, r.output)

    def end(self, pid: int) -> None:
        try:
            self.k.kill(pid, "KILL")
            self.k.wait(pid)
        except OSError:
            pass


def result_message(step: Step) -> str:
    """What the session reads after a tool call (a small model needs the way on spelled out)."""
    if not step.ok:
        return f"Error from {step.tool}: {step.output}\nFix the call, or use another tool."
    return (f"Result of {step.tool}: {step.output}\nIf this answers the question, reply "
            f'{{"answer": "..."}} with it.')


def map_forks(k, pid: int, inputs: list[str]) -> list[str]:
    """Fork pid once per input (a process spawned with stdin=True whose prompt is the shared
    prefix), write each child its input, close it and join the answers in order. The children
    share the prefix's KV copy-on-write and generate together in the kernel's batch."""
    kids = []
    try:
        for text in inputs:
            c = k.fork(pid)
            kids.append(c)
            k.write(c, text)
            k.close_stdin(c)
        return ["".join(k.stream(c)).strip() for c in kids]
    finally:
        for c in kids:
            try:
                k.kill(c, "KILL")
            except OSError:
                pass
            try:
                k.wait(c)
            except OSError:
                pass
