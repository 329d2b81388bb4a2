"""Fork/join: one process's context (its KV) shared by a child per sub-task, the children run
together in the kernel's batch, their outputs joined in order. The one mechanism behind an
agent's plan action (runtime.py) and the map step of `llmos summarize` / `llmos translate`.

    kids = spread(k, pid, inputs, params)   # fork pid once per input, give each child its input
    branches = join(k, kids)                # each child's output, in order; every child reaped
    branches = fork_join(k, pid, inputs, params)

Contracts
  * pid is between turns: a session that sleeps (an input is a chat message {role, content},
    written as the child's next turn) or a process whose prompt is still open (an input is text,
    appended to the child's prompt, which is then closed). Every child is forked before any gets
    its input, so all of them start in the same steps; they share pid's prefix blocks
    copy-on-write and belong to pid's process group (`kill -STOP -PGID` pauses them all).
  * params: the children's own sampling params (the kernel's fork(pid, params): e.g. a grammar
    that allows only an answer); None: pid's own.
  * A child that cannot be forked or written, is killed, fails in the kernel or outlives
    timeout_s gives a Branch with ok=False and the reason: never an exception. join ends and
    reaps every child, whatever happens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from llmos.kernel.abi import SIGNAL_NAMES, Sys


@dataclass(frozen=True)
class Branch:
    pid: int              # 0 when the fork itself failed
    ok: bool
    text: str             # the child's output, or (not ok) what went wrong


def spread(k, pid: int, inputs: list, params: dict | None = None) -> list[int | OSError]:
    """Fork pid once per input, then write each child its input. A slot holds the child's pid,
    or the OSError that kept it from starting (its child, if any, already ended)."""
    kids: list[int | OSError] = []
    for _ in inputs:
        try:
            kids.append(k.syscall(Sys.FORK, pid, *([] if params is None else [params])))
        except OSError as e:
            kids.append(e)
    for i, (kid, item) in enumerate(zip(kids, inputs)):
        if isinstance(kid, OSError):
            continue
        try:
            k.write(kid, item)
            if isinstance(item, str):
                k.close_stdin(kid)
        except OSError as e:
            _end(k, kid)
            kids[i] = e
    return kids


def join(k, kids: list[int | OSError], timeout_s: float | None = None) -> list[Branch]:
    """Each child's output (its turn, or all it wrote until it exited), in order; every child
    is then killed if still alive and reaped. timeout_s: for all of them together."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    out = []
    try:
        for kid in kids:
            if isinstance(kid, OSError):
                out.append(Branch(0, False, f"not started: {kid.strerror or kid}"))
            else:
                out.append(_collect(k, kid, end))
    finally:
        for kid in kids:
            if not isinstance(kid, OSError):
                _end(k, kid)
    return out


def fork_join(k, pid: int, inputs: list, params: dict | None = None, timeout_s: float | None = None) -> list[Branch]:
    return join(k, spread(k, pid, inputs, params), timeout_s)


def _collect(k, kid: int, end: float | None) -> Branch:
    parts = []
    try:
        while True:
            r = k.read(kid, None if end is None else max(0.0, end - time.monotonic()))
            parts.append(r["text"])
            if r["turn_end"]:
                return Branch(kid, True, "".join(parts))
            if r["eof"]:
                break
        st = k.wait(kid)
    except TimeoutError:
        return Branch(kid, False, "timed out")
    except OSError as e:
        return Branch(kid, False, e.strerror or str(e))
    text = "".join(parts)
    if st.get("reason") == "signal":
        return Branch(kid, False, f"killed by {SIGNAL_NAMES.get(st.get('signal'), st.get('signal'))}")
    if st.get("reason") == "error":
        return Branch(kid, False, f"failed: {st.get('message')}")
    return Branch(kid, True, text)


def _end(k, kid: int) -> None:
    for call in (lambda: k.kill(kid, "KILL"), lambda: k.wait(kid)):
        try:
            call()
        except OSError:
            pass
