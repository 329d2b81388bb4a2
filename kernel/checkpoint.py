"""Checkpoints: a process's complete state to a file and back (CRIU for LLM processes).
(Over 300 lines: one file format, its writer and its reader, which must change together.)

File format (version 1; all integers little-endian):

    offset 0     magic        b"LLMOSCK\\0" (8 bytes)
    offset 8     format       u32: FORMAT_VERSION of the writer (a newer one is refused, ENOEXEC)
    offset 12    header_len   u32
    offset 16    header       msgpack map (below), header_len bytes
    then         kv           K then V, each [layers, kv.tokens, kv_heads, head_dim] in kv.dtype,
                              C order: the KV of the first kv.tokens positions, nothing else
    last 32      checksum     blake2b-256 of every byte before it

    header = {format, layout: LAYOUT_VERSION, model: fingerprint of the GGUF, created: unix time,
              kv: {tokens, layers, kv_heads, head_dim, dtype},
              process: {pid, owner, command, session, detached, nice, params (SamplingParams
                        fields), forks, state, was_sleeping, prompt_ids, output_ids, logprobs,
                        tokens, turn_start, turn_tokens, pending_input [[ids, feed]], stdin_open,
                        stdin_tail, feeding, output [[unread text, ends_turn]], stats},
              grammar: None (reserved for matcher state that cannot be replayed; today the
                       constraint travels in params and the matcher is rebuilt by replay)}

The KV is stored per position, not per block, so a checkpoint restores into any block size and
(converted) any KV dtype: the layout version names what a position's K/V is (after RoPE, per
layer and kv head), not how the pool stores it. The random stream needs no state: a seeded
process draws each token with a generator re-seeded from (seed, position)
(drivers/runner.py position_seed), and its children's seeds come from (seed, forks). The
detokenizer and stop-string matcher of the current turn are rebuilt by replaying the turn's
tokens, as fork does.

Errors (KernelError): ENOENT no such file · ENOEXEC not a checkpoint, a newer format, another
layout or another model · EIO damaged (checksum mismatch, truncated, unreadable header) ·
ENOSPC/EFBIG/EDQUOT... the write failed (the temp file is removed; the process is untouched).
The owner check (EPERM) is the caller's (kernel/hibernate.py).

snapshot() and install() run on the engine's owner thread; encode(), write() and read() are
pure I/O and CPU and run in a worker thread. snapshot() copies only positions [0, computed):
a forward in flight writes only positions >= computed of the processes it runs, and blocks are
never freed or moved while it runs, so the copy is consistent without stopping the engine.
install() never writes the pool: it hands the KV to the allocator as a swapped-out table
(KVCache.adopt), swapped in by the scheduler at a step boundary.

(Over 300 lines: the format's writer, its reader and the process <-> file mapping stay in one
file so the format has exactly one definition.)
"""

from __future__ import annotations

import errno as E
import hashlib
import os
import struct
import time
from collections import deque
import json
from dataclasses import fields
from pathlib import Path

import msgpack
import torch

from .kvcache import owner_namespace
from .proc import Process, ProcState, sleep
from .procops import KernelError

MAGIC = b"LLMOSCK\0"
FORMAT_VERSION = 1
LAYOUT_VERSION = 1
PREAMBLE = struct.Struct("<8sII")
DIGEST_BYTES = 32
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_fingerprints: dict[tuple, str] = {}


def fingerprint(path: str) -> str:
    """blake2b of the GGUF's tensor table (names, types, shapes, offsets) and tensor data;
    computed once per file (path, size, mtime) per boot."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _fingerprints:
        from gguf import GGUFReader
        reader = GGUFReader(path)
        h = hashlib.blake2b(digest_size=16)
        for t in reader.tensors:
            h.update(msgpack.packb([t.name, int(t.tensor_type), [int(x) for x in t.shape],
                                    int(t.data_offset), int(t.n_bytes)]))
        start = min((int(t.data_offset) for t in reader.tensors), default=0)
        with open(path, "rb") as f:
            f.seek(start)
            while chunk := f.read(8 << 20):
                h.update(chunk)
        _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


# ---- the process <-> header + KV ---------------------------------------------------------------

def snapshot(engine, p: Process, kv: bool = True) -> tuple[dict, torch.Tensor | None, torch.Tensor | None]:
    """(process header, K, V) of a live process: K/V [layers, computed, kv_heads, head_dim] on
    the CPU, copied now (engine owner thread); kv=False: none (a restore re-prefills). ESRCH if
    it has exited."""
    if not p.alive:
        raise KernelError(E.ESRCH, f"process {p.pid} has exited")
    n = p.computed if kv and p.pid in engine.kv.tables else 0
    k, v = _read_kv(engine.kv, p.pid, n) if n else (None, None)
    st = p.stats
    proc = {
        "pid": p.pid, "owner": p.owner, "command": p.command, "session": p.session,
        "detached": p.detached, "nice": p.nice,
        "params": params_dict(p.params),
        "forks": p.forks, "state": p.state.name, "was_sleeping": p.was_sleeping,
        "prompt_ids": list(p.prompt_ids), "output_ids": list(p.output_ids), "logprobs": list(p.logprobs),
        "tokens": list(p.tokens), "computed": n, "turn_start": p.turn_start, "turn_tokens": p.turn_tokens,
        "pending_input": [[list(ids), feed] for ids, feed in p.pending_input],
        "stdin_open": p.stdin_open, "stdin_tail": list(p.stdin_tail), "feeding": p.feeding,
        "output": [[s[0], s[1]] for s in p.channel._segments],   # unread output (not its logprobs)
        "stats": {"tokens": st.tokens, "prefilled": st.prefilled, "cached": st.cached},
    }
    return proc, k, v


def params_dict(params) -> dict:
    """SamplingParams as the wire map SamplingParams.from_dict reads back (a grammar constraint
    as its wire key: json_schema, regex, grammar or choice)."""
    out = {}
    for f in fields(params):
        x = getattr(params, f.name)
        if f.name == "constraint":
            if x is not None:
                out[x.kind] = json.loads(x.text) if x.kind in ("json_schema", "choice") else x.text
        else:
            out[f.name] = list(x) if isinstance(x, tuple) else x
    return out


def _read_kv(kv, pid: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [0, n) of pid's KV, from the pool and (for swapped-out blocks) the swap handle."""
    t, s = kv.tables[pid], kv.storage
    nb = -(-n // s.block_size)
    handle, positions = t.swapped if t.swapped else ((None, None), ())
    where = {pos: j for j, pos in enumerate(positions)}
    kept = iter(t.blocks)
    ks, vs = [], []
    for i in range(nb):
        if i in where:
            ks.append(handle[0][:, where[i]].to(s.device))
            vs.append(handle[1][:, where[i]].to(s.device))
        else:
            b = next(kept)
            ks.append(s.k[:, b])
            vs.append(s.v[:, b])

    def flat(parts):
        x = torch.stack(parts, 1)                       # [L, nb, bs, H, D]
        return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :n].to("cpu", copy=True).contiguous()
    return flat(ks), flat(vs)


def install(engine, proc: dict, k: torch.Tensor | None, v: torch.Tensor | None, *, holder,
            pid: int | None = None, detached: bool | None = None) -> Process:
    """A new process continuing exactly where the checkpointed one was (engine owner thread).
    pid: keep this pid (sessions restored at boot); detached: override the saved flag.
    Runs as SIGCONT would: a stopped process comes back running (or sleeping). E2BIG when its
    context does not fit this kernel, EAGAIN when the table is full; nothing changes then."""
    from ..drivers.sampler import SamplingParams
    ops, procs, kv = engine.ops, engine.procs, engine.kv
    tokens = proc["tokens"]
    vocab = engine.tokenizer.vocab_size
    if not tokens or not all(type(i) is int and 0 <= i < vocab for i in tokens):
        raise KernelError(E.ENOEXEC, "checkpoint holds token ids outside this model's vocabulary")
    if len(tokens) >= engine.max_context:
        raise KernelError(E.E2BIG, f"checkpoint of {len(tokens)} tokens does not fit the context "
                                   f"of {engine.max_context}")
    if procs.full():
        raise KernelError(E.EAGAIN, f"process table full ({procs.max_procs})")
    try:
        params = SamplingParams.from_dict(proc["params"])
    except (ValueError, TypeError) as e:
        raise KernelError(E.ENOEXEC, f"checkpoint's sampling parameters: {e}") from None
    pid = procs.claim(pid) if pid is not None else procs.new_pid()
    p = Process(pid, proc["prompt_ids"], params, owner=proc["owner"], command=proc["command"],
                session=proc["session"], nice=proc["nice"], holder=holder,
                detached=proc["detached"] if detached is None else detached)
    p.forks = proc["forks"]
    p.tokens, p.output_ids, p.logprobs = list(tokens), list(proc["output_ids"]), list(proc["logprobs"])
    p.pending_input = [(list(ids), bool(feed)) for ids, feed in proc["pending_input"]]
    p.stdin_open, p.stdin_tail, p.feeding = proc["stdin_open"], list(proc["stdin_tail"]), proc["feeding"]
    for key, value in proc["stats"].items():
        setattr(p.stats, key, value)
    if getattr(params, "constraint", None) is not None:            # grammars (drivers/grammar.py)
        try:
            p.grammar = ops.grammars.compile(params.constraint)
        except ValueError as e:
            raise KernelError(E.ENOEXEC, f"checkpoint's grammar: {e}"[:300]) from None
    ops.new_turn(p)
    p.turn_start, p.turn_tokens = proc["turn_start"], proc["turn_tokens"]
    turn = p.tokens[p.turn_start:]
    p.output.replay(turn)                                # the same held-back text and stop state
    if getattr(p, "matcher", None) is not None:          # the grammar matcher: replayed likewise
        for tok in turn:
            p.matcher.consume(tok)
    p.channel._segments = deque([[t, e] for t, e in proc["output"]] or [["", False]])
    if k is not None and k.shape[1]:                    # else (or no swap room): recompute
        handle = (_blocks(k, kv.storage), _blocks(v, kv.storage))
        if kv.adopt(pid, handle, k.shape[1], owner_namespace(p.owner)):
            p.computed = k.shape[1]
    procs.add(p)
    was = proc["state"]
    if was == ProcState.SLEEPING.name or (was == ProcState.STOPPED.name and proc["was_sleeping"]):
        sleep(p)
        if p.pending_input:
            ops.next_turn(p)
    else:
        engine.sched.enqueue(p)
    return p


def _blocks(x: torch.Tensor, storage) -> torch.Tensor:
    """[L, n, H, D] per position -> [L, blocks, block_size, H, D] in the pool's dtype (CPU)."""
    bs = storage.block_size
    L, n = x.shape[0], x.shape[1]
    nb = -(-n // bs)
    out = torch.zeros((L, nb * bs, *x.shape[2:]), dtype=storage.dtype)
    out[:, :n] = x
    return out.view(L, nb, bs, *x.shape[2:])


# ---- the file ------------------------------------------------------------------------------------

def encode(proc: dict, k: torch.Tensor | None, v: torch.Tensor | None, model: str, layout: tuple) -> bytes:
    """The checkpoint file's bytes. layout: (layers, kv_heads, head_dim, dtype) of the pool."""
    layers, heads, dim, dtype = layout
    n = 0 if k is None else k.shape[1]
    header = {"format": FORMAT_VERSION, "layout": LAYOUT_VERSION, "model": model, "created": time.time(),
              "kv": {"tokens": n, "layers": layers, "kv_heads": heads, "head_dim": dim,
                     "dtype": str(dtype).removeprefix("torch.")},
              "process": proc, "grammar": None}
    head = msgpack.packb(header, use_bin_type=True)
    parts = [PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(head)), head]
    if n:
        parts += [_bytes(k), _bytes(v)]
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for part in parts:
        h.update(part)
    return b"".join(parts + [h.digest()])


def _bytes(x: torch.Tensor) -> memoryview:
    return memoryview(x.contiguous().view(torch.uint8).numpy()).cast("B")


def decode(data: bytes, model: str, layout: tuple) -> tuple[dict, torch.Tensor | None, torch.Tensor | None]:
    """(header, K, V) of a checkpoint file's bytes, K/V converted to the pool's dtype; raises
    KernelError ENOEXEC (not a checkpoint, newer format, other layout or model) or EIO (damaged)."""
    if len(data) < PREAMBLE.size or data[:8] != MAGIC:
        raise KernelError(E.ENOEXEC, "not an llmos checkpoint (bad magic)")
    _, version, hlen = PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        raise KernelError(E.ENOEXEC, f"checkpoint format {version} is not this kernel's "
                                     f"({FORMAT_VERSION}){': made by a newer llmos' if version > FORMAT_VERSION else ''}")
    body = memoryview(data)[:-DIGEST_BYTES] if len(data) >= PREAMBLE.size + DIGEST_BYTES else None
    if body is None or hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest() != data[-DIGEST_BYTES:]:
        raise KernelError(E.EIO, "checkpoint is damaged: checksum mismatch (truncated or corrupted)")
    try:
        header = msgpack.unpackb(body[PREAMBLE.size:PREAMBLE.size + hlen], raw=False)
        kvh, proc = header["kv"], header["process"]
        n, dtype = kvh["tokens"], DTYPES[kvh["dtype"]]
    except Exception as e:
        raise KernelError(E.EIO, f"checkpoint is damaged: bad header ({type(e).__name__})") from None
    if header.get("layout") != LAYOUT_VERSION:
        raise KernelError(E.ENOEXEC, f"checkpoint KV layout {header.get('layout')} is not this "
                                     f"kernel's ({LAYOUT_VERSION})")
    if header.get("model") != model:
        raise KernelError(E.ENOEXEC, "checkpoint was made with another model (fingerprint "
                                     f"{str(header.get('model'))[:12]}, loaded {model[:12]})")
    layers, heads, dim, pool_dtype = layout
    if (kvh["layers"], kvh["kv_heads"], kvh["head_dim"]) != (layers, heads, dim):
        raise KernelError(E.ENOEXEC, "checkpoint KV shape differs from this model's")
    shape = (layers, n, heads, dim)
    size = layers * n * heads * dim * dtype.itemsize
    start = PREAMBLE.size + hlen
    if len(body) != start + 2 * size:
        raise KernelError(E.EIO, f"checkpoint is damaged: {len(body) - start} KV bytes, header says {2 * size}")
    if not n:
        return header, None, None
    raw = bytearray(body[start:])
    kv = torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
    k, v = kv[:size // dtype.itemsize].view(shape), kv[size // dtype.itemsize:].view(shape)
    return header, k.to(pool_dtype), v.to(pool_dtype)


def layout_of(storage) -> tuple:
    """(layers, kv_heads, head_dim, dtype) of a KV pool."""
    L, _, _, H, D = storage.k.shape
    return L, H, D, storage.dtype


def write(path: Path, data: bytes) -> None:
    """Write data to path atomically (temp file in the same dir, fsync, rename). A failure (disk
    full: ENOSPC, EFBIG under a file size limit, ...) removes the temp file and raises KernelError
    with the OS errno; an existing file at path is left as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KernelError(e.errno or E.EIO, f"cannot write checkpoint {path}: {e.strerror or e}") from None


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KernelError(e.errno or E.EIO, f"cannot read checkpoint {path}: {e.strerror or e}") from None


def peek(path: Path) -> dict:
    """The header of a checkpoint file without reading its KV or checking its checksum (for
    listings); KernelError ENOEXEC/EIO when it has none."""
    with open(path, "rb") as f:
        pre = f.read(PREAMBLE.size)
        if len(pre) < PREAMBLE.size or pre[:8] != MAGIC:
            raise KernelError(E.ENOEXEC, f"{path} is not an llmos checkpoint")
        _, version, hlen = PREAMBLE.unpack(pre)
        try:
            return msgpack.unpackb(f.read(hlen), raw=False)
        except Exception:
            raise KernelError(E.EIO, f"{path}: damaged header") from None
