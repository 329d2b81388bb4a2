"""Tools an agent may call: each declared by a name, a description and a JSON schema for its
arguments; each run as a real subprocess by sandbox.py (never in the agent's own process).

Built-ins (their code runs in the sandbox child, `python -m llmos.userland.agent.sandbox NAME`):
  calculator   arithmetic without eval (calc.py)
  list_files   the entries of a directory under the allowed root
  read_file    lines of a file under the allowed root
  search       the knowledge index (userland/index, `llmos index add`): the best chunks, file:line
  shell        a /bin/sh command in the allowed root: off unless the agent enables it
A Tool with `command` is an external program: it gets {"args": ...} as JSON on stdin and its
stdout is the result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_READ_CHARS = 8000


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict                                   # JSON schema of the arguments (an object)
    command: tuple[str, ...] = ()                      # external program; () = a built-in
    needs: str = ""                                    # "shell": only when the agent enables it
    extra: dict = field(default_factory=dict)


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


BUILTINS: dict[str, Tool] = {t.name: t for t in (
    Tool("calculator", "evaluate an arithmetic expression, e.g. 12 * (3 + 4) / 2",
         _obj({"expression": {"type": "string", "maxLength": 200}}, ["expression"])),
    Tool("list_files", "list the files of a directory (relative to the allowed directory)",
         _obj({"path": {"type": "string", "maxLength": 200}}, ["path"])),
    Tool("read_file", "read a text file (relative to the allowed directory), from line `start`",
         _obj({"path": {"type": "string", "maxLength": 200}, "start": {"type": "integer", "minimum": 1}},
              ["path"])),
    Tool("search", "search the knowledge index for passages about a question",
         _obj({"query": {"type": "string", "maxLength": 300}}, ["query"])),
    Tool("shell", "run a shell command in the allowed directory",
         _obj({"command": {"type": "string", "maxLength": 300}}, ["command"]), needs="shell"),
)}


def builtin(names: list[str]) -> list[Tool]:
    """The named built-in tools; ValueError naming an unknown one."""
    unknown = [n for n in names if n not in BUILTINS]
    if unknown:
        raise ValueError(f"unknown tool {unknown[0]!r} (known: {', '.join(BUILTINS)})")
    return [BUILTINS[n] for n in names]


# ---- the built-ins' code: runs in the sandbox child ------------------------------------------

class ToolError(Exception):
    """A tool's own failure, reported to the agent as its error result."""


def _inside(root: str, rel: str) -> Path:
    base = Path(root).resolve()
    p = (base / rel).resolve()
    if p != base and base not in p.parents:
        raise ToolError(f"{rel}: outside the allowed directory")
    return p


def run_builtin(name: str, args: dict, cfg: dict) -> str:
    if name == "calculator":
        from .calc import CalcError, evaluate, format_number
        try:
            return format_number(evaluate(args["expression"]))
        except CalcError as e:
            raise ToolError(str(e)) from None
    if name == "list_files":
        p = _inside(cfg["root"], args.get("path") or ".")
        if not p.is_dir():
            raise ToolError(f"{args.get('path')}: not a directory")
        return "\n".join(sorted(e.name + ("/" if e.is_dir() else "") for e in p.iterdir())) or "(empty)"
    if name == "read_file":
        p = _inside(cfg["root"], args["path"])
        if not p.is_file():
            raise ToolError(f"{args['path']}: no such file")
        lines = p.read_text(errors="replace").splitlines()[max(1, args.get("start", 1)) - 1:]
        return "\n".join(lines)[:MAX_READ_CHARS]
    if name == "search":
        from llmos.userland import lib
        from llmos.userland.index.store import Index
        with Index() as ix, lib.Client(client="llmos-agent-search") as k:
            hits = ix.search(k.embed([args["query"]])[0], 3)
        if not hits:
            return "(the index is empty)"
        return "\n\n".join(f"[{h.path}:{h.start}] {h.text[:600]}" for h in hits)
    if name == "shell":
        if not cfg.get("allow_shell"):
            raise ToolError("the shell tool is not enabled")
        import subprocess
        r = subprocess.run(["/bin/sh", "-c", args["command"]], cwd=cfg["root"], capture_output=True,
                           text=True, errors="replace")
        return (r.stdout + r.stderr)[:MAX_READ_CHARS] + (f"\n(exit status {r.returncode})" if r.returncode else "")
    raise ToolError(f"unknown tool {name!r}")


def child_main(name: str) -> int:
    """The sandbox child: {"args", "cfg"} on stdin -> {"ok", "output" | "error"} on stdout."""
    req = json.loads(os.read(0, 1 << 20) or b"{}")
    try:
        out = {"ok": True, "output": run_builtin(name, req.get("args") or {}, req.get("cfg") or {})}
    except ToolError as e:
        out = {"ok": False, "error": str(e)}
    except (OSError, KeyError, ValueError, TypeError) as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))
    return 0
