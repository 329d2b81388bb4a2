"""Run one tool call as a real subprocess: its own session (killed as a group), CPU seconds and
address space capped with setrlimit, no network (a new network namespace with `unshare -rn`
where the system allows it; where it does not, NETWORK_ISOLATED is False and results say so),
a wall-clock timeout. A hung tool is killed at its timeout, a crashing one (a signal, a non-zero
exit, garbage on stdout) gives an error result: nothing a tool does can raise in the agent.

    python -m llmos.userland.agent.sandbox NAME    # the child side of a built-in tool
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from .tools import Tool

MAX_OUTPUT = 16_000


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0          # wall clock
    cpu_s: int = 5                   # RLIMIT_CPU (the kernel sends SIGXCPU, then SIGKILL)
    memory_bytes: int = 1 << 30      # RLIMIT_AS
    no_network: bool = True          # run inside `unshare -rn` when it works here


@dataclass(frozen=True)
class Result:
    ok: bool
    output: str                      # the tool's answer, or what went wrong


@functools.cache
def network_isolation() -> bool:
    """Whether `unshare -rn` (a user + network namespace) works on this system."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limit(lim: Limits):
    def apply():                     # in the child, before exec
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_s, lim.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run(tool: Tool, args: dict, cfg: dict, lim: Limits = Limits()) -> Result:
    """Call `tool` with `args` in a limited subprocess; never raises for what the tool does."""
    argv = list(tool.command) or [sys.executable, "-m", "llmos.userland.agent.sandbox", tool.name]
    if lim.no_network and network_isolation():
        argv = ["unshare", "-rn", *argv]
    request = json.dumps({"args": args, "cfg": cfg}).encode()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_limit(lim), cwd=cfg.get("root") or None)
    except OSError as e:
        return Result(False, f"{tool.name} could not start: {e}")
    try:
        out, err = proc.communicate(request, timeout=lim.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Result(False, f"{tool.name} timed out after {lim.timeout_s:g} s and was killed")
    if proc.returncode != 0:
        how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return Result(False, f"{tool.name} crashed ({how}) {tail[0]}".strip()[:500])
    text = out.decode(errors="replace")
    if tool.command:                 # an external program: its stdout is the answer
        return Result(True, text.strip()[:MAX_OUTPUT])
    try:
        reply = json.loads(text)
        return Result(bool(reply["ok"]), str(reply.get("output", reply.get("error", "")))[:MAX_OUTPUT])
    except (ValueError, KeyError, TypeError):
        return Result(False, f"{tool.name} gave no answer ({text[:200]!r})")


if __name__ == "__main__":
    from .tools import child_main
    sys.exit(child_main(sys.argv[1]))
