"""`agent [--tools T,...] [--dir DIR] [--enable-shell] [--plan[-first]] [--max-steps N] [--timeout S] QUESTION`:
answer a question with tools (userland/agent): the model's every step is a tool call or the
answer (a grammar), tools run as limited subprocesses, results go back into the same session.

--plan adds a third kind of step: {"plan": [SUB-TASK, ...]} forks the agent's session once per
sub-task (the conversation's KV shared copy-on-write), the children answer together in one batch
and their answers come back into the session as one result (userland/agent/forks.py).
--plan-first makes the first step a plan (the grammar allows nothing else); the session then
goes on in a fork of itself whose grammar allows every action (its pid is the new session's).

Each tool call is shown on stderr (`calculator {"expression": "23 * 47"} -> 1081`); the answer
is printed on stdout. Exit status 1 when no answer came (the reason on stderr), 2 on bad usage.
`kill -STOP -PGID` (the agent's session pid is its group) pauses the whole agent.
"""

from __future__ import annotations

import json
import sys

from llmos.userland import program

SUMMARY = "answer a question with tools (calculator, files, search, shell)"
DEFAULT_TOOLS = "calculator,list_files,read_file,search"


def parser(prog: str = "agent") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("--tools", default=DEFAULT_TOOLS, help=f"comma-separated (default {DEFAULT_TOOLS}; also: shell)")
    p.add_argument("--dir", default=".", help="the directory file tools may read (default: .)")
    p.add_argument("--enable-shell", action="store_true", help="allow the shell tool (off by default)")
    p.add_argument("--max-steps", type=int, default=6, help="tool calls before giving up (default 6)")
    p.add_argument("--max-tokens", type=int, default=200, help="tokens per model step (default 200)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a tool may run (default 10)")
    p.add_argument("--no-example", action="store_true", help="no worked example in the prompt")
    p.add_argument("--plan", action="store_true", help="the model may split the question into sub-tasks "
                                                       "answered in parallel by forks of its session")
    p.add_argument("--plan-first", action="store_true", help="the first step is a plan (implies --plan)")
    p.add_argument("--max-subtasks", type=int, default=4, help="sub-tasks per plan, 2..16 (default 4)")
    p.add_argument("question", nargs="*")
    return p


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos agent")
    return program.run(argv, io, parser(io.prog), _agent)


def _agent(args, io: program.IO) -> int:
    from llmos.userland.agent import runtime, sandbox, tools

    question = " ".join(args.question).strip()
    if not question:
        raise program.UsageError("no question given")
    names = [n for n in args.tools.split(",") if n]
    if args.enable_shell and "shell" not in names:
        names.append("shell")
    try:
        chosen = tools.builtin(names)
        agent = runtime.Agent(io.client, chosen, root=args.dir, allow_shell=args.enable_shell,
                              max_steps=args.max_steps, max_tokens=args.max_tokens,
                              limits=sandbox.Limits(timeout_s=args.timeout), examples=not args.no_example,
                              plan=args.plan, max_subtasks=args.max_subtasks, plan_first=args.plan_first,
                              trace=lambda s: io.err.write(f"{s.tool} {json.dumps(s.args)} -> "
                                                           f"{'' if s.ok else 'error: '}{s.output[:200]}\n"))
    except ValueError as e:
        raise program.UsageError(str(e)) from None
    out = agent.run(question)
    if out.answer is None:
        io.error(out.error or "no answer")
        return 1
    io.write(out.answer + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
