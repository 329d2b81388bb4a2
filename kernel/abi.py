"""The llmos ABI: the one contract between the kernel and userland (xv6: syscall.h).
(Over 300 lines on purpose: the whole contract, and userland's only kernel import, in one file.)

Pure Python (no torch): userland imports this module and nothing else from the kernel.
Numbers are frozen once released; new syscalls and fields are appended, never renumbered.

Transport
    ZeroMQ. The kernel binds a ROUTER at ``ipc://<runtime dir>/kernel.sock`` (optionally also
    ``tcp://host:port``); clients connect DEALER sockets. A client may name another endpoint with
    $LLMOS_KERNEL and pass the token with $LLMOS_TOKEN (for TCP clients on other machines).

Frames
    One msgpack value per ZeroMQ frame, one frame per message.
    request ``[req_id, sysno, arg0, arg1, ...]``   req_id: int in [0, 2**63); sysno: a ``Sys`` number
    reply   ``[req_id, errno, value]``              errno 0: value is the result; else a message str
    A reply whose req_id is nil is a notice (a request too broken to carry an id, or a liveness
    probe): clients ignore it. Frames larger than MAX_FRAME_BYTES are answered E2BIG; beyond
    HARD_FRAME_BYTES the kernel drops the connection instead of reading the frame.

Sessions
    The first call on a connection must be ``hello(token, user)``; the token is the secret the
    kernel writes into the runtime dir (file mode 0600, dir 0700), so holding it means being
    allowed on this kernel. ``user`` names the owner recorded on every process the connection
    spawns; touching another owner's process is EPERM. A connection that vanishes loses its
    non-detached processes after the kernel's lease (grace) period.

Errors (standard ``errno`` numbers; userland raises ``OSError(errno, message)``, which Python
turns into the matching subclass)
    EPROTO  undecodable frame, not a list, bad req_id    EACCES  no hello yet / bad token
    ENOSYS  unknown syscall number                        EINVAL  bad argument type or value
    E2BIG   frame, prompt or list too large               ESRCH   no such process
    EPERM   the process belongs to another owner          ETIMEDOUT  read/wait timed out
    EAGAIN  process table full                            EPIPE   write to an exited session
    EALREADY  hello again as another user                 ESHUTDOWN  the kernel is stopping
    EIO     the kernel failed internally (a bug: the message says what)
    ENOEXEC a checkpoint for another model/format         EIO     also: a damaged checkpoint file
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import secrets
import stat
import tempfile
from pathlib import Path

import msgpack

ABI_VERSION = 1


class Sys(enum.IntEnum):
    """Syscall numbers. Arguments after the number, in order (``?`` marks optional ones)."""
    NULL = 0         # ()                                    -> None (round-trip benchmark)
    HELLO = 1        # (token, user?, client?)               -> {abi, kernel_pid, user, lease_s, ...}
    SPAWN = 2        # (prompt: str | [{role, content}] | [token ids], params?: {SamplingParams fields},
                     #  opts?: {nice, session, detached, command, stdin, pgid, model})  -> pid
                     #  model: a catalog or cached model's name (default: the kernel's), loaded on first use
                     #  params may hold one grammar: json_schema | regex | grammar (Lark/GBNF) | choice
                     #  pgid: join that process group (the caller's); default: a new group (pgid = pid)
                     #  stdin: the prompt stays open; write() appends to it, close() starts generating
    READ = 3         # (pid, timeout_s?)                     -> {"text", "eof", "turn_end", "logprobs"?}
                     #  logprobs (only when spawned with params logprobs: true): one entry per
                     #  token since the last read, [id, bytes, logprob, [[id, bytes, logprob], ...]]
                     #  (the top_logprobs most likely, best first); a token's text may come in a
                     #  later read (held back for a split UTF-8 character or a possible stop string)
    WRITE = 4        # (pid, text | {role, content} | [{role, content}]) -> number of tokens queued
                     #  (to an open stdin: text appended to the prompt, prefilled as it arrives)
    WAIT = 5         # (pid, timeout_s?)                     -> exit status dict (reaps the process)
    KILL = 6         # (pid, sig?=SIGTERM)                   -> None; pid < 0: the process group -pid
    NICE = 7         # (pid, nice: -20..19)                  -> None
    FORK = 8         # (pid, params?)                        -> child pid (copy-on-write KV)
                     #  params: the child's own sampling params (as spawn's, e.g. another grammar)
                     #  from its next turn; EBUSY unless pid is between turns (or its stdin open)
    PS = 9           # ()                                    -> [process summary dict, ...]
    STAT = 10        # (pid)                                 -> process detail dict
    MEMINFO = 11     # ()                                    -> {"kv": {...}, "host": {...}, "gpu": [...]}
    UNAME = 12       # ()                                    -> {versions, model, device, uptime_s, config}
    TOKENIZE = 13    # (text, special?=True, add_bos?=False) -> [token ids]
    DETOKENIZE = 14  # ([token ids], skip_special?=False)    -> text
    MODELS = 15      # ()                                    -> [{"name", "path", "loaded"}, ...]
    SHUTDOWN = 16    # ()                                    -> None; the kernel then stops
    CLOSE = 17       # (pid)                                 -> None; end an open stdin: generate now
    COUNTERS = 18    # (blocks?=False)                       -> {users: {user: {running, waiting, prompt_tokens,
                     #  generation_tokens, ..., ttft/itl/e2e histograms}}, buckets, kv, prefix_cache,
                     #  preemptions, engine[, blocks: {held: {pid: [ids]}, cached, swapped}]} (kernel/ledger.py)
    EMBED = 19       # ([text, ...])                         -> [[float] * dim, ...] unit vectors, one per text
                     #  (the encoder model, drivers/bert.py: $LLMOS_EMBED_MODEL, default minilm)
    LIMITS = 20      # (scope?, {limit: int | nil}?)          -> {rules: {scope: {limit: n}}, usage: {user: {...}}};
                     #  with changes (admins): set scope's limits (kernel/limits.py) -> its rule
    CHECKPOINT = 21  # (pid, path?)                          -> {path, name, pid, tokens, kv_tokens, bytes}: the
                     #  process's whole state to $LLMOS_HOME/checkpoints/<owner>/<name>.ckpt (kernel/checkpoint.py);
                     #  path: a bare name, or an absolute path (admins); it keeps running
    RESTORE = 22     # (path, opts?: {detached, remove})     -> pid of a new process continuing exactly where the
                     #  checkpoint was (remove: then delete the file). ENOENT none; ENOEXEC not a checkpoint,
                     #  newer format, other layout or model; EIO damaged (checksum); EPERM another owner's
                     #  (unless admin)
    LOAD = 23        # (model name)                          -> {name, path, loaded, default, weights_bytes, kv_bytes,
                     #  kv_blocks, procs, unload_in_s}: make it resident (kernel/models.py); parks while it
                     #  loads, then {name, loading: True} (call again). ENOENT unknown (names the catalog),
                     #  ENOMEM not within the models' memory budget (sizes named), EPERM a path (non-admin)
    UNLOAD = 24      # (model name)                          -> its record; EBUSY: it has processes, or is the
                     #  kernel's default model; ENOENT: not resident
    LATENCY = 25     # (pid, ms | nil)                       -> None; the time-per-token target the scheduler sizes
                     #  steps for while it runs (kernel/latency.py); nil: derived from nice. EPERM: needs the
                     #  privilege a nice below 0 needs


# Signals keep their (Linux) Unix numbers and meaning on the wire on every platform.
SIGINT, SIGKILL, SIGTERM, SIGCONT, SIGSTOP = 2, 9, 15, 18, 19
SIGNALS: dict[str, int] = {"INT": SIGINT, "KILL": SIGKILL, "TERM": SIGTERM,
                           "CONT": SIGCONT, "STOP": SIGSTOP}
SIGNAL_NAMES: dict[int, str] = {n: "SIG" + s for s, n in SIGNALS.items()}

# Process states as ps/stat report them, and the reasons a process can exit.
STATES = ("NEW", "READY", "RUNNING", "SLEEPING", "STOPPED", "ZOMBIE")
EXIT_REASONS = ("eos", "length", "stop", "signal", "error")

# Limits checked by the kernel (each breach is answered with the errno named).
MAX_FRAME_BYTES = 4 << 20        # E2BIG: one request frame
HARD_FRAME_BYTES = 64 << 20      # the socket drops a peer sending more (ZMQ_MAXMSGSIZE)
MAX_ARGS = 8                     # E2BIG: arguments after the syscall number
MAX_TEXT_CHARS = 1 << 20         # E2BIG: prompt / write / tokenize text (tokens: context length)
MAX_MESSAGES = 1024              # E2BIG: chat messages in one spawn
MAX_TOKEN_IDS = 1 << 20          # E2BIG: detokenize input
MAX_NAME_CHARS = 256             # EINVAL: user, client, command names
MAX_EMBED_TEXTS = 32             # E2BIG: texts in one embed call (EINVAL: none); 32 x 256 tokens
                                 # take seconds, well inside a client's call timeout
MAX_EMBED_CHARS = 1 << 14        # E2BIG: one embed text (the encoder reads at most 256 tokens)
MAX_PARK_S = 60.0                # a blocking call parks at most this long (ETIMEDOUT; clients loop)
MAX_REQ_ID = (1 << 63) - 1
NICE_MIN, NICE_MAX = -20, 19


class ProtocolError(Exception):
    """A frame that cannot be served. ``req_id`` is the id to answer with (None if unknown)."""

    def __init__(self, errno: int, message: str, req_id: int | None = None):
        super().__init__(errno, message)
        self.errno, self.message, self.req_id = errno, message, req_id


def _no_ext(code: int, data: bytes):
    raise ValueError(f"msgpack ext type {code} is not part of the llmos ABI")


_packer = msgpack.Packer(use_bin_type=True)   # reused: pack() holds the GIL throughout


def pack(value) -> bytes:
    """One msgpack value -> frame bytes (str as str, bytes as bin)."""
    return _packer.pack(value)


def unpack(frame: bytes):
    """Frame bytes -> one msgpack value; raises ValueError on anything malformed or trailing."""
    return msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)


def encode_request(req_id: int, sysno: int, *args) -> bytes:
    """The request frame. ValueError (naming the encoding) for text that is not valid Unicode,
    e.g. bytes of another encoding read with errors='surrogateescape'."""
    try:
        return pack([req_id, int(sysno), *args])
    except UnicodeEncodeError as e:
        bad = e.object[e.start:e.end]
        raw = bad.encode("utf-8", "surrogateescape") if all(0xDC80 <= ord(c) <= 0xDCFF for c in bad) else b""
        what = f"byte 0x{raw[0]:02x}" if raw else f"character {bad[:1]!r}"
        raise ValueError(f"text is not UTF-8 ({what} at position {e.start}): llmos text is UTF-8; "
                         f"convert the input first (e.g. iconv -f LATIN1 -t UTF-8)") from None


def decode_request(frame: bytes) -> tuple[int, int, list]:
    """Frame -> (req_id, sysno, args). Raises ProtocolError (E2BIG, EPROTO, ENOSYS).

    The sysno is checked against the table by the kernel (ENOSYS there), not here, so that an
    old client and a newer kernel agree on framing regardless of which calls exist."""
    if len(frame) > MAX_FRAME_BYTES:      # answered with the id from the frame's first bytes
        raise ProtocolError(_errno.E2BIG, f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}",
                            request_id(frame))
    try:
        msg = unpack(frame)
    except UnicodeDecodeError as e:
        raise ProtocolError(_errno.EPROTO, f"a string in the request is not valid UTF-8 (byte "
                                           f"0x{e.object[e.start]:02x}): text on the wire is UTF-8",
                            request_id(frame))
    except Exception as e:  # msgpack raises ValueError subclasses, TypeError, RecursionError...
        raise ProtocolError(_errno.EPROTO, f"undecodable frame: {type(e).__name__}: {e}"[:200])
    if not isinstance(msg, list) or len(msg) < 2:
        raise ProtocolError(_errno.EPROTO, "a request is a list [req_id, sysno, args...]")
    req_id, sysno = msg[0], msg[1]
    if type(req_id) is not int or not 0 <= req_id <= MAX_REQ_ID:
        raise ProtocolError(_errno.EPROTO, "req_id must be an int in [0, 2**63)")
    if type(sysno) is not int:
        raise ProtocolError(_errno.ENOSYS, f"syscall number must be an int, not {type(sysno).__name__}",
                            req_id)
    if len(msg) - 2 > MAX_ARGS:
        raise ProtocolError(_errno.E2BIG, f"{len(msg) - 2} arguments exceed {MAX_ARGS}", req_id)
    return req_id, sysno, msg[2:]


def request_id(frame: bytes) -> int | None:
    """The req_id of a frame that cannot be decoded whole, read from its first bytes (None if
    they do not start a request)."""
    try:
        u = msgpack.Unpacker(raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)
        u.feed(frame[:32])
        if u.read_array_header() < 2:
            return None
        rid = u.unpack()
    except Exception:
        return None
    return rid if type(rid) is int and 0 <= rid <= MAX_REQ_ID else None


def encode_reply(req_id: int | None, err: int, value) -> bytes:
    return pack([req_id, err, value])


def decode_reply(frame: bytes) -> tuple[int | None, int, object]:
    """Frame -> (req_id, errno, value). Raises ProtocolError(EPROTO) on a malformed reply."""
    try:
        msg = unpack(frame)
    except Exception as e:
        raise ProtocolError(_errno.EPROTO, f"undecodable reply: {e}")
    if (not isinstance(msg, list) or len(msg) != 3 or type(msg[1]) is not int
            or not (msg[0] is None or type(msg[0]) is int)):
        raise ProtocolError(_errno.EPROTO, "a reply is a list [req_id, errno, value]")
    return msg[0], msg[1], msg[2]


def error(err: int, message: str) -> OSError:
    """The exception userland raises for an errno reply (OSError picks the subclass)."""
    return OSError(err, message)


def parse_signal(text: str | int) -> int:
    """'INT', 'SIGINT', '-INT', '2', 2 -> 2. Raises ValueError for anything not in SIGNALS."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        s = str(text).strip().lstrip("-").upper()
        s = s[3:] if s.startswith("SIG") else s
        if s in SIGNALS:
            return SIGNALS[s]
        if not s.isdigit():
            raise ValueError(f"unknown signal {text!r} (known: {', '.join(SIGNALS)})")
        n = int(s)
    if n not in SIGNAL_NAMES:
        raise ValueError(f"unsupported signal {n} (known: {', '.join(f'{k}={v}' for k, v in SIGNALS.items())})")
    return n


# ---- runtime dir: socket, token, pid file, log ----------------------------------------------

def runtime_dir(env=None) -> Path:
    """$LLMOS_RUNTIME_DIR, else $XDG_RUNTIME_DIR/llmos, else /tmp/llmos-<uid>. Not created here."""
    env = os.environ if env is None else env
    if env.get("LLMOS_RUNTIME_DIR"):
        return Path(env["LLMOS_RUNTIME_DIR"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "llmos"
    return Path(tempfile.gettempdir()) / f"llmos-{os.getuid()}"


def ensure_runtime_dir(path: Path | None = None) -> Path:
    """Create the runtime dir with mode 0700 (or tighten it); refuse one owned by another user."""
    path = Path(path) if path is not None else runtime_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(_errno.ENOTDIR, f"runtime dir {path} is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(_errno.EPERM, f"runtime dir {path} belongs to uid {st.st_uid}, not {os.getuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def socket_path(rt: Path | None = None) -> Path:
    return (Path(rt) if rt is not None else runtime_dir()) / "kernel.sock"


def token_path(rt: Path | None = None) -> Path:
    return (Path(rt) if rt is not None else runtime_dir()) / "token"


def pid_path(rt: Path | None = None) -> Path:
    return (Path(rt) if rt is not None else runtime_dir()) / "kernel.pid"


def log_path(rt: Path | None = None) -> Path:
    return (Path(rt) if rt is not None else runtime_dir()) / "kernel.log"


IPC_PATH_MAX = 107   # sun_path is 108 bytes with the terminating NUL


def ipc_endpoint(path: Path) -> str:
    """``ipc://`` endpoint for a socket path; ValueError if the path is too long for AF_UNIX."""
    raw = os.fsencode(str(path))
    if len(raw) > IPC_PATH_MAX:
        raise ValueError(f"socket path {path} is {len(raw)} bytes; AF_UNIX allows {IPC_PATH_MAX} "
                         "(set LLMOS_RUNTIME_DIR to a shorter directory)")
    return f"ipc://{path}"


def kernel_endpoint(rt: Path | None = None, env=None) -> str:
    """Where clients connect: $LLMOS_KERNEL if set, else the runtime dir's ipc socket."""
    env = os.environ if env is None else env
    return env.get("LLMOS_KERNEL") or ipc_endpoint(socket_path(rt if rt is not None else runtime_dir(env)))


def write_token(rt: Path) -> str:
    """Write a fresh random token to <rt>/token with mode 0600 (atomically) and return it."""
    token = secrets.token_hex(32)
    final = token_path(rt)
    tmp = final.with_name(f".token.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, final)
    return token


def read_token(rt: Path | None = None, env=None) -> str:
    """$LLMOS_TOKEN if set, else the token file. FileNotFoundError if neither exists."""
    env = os.environ if env is None else env
    if env.get("LLMOS_TOKEN"):
        return env["LLMOS_TOKEN"]
    return token_path(rt if rt is not None else runtime_dir(env)).read_text().strip()
