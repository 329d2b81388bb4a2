"""The kernel's front door: a ZeroMQ ROUTER on the event loop, sessions, leases, wait channels,
and the engine loop that keeps stepping while syscalls are answered.

Design rules:
  - One thread owns the engine and the socket: the event loop. A forward step is the only work
    that leaves it (engine.execute in a worker thread via run_in_executor), so syscalls are
    answered while the model computes; schedule and commit, and every mutator, run here.
  - The socket is read without per-message futures: the ROUTER's fd is registered with the loop
    and drained until EAGAIN (ZeroMQ's fd is edge-triggered, so any send done outside a drain
    re-arms one with _kick). Bad input never raises out of _on_message: every frame is answered
    with a value or an errno, or - when even the req_id is unreadable - a nil-id notice.
  - Wait channels: a Block from a handler parks (session, req_id) on waiters[pid]; the engine's
    on_wake(proc) marks the pid and, after the current commit or mutator has returned, each
    parked call re-polls. No polling loops, no lost wake-ups (a wake-up is a re-poll, and a stale
    one finds NOT_READY and parks again); every park has a timer (ETIMEDOUT).
  - Leases: a session is a ZeroMQ routing id that said hello. Liveness comes from the transport:
    the socket monitor reports a disconnect (ZMTP heartbeats turn a dead TCP peer into one too),
    and the server confirms it by sending a nil-id notice with ROUTER_MANDATORY (EHOSTUNREACH ==
    gone); a failed reply is the same proof, and quiet sessions are probed every sweep_s. A lost
    session ends at once (its routing id is forgotten, so a peer reusing it must say hello again;
    its parked calls are dropped); lease_s later its non-detached processes get SIGKILL and,
    like every orphan, are reaped once they are zombies. Detached processes live on (nohup).
"""

from __future__ import annotations

import asyncio
import errno as E
import logging
import signal
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import abi
from .abi import Sys
from .proc import ProcState
from .syscalls import NOT_READY, TABLE, Block, Caller, Kernel, KernelError, usage

log = logging.getLogger("llmos.kernel")

NOTICE = abi.encode_reply(None, 0, None)    # the liveness probe; clients ignore nil-id frames
DRAIN_BATCH = 256                            # messages per drain before yielding to the loop


class Session(Caller):
    """A connection after hello: its routing id, transport fd, liveness and parked calls."""

    def __init__(self, ident: bytes, fd: int | None):
        super().__init__()
        self.ident, self.fd = ident, fd
        self.last_seen = time.monotonic()
        self.parked: set[Parked] = set()


class Parked:
    __slots__ = ("sess", "req_id", "block", "timer")

    def __init__(self, sess: Session, req_id: int, block: Block):
        self.sess, self.req_id, self.block, self.timer = sess, req_id, block, None


class Server:
    """bind() (at boot), then `await serve()` on the loop until shutdown()."""

    def __init__(self, kernel: Kernel, endpoints: list[str], *, lease_s: float = 3.0,
                 heartbeat_s: float = 2.0, sweep_s: float = 30.0):
        self.k, self.endpoints = kernel, list(endpoints)
        self.lease_s, self.heartbeat_s, self.sweep_s = lease_s, heartbeat_s, sweep_s
        kernel.lease_s = lease_s
        kernel.request_shutdown = self.shutdown
        self.sessions: dict[bytes, Session] = {}
        self.waiters: dict[int, list[Parked]] = {}
        self.orphans: set[int] = set()          # killed when their session's lease ended: reap
        self._woken: set[int] = set()
        self._deliver_scheduled = self._kick_scheduled = self._in_drain = False
        self._stopping = False
        self.crashed: BaseException | None = None     # what killed the engine loop, if anything
        self.ctx = self.sock = self.mon = self.loop = None
        self._work = self._stopped = None

    # ---- lifecycle ---------------------------------------------------------------------
    def bind(self) -> None:
        """Bind every endpoint (before the loop runs, so that errors surface at boot)."""
        self.ctx = zmq.Context()
        s = self.sock = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.MAXMSGSIZE, abi.HARD_FRAME_BYTES)
        s.setsockopt(zmq.LINGER, 500)
        hb = int(self.heartbeat_s * 1000)
        s.setsockopt(zmq.HEARTBEAT_IVL, hb)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * hb)
        self.mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        for i, ep in enumerate(self.endpoints):
            s.bind(ep)
            self.endpoints[i] = s.getsockopt_string(zmq.LAST_ENDPOINT)   # tcp://host:* -> the port

    async def serve(self) -> None:
        """Answer syscalls and step the engine until shutdown() is called."""
        if self.sock is None:
            self.bind()
        self.loop = asyncio.get_running_loop()
        self._work, self._stopped = asyncio.Event(), self.loop.create_future()
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._on_readable)
        self.loop.add_reader(self.mon.getsockopt(zmq.FD), self._on_monitor)
        engine = self.k.engine
        if engine is not None:
            engine.on_wake = self._on_wake
        tasks = [asyncio.ensure_future(self._sweep())]
        if engine is not None:
            tasks.append(asyncio.ensure_future(self._engine_loop()))
            tasks[-1].add_done_callback(self._engine_done)
        self._kick()
        self._on_monitor()       # both fds are edge-triggered: consume anything already pending
        log.info("serving on %s", ", ".join(self.endpoints))
        try:
            await self._stopped
            await self._wind_down(tasks)
        finally:
            for t in tasks:
                t.cancel()
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
            self.loop.remove_reader(self.mon.getsockopt(zmq.FD))
            self.sock.disable_monitor()
            self.mon.close(0)
            self.sock.close()
            self.ctx.term()

    def shutdown(self) -> None:
        """Ask serve() to stop (idempotent; loop thread or signal handler)."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def _wind_down(self, tasks) -> None:
        """SIGTERM every process, let the in-flight step finish, answer every parked call."""
        self._stopping = True
        engine = self.k.engine
        if engine is not None:
            for p in list(engine.procs.all()):
                if p.state is not ProcState.ZOMBIE:
                    self._guard(engine.signal, p.pid, signal.SIGTERM)
            self._work.set()
            await asyncio.wait([t for t in tasks[1:]], timeout=30)
            self._deliver()
        for parked in [p for ps in self.waiters.values() for p in ps]:
            self._finish(parked, E.ESHUTDOWN, "the kernel is shutting down")

    # ---- the socket --------------------------------------------------------------------
    def _kick(self) -> None:
        """Re-check the socket soon (a send may have consumed the fd's edge)."""
        if not self._kick_scheduled and self.loop is not None:
            self._kick_scheduled = True
            self.loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        self._kick_scheduled = False
        if self.sock.closed:
            return
        sock, self._in_drain = self.sock, True
        try:
            for _ in range(DRAIN_BATCH):
                try:
                    head = sock.recv(zmq.NOBLOCK, copy=False)     # the routing id (a Frame: SRCFD)
                except zmq.Again:
                    return
                frames = [head]
                while sock.getsockopt(zmq.RCVMORE):
                    frames.append(sock.recv(zmq.NOBLOCK))
                self._on_message(head, frames)
            self._kick()        # more may be queued: yield to the loop, then go on
        finally:
            self._in_drain = False

    def _send(self, ident: bytes, req_id, err: int, value) -> None:
        try:
            payload = abi.encode_reply(req_id, err, value)
        except Exception as e:  # a handler returned something msgpack cannot carry: a kernel bug
            log.error("cannot encode a reply: %s", e)
            payload = abi.encode_reply(req_id, E.EIO, f"kernel bug: unencodable reply: {e}"[:200])
        self._send_raw(ident, payload)

    def _send_raw(self, ident: bytes, payload: bytes) -> bool:
        """False when the peer is gone (and its session, if any, is marked lost)."""
        if self.sock.closed:
            return False
        try:
            self.sock.send(ident, zmq.SNDMORE | zmq.NOBLOCK)
            self.sock.send(payload, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                sess = self.sessions.get(ident)
                if sess is not None:
                    self._lost(sess)
                return False
            if e.errno != zmq.EAGAIN:   # EAGAIN: a peer not reading; alive, this frame is dropped
                log.warning("send failed: %s", e)
        finally:
            if not self._in_drain:
                self._kick()
        return True

    def _on_message(self, head, frames: list) -> None:
        """frames: [routing id, body frames...] (bodies as bytes)."""
        ident = head.bytes
        sess = self.sessions.get(ident)
        if sess is not None:
            sess.last_seen = time.monotonic()
        if len(frames) != 2:
            rid = None
            if len(frames) > 1:
                try:
                    rid = abi.decode_request(frames[1])[0]
                except abi.ProtocolError as e:
                    rid = e.req_id
            self._send(ident, rid, E.EPROTO, f"a request is one frame, got {len(frames) - 1}")
            return
        try:
            req_id, sysno, args = abi.decode_request(frames[1])
        except abi.ProtocolError as e:
            self._send(ident, e.req_id, e.errno, e.message)
            return
        entry = TABLE.get(sysno)
        if entry is None:
            self._send(ident, req_id, E.ENOSYS, f"no syscall {sysno}")
            return
        caller = sess
        if caller is None:
            if sysno != Sys.HELLO:
                self._send(ident, req_id, E.EACCES, "call hello(token, user) first")
                return
            caller = Session(ident, self._srcfd(head))
        if not entry.min_args <= len(args) <= entry.max_args:
            self._send(ident, req_id, E.EINVAL, f"{usage(sysno)} takes {entry.min_args}..{entry.max_args} "
                                                f"arguments, got {len(args)}")
            return
        if self._stopping and entry.mutates:
            self._send(ident, req_id, E.ESHUTDOWN, "the kernel is shutting down")
            return
        try:
            result = entry.fn(self.k, caller, *args)
        except KernelError as e:
            self._send(ident, req_id, e.errno, e.message)
            return
        except Exception as e:
            log.error("syscall %s failed:\n%s", Sys(sysno).name, traceback.format_exc())
            self._send(ident, req_id, E.EIO, f"kernel bug in {Sys(sysno).name.lower()}: "
                                             f"{type(e).__name__}: {e}"[:300])
            return
        finally:
            if entry.mutates and self._work is not None:
                self._work.set()
        if sess is None:
            self.sessions[ident] = caller
            log.info("session %s: hello from %s (%s)", ident.hex(), caller.user, caller.client or "-")
        if isinstance(result, Block):
            self._park(caller, req_id, result)
        else:
            self._send(ident, req_id, 0, result)

    @staticmethod
    def _srcfd(frame) -> int | None:
        try:
            return frame.get(zmq.SRCFD)
        except Exception:
            return None

    # ---- wait channels -----------------------------------------------------------------
    def _park(self, sess: Session, req_id: int, block: Block) -> None:
        p = Parked(sess, req_id, block)
        p.timer = self.loop.call_later(block.timeout, self._timed_out, p)
        self.waiters.setdefault(block.pid, []).append(p)
        sess.parked.add(p)

    def _unpark(self, p: Parked) -> None:
        ws = self.waiters.get(p.block.pid)
        if ws is not None and p in ws:
            ws.remove(p)
            if not ws:
                del self.waiters[p.block.pid]
        p.timer.cancel()
        p.sess.parked.discard(p)

    def _finish(self, p: Parked, err: int, value) -> None:
        self._unpark(p)
        self._send(p.sess.ident, p.req_id, err, value)

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

    def _on_wake(self, proc) -> None:
        """engine.on_wake: called inside commit/mutators; re-polls after they return."""
        self._woken.add(proc.pid)
        if not self._deliver_scheduled:
            self._deliver_scheduled = True
            self.loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._deliver_scheduled = False
        woken, self._woken = self._woken, set()
        for pid in woken:
            for p in list(self.waiters.get(pid, ())):
                self._repoll(p)
        if self.orphans and woken & self.orphans:
            self._reap_orphans()

    # ---- the engine loop ---------------------------------------------------------------
    async def _engine_loop(self) -> None:
        engine, loop = self.k.engine, self.loop
        with ThreadPoolExecutor(1, thread_name_prefix="llmos-step") as pool:
            while True:
                plan = engine.schedule()
                if plan is None:
                    if self._stopping:
                        return
                    self._work.clear()
                    await self._work.wait()
                    continue
                result = await loop.run_in_executor(pool, engine.execute, plan)
                engine.commit(plan, result)

    def _engine_done(self, task: asyncio.Task) -> None:
        """The engine loop ended. Anything but a clean stop is a kernel bug: fail-stop, loudly."""
        if task.cancelled() or task.exception() is None:
            return
        self.crashed = task.exception()
        log.critical("engine loop crashed; shutting down:\n%s",
                     "".join(traceback.format_exception(self.crashed)))
        self.shutdown()

    # ---- leases ------------------------------------------------------------------------
    def _on_monitor(self) -> None:
        while True:
            try:
                msg = parse_monitor_message(self.mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            fd = msg["value"]
            suspects = [s for s in self.sessions.values() if s.fd in (fd, None)]
            if suspects:
                for delay in (0.01, 0.25):   # the ROUTER drops the pipe just after the event
                    self.loop.call_later(delay, self._probe, suspects)

    def _probe(self, sessions) -> None:
        for s in sessions:
            if self.sessions.get(s.ident) is s:
                self._send_raw(s.ident, NOTICE)

    def _lost(self, sess: Session) -> None:
        """The peer is gone: the session ends now (its routing id is no longer trusted and its
        parked calls are dropped); its processes outlive it by the lease."""
        if self.sessions.get(sess.ident) is not sess:
            return
        del self.sessions[sess.ident]
        for p in list(sess.parked):
            self._unpark(p)
        log.info("session %s (%s) lost; its processes end in %g s", sess.ident.hex(), sess.user, self.lease_s)
        self.loop.call_later(self.lease_s, self.end_lease, sess)

    def end_lease(self, sess: Session) -> None:
        """The lease is over: SIGKILL the session's live non-detached processes, reap its zombies."""
        engine = self.k.engine
        if engine is None:
            return
        killed = 0
        for pid in sess.pids:
            proc = engine.procs.get(pid)
            if proc is None or proc.detached:      # detached: lives on, reaped by the engine at exit
                continue
            if proc.state is not ProcState.ZOMBIE:
                self._guard(engine.signal, pid, signal.SIGKILL)
                killed += 1
            self.orphans.add(pid)
        log.info("session %s (%s) ended: %d processes killed", sess.ident.hex(), sess.user, killed)
        self._reap_orphans()
        self._work.set()

    def _reap_orphans(self) -> None:
        """Reap the zombies nobody will wait for (unless someone is waiting right now)."""
        engine = self.k.engine
        for pid in list(self.orphans):
            proc = engine.procs.get(pid)
            if proc is None:
                self.orphans.discard(pid)
            elif proc.state is ProcState.ZOMBIE and pid not in self.waiters:
                self._guard(engine.reap, pid)
                self.orphans.discard(pid)

    async def _sweep(self) -> None:
        """Slow fallback: probe quiet sessions, reap orphans, prune the sessions' pid sets."""
        tick = min(1.0, self.lease_s / 2)
        last_probe = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last_probe >= self.sweep_s:
                last_probe = now
                self._probe([s for s in self.sessions.values() if now - s.last_seen >= self.sweep_s])
                if self.k.engine is not None:       # forget pids the engine reaped by itself
                    for s in self.sessions.values():
                        s.pids = {pid for pid in s.pids if self.k.engine.procs.get(pid) is not None}
            if self.orphans and self.k.engine is not None:
                self._reap_orphans()

    @staticmethod
    def _guard(fn, *args) -> None:
        try:
            fn(*args)
        except KernelError as e:
            log.info("%s%s: %s", fn.__name__, args, e.message)
