"""Wait queues: park, wake and time out blocking syscalls (xv6: sleep/wakeup on a channel).

Contract:
  - A handler that must wait returns a Block (kernel/syscalls.py); the server parks it here with
    park(block, owner, answer). `answer(errno, value)` sends the reply; `owner` is the connection
    (anything hashable), so that drop(owner) forgets its parked calls when it goes away.
  - The engine calls wake(proc) (its on_wake) inside commit and mutators. The pid is marked and,
    once the current commit or mutator has returned (call_soon on the running loop), each call
    parked on it re-polls: a stale wake-up finds NOT_READY and stays parked, so none is lost.
  - Every park has a timer: at its end the call re-polls once more, then answers ETIMEDOUT.
  - Parks, wakes and timers all run on the event-loop thread; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import errno as E
import logging
import traceback
from typing import Callable, Hashable

from .syscalls import NOT_READY, Block, KernelError

log = logging.getLogger("llmos.kernel")


class Parked:
    __slots__ = ("block", "owner", "answer", "timer")

    def __init__(self, block: Block, owner: Hashable, answer: Callable[[int, object], None]):
        self.block, self.owner, self.answer, self.timer = block, owner, answer, None


class WaitQueues:
    """pid -> parked calls. Built at boot (the engine's on_wake is `wake`), used by the server."""

    def __init__(self):
        self._by_pid: dict[int, list[Parked]] = {}
        self._by_owner: dict[Hashable, set[Parked]] = {}
        self._woken: set[int] = set()
        self._deliver_scheduled = False

    def __contains__(self, pid: int) -> bool:
        """True when some call is parked on pid right now."""
        return pid in self._by_pid

    def park(self, block: Block, owner: Hashable, answer: Callable[[int, object], None]) -> None:
        p = Parked(block, owner, answer)
        p.timer = asyncio.get_running_loop().call_later(block.timeout, self._timed_out, p)
        self._by_pid.setdefault(block.pid, []).append(p)
        self._by_owner.setdefault(owner, set()).add(p)

    def wake(self, proc) -> None:
        """engine.on_wake: re-poll the calls parked on proc.pid after the current callback."""
        self._woken.add(proc.pid)
        if not self._deliver_scheduled:
            self._deliver_scheduled = True
            asyncio.get_running_loop().call_soon(self.deliver)

    def deliver(self) -> None:
        """Re-poll every call parked on a woken pid (answered ones leave their queue)."""
        self._deliver_scheduled = False
        woken, self._woken = self._woken, set()
        for pid in woken:
            for p in list(self._by_pid.get(pid, ())):
                self._repoll(p)

    def drop(self, owner: Hashable) -> None:
        """The owner is gone: forget its parked calls without answering them."""
        for p in list(self._by_owner.get(owner, ())):
            self._unpark(p)

    def answer_all(self, err: int, message: str) -> None:
        """Answer every parked call with an error (shutdown)."""
        for ps in list(self._by_pid.values()):
            for p in list(ps):
                self._finish(p, err, message)

    # ---- internals ------------------------------------------------------------------------
    def _unpark(self, p: Parked) -> None:
        ws = self._by_pid.get(p.block.pid)
        if ws is not None and p in ws:
            ws.remove(p)
            if not ws:
                del self._by_pid[p.block.pid]
        p.timer.cancel()
        mine = self._by_owner.get(p.owner)
        if mine is not None:
            mine.discard(p)
            if not mine:
                del self._by_owner[p.owner]

    def _finish(self, p: Parked, err: int, value) -> None:
        self._unpark(p)
        p.answer(err, value)

    def _repoll(self, p: Parked) -> bool:
        """Poll a parked call; answer it and return True when it is done."""
        try:
            v = p.block.poll()
        except KernelError as e:
            self._finish(p, e.errno, e.message)
            return True
        except Exception as e:
            log.error("poll failed:\n%s", traceback.format_exc())
            self._finish(p, E.EIO, f"kernel bug: {type(e).__name__}: {e}"[:300])
            return True
        if v is NOT_READY:
            return False
        self._finish(p, 0, v)
        return True

    def _timed_out(self, p: Parked) -> None:
        if not self._repoll(p):
            self._finish(p, E.ETIMEDOUT, f"no answer within {p.block.timeout:g} s")
