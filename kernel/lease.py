"""Leases: a connection that vanishes hands its processes to the kernel's reaper.

A session (a connection after hello) holds the processes it spawned or forked (Process.holder is
its sid). When the transport reports it gone (kernel/server.py: socket monitor, failed send,
probe), lost(sess) starts its lease; lease_s later end(sess) gives every process it held to init
(xv6's reparent-to-init, engine.orphan): live non-detached ones get SIGKILL and init reaps each
once it is a zombie; detached ones live on (nohup) and, once they exit, stay zombies with their
status and unread output until their owner's wait() reaps them (any connection of that user). A
client that comes back within the lease cannot reclaim its processes: its routing id is forgotten
when the session is lost (it reaches its detached processes as their owner, by pid).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger("llmos.kernel")


class Leases:
    def __init__(self, engine, lease_s: float, on_work: Callable[[], None]):
        self.engine, self.lease_s, self.on_work = engine, lease_s, on_work
        self.pending: dict[int, asyncio.TimerHandle] = {}    # sid -> the lease's end

    def lost(self, sess) -> None:
        """The session's peer is gone: its processes outlive it by lease_s."""
        if sess.sid not in self.pending:
            log.info("session %d (%s) lost; its processes end in %g s", sess.sid, sess.user, self.lease_s)
            self.pending[sess.sid] = asyncio.get_running_loop().call_later(self.lease_s, self.end, sess)

    def end(self, sess) -> None:
        """The lease is over: the session's processes go to init (reparent, SIGKILL, reap)."""
        self.pending.pop(sess.sid, None)
        if self.engine is None:
            return
        killed = self.engine.orphan(sess.sid)
        log.info("session %d (%s) ended: %d processes killed", sess.sid, sess.user, killed)
        self.on_work()

    def cancel_all(self) -> None:
        for t in self.pending.values():
            t.cancel()
        self.pending.clear()
