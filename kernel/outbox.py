"""Per-peer outboxes: replies the socket refused, kept in order until the peer reads again.

The kernel's ROUTER (ROUTER_MANDATORY, non-blocking sends) refuses a frame with EAGAIN when the
peer's pipe is at its high-water mark: a live peer that is not reading. Nothing a process generated
may be dropped, so such a frame, and every later one to the same peer (their order is kept), waits
here; the server retries (flush) every FLUSH_S while anything waits.

Each frame may carry an undo: what to do if it is never handed to the socket. A read reply's undo
puts its text back into the process's unread output (kernel/server.py), so a later read gets it.
A peer over its limit (max_frames or max_bytes) is not back-pressured forever: the server ends its
session visibly and calls take_back(), which runs the undos newest first, so text goes back in order.
"""

from __future__ import annotations

import errno as E
import logging
from collections import deque
from typing import Callable

log = logging.getLogger("llmos.kernel")

FLUSH_S = 0.01              # while any frame waits, the socket is retried this often
MAX_FRAMES = 10_000         # per peer: past this many waiting replies its session is ended
MAX_BYTES = 64 << 20        # per peer: ... or past this many bytes of them


class Outbox:
    """ident -> frames waiting for the peer's pipe, each (payload, undo or None)."""

    def __init__(self, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._q: dict[bytes, deque[tuple[bytes, Callable[[], None] | None]]] = {}
        self._bytes: dict[bytes, int] = {}

    def __bool__(self) -> bool:
        return bool(self._q)

    def holds(self, ident: bytes) -> bool:
        """True when frames wait for this peer: a new one must go behind them."""
        return ident in self._q

    def peers(self) -> list[bytes]:
        return list(self._q)

    def waiting(self, ident: bytes) -> int:
        return len(self._q.get(ident, ()))

    def add(self, ident: bytes, payload: bytes, undo: Callable[[], None] | None = None) -> bool:
        """Queue a frame behind the peer's others; False when that puts the peer over its limit."""
        q = self._q.setdefault(ident, deque())
        q.append((payload, undo))
        n = self._bytes[ident] = self._bytes.get(ident, 0) + len(payload)
        return len(q) <= self.max_frames and n <= self.max_bytes

    def flush(self, ident: bytes, send: Callable[[bytes, bytes], int]) -> int:
        """Hand the peer's frames, oldest first, to send(ident, payload) -> 0 (taken) or an errno,
        until one is refused; returns 0 when all went, else that errno (the frame stays)."""
        q = self._q.get(ident)
        while q:
            err = send(ident, q[0][0])
            if err:
                return err
            payload, _ = q.popleft()
            self._bytes[ident] -= len(payload)
        self._q.pop(ident, None)
        self._bytes.pop(ident, None)
        return 0

    def take_back(self, ident: bytes) -> int:
        """Forget the peer's frames, running their undos newest first; returns how many there were."""
        q = self._q.pop(ident, None) or ()
        self._bytes.pop(ident, None)
        for _, undo in reversed(q):
            if undo is not None:
                try:
                    undo()
                except Exception as e:       # a kernel bug; the other undos still run
                    log.error("outbox: an undo failed: %s: %s", type(e).__name__, e)
        return len(q)

