"""The kernel's front door: the transport (a ZeroMQ ROUTER on the event loop), dispatch of
syscalls through THE table, and the engine loop that keeps stepping while syscalls are answered.
(Over 300 lines: the transport's identity and abuse limits live with the socket they guard.)
Blocking calls park in kernel/waitq.py; vanished connections end through kernel/lease.py.

Design rules:
  - One thread owns the engine and the socket: the event loop. A forward step is the only work
    that leaves it (engine.execute in a worker thread via run_in_executor), so syscalls are
    answered while the model computes; schedule and commit, and every mutator, run here.
  - The socket is read without per-message futures: the ROUTER's fd is registered with the loop
    and drained until EAGAIN (ZeroMQ's fd is edge-triggered, so any send done outside a drain
    re-arms one with _kick). Bad input never raises out of _on_message: every frame is answered
    with a value or an errno, or - when even the req_id is unreadable - a nil-id notice.
  - Nothing a process generated is dropped: a reply the socket refuses (EAGAIN: a live peer that
    does not read) waits, in order, in that peer's outbox (kernel/outbox.py) and goes when it reads
    again. A peer past the outbox's limit has its session ended (an audit line; its later requests
    get ECONNRESET saying why), and the text its waiting read replies carried is put back unread.
  - Sessions: a session is a ZeroMQ routing id that said hello. Liveness comes from the transport:
    the socket monitor reports a disconnect (ZMTP heartbeats turn a dead TCP peer into one too),
    and the server confirms it by sending a nil-id notice with ROUTER_MANDATORY (EHOSTUNREACH ==
    gone); a failed reply is the same proof, and quiet sessions are probed every sweep_s. A lost
    session ends at once (its routing id is forgotten, so a peer reusing it must say hello again;
    its parked calls are dropped) and its lease starts (kernel/lease.py).
  - Identity (kernel/cred.py): every connection passes the ZAP handler, which names it from the
    OS (SO_PEERCRED on ipc) or its CURVE key (TCP; no key, no connection). libzmq stamps that
    User-Id on each of its messages; a session is bound to it, so a peer that reuses another's
    routing id is not that session. Routing ids are the ROUTER's own (5 bytes, 0x00 + a counter
    whose start is a secret drawn at boot): a peer that picks its own id is refused and cut off,
    since a chosen id equal to the next generated one makes libzmq abort.
  - Before hello a connection costs little: frames over PRE_HELLO_BYTES cut it off, a uid may
    hold MAX_PRE_HELLO connections that have not said hello, and each has PRE_HELLO_S to say it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno as E
import itertools
import logging
import secrets
import signal
import socket
import struct
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import abi
from .abi import Sys
from .cred import ZAP_DOMAIN, Authenticator, Identity, Roles
from .lease import Leases
from .models import Models
from .outbox import FLUSH_S, Outbox
from .proc import ProcState
from .syscalls import SHUTDOWN, TABLE, Block, Caller, Kernel, KernelError, usage

log = logging.getLogger("llmos.kernel")

NOTICE = abi.encode_reply(None, 0, None)    # the liveness probe; clients ignore nil-id frames
# plain ints on the per-message path: an enum's | or & costs ~1 us in Python
_NOBLOCK, _NOBLOCK_MORE = int(zmq.NOBLOCK), int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
DRAIN_BATCH = 256                            # messages per drain before yielding to the loop
PRE_HELLO_BYTES = 64 << 10                   # the largest frame a connection may send before hello
PRE_HELLO_S = 10.0                           # a connection that has not said hello by then is cut
MAX_PRE_HELLO = 32                           # connections per uid that have not said hello
THROTTLE_RECHECK_S = 0.25                    # an idle engine with throttled users looks again


def _unpredictable_routing_ids() -> None:
    """libzmq starts a ROUTER's generated routing ids at rand() (the same value every boot unless
    seeded): seed it with a secret, so no peer can pick the id the next client will get."""
    try:
        ctypes.CDLL(None).srand(secrets.randbits(32))
    except (OSError, AttributeError):
        log.warning("cannot seed libzmq's routing ids (no srand): they are predictable")


def _generated(ident: bytes) -> bool:
    """A routing id of the ROUTER's own making (a chosen one may only mimic it by a blind guess)."""
    return len(ident) == 5 and ident[0] == 0


def _peer_uid(fd: int) -> int | None:
    """The uid at the other end of a unix-socket fd (None for TCP or on error)."""
    try:
        s = socket.socket(fileno=fd)
        try:
            if s.family != socket.AF_UNIX:
                return None
            return struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        finally:
            s.detach()
    except OSError:
        return None


def _cut(fd: int | None) -> None:
    """Close a connection from our side (libzmq sees EOF and drops the peer's pipe)."""
    if fd is None:
        return
    try:
        s = socket.socket(fileno=fd)
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.detach()
    except OSError:
        pass


class Session(Caller):
    """A connection after hello: its routing id, transport fd, who it is and liveness."""

    def __init__(self, ident: bytes, fd: int | None, sid: int, user_id: str, identity: Identity | None):
        super().__init__(sid=sid, identity=identity)
        self.ident, self.fd, self.user_id = ident, fd, user_id
        self.last_seen = time.monotonic()
        self.warned = False                 # a bad-input notice was logged for it already


class Server:
    """bind() (at boot), then `await serve()` on the loop until shutdown()."""

    def __init__(self, kernel: Kernel, endpoints: list[str], *, heartbeat_s: float = 2.0,
                 sweep_s: float = 30.0, roles: Roles | None = None,
                 curve: tuple[bytes, bytes] | None = None, curve_keys: dict[bytes, str] | None = None,
                 curve_admins: frozenset[str] = frozenset()):
        """curve: the kernel's CURVE keypair (public, secret), required for tcp:// endpoints;
        curve_keys: authorized client keys -> users; curve_admins: those users that are admins."""
        self.k, self.endpoints = kernel, list(endpoints)
        self.roles, self.curve = roles or Roles(), curve
        self.curve_keys, self.curve_admins = dict(curve_keys or {}), curve_admins
        self.auth: Authenticator | None = None
        self.pre_hello: dict[int, tuple[float, int | None]] = {}   # fd -> (accepted at, uid)
        self.heartbeat_s, self.sweep_s = heartbeat_s, sweep_s
        self.waits = kernel.waits
        self.models = Models.of(kernel)         # the resident models' engines (kernel/models.py)
        self.leases = Leases(self.models if kernel.engine is not None else None, kernel.lease_s, self._wake_engine)
        self.outbox = Outbox()                  # replies the socket refused (kernel/outbox.py)
        self.ended: dict[bytes, str] = {}       # routing id -> why the kernel ended its session
        self._flush_scheduled = False
        kernel.wake_engine = self._wake_engine     # for work a handler adds later (a restore)
        self.sessions: dict[bytes, Session] = {}
        self._sids = itertools.count(1)         # session ids; 0 is init (proc.INIT)
        self._kick_scheduled = self._in_drain = False
        self._stopping = False
        self.crashed: BaseException | None = None     # what killed the engine loop, if anything
        self.ctx = self.sock = self.mon = self.loop = None
        self._work = self._stopped = None

    # ---- lifecycle ---------------------------------------------------------------------
    def bind(self) -> None:
        """Bind every endpoint (before the loop runs, so that errors surface at boot)."""
        if any(ep.startswith("tcp://") for ep in self.endpoints) and self.curve is None:
            raise ValueError("a tcp:// endpoint needs the kernel's CURVE keys (TCP is always encrypted)")
        self.ctx = zmq.Context()
        try:
            self._bind()
        except BaseException:
            self.close()         # the ZAP thread holds a socket: an unclosed context would hang its GC
            raise

    def _bind(self) -> None:
        self.auth = Authenticator(self.ctx, self.curve_keys)
        self.auth.start()
        _unpredictable_routing_ids()
        s = self.sock = self.ctx.socket(zmq.ROUTER)
        s.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        if self.curve is not None:       # local peers then speak CURVE too (the library knows how)
            s.curve_publickey, s.curve_secretkey = self.curve
            s.curve_server = True
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.MAXMSGSIZE, abi.HARD_FRAME_BYTES)
        s.setsockopt(zmq.LINGER, 500)
        hb = int(self.heartbeat_s * 1000)
        s.setsockopt(zmq.HEARTBEAT_IVL, hb)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * hb)
        self.mon = s.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
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
        tasks = [asyncio.ensure_future(self._sweep())]
        if self.k.engine is not None:
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
            self.leases.cancel_all()
            self._flush()              # the last answers (ESHUTDOWN to parked calls) may be waiting
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
            self.loop.remove_reader(self.mon.getsockopt(zmq.FD))
            self.sock.disable_monitor()
            self.close()

    def close(self) -> None:
        """Release the sockets, the ZAP thread and the context (idempotent; never hangs on a peer
        for more than the socket's LINGER)."""
        for s in (self.mon, self.sock):
            if s is not None and not s.closed:
                s.close(0 if s is self.mon else None)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self.ctx is not None and not self.ctx.closed:
            self.ctx.term()

    def shutdown(self) -> None:
        """Ask serve() to stop (idempotent; loop thread or signal handler)."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def _wind_down(self, tasks) -> None:
        """SIGTERM every process, let the in-flight step finish, answer every parked call."""
        self._stopping = True
        engine = self.k.engine
        if engine is not None and self.k.checkpoints is not None and self.k.checkpoints.sessions:
            self.k.checkpoints.save_sessions()       # sessions outlive the kernel (kernel/hibernate.py)
        if engine is not None:
            for e in self.models.engines():
                for p in list(e.procs.all()):
                    if p.state is not ProcState.ZOMBIE:
                        _guard(e.signal, p.pid, signal.SIGTERM)
            self._work.set()
            await asyncio.wait([t for t in tasks[1:]], timeout=30)
            self.waits.deliver()
        self.waits.answer_all(E.ESHUTDOWN, "the kernel is shutting down")

    def _wake_engine(self) -> None:
        if self._work is not None:
            self._work.set()

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
                # EVENTS, not a recv that raises Again: the exception cost ~4 us per drain
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    return
                head = sock.recv(_NOBLOCK, copy=False)            # the routing id (a Frame: SRCFD)
                frames, more = [head], head.more
                while more:
                    frame = sock.recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                    more = frame.more
                self._on_message(head, frames)
            self._kick()        # more may be queued: yield to the loop, then go on
        finally:
            self._in_drain = False

    def _send(self, ident: bytes, req_id, err: int, value, undo=None) -> None:
        """undo(value): run if a successful reply never reaches the socket (kernel/outbox.py)."""
        try:
            payload = abi.encode_reply(req_id, err, value)
        except Exception as e:  # a handler returned something msgpack cannot carry: a kernel bug
            log.error("cannot encode a reply: %s", e)
            payload, err = abi.encode_reply(req_id, E.EIO, f"kernel bug: unencodable reply: {e}"[:200]), E.EIO
        self._send_raw(ident, payload, (lambda: undo(value)) if undo is not None and not err else None)

    def _send_raw(self, ident: bytes, payload: bytes, undo=None) -> bool:
        """Send a frame, or keep it in the peer's outbox when its pipe is full (never drop it).
        False when it cannot go: the peer is gone (its session, if any, is marked lost) or the
        socket is closed; undo() then runs (a read reply's text goes back to its process)."""
        try:
            if self.sock.closed:
                err = E.ESHUTDOWN
            elif self.outbox.holds(ident):
                err = E.EAGAIN                   # behind the frames already waiting: order is kept
            else:
                err = self._try_send(ident, payload)
            if err == E.EAGAIN:
                self._hold(ident, payload, undo)
                return True
            if err:
                if undo is not None:
                    undo()
                if err == E.EHOSTUNREACH:
                    self._gone(ident)
                return False
            return True
        finally:
            if not self._in_drain and not self.sock.closed:
                self._kick()

    def _try_send(self, ident: bytes, payload: bytes) -> int:
        """One non-blocking send: 0, EAGAIN (the peer's pipe is full), EHOSTUNREACH (no such peer)."""
        try:
            self.sock.send(ident, _NOBLOCK_MORE)
            self.sock.send(payload, _NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                log.warning("send failed: %s", e)
            return E.EAGAIN if e.errno == zmq.EAGAIN else E.EHOSTUNREACH if e.errno == zmq.EHOSTUNREACH else e.errno
        return 0

    def _hold(self, ident: bytes, payload: bytes, undo) -> None:
        """The peer's pipe is full: the frame waits in its outbox. A peer past the outbox's limit
        has its session ended (an audit line), and what its waiting replies carried goes back."""
        if self.outbox.add(ident, payload, undo):
            self._schedule_flush()
            return
        sess, n = self.sessions.get(ident), self.outbox.waiting(ident)
        self.outbox.take_back(ident)
        if sess is None:            # no session: only errors wait for it (nothing generated)
            log.warning("audit: a peer without a session left %d replies unread; they are dropped", n)
            return
        why = (f"the kernel ended this session: it left {n} replies unread (limit {self.outbox.max_frames} "
               f"replies, {self.outbox.max_bytes >> 20} MiB); their output is readable again")
        log.warning("audit: session %d (%s) left %d replies unread; session ended, their output "
                    "put back unread", sess.sid, sess.user, n)
        while len(self.ended) >= 4096:
            del self.ended[next(iter(self.ended))]
        self.ended[ident] = why
        self._lost(sess)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        """Retry every outbox: a frame the socket takes now goes, in order."""
        self._flush_scheduled = False
        if self.sock.closed:
            return
        for ident in self.outbox.peers():
            err = self.outbox.flush(ident, self._try_send)
            if err == E.EHOSTUNREACH:
                self._gone(ident)
            elif err and err != E.EAGAIN:
                self.outbox.take_back(ident)
        if self.outbox:
            self._schedule_flush()
        self._kick()

    def _gone(self, ident: bytes) -> None:
        """No such peer any more: its session is lost and its waiting frames taken back."""
        sess = self.sessions.get(ident)
        if sess is not None:
            self._lost(sess)
        else:
            self.outbox.take_back(ident)

    def _unread(self, pid):
        """The undo of a read reply: its output goes back, unread, to the process (if still there)."""
        def undo(value):
            p = self.k.engine.procs.get(pid) if self.k.engine is not None else None
            models = getattr(self.k, "models", None)
            if p is None and models is not None:       # a process of another resident model
                view = models.view_of(pid)
                p = view.engine.procs.get(pid) if view is not None else None
            if p is not None and type(value) is dict:
                p.channel.unread(value.get("text") or "", bool(value.get("turn_end")), value.get("logprobs"))
                self.waits.wake(p)
        return undo

    def _may_speak(self, head, ident: bytes, frames: list) -> bool:
        """A connection without a session: its routing id must be ours and its frames small."""
        if not _generated(ident):
            log.warning("audit: a peer (%s) chose its own routing id; refused", _user_id(head))
            self._send(ident, None, E.EPROTO, "routing ids are chosen by the kernel")
            _cut(self._srcfd(head))
            return False
        if sum(len(f) for f in frames[1:]) > PRE_HELLO_BYTES:
            log.warning("audit: a peer (%s) sent %d bytes before hello; cut off", _user_id(head),
                        sum(len(f) for f in frames[1:]))
            self._send(ident, None, E.E2BIG, f"frames before hello are limited to {PRE_HELLO_BYTES} bytes")
            _cut(self._srcfd(head))
            return False
        return True

    @staticmethod
    def _srcfd(frame) -> int | None:
        try:
            return frame.get(zmq.SRCFD)
        except Exception:
            return None

    # ---- dispatch ----------------------------------------------------------------------
    def _on_message(self, head, frames: list) -> None:
        """frames: [routing id, body frames...] (bodies as bytes)."""
        ident, user_id = head.bytes, _user_id(head)
        sess = self.sessions.get(ident)
        if sess is None:
            if not self._may_speak(head, ident, frames):
                return
        elif sess.user_id != user_id:        # another connection wearing this routing id
            log.warning("audit: a peer (%s) used session %d's routing id; cut off", user_id, sess.sid)
            _cut(self._srcfd(head))
            return
        else:
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
                why = self.ended.get(ident)
                self._send(ident, req_id, *((E.ECONNRESET, why) if why else (E.EACCES, "call hello(token, user) first")))
                return
            identity = self.roles.identity(user_id or "", self.curve_admins)
            if identity is None:
                self._send(ident, req_id, E.EACCES, "this connection has no credentials")
                return
            caller = Session(ident, self._srcfd(head), next(self._sids), user_id, identity)
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
        except RecursionError:      # arguments nested past the stack: the client's bug, not ours
            msg = f"{Sys(sysno).name.lower()}: arguments nested too deeply"
            if sess is not None and not sess.warned:
                sess.warned = True      # logged once per connection, never a traceback per frame
                log.info("session %d (%s): %s", sess.sid, sess.user, msg)
            self._send(ident, req_id, E.EINVAL, msg)
            return
        except Exception as e:
            log.error("syscall %s failed:\n%s", Sys(sysno).name, traceback.format_exc())
            self._send(ident, req_id, E.EIO, f"kernel bug in {Sys(sysno).name.lower()}: "
                                             f"{type(e).__name__}: {e}"[:300])
            return
        finally:
            if entry.mutates:
                self._wake_engine()
        if sess is None:
            self.sessions[ident] = caller
            self.pre_hello.pop(caller.fd, None)
            log.info("session %d %s: hello from %s (%s)", caller.sid, ident.hex(), caller.user,
                     caller.client or "-")
        undo = self._unread(args[0]) if sysno == Sys.READ else None    # a read consumed output
        if isinstance(result, Block):
            self.waits.park(result, caller,
                            lambda err, value, i=ident, r=req_id: self._send(i, r, err, value, undo))
        elif result is SHUTDOWN:
            self._send(ident, req_id, 0, None)
            self.shutdown()
        else:
            self._send(ident, req_id, 0, result, undo)

    # ---- the engine loop ---------------------------------------------------------------
    async def _engine_loop(self) -> None:
        models, loop = self.models, self.loop      # each resident model's engine in turn
        with ThreadPoolExecutor(1, thread_name_prefix="llmos-step") as pool:
            while True:
                engine, plan = models.schedule()
                if plan is None:
                    if self._stopping:
                        return
                    self._work.clear()
                    if models.held:            # throttled by a token rate: look again soon
                        try:
                            await asyncio.wait_for(self._work.wait(), THROTTLE_RECHECK_S)
                        except asyncio.TimeoutError:
                            pass
                    else:
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

    # ---- liveness ----------------------------------------------------------------------
    def _on_monitor(self) -> None:
        while True:
            try:
                msg = parse_monitor_message(self.mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            fd = msg["value"]
            if msg["event"] == zmq.EVENT_ACCEPTED:
                self._accepted(fd)
                continue
            self.pre_hello.pop(fd, None)
            suspects = [s for s in self.sessions.values() if s.fd in (fd, None)]
            for s in suspects:      # closed: the next connection may get the same number, and a
                s.fd = None         # session still holding it would shield that one from _expire
            if suspects:
                for delay in (0.01, 0.25):   # the ROUTER drops the pipe just after the event
                    self.loop.call_later(delay, self._probe, suspects)

    def _accepted(self, fd: int) -> None:
        """A new connection: at most MAX_PRE_HELLO per uid before hello, PRE_HELLO_S to say it."""
        if any(x.fd == fd for x in self.sessions.values()):
            return                                  # it said hello before this event was read
        uid = _peer_uid(fd)
        if uid is not None and sum(1 for _, u in self.pre_hello.values() if u == uid) >= MAX_PRE_HELLO:
            log.warning("audit: uid %d holds %d connections without hello; one more cut off", uid, MAX_PRE_HELLO)
            _cut(fd)
            return
        entry = self.pre_hello[fd] = (time.monotonic(), uid)
        self.loop.call_later(PRE_HELLO_S, self._expire, fd, entry)

    def _expire(self, fd: int, entry) -> None:
        if self.pre_hello.get(fd) is entry and not any(x.fd == fd for x in self.sessions.values()):
            del self.pre_hello[fd]
            log.warning("audit: a connection (uid %s) said no hello within %g s; cut off", entry[1], PRE_HELLO_S)
            _cut(fd)

    def _probe(self, sessions) -> None:
        for s in sessions:       # (a peer with waiting frames is probed by every flush)
            if self.sessions.get(s.ident) is s and not self.outbox.holds(s.ident):
                self._send_raw(s.ident, NOTICE)

    def _lost(self, sess: Session) -> None:
        """The peer is gone: the session ends now (its routing id is no longer trusted and its
        parked calls are dropped); its processes outlive it by the lease."""
        if self.sessions.get(sess.ident) is not sess:
            return
        del self.sessions[sess.ident]
        self.outbox.take_back(sess.ident)      # what its waiting replies carried goes back
        self.waits.drop(sess)
        self.leases.lost(sess)

    async def _sweep(self) -> None:
        """Slow fallback: probe the sessions that have been quiet for sweep_s."""
        while True:
            await asyncio.sleep(self.sweep_s)
            now = time.monotonic()
            self._probe([s for s in self.sessions.values() if now - s.last_seen >= self.sweep_s])


def _user_id(frame) -> str | None:
    """The User-Id the ZAP handler gave this message's connection."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, UnicodeDecodeError):
        return None


def _guard(fn, *args) -> None:
    try:
        fn(*args)
    except KernelError as e:
        log.info("%s%s: %s", fn.__name__, args, e.message)
