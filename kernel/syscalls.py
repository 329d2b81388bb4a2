"""The syscall handlers and THE table (xv6: syscall.c + sysproc.c).
(Over 300 lines: one short handler per syscall next to the one table that numbers them.)

Rules:
  - A handler only decodes and validates its arguments, then hands off to the engine. Every
    argument arrives from an untrusted peer: check its type, range and size here, and answer a
    bad one with SysError(errno, message) - never a traceback, never a hang.
  - Dispatch is by number through TABLE; there is no lookup of handlers by name.
  - Handlers run on the kernel's event-loop thread, between engine steps, and never block: a call
    that must wait (read, wait) returns a Block, which the server parks on the process's wait
    channel and re-polls when the engine wakes that pid (or answers ETIMEDOUT).
  - Ownership: reading, writing, waiting for, signalling, renicing or forking a process needs the
    caller's user to be its owner (EPERM); ps and stat show every process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno as E
import hmac
import inspect
import itertools
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from . import abi
from .abi import Sys
from .procops import KernelError
from .proc import ProcState

log = logging.getLogger("llmos.kernel")


class SysError(KernelError):
    """An errno reply raised by a handler (as the engine's KernelError): the caller gets
    ``[req_id, errno, message]``."""


@dataclass(eq=False)
class Caller:
    """Who is calling: one ZeroMQ connection after hello (the server's Session extends it)."""
    user: str = ""                              # owner recorded on the processes it spawns
    client: str = ""                            # free-form program name, for ps and logs
    authed: bool = False                        # hello succeeded
    sid: int = 0                                # session id: Process.holder of what it spawns
    identity: object = None                     # kernel.cred.Identity from the transport (None: in-process)
    admin: bool = False                         # may act on anyone's processes (set by hello)


NOT_READY = object()
SHUTDOWN = object()          # sys_shutdown's result: the server answers, then stops


@dataclass(eq=False)
class Block:
    """A blocking call's request to park: poll() -> value, NOT_READY, or raises SysError."""
    pid: int
    poll: Callable[[], object]
    timeout: float


@dataclass(eq=False)
class Kernel:
    """What handlers act on. The server owns it; main builds it at boot."""
    engine: object                   # kernel.engine.Engine
    model: object                    # drivers.llama.LlamaModel (tokenizer, config, path)
    token: str                       # the hello secret
    waits: object = None             # kernel.waitq.WaitQueues (the engine's on_wake is its wake)
    lease_s: float = 3.0             # how long a vanished client's processes outlive it
    info: dict = field(default_factory=dict)   # static uname fields from boot (model, dtype...)
    boot_time: float = field(default_factory=time.monotonic)
    embedder: object = None          # drivers.bert.EncoderService, made by the first embed call
    checkpoints: object = None       # kernel.hibernate.Checkpoints (boot, or the first checkpoint call)
    wake_engine: object = None       # callable: the server's engine loop has work (set by the server)
    models: object = None            # kernel.models.Models: the resident models (main, or the server)


# ---- argument checks ---------------------------------------------------------------------

def _int(x, name: str, lo: int, hi: int) -> int:
    if type(x) is not int:
        raise SysError(E.EINVAL, f"{name} must be an int, not {type(x).__name__}")
    if not lo <= x <= hi:
        raise SysError(E.EINVAL, f"{name}={x} is outside [{lo}, {hi}]")
    return x


def _pid(x) -> int:
    return _int(x, "pid", 1, 2**62)


def _bool(x, name: str) -> bool:
    if type(x) is not bool:
        raise SysError(E.EINVAL, f"{name} must be a bool, not {type(x).__name__}")
    return x


def _str(x, name: str, limit: int, err: int = E.E2BIG) -> str:
    if type(x) is not str:
        raise SysError(E.EINVAL, f"{name} must be a str, not {type(x).__name__}")
    if len(x) > limit:
        raise SysError(err, f"{name} of {len(x)} chars exceeds {limit}")
    return x


def _name(x, name: str) -> str:
    s = _str(x, name, abi.MAX_NAME_CHARS, E.EINVAL)
    if not s.isprintable():
        raise SysError(E.EINVAL, f"{name} must be printable text")
    return s


def _timeout(x) -> float:
    """None -> the longest park; else finite seconds in [0, MAX_PARK_S]."""
    if x is None:
        return abi.MAX_PARK_S
    if type(x) not in (int, float) or not math.isfinite(x) or x < 0:
        raise SysError(E.EINVAL, f"timeout must be None or seconds >= 0, not {x!r}"[:120])
    return min(float(x), abi.MAX_PARK_S)


def _dict(x, name: str, allowed) -> dict:
    if x is None:
        return {}
    if type(x) is not dict:
        raise SysError(E.EINVAL, f"{name} must be a map, not {type(x).__name__}")
    unknown = [k for k in x if k not in allowed]
    if unknown:
        raise SysError(E.EINVAL, f"unknown {name} key {str(unknown[0])[:40]!r} (known: {', '.join(sorted(allowed))})")
    return x


def _not_bytes(x, name: str) -> None:
    if type(x) is bytes:
        raise SysError(E.EINVAL, f"{name} is bytes (msgpack bin): text is sent as a UTF-8 str; "
                                 f"decode it from its encoding first")


def _messages(x) -> list[dict]:
    msgs = x if type(x) is list else [x]
    if not msgs or len(msgs) > abi.MAX_MESSAGES:
        raise SysError(E.E2BIG if msgs else E.EINVAL, f"need 1..{abi.MAX_MESSAGES} chat messages, got {len(msgs)}")
    total = 0
    for m in msgs:
        if type(m) is not dict or set(m) != {"role", "content"}:
            raise SysError(E.EINVAL, "a chat message is a map {role: str, content: str}")
        _name(m["role"], "role")
        total += len(_str(m["content"], "content", abi.MAX_TEXT_CHARS))
    if total > abi.MAX_TEXT_CHARS:
        raise SysError(E.E2BIG, f"messages of {total} chars exceed {abi.MAX_TEXT_CHARS}")
    return msgs


def _proc(k: Kernel, c: Caller, pid, *, own: bool = True):
    pid = _pid(pid)
    p = k.engine.procs.get(pid)
    if p is None and k.models is not None:          # a process of another resident model
        view = k.models.view_of(pid)
        p = view.engine.procs.get(pid) if view is not None else None
    if p is None:
        raise SysError(E.ESRCH, f"no process {pid}")
    if own and p.owner != c.user:
        if not c.admin:
            log.warning("audit: %s denied access to process %d of %s", c.user, pid, p.owner)
            raise SysError(E.EPERM, f"process {pid} belongs to {p.owner!r}, not {c.user!r}")
        log.info("audit: admin %s acts on process %d of %s", c.user, pid, p.owner)
    return p


def _on(k: Kernel, p) -> Kernel:
    """The kernel as p's model sees it (kernel/models.py): that model's engine and tokenizer."""
    if k.models is None or k.engine.procs.get(p.pid) is p:
        return k
    return k.models.view_of(p.pid) or k


def _group(k: Kernel, pgid: int) -> list:
    """A process group's members, on every resident model."""
    return k.models.group(pgid) if k.models is not None else k.engine.ops.group(pgid)


def _within_limits(k: Kernel, c: Caller, tokens: int, sp):
    """The caller's limits (kernel/limits.py) allow this new process; max_tokens trimmed to its
    max_context."""
    lim = k.engine.limits
    cap = lim.context_cap(c.user)
    if cap is not None and tokens + sp.max_tokens > cap:
        sp = dataclasses.replace(sp, max_tokens=max(1, cap - tokens))
    lim.check_new(k.engine, c.user, tokens, sp.max_tokens)
    return sp


def _may_raise_priority(c: Caller, nice: int, k: Kernel | None = None) -> int:
    """As in Linux, a nice below 0 needs privilege (an admin, or the user's nice_min limit)."""
    floor = k.engine.limits.nice_floor(c.user) if k is not None and k.engine is not None else 0
    if nice < floor and not c.admin:
        log.warning("audit: %s denied nice %d", c.user, nice)
        raise SysError(E.EPERM, f"nice {nice} < {floor} needs privilege (an admin, or a nice_min limit)")
    return nice


def _sampling(params) -> object:
    from llmos.drivers.sampler import SamplingParams
    if params is None:
        return SamplingParams()
    if type(params) is not dict:
        raise SysError(E.EINVAL, f"params must be a map, not {type(params).__name__}")
    try:
        return SamplingParams.from_dict(params)
    except (ValueError, TypeError) as e:
        raise SysError(E.EINVAL, f"params: {e}"[:300]) from None


def _encode(k: Kernel, text: str, *, add_bos) -> list[int]:
    try:
        return k.model.tokenizer.encode(text, add_bos=add_bos)
    except ValueError as e:
        raise SysError(E.EINVAL, str(e)) from None


def _render(k: Kernel, msgs: list[dict], *, after=None, open_end: bool = False):
    """Chat text for msgs (drivers/tokenizer.py): a whole prompt; or (open_end) that prompt as
    (head, tail) split where the last message's content ends; or (after=process) a new turn that
    follows that process's last assistant turn."""
    tok = k.model.tokenizer
    try:
        if open_end:
            return tok.render_open(msgs)
        if after is None:
            return tok.render_chat(msgs, add_generation_prompt=True)
        return tok.render_turn(msgs, after_stop=bool(after.tokens) and after.tokens[-1] in tok.stop_ids)
    except ValueError as e:
        raise SysError(E.EINVAL, str(e)) from None


def _exit(p) -> dict | None:
    x = p.exit
    if x is None:
        return None
    return {"reason": x.reason, "signal": x.signal, "message": x.message}


def _summary(k: Kernel, p, c: Caller) -> dict:
    """A process as ps shows it; another user's command line (its prompt) only to an admin."""
    st = p.stats
    command = p.command if c.admin or p.owner == c.user else "-"
    return {"pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "owner": p.owner, "command": command,
            "state": p.state.name, "nice": p.nice, "session": p.session, "detached": p.detached,
            "prompt_tokens": len(p.prompt_ids), "tokens": len(p.output_ids),
            "blocks": k.engine.kv.holds(p.pid), "swapped": k.engine.kv.is_swapped(p.pid),
            "age_s": round(time.monotonic() - st.arrival, 3), "exit": _exit(p),
            "model": k.info.get("model_name") or k.info.get("model", "")}


# ---- the handlers ------------------------------------------------------------------------

def sys_null(k: Kernel, c: Caller):
    """Do nothing (the round-trip benchmark)."""
    return None


def sys_hello(k: Kernel, c: Caller, token=None, user=None, client=""):
    """Start a session. Who it is comes from the transport (kernel/cred.py: the OS on ipc, the
    CURVE key on TCP), never from the arguments: `user` may only name the caller itself, except
    for an admin, who may act as another user (as sudo -u; audited, and then without privilege).
    A token, if given, must be the runtime dir's. In-process callers (no transport) must give it."""
    if token not in (None, "") or c.identity is None:
        if type(token) is not str or not hmac.compare_digest(token.encode(), k.token.encode()):
            raise SysError(E.EACCES, "bad token (it is in the kernel's runtime dir, mode 0600)")
    offered = _name(user, "user") if user is not None else ""
    client = _name(client, "client")
    ident = c.identity
    if ident is None:
        name, admin = offered or "anonymous", False
    elif not offered or offered == ident.user:
        name, admin = ident.user, ident.admin
    elif ident.admin:
        name, admin = offered, False
        log.warning("audit: %s acts as %r", ident.user, offered)
    else:
        log.warning("audit: %s (uid %s) claimed to be %r; refused", ident.user, ident.uid, offered)
        raise SysError(E.EACCES, f"you are {ident.user!r} (as the {ident.via} transport says); "
                                 f"only an admin may act as {offered!r}")
    if c.authed and name != c.user:
        raise SysError(E.EALREADY, f"this connection is already {c.user!r}")
    c.user, c.client, c.admin, c.authed = name, client, admin, True
    return {"abi": abi.ABI_VERSION, "kernel_pid": os.getpid(), "user": name, "admin": admin,
            "lease_s": k.lease_s, "model": k.info.get("model", "")}


def sys_spawn(k: Kernel, c: Caller, prompt, params=None, opts=None):
    """Start a process generating after prompt: raw text, chat messages (rendered by the model's
    template) or token ids."""
    o = _dict(opts, "opts", {"nice", "session", "detached", "command", "stdin", "pgid", "latency_ms", "model"})
    if o.get("model") is not None:                  # a model other than the default (kernel/models.py)
        if k.models is None:
            raise SysError(E.ENOENT, "this kernel serves only its one model")
        r = k.models.load(o.pop("model"), c.admin)
        if not isinstance(r, asyncio.Future):
            return sys_spawn(r.view, c, prompt, params, o)
        def spawn_when_loaded(r):             # parked: the dispatcher's wake-up has passed
            pid = sys_spawn(r.view, c, prompt, params, o)
            if k.wake_engine is not None:
                k.wake_engine()
            return pid
        return k.models.waiters(r, spawn_when_loaded)
    latency = _latency(k, c, o.get("latency_ms"))
    nice = _may_raise_priority(c, _int(o.get("nice", 0), "nice", abi.NICE_MIN, abi.NICE_MAX), k)
    session, detached = _bool(o.get("session", False), "session"), _bool(o.get("detached", False), "detached")
    command = _name(o.get("command", ""), "command")
    stdin = _bool(o.get("stdin", False), "stdin")
    sp = _sampling(params)
    if sp.logit_bias and max(t for t, _ in sp.logit_bias) >= k.model.tokenizer.vocab_size:
        raise SysError(E.EINVAL, f"params: logit_bias names a token id past the vocabulary "
                                 f"({k.model.tokenizer.vocab_size})")
    ids, text = _prompt_ids(k, prompt)
    tail: list[int] = []
    if stdin and text == "chat":        # written text continues the last message's content
        head, after = _render(k, _messages(prompt), open_end=True)
        ids, tail = _encode(k, head, add_bos=None), _encode(k, after, add_bos=False)
    if not ids:
        raise SysError(E.EINVAL, "the prompt encodes to no tokens")
    sp = _within_limits(k, c, len(ids), sp)
    p = k.engine.spawn(ids, sp, owner=c.user, nice=nice, session=session, detached=detached,
                       command=command or " ".join(text.split())[:40], stdin=stdin,
                       stdin_tail=tail, holder=c.sid, pgid=_join_group(k, c, o.get("pgid")))
    p.latency_ms = latency
    return p.pid


def _latency(k: Kernel, c: Caller, ms):
    """A time-per-token target in ms (None: derived from nice); asking for one needs privilege."""
    if ms is None:
        return None
    if type(ms) not in (int, float) or not math.isfinite(ms) or not 1 <= ms <= 60_000:
        raise SysError(E.EINVAL, f"latency_ms must be a number of ms in [1, 60000] or nil, not {ms!r}"[:120])
    _may_raise_priority(c, -1, k)
    return float(ms)


def sys_latency(k: Kernel, c: Caller, pid, ms):
    """Set (or with nil clear) a process's time-per-token target (kernel/latency.py)."""
    p = _proc(k, c, pid)
    p.latency_ms = _latency(k, c, ms)


def _join_group(k: Kernel, c: Caller, pgid) -> int | None:
    """A process group a new process may join: one with a live member of the caller's (setpgid)."""
    if pgid is None:
        return None
    pgid = _pid(pgid)
    members = [p for p in _group(k, pgid) if p.alive]
    if not members:
        raise SysError(E.ESRCH, f"no process group {pgid}")
    if not c.admin and any(p.owner != c.user for p in members):
        raise SysError(E.EPERM, f"process group {pgid} belongs to another owner")
    return pgid


def _prompt_ids(k: Kernel, prompt) -> tuple[list[int], str]:
    """(token ids, a short description) of a spawn prompt: text, chat messages or token ids."""
    _not_bytes(prompt, "prompt")
    if type(prompt) is str:
        text = _str(prompt, "prompt", abi.MAX_TEXT_CHARS)
        if not text:
            raise SysError(E.EINVAL, "empty prompt")
        return _encode(k, text, add_bos=None), text
    if type(prompt) is list and prompt and all(type(i) is int for i in prompt):
        if len(prompt) > abi.MAX_TOKEN_IDS:
            raise SysError(E.E2BIG, f"{len(prompt)} prompt ids exceed {abi.MAX_TOKEN_IDS}")
        vocab = k.model.tokenizer.vocab_size
        for i in prompt:
            _int(i, "token id", 0, vocab - 1)
        return prompt, f"<{len(prompt)} tokens>"
    return _encode(k, _render(k, _messages(prompt)), add_bos=None), "chat"


def sys_read(k: Kernel, c: Caller, pid, timeout=None):
    """Take the process's pending output; park until some exists, the turn ends or it exits."""
    p, t = _proc(k, c, pid), _timeout(timeout)
    ch = p.channel

    def poll():
        if not ch.ready():
            return NOT_READY
        entries = ch.take_logprobs()
        text, turn_end, eof = ch.take()
        reply = {"text": text, "eof": eof, "turn_end": turn_end}
        if entries:                 # only for a process spawned with logprobs
            reply["logprobs"] = entries
        return reply

    v = poll()
    return Block(p.pid, poll, t) if v is NOT_READY else v


def sys_write(k: Kernel, c: Caller, pid, data):
    """Append a turn to a session's input: raw text, or chat message(s) rendered as a new turn."""
    p = _proc(k, c, pid)
    k = _on(k, p)
    _not_bytes(data, "text")
    if type(data) is str:
        text = _str(data, "text", abi.MAX_TEXT_CHARS)
    else:
        text = _render(k, _messages(data), after=p)
    ids = _encode(k, text, add_bos=False)
    if not ids:
        raise SysError(E.EINVAL, "nothing to write")
    cap = k.engine.limits.context_cap(p.owner)
    if cap is not None and len(p.tokens) + len(ids) >= cap:
        raise SysError(E.E2BIG, f"limit max_context={cap} of {p.owner}: {len(p.tokens)} tokens + {len(ids)} more")
    k.engine.write(p.pid, ids)
    return len(ids)


def sys_close(k: Kernel, c: Caller, pid):
    """End a process's open stdin: the rest of its prompt is appended and it starts generating."""
    p = _proc(k, c, pid)
    _on(k, p).engine.close(p.pid)


def sys_wait(k: Kernel, c: Caller, pid, timeout=None):
    """Park until the process exits; reap it and return its exit status (to every waiter)."""
    p, t = _proc(k, c, pid), _timeout(timeout)
    k = _on(k, p)

    def poll():
        if p.state is not ProcState.ZOMBIE:
            return NOT_READY
        if k.engine.procs.get(p.pid) is p:       # (init may have reaped an orphan already)
            k.engine.reap(p.pid)
        return {"pid": p.pid, **_exit(p), "tokens": len(p.output_ids)}

    v = poll()
    return Block(p.pid, poll, t) if v is NOT_READY else v


def sys_kill(k: Kernel, c: Caller, pid, sig=abi.SIGTERM):
    """Send a signal: INT ends the current turn, TERM/KILL end the process, STOP/CONT suspend/resume.
    A negative pid signals the process group -pid (every member the caller may signal; ESRCH
    when there is no such group, EPERM when it may signal none of them)."""
    if type(sig) is not int or sig not in abi.SIGNAL_NAMES:
        raise SysError(E.EINVAL, f"unsupported signal {sig!r}"[:80])
    if type(pid) is int and pid < 0:
        members = _group(k, _pid(-pid))
        if not members:
            raise SysError(E.ESRCH, f"no process group {-pid}")
        mine = [p for p in members if c.admin or p.owner == c.user]
        if not mine:
            raise SysError(E.EPERM, f"process group {-pid} belongs to {members[0].owner!r}, not {c.user!r}")
        for p in mine:
            _on(k, p).engine.signal(p.pid, sig)
        return None
    p = _proc(k, c, pid)
    _on(k, p).engine.signal(p.pid, sig)


def sys_nice(k: Kernel, c: Caller, pid, nice):
    """Set the process's nice value (-20 most favoured .. 19 least)."""
    p = _proc(k, c, pid)
    k = _on(k, p)
    k.engine.renice(p.pid, _may_raise_priority(c, _int(nice, "nice", abi.NICE_MIN, abi.NICE_MAX), k))


def sys_fork(k: Kernel, c: Caller, pid, params=None):
    """Copy a process (its KV shared copy-on-write); the child belongs to the caller. params: the
    child's own sampling params (as spawn's: e.g. another grammar), only between the turns of pid."""
    p = _proc(k, c, pid)
    k = _on(k, p)
    sp = None if params is None else _sampling(params)
    left = max(0, p.params.max_tokens - p.turn_tokens) if sp is None else sp.max_tokens
    k.engine.limits.check_new(k.engine, p.owner, len(p.tokens), left)
    return k.engine.fork(p.pid, holder=c.sid, params=sp).pid


def sys_ps(k: Kernel, c: Caller):
    """Every process, one summary map each."""
    views = [r.view for r in k.models.residents()] if k.models is not None else [k]
    return sorted((_summary(v, p, c) for v in views for p in v.engine.procs.all()), key=lambda s: s["pid"])


def sys_stat(k: Kernel, c: Caller, pid):
    """One process in detail: its summary, sampling parameters and statistics."""
    p = _proc(k, c, pid, own=False)
    k = _on(k, p)
    st = p.stats
    stats = {key: (round(v, 6) if isinstance(v, float) else v) for key, v in vars(st).items()
             if isinstance(v, (int, float, type(None)))}
    stats["state_time"] = {str(s): round(v, 6) for s, v in st.state_time.items()}
    params = {f: (list(v) if isinstance(v, tuple) else v) for f, v in dataclasses.asdict(p.params).items()}
    return {**_summary(k, p, c), "params": params, "stats": stats}


def sys_meminfo(k: Kernel, c: Caller):
    """KV pool and swap, engine and scheduler counters, host memory (psutil), GPUs (pynvml)."""
    import psutil
    from llmos.drivers.device import gpus
    vm, me = psutil.virtual_memory(), psutil.Process()
    st = k.engine.stats()
    return {"kv": st.pop("kv"), "sched": st.pop("sched"), "engine": st,
            "weights": {"bytes": k.model.weight_bytes() if hasattr(k.model, "weight_bytes") else None,
                        "format": k.model.weight_format() if hasattr(k.model, "weight_format") else None},
            "host": {"total": vm.total, "available": vm.available, "kernel_rss": me.memory_info().rss},
            "gpu": gpus()}


def sys_uname(k: Kernel, c: Caller):
    """Versions, model, device, uptime and the kernel configuration."""
    import llmos
    from llmos.drivers.cpu import cpu_features
    return {"sysname": "llmos", "release": llmos.__version__, "abi": abi.ABI_VERSION,
            "python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_features(),
            "kernel_pid": os.getpid(), "uptime_s": round(time.monotonic() - k.boot_time, 3), **k.info}


def sys_tokenize(k: Kernel, c: Caller, text, special=True, add_bos=False):
    """Token ids of text with the loaded model's tokenizer."""
    text = _str(text, "text", abi.MAX_TEXT_CHARS)
    try:
        return k.model.tokenizer.encode(text, add_bos=_bool(add_bos, "add_bos"),
                                        special=_bool(special, "special"))
    except ValueError as e:
        raise SysError(E.EINVAL, str(e)) from None


def sys_detokenize(k: Kernel, c: Caller, ids, skip_special=False):
    """Text of token ids."""
    if type(ids) is not list:
        raise SysError(E.EINVAL, f"ids must be a list of ints, not {type(ids).__name__}")
    if len(ids) > abi.MAX_TOKEN_IDS:
        raise SysError(E.E2BIG, f"{len(ids)} ids exceed {abi.MAX_TOKEN_IDS}")
    vocab = k.model.tokenizer.vocab_size
    for i in ids:
        _int(i, "token id", 0, vocab - 1)
    return k.model.tokenizer.decode(ids, skip_special=_bool(skip_special, "skip_special"))


def sys_models(k: Kernel, c: Caller):
    """The resident models (memory, processes, time to unload), loading ones, the local cache."""
    if k.models is not None:
        return k.models.listing()
    from llmos.drivers import catalog
    loaded = str(getattr(k.model, "path", ""))
    out = [{"name": k.info.get("model", ""), "path": loaded, "loaded": True}]
    out += [{"name": f.stem, "path": str(f), "loaded": False} for f in catalog.cached() if str(f) != loaded]
    return out


def sys_shutdown(k: Kernel, c: Caller):
    """Stop the kernel (admins only): processes get SIGTERM, parked calls are answered, then it exits."""
    if not c.admin:
        log.warning("audit: %s denied shutdown", c.user)
        raise SysError(E.EPERM, "only an admin (root, the kernel's owner, the admin group) may shut it down")
    return SHUTDOWN


def sys_counters(k: Kernel, c: Caller, blocks=False):
    """The kernel's counters for monitoring, per user (kernel/ledger.py); with blocks, the KV map."""
    return k.engine.ledger.snapshot(k.engine, _bool(blocks, "blocks"))


_embed_jobs = itertools.count(1)


def sys_embed(k: Kernel, c: Caller, texts):
    """Unit vectors of texts from the encoder model ($LLMOS_EMBED_MODEL, default minilm), loaded
    on first use. The encoder runs in a thread of its own (drivers/bert.py EncoderService); the
    call parks on a wait channel of its own, numbered below 0 apart from every pid, until then."""
    if type(texts) is not list or not texts:
        raise SysError(E.EINVAL, "texts must be a non-empty list of str")
    if len(texts) > abi.MAX_EMBED_TEXTS:
        raise SysError(E.E2BIG, f"{len(texts)} texts exceed {abi.MAX_EMBED_TEXTS} per call")
    for t in texts:
        _str(t, "text", abi.MAX_EMBED_CHARS)
    if k.embedder is None:
        from llmos.drivers.bert import EncoderService
        k.embedder = EncoderService(os.environ.get("LLMOS_EMBED_MODEL") or "minilm")
    job, channel = k.embedder.submit(texts), SimpleNamespace(pid=-next(_embed_jobs))
    loop = asyncio.get_running_loop()

    def done(_):                        # in the worker thread: wake the parked call on the loop
        try:
            loop.call_soon_threadsafe(k.waits.wake, channel)
        except RuntimeError:            # the loop has closed (the kernel stopped): nobody waits
            pass

    job.add_done_callback(done)

    def poll():
        if not job.done():
            return NOT_READY
        try:
            return job.result().tolist()
        except OSError as e:            # ENOENT: not pulled; ENOEXEC: unloadable model files
            raise SysError(e.errno, e.strerror) from None

    return Block(channel.pid, poll, abi.MAX_PARK_S)


def sys_limits(k: Kernel, c: Caller, scope=None, changes=None):
    """Limits and usage (kernel/limits.py): everyone sees the rules and their own usage, admins
    everyone's; with changes, an admin sets scope's limits (nil removes one)."""
    from .limits import LimitsError
    lim = k.engine.limits
    if changes is None:
        if scope is not None:
            raise SysError(E.EINVAL, "limits(scope) needs the changes too: limits(scope, {limit: n})")
        return lim.snapshot(k.engine, None if c.admin else {c.user})
    if not c.admin:
        log.warning("audit: %s denied setting limits of %s", c.user, str(scope)[:60])
        raise SysError(E.EPERM, "only an admin may set limits")
    try:
        return lim.set(k.engine, _name(scope, "scope"), changes)
    except LimitsError as e:
        raise SysError(E.EBUSY if "below the current usage" in str(e) else E.EINVAL, str(e)[:300]) from None


_ckpt_jobs = itertools.count(1)


def _park_job(k: Kernel, job, finish=lambda v: v) -> Block:
    """Park until a worker-thread job is done, on a wait channel of its own (below every pid and
    every embed channel); then answer finish(its value) or its KernelError."""
    channel = SimpleNamespace(pid=-(1 << 40) - next(_ckpt_jobs))
    loop = asyncio.get_running_loop()
    job.add_done_callback(lambda _: loop.call_soon_threadsafe(k.waits.wake, channel))
    done = []

    def poll():
        if not job.done():
            return NOT_READY
        if not done:
            done.append(finish(job.result()))
        return done[0]

    return Block(channel.pid, poll, abi.MAX_PARK_S)


def sys_checkpoint(k: Kernel, c: Caller, pid, path=None):
    """Write the process's whole state to a checkpoint file (kernel/checkpoint.py); it runs on."""
    from .hibernate import service
    p, svc = _proc(k, c, pid), service(k)
    if _on(k, p) is not k:
        raise SysError(E.EOPNOTSUPP, f"process {p.pid} runs on {_on(k, p).info.get('model')}: "
                                     "checkpoints are of the default model's processes only")
    dest = svc.resolve(c.user, c.admin, path, default=f"{p.pid}-{svc.boot_id}")
    return _park_job(k, svc.checkpoint(p, dest))


def sys_restore(k: Kernel, c: Caller, path, opts=None):
    """A new process from a checkpoint file, continuing exactly where it was (its owner or an admin)."""
    from .hibernate import service
    o = _dict(opts, "opts", {"detached", "remove"})
    detached = _bool(o["detached"], "detached") if "detached" in o else None
    remove = _bool(o.get("remove", False), "remove")
    svc = service(k)
    src = svc.resolve(c.user, c.admin, path)

    def install(loaded):
        pid = svc.restore(loaded, c.user, c.admin, c.sid, detached).pid
        if remove:                      # hibernated: the process is back, its file is not needed
            svc.pool.submit(src.unlink, missing_ok=True)
        if k.wake_engine is not None:
            k.wake_engine()
        return pid
    return _park_job(k, svc.load(src), install)


def sys_load(k: Kernel, c: Caller, name):
    """Make a model resident (kernel/models.py): its record once loaded; parked while it loads,
    {name, loading: True} after LOAD_PARK_S (call again). ENOENT unknown, ENOMEM no room."""
    if k.models is None:
        raise SysError(E.ENOENT, "this kernel serves only its one model")
    r = k.models.load(name, c.admin)
    if not isinstance(r, asyncio.Future):
        return r.record(k.models.keep_alive_s)
    return k.models.waiters(r, lambda r: r.record(k.models.keep_alive_s) if r is not None
                            else {"name": name, "loading": True}, busy_errno=None)


def sys_unload(k: Kernel, c: Caller, name):
    """Unload a resident model: its record. EBUSY with processes, or for the default model."""
    if k.models is None:
        raise SysError(E.EBUSY, "this kernel serves only its one model")
    return k.models.unload(name, c.admin)


# ---- THE table -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    fn: Callable
    min_args: int
    max_args: int
    mutates: bool          # may give the engine new work (the server then wakes its loop)


def _entry(fn: Callable, mutates: bool = False) -> Entry:
    ps = list(inspect.signature(fn).parameters.values())[2:]   # after (k, c)
    return Entry(fn, sum(p.default is inspect.Parameter.empty for p in ps), len(ps), mutates)


TABLE: dict[int, Entry] = {
    Sys.NULL: _entry(sys_null),
    Sys.HELLO: _entry(sys_hello),
    Sys.SPAWN: _entry(sys_spawn, mutates=True),
    Sys.READ: _entry(sys_read),
    Sys.WRITE: _entry(sys_write, mutates=True),
    Sys.WAIT: _entry(sys_wait, mutates=True),
    Sys.KILL: _entry(sys_kill, mutates=True),
    Sys.NICE: _entry(sys_nice, mutates=True),
    Sys.FORK: _entry(sys_fork, mutates=True),
    Sys.PS: _entry(sys_ps),
    Sys.STAT: _entry(sys_stat),
    Sys.MEMINFO: _entry(sys_meminfo),
    Sys.UNAME: _entry(sys_uname),
    Sys.TOKENIZE: _entry(sys_tokenize),
    Sys.DETOKENIZE: _entry(sys_detokenize),
    Sys.MODELS: _entry(sys_models),
    Sys.SHUTDOWN: _entry(sys_shutdown, mutates=True),
    Sys.CLOSE: _entry(sys_close, mutates=True),
    Sys.COUNTERS: _entry(sys_counters),
    Sys.EMBED: _entry(sys_embed),
    Sys.LIMITS: _entry(sys_limits, mutates=True),
    Sys.LATENCY: _entry(sys_latency, mutates=True),
    Sys.CHECKPOINT: _entry(sys_checkpoint),
    Sys.RESTORE: _entry(sys_restore, mutates=True),
    Sys.LOAD: _entry(sys_load),
    Sys.UNLOAD: _entry(sys_unload),
}
assert set(TABLE) == set(Sys), "every syscall number has exactly one handler"


def usage(sysno: int) -> str:
    """'read(pid, timeout=None)' for messages about arity."""
    e = TABLE[sysno]
    sig = str(inspect.signature(e.fn)).replace("k: 'Kernel', c: 'Caller', ", "").replace("k: 'Kernel', c: 'Caller'", "")
    return f"{Sys(sysno).name.lower()}{sig}"
