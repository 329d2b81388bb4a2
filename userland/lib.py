"""The userland library: syscalls to the llmos kernel (libc's syscall(2) and its wrappers).
(Over 300 lines: the blocking and the asyncio client share the stubs, framing and reconnection rules,
and the module-level API wraps them; split, the two clients would drift apart.)

    from llmos.userland import lib
    pid = lib.spawn([{"role": "user", "content": "Hi!"}], max_tokens=64)
    for text in lib.stream(pid):
        print(text, end="", flush=True)
    print(lib.wait(pid))

One entry point, ``syscall(no, *args)``; every other call is a one-line stub over it. Two clients
share the stubs: ``Client`` (blocking, one call at a time) and ``AsyncClient`` (asyncio, any number
of calls in flight). The module-level functions use one ``Client`` per thread, connected on first
use. Errors come back as ``OSError(errno, message)``, i.e. ProcessLookupError (ESRCH),
PermissionError (EPERM/EACCES), TimeoutError (ETIMEDOUT), ...; no kernel running is a
ConnectionRefusedError whose message names ``llmos serve --daemon``.

Blocking calls (read, wait) block in the kernel; the kernel parks a call at most abi.MAX_PARK_S,
so a call without a timeout is re-issued here until it is answered. That loop is written once
(``_blocking_plan``, a generator of calls) and driven by both clients.

A dead kernel is noticed within ~2 s, not after a call's timeout: every connection heartbeats
(ZMTP PING every HEARTBEAT_S, dropped after DEAD_AFTER_S without an answer) and watches its socket
monitor; a waiting call looks at it every POLL_S. A call in flight when the connection is lost
raises ConnectionResetError (ECONNRESET) saying the kernel stopped or restarted (its outcome is
unknown). The next call reconnects: it re-reads the runtime dir (a restarted kernel has a new
token), says hello again and goes on, so an open client outlives `llmos stop` + `llmos serve`;
with no kernel there it raises ConnectionResetError naming ``llmos serve --daemon``, and tries
again on the call after. Pids stay meaningful across the restart: they never repeat, and sessions
come back under theirs (kernel/hibernate.py). A request larger than the kernel's frame limit
(abi.MAX_FRAME_BYTES) fails at once with E2BIG, before it is sent.
"""

from __future__ import annotations

import asyncio
import errno as E
import itertools
import os
import socket
import sys
import threading
import time

import zmq
import zmq.asyncio

from llmos.kernel import abi
from llmos.kernel.abi import Sys
from llmos.userland import curve

START_HINT = "start one with: llmos serve --daemon"
CALL_TIMEOUT_S = 30.0        # the longest a non-blocking call may take before the kernel is presumed gone
CONNECT_TIMEOUT_S = 5.0      # hello must be answered within this
HEARTBEAT_S = 0.5            # ZMTP PING interval on every connection
DEAD_AFTER_S = 2.0           # no traffic for this long after a PING: the connection is dropped
POLL_S = 0.5                 # a waiting call checks for a lost connection this often
FRESH_S = 0.05               # a call this soon after a reply skips the monitor check (~3 us): no
                             # kernel restarts that fast, and a loss then shows within POLL_S


class KernelNotAnswering(TimeoutError):
    """The kernel did not answer at all in time (as opposed to a call that timed out in it)."""


def _silent(no: int, timeout: float) -> KernelNotAnswering:
    return KernelNotAnswering(E.ETIMEDOUT, f"the kernel did not answer {Sys(no).name.lower()} "
                                           f"within {timeout:g} s (is it still running?)")


def _gone(endpoint: str, no: int | None = None) -> ConnectionResetError:
    during = f" during {Sys(no).name.lower()}" if no in Sys._value2member_map_ else ""
    return ConnectionResetError(E.ECONNRESET, f"lost the connection to the kernel at {endpoint}{during} (it "
                                              f"stopped, died or restarted: the call's outcome is unknown; the "
                                              f"next call reconnects); {START_HINT}")


def _still_gone(endpoint: str, why: OSError) -> ConnectionResetError:
    return ConnectionResetError(E.ECONNRESET, f"lost the connection to the kernel at {endpoint}, and none "
                                              f"answers there now ({why.strerror}); {START_HINT}")


def _no_kernel(endpoint: str, why: str) -> ConnectionRefusedError:
    return ConnectionRefusedError(E.ECONNREFUSED, f"no llmos kernel at {endpoint} ({why}); {START_HINT}")


def _target(endpoint: str | None, token: str | None) -> tuple[str, str]:
    """Resolve where to connect and the token, with clear errors when no kernel is running."""
    rt = abi.runtime_dir()
    endpoint = endpoint or abi.kernel_endpoint(rt)
    if endpoint.startswith("ipc://"):
        _check_listening(endpoint)
    if token is None:
        try:
            token = abi.read_token(rt)
        except FileNotFoundError:
            raise _no_kernel(endpoint, f"no token file {abi.token_path(rt)}") from None
        except PermissionError:
            token = None        # another user's kernel: the OS names us (kernel/cred.py)
    return endpoint, token


def _check_listening(endpoint: str) -> None:
    """Fail fast, with the hint, when the ipc socket is missing or nobody listens on it (a stale
    file left by a killed kernel). ZeroMQ itself would just keep retrying the connect."""
    path = endpoint[len("ipc://"):]
    if not os.path.exists(path):
        raise _no_kernel(endpoint, "no socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        raise _no_kernel(endpoint, "stale socket: nobody is listening") from None
    except OSError:
        pass            # e.g. EAGAIN on a busy backlog: let ZeroMQ try
    finally:
        probe.close()


_monitors = itertools.count(1)        # unique monitor addresses in this process


class _HoldsItsSockets:
    """A connection's own context, which closes its sockets before it ends. pyzmq's
    Context.__del__ finds them through weak references, which the garbage collector clears before
    it finalises a reference cycle (a Client dropped while a traceback still holds it): it then
    calls term() with the sockets open, and term() waits for them forever."""
    _held: list

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held = []

    def _add_socket(self, socket) -> None:
        super()._add_socket(socket)
        self._held.append(socket)

    def __del__(self) -> None:
        for s in getattr(self, "_held", ()):
            s.close(0)
        super().__del__()


class _Context(_HoldsItsSockets, zmq.Context):
    pass


class _AsyncContext(_HoldsItsSockets, zmq.asyncio.Context):
    pass


def _dealer(ctx: zmq.Context, endpoint: str) -> tuple[zmq.Socket, zmq.Socket]:
    """A connected DEALER and its monitor socket (which reports the connection's loss)."""
    # No ZMQ_IMMEDIATE: with it, a reply that arrives just before the kernel closes the
    # connection (shutdown) can be discarded together with the pipe before it is read.
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.MAXMSGSIZE, abi.HARD_FRAME_BYTES)
    s.setsockopt(zmq.HEARTBEAT_IVL, int(HEARTBEAT_S * 1000))
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(DEAD_AFTER_S * 1000))
    curve.apply(s, endpoint)                # a kernel on TCP encrypts every connection
    # a unique inproc address: pyzmq's default names it after the socket's fd, which the next
    # client reuses while libzmq may still hold the old address (it is unbound asynchronously)
    monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED, addr=f"inproc://llmos-monitor-{next(_monitors)}")
    s.connect(endpoint)
    return s, monitor


def _hang_up(sock, monitor, ctx) -> None:
    """Close a connection's sockets, then end its own context (Client and AsyncClient)."""
    for s in (sock, monitor):
        if s is not None:
            s.close(0)
    if ctx is not None:
        ctx.term()


def _lost(monitor: zmq.Socket) -> bool:
    """True once the monitor has reported the connection's loss (never blocks)."""
    return bool(monitor.poll(0))


def _encode(rid: int, no: int, args) -> bytes:
    """The request frame; arguments msgpack cannot carry are EINVAL, and a frame over the kernel's
    limit is E2BIG, before anything is sent."""
    name = Sys(no).name.lower() if no in Sys._value2member_map_ else str(no)
    try:
        frame = abi.encode_request(rid, no, *args)
    except (TypeError, ValueError, OverflowError) as e:
        raise OSError(E.EINVAL, f"{name}: arguments cannot be encoded: {e}") from None
    if len(frame) > abi.MAX_FRAME_BYTES:
        raise OSError(E.E2BIG, f"{name}: request of {len(frame)} bytes exceeds the kernel's frame limit "
                               f"of {abi.MAX_FRAME_BYTES} bytes ({abi.MAX_FRAME_BYTES >> 20} MiB)")
    return frame


def _raise(err: int, value) -> None:
    raise abi.error(err, value if isinstance(value, str) else repr(value))


def _spawn_args(prompt, params, nice, session, detached, command, sampling, stdin=False, model=None) -> list:
    p = dict(params or {}, **sampling)
    if isinstance(p.get("stop"), tuple):
        p["stop"] = list(p["stop"])
    opts = {k: v for k, v in (("nice", nice), ("session", session), ("detached", detached),
                               ("command", command), ("stdin", stdin), ("model", model)) if v}
    return [prompt, p or None, opts or None]


class _Stubs:
    """One thin stub per syscall over self.syscall (which Client/AsyncClient provide)."""

    def null(self):
        """Do nothing in the kernel (round-trip benchmark)."""
        return self.syscall(Sys.NULL)

    def spawn(self, prompt, params: dict | None = None, *, nice: int = 0, session: bool = False,
              detached: bool = False, command: str = "", stdin: bool = False, model: str | None = None,
              **sampling):
        """Start a process on prompt (str, or [{"role", "content"}, ...]); returns its pid.
        Sampling parameters come as params={...} or keywords (max_tokens=, temperature=, seed=...).
        stdin=True keeps the prompt open: write() appends to it, close_stdin() starts the generation.
        model: a catalog or cached model's name (default: the kernel's), loaded on first use."""
        return self.syscall(Sys.SPAWN, *_spawn_args(prompt, params, nice, session, detached, command,
                                                    sampling, stdin, model))

    def write(self, pid: int, data):
        """Append a turn to a session: raw text, or chat message(s); returns tokens queued."""
        return self.syscall(Sys.WRITE, pid, data)

    def close_stdin(self, pid: int):
        """End an open stdin (syscall close): the process starts generating."""
        return self.syscall(Sys.CLOSE, pid)

    def kill(self, pid: int, sig: int | str = abi.SIGTERM):
        """Send a signal (number or name: INT, TERM, KILL, STOP, CONT)."""
        return self.syscall(Sys.KILL, pid, abi.parse_signal(sig))

    def nice(self, pid: int, nice: int):
        """Set a process's nice value (-20..19)."""
        return self.syscall(Sys.NICE, pid, nice)

    def fork(self, pid: int):
        """Copy a process (copy-on-write KV); returns the child's pid."""
        return self.syscall(Sys.FORK, pid)

    def ps(self):
        """Every process, one summary dict each."""
        return self.syscall(Sys.PS)

    def stat(self, pid: int):
        """One process in detail."""
        return self.syscall(Sys.STAT, pid)

    def meminfo(self):
        """KV pool, swap, host and GPU memory."""
        return self.syscall(Sys.MEMINFO)

    def uname(self):
        """Kernel versions, model, device, uptime and configuration."""
        return self.syscall(Sys.UNAME)

    def tokenize(self, text: str, special: bool = True, add_bos: bool = False):
        """Token ids of text."""
        return self.syscall(Sys.TOKENIZE, text, special, add_bos)

    def detokenize(self, ids: list[int], skip_special: bool = False):
        """Text of token ids."""
        return self.syscall(Sys.DETOKENIZE, list(ids), skip_special)

    def models(self):
        """The loaded model and the cached ones."""
        return self.syscall(Sys.MODELS)

    def load(self, model: str):
        """Make a model resident; its record ({name, loading: True} while it still loads: call again)."""
        return self.syscall(Sys.LOAD, model)

    def unload(self, model: str):
        """Unload a resident model that has no processes; its record."""
        return self.syscall(Sys.UNLOAD, model)

    def embed(self, texts: list[str]):
        """Unit vectors (lists of floats) of texts, by the kernel's encoder model; at most
        abi.MAX_EMBED_TEXTS texts of abi.MAX_EMBED_CHARS chars each per call."""
        return self.syscall(Sys.EMBED, list(texts))

    def checkpoint(self, pid: int, path: str | None = None):
        """Write pid's whole state to a checkpoint file (a bare name in $LLMOS_HOME/checkpoints/
        <owner>/, or an absolute path for admins; default <pid>-<boot>); it keeps running.
        Returns {path, name, pid, tokens, kv_tokens, bytes}."""
        return self.syscall(Sys.CHECKPOINT, pid, path)

    def restore(self, path: str, *, detached: bool | None = None, remove: bool = False):
        """A new process continuing exactly where the checkpoint was; returns its pid.
        detached: override the checkpoint's flag; remove: delete the file once restored."""
        opts = ({} if detached is None else {"detached": detached}) | ({"remove": True} if remove else {})
        return self.syscall(Sys.RESTORE, path, opts or None)

    def shutdown(self):
        """Stop the kernel (its processes get SIGTERM)."""
        return self.syscall(Sys.SHUTDOWN)

    def latency(self, pid: int, ms: float | None):
        """Set a process's time-per-token target in ms (None: derived from its nice)."""
        return self.syscall(Sys.LATENCY, pid, ms)

    def limits(self, scope: str | None = None, changes: dict | None = None):
        """Limits and usage; with scope ('default', 'user:NAME', 'group:NAME') and changes
        ({limit: n or None}), an admin sets them."""
        return self.syscall(Sys.LIMITS, *(() if changes is None else (scope, changes)))

    def read(self, pid: int, timeout: float | None = None) -> dict:
        """Block until pid has output, ends a turn or exits: {"text", "eof", "turn_end"}."""
        return self._drive(_blocking_plan(Sys.READ, pid, timeout, self.call_timeout))

    def wait(self, pid: int, timeout: float | None = None) -> dict:
        """Block until pid exits; reap it and return its exit status."""
        return self._drive(_blocking_plan(Sys.WAIT, pid, timeout, self.call_timeout))


def _blocking_plan(no: int, pid: int, timeout: float | None, call_timeout: float):
    """read/wait as a generator of calls, shared by both clients: it yields (no, args, timeout)
    and is sent each call's value (or thrown its error). The kernel parks each try at most
    MAX_PARK_S; the plan re-issues it until the caller's timeout has passed."""
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = abi.MAX_PARK_S if end is None else max(0.0, min(end - time.monotonic(), abi.MAX_PARK_S))
        try:
            return (yield no, (pid, left), left + call_timeout)
        except KernelNotAnswering:
            raise
        except TimeoutError:
            if end is not None and time.monotonic() >= end:
                raise


def _ends_stream(r: dict) -> bool:
    """A read() reply after which stream() stops: the turn ended or the process exited."""
    return r["eof"] or r["turn_end"]


class Client(_Stubs):
    """A blocking connection to the kernel. Not thread-safe: one per thread."""

    def __init__(self, endpoint: str | None = None, *, token: str | None = None, user: str | None = None,
                 client: str = "", call_timeout: float = CALL_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.call_timeout, self.connect_timeout = call_timeout, connect_timeout
        self._where, self._hello = (endpoint, token), (user, client or _prog())
        self._ids = itertools.count(1)
        self._sock = self._monitor = self._ctx = None
        self.reconnects = 0                     # how many times it reconnected to a (restarted) kernel
        self._connect()

    def _connect(self) -> None:
        """Resolve the kernel (its endpoint and current token), connect and say hello."""
        self.close()
        self._gone = True                       # until hello is answered
        self.endpoint, token = _target(*self._where)
        self._rcvtimeo = -1
        self._answered = 0.0                    # when the last reply came (monotonic)
        self._ctx = _Context()                   # its own: a connection never shares libzmq state
        self._sock, self._monitor = _dealer(self._ctx, self.endpoint)
        self._gone = False
        try:
            self.info = self._call(Sys.HELLO, (token, *self._hello), self.connect_timeout, connecting=True)
        except BaseException:
            self.close()
            self._gone = True
            raise

    def _reconnect(self) -> None:
        """The connection was lost: connect to the kernel that runs there now (a restarted one)."""
        try:
            self._connect()
        except ConnectionRefusedError as e:
            raise _still_gone(self.endpoint, e) from None
        self.reconnects += 1

    def syscall(self, no: int, *args):
        """Make one syscall; returns its value or raises OSError(errno, message)."""
        return self._call(no, args, self.call_timeout)

    def _call(self, no: int, args, timeout: float, connecting: bool = False):
        now = time.monotonic()
        if not connecting and (self._gone or (now - self._answered > FRESH_S and _lost(self._monitor))):
            self._reconnect()
        rid = next(self._ids)
        sock = self._sock
        sock.send(_encode(rid, no, args))
        deadline = now + timeout
        wait_ms = int(min(timeout, POLL_S) * 1000)
        while True:
            if wait_ms != self._rcvtimeo:       # a blocking recv with a timeout: no extra poll
                sock.setsockopt(zmq.RCVTIMEO, max(1, wait_ms))
                self._rcvtimeo = wait_ms
            try:
                frame = sock.recv()
            except zmq.Again:
                frame = None
            if frame is not None:
                got, err, value = abi.decode_reply(frame)
                if got == rid:
                    self._answered = time.monotonic()
                    if err:
                        _raise(err, value)
                    return value
            elif _lost(self._monitor):          # every POLL_S: is the connection still there?
                self._gone = True
                if connecting:
                    raise _no_kernel(self.endpoint, "it closed the connection")
                raise _gone(self.endpoint, no)
            left = deadline - time.monotonic()   # a stale reply, a notice, or a POLL_S tick
            if left <= 0:
                if connecting:
                    raise _no_kernel(self.endpoint, f"no answer to hello within {timeout:g} s")
                raise _silent(no, timeout)
            wait_ms = int(min(left, POLL_S) * 1000)

    def _drive(self, plan):
        """Run a call plan (_blocking_plan) to its value, one blocking call at a time."""
        try:
            step = next(plan)
            while True:
                try:
                    value = self._call(*step)
                except OSError as e:
                    step = plan.throw(e)
                else:
                    step = plan.send(value)
        except StopIteration as done:
            return done.value

    def stream(self, pid: int, timeout: float | None = None):
        """Iterate over pid's text chunks until its turn ends or it exits."""
        while True:
            r = self.read(pid, timeout)
            if r["text"]:
                yield r["text"]
            if _ends_stream(r):
                return

    def close(self) -> None:
        _hang_up(self._sock, self._monitor, self._ctx)
        self._sock = self._monitor = self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Stubs):
    """An asyncio connection: any number of calls in flight, matched to replies by req_id.

        async with await AsyncClient.connect() as k:
            pid = await k.spawn("Once upon a time", max_tokens=32)
            async for text in k.stream(pid): ..."""

    def __init__(self):
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._sock = self._monitor = self._ctx = None
        self._tasks: list[asyncio.Task] = []
        self._gone = False
        self._reconnecting = asyncio.Lock()     # one reconnection for every call that finds it gone
        self.reconnects = 0
        self.call_timeout = CALL_TIMEOUT_S

    @classmethod
    async def connect(cls, endpoint: str | None = None, *, token: str | None = None, user: str | None = None,
                      client: str = "", call_timeout: float = CALL_TIMEOUT_S,
                      connect_timeout: float = CONNECT_TIMEOUT_S) -> "AsyncClient":
        self = cls()
        self.call_timeout, self.connect_timeout = call_timeout, connect_timeout
        self._where, self._hello = (endpoint, token), (user, client or _prog())
        await self._connect()
        return self

    async def _connect(self) -> None:
        """Resolve the kernel (its endpoint and current token), connect and say hello."""
        await self.close()
        self._gone = True                       # until the new connection exists
        self.endpoint, token = _target(*self._where)
        self._ctx = _AsyncContext()              # its own, as Client's: no shared libzmq state
        self._sock, self._monitor = _dealer(self._ctx, self.endpoint)
        self._gone = False
        self._tasks = [asyncio.ensure_future(self._read_replies()), asyncio.ensure_future(self._watch())]
        try:
            self.info = await self._timed(Sys.HELLO, (token, *self._hello), self.connect_timeout)
        except (KernelNotAnswering, ConnectionResetError):
            await self.close()
            self._gone = True
            raise _no_kernel(self.endpoint, f"no answer to hello within {self.connect_timeout:g} s") from None
        except BaseException:
            await self.close()
            self._gone = True
            raise

    async def _reconnect(self) -> None:
        """The connection was lost: connect to the kernel that runs there now (a restarted one)."""
        async with self._reconnecting:
            if not self._gone:                  # another call reconnected meanwhile
                return
            try:
                await self._connect()
            except ConnectionRefusedError as e:
                raise _still_gone(self.endpoint, e) from None
            self.reconnects += 1

    async def _read_replies(self) -> None:
        while True:
            frame = await self._sock.recv()
            try:
                rid, err, value = abi.decode_reply(frame)
            except abi.ProtocolError:
                continue
            fut = self._pending.pop(rid, None) if rid is not None else None
            if fut is not None and not fut.done():
                fut.set_result((err, value))

    async def _watch(self) -> None:
        """The connection was lost: fail every call in flight, and every later one."""
        await self._monitor.recv_multipart()
        self._gone = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(_gone(self.endpoint))

    async def _call(self, no: int, args):
        if self._gone:
            await self._reconnect()
        rid = next(self._ids)
        fut = self._pending[rid] = asyncio.get_running_loop().create_future()
        try:
            await self._sock.send(_encode(rid, no, args))
            err, value = await fut
        finally:
            self._pending.pop(rid, None)
        if err:
            _raise(err, value)
        return value

    async def syscall(self, no: int, *args):
        """Make one syscall; returns its value or raises OSError(errno, message)."""
        return await self._timed(no, args, self.call_timeout)

    async def _timed(self, no: int, args, timeout: float):
        try:
            return await asyncio.wait_for(self._call(no, args), timeout)
        except TimeoutError as e:
            if e.errno is None:     # asyncio's own timeout: the kernel is silent
                raise _silent(no, timeout) from None
            raise

    async def _drive(self, plan):
        """Run a call plan (_blocking_plan) to its value, awaiting each call."""
        try:
            step = next(plan)
            while True:
                try:
                    value = await self._timed(*step)
                except OSError as e:
                    step = plan.throw(e)
                else:
                    step = plan.send(value)
        except StopIteration as done:
            return done.value

    async def stream(self, pid: int, timeout: float | None = None):
        """Async-iterate over pid's text chunks until its turn ends or it exits."""
        while True:
            r = await self.read(pid, timeout)
            if r["text"]:
                yield r["text"]
            if _ends_stream(r):
                return

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        _hang_up(self._sock, self._monitor, self._ctx)
        self._sock = self._monitor = self._ctx = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


# ---- the module-level API: one Client per thread ------------------------------------------

_local = threading.local()


def connect(**kw) -> Client:
    """This thread's default client (connected on first use; kw only then)."""
    c = getattr(_local, "client", None)
    if c is None:
        c = _local.client = Client(**kw)
    return c


def disconnect() -> None:
    c = getattr(_local, "client", None)
    if c is not None:
        c.close()
        _local.client = None


def syscall(no: int, *args):
    """Make syscall number `no` with args on this thread's client."""
    return connect().syscall(no, *args)


def _bind(name: str):
    method = getattr(Client, name)

    def stub(*args, **kw):
        return getattr(connect(), name)(*args, **kw)
    stub.__name__, stub.__doc__ = name, method.__doc__
    return stub


# The exports, from one place: every call the clients have is also a module-level function.
CALLS = tuple(name for name in vars(_Stubs) if not name.startswith("_")) + ("stream",)
globals().update({name: _bind(name) for name in CALLS})
__all__ = ["Client", "AsyncClient", "KernelNotAnswering", "connect", "disconnect", "syscall", *CALLS]
