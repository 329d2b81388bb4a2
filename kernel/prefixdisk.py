"""The persistent prefix-cache tier: full KV blocks of prefixes on disk, so that a system prompt
or a document paid for once is not prefilled again after a restart (``llmos serve --prefix-disk
SIZE``; off by default).

Where: $LLMOS_HOME/prefix/<key>/<digest>.kv, key = the model's fingerprint (kernel/checkpoint.py)
with the KV dtype, the a8 kernels' arithmetic where the model runs on them (quant.A8_ARITHMETIC) and
the block size, so a file is only ever read by the same weights, arithmetic and layout. The
digest is kvcache's chained block digest (owner namespace, parent digest, the block's tokens).

A file: MAGIC, a 4-byte little-endian header length, a msgpack header {parent, tokens, shape,
dtype, sum}, then K and V of the block (shape [layers, 1, block_size, kv_heads, head_dim]); sum is
the blake2b of those bytes. A load trusts nothing: the magic, the header, the shape and dtype, the
parent digest and the block's tokens (compared, not just hashed) and the checksum must all match;
any mismatch is logged, the file deleted, and the block computed as usual, never a wrong answer.

What is written (kernel/kvcache.py decides): a registered block when it is hit (hot), and at
shutdown every registered block, parents before children. The size limit evicts least recently
used files, but never one written or read during this boot (a chain must keep its parents): a
block that cannot fit that way is not written. Writes go to a temp file and are renamed.
All methods run on the engine's owner thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections import OrderedDict
from pathlib import Path

import msgpack
import torch

log = logging.getLogger("llmos.kernel")

MAGIC = b"LLMOSKV1"


class PrefixDisk:
    def __init__(self, root: Path | str, key: str, shape: tuple[int, ...], dtype: torch.dtype, limit_bytes: int):
        """root: $LLMOS_HOME/prefix; key: the model fingerprint with dtype and block size; shape:
        one block's K (and V) shape; limit_bytes: the most the files may take together."""
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shape, self.dtype, self.limit = tuple(shape), dtype, limit_bytes
        self.dtype_name = str(dtype).replace("torch.", "")
        self.files: OrderedDict[bytes, int] = OrderedDict()   # digest -> bytes, least recently used first
        self.touched: set[bytes] = set()                       # written or read this boot
        self.counters = dict(disk_loads=0, disk_saves=0, disk_rejects=0, disk_evictions=0)
        found = []
        for f in self.dir.glob("*.kv"):
            try:
                st = f.stat()
                found.append((st.st_mtime, bytes.fromhex(f.stem), st.st_size))
            except (OSError, ValueError):
                continue
        for _, digest, size in sorted(found):
            self.files[digest] = size
        for f in self.dir.glob("*.tmp"):         # a write the last boot did not finish
            f.unlink(missing_ok=True)
        self._evict(0)

    @property
    def used(self) -> int:
        return sum(self.files.values())

    def stats(self) -> dict:
        """For meminfo: files, bytes, the limit and the load/save/reject/eviction counts."""
        return dict(files=len(self.files), bytes=self.used, limit=self.limit, **self.counters)

    def has(self, digest: bytes) -> bool:
        return digest in self.files

    def _path(self, digest: bytes) -> Path:
        return self.dir / f"{digest.hex()}.kv"

    # ---- write ----------------------------------------------------------------------------------
    def save(self, digest: bytes, parent: bytes, tokens, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Write one block (k, v: a host copy); False when it is not written (no room, I/O error)."""
        if digest in self.files:
            self.files.move_to_end(digest)
            self.touched.add(digest)
            return True
        payload = k.contiguous().view(torch.uint8).numpy().tobytes() + v.contiguous().view(torch.uint8).numpy().tobytes()
        header = msgpack.packb({"parent": parent, "tokens": [int(t) for t in tokens], "shape": list(k.shape),
                                "dtype": self.dtype_name, "sum": hashlib.blake2b(payload, digest_size=16).digest()})
        blob = MAGIC + struct.pack("<I", len(header)) + header + payload
        if not self._evict(len(blob)):
            return False
        path = self._path(digest)
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("prefix disk: cannot write %s: %s", path.name, e)
            return False
        self.files[digest] = len(blob)
        self.touched.add(digest)
        self.counters["disk_saves"] += 1
        return True

    def _evict(self, room: int) -> bool:
        """Delete least recently used files not touched this boot until `room` more bytes fit."""
        used = self.used
        for digest in [d for d in self.files if d not in self.touched]:
            if used + room <= self.limit:
                break
            used -= self.files.pop(digest)
            self._path(digest).unlink(missing_ok=True)
            self.counters["disk_evictions"] += 1
        return used + room <= self.limit

    # ---- read -----------------------------------------------------------------------------------
    def load(self, digest: bytes, parent: bytes, tokens) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The block's (K, V) as a one-block swap handle, or None (absent, or rejected: logged and deleted)."""
        if digest not in self.files:
            return None
        path = self._path(digest)
        try:
            blob = path.read_bytes()
            handle = self._parse(blob, parent, tokens)
        except (OSError, ValueError, RuntimeError, msgpack.UnpackException, struct.error, KeyError, TypeError) as e:
            log.warning("prefix disk: %s ignored and deleted: %s", path.name, e)
            self.files.pop(digest, None)
            path.unlink(missing_ok=True)
            self.counters["disk_rejects"] += 1
            return None
        self.files.move_to_end(digest)
        self.touched.add(digest)
        self.counters["disk_loads"] += 1
        return handle

    def _parse(self, blob: bytes, parent: bytes, tokens):
        if blob[:len(MAGIC)] != MAGIC:
            raise ValueError("not a prefix-cache block file (bad magic)")
        (n,) = struct.unpack_from("<I", blob, len(MAGIC))
        start = len(MAGIC) + 4
        h = msgpack.unpackb(blob[start:start + n])
        payload = blob[start + n:]
        if tuple(h["shape"]) != self.shape or h["dtype"] != self.dtype_name:
            raise ValueError(f"layout {h['shape']} {h['dtype']} is not this pool's {list(self.shape)} {self.dtype_name}")
        if h["parent"] != parent or list(h["tokens"]) != [int(t) for t in tokens]:
            raise ValueError("its prefix differs from the one asked for (parent digest or tokens)")
        if hashlib.blake2b(payload, digest_size=16).digest() != h["sum"]:
            raise ValueError("checksum mismatch (damaged)")
        half = len(payload) // 2
        k = torch.frombuffer(bytearray(payload[:half]), dtype=torch.uint8).view(self.dtype).reshape(self.shape)
        v = torch.frombuffer(bytearray(payload[half:]), dtype=torch.uint8).view(self.dtype).reshape(self.shape)
        return k, v
