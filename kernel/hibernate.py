"""The checkpoint service: where checkpoint files live, who may touch them, the worker thread that
writes and reads them, and session processes that outlive the kernel.

Files: $LLMOS_HOME/checkpoints/<owner>/<name>.ckpt (format: kernel/checkpoint.py). A caller names
a checkpoint by a bare name (in its own directory); only an admin may give an absolute path.
Restoring another owner's checkpoint is EPERM unless the caller is an admin.

Work split: the snapshot (a copy of the process's state and KV) and the install of a restored
process happen on the engine's owner thread; encoding, checksums and disk I/O run in one worker
thread (so the engine keeps stepping), and the calls park on a wait channel of their own until
the worker is done (as sys_embed does).

Sessions outlive the kernel (sessions=True, as `llmos serve` boots it):
  * as a session's turn ends, or input is queued to it, its conversation (the whole process
    without KV and unread output: tokens, turns, queued input) is written to <owner>/session-<pid>.ckpt in the
    worker (in order, atomically), so a SIGKILLed kernel loses nothing the user typed or saw;
  * at shutdown (before processes are signalled) every live session is checkpointed with its KV;
  * at boot every session file is restored with its old pid (KV swapped in, or re-prefilled when
    the file has none), held by init; its owner reattaches by that pid. A session that exits has
    its file removed. A file that cannot be restored is renamed *.bad and logged.
  * pids are unambiguous across restarts: <checkpoints>/next-pid holds where the next boot's pids
    start. A boot writes its start + PID_RESERVE there at once (so after a crash the next boot
    starts above anything this one can have handed out) and its real next pid at shutdown.
"""

from __future__ import annotations

import errno as E
import logging
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from . import checkpoint as ck
from .proc import INIT, Process, ProcState
from .procops import KernelError

log = logging.getLogger("llmos.kernel")

SUFFIX = ".ckpt"
SESSION_PREFIX = "session-"
PID_RESERVE = 1 << 20        # pids a boot may hand out before a crash could make one ambiguous


class Checkpoints:
    def __init__(self, engine, model_path: str, directory: Path | None = None, sessions: bool = False):
        from llmos.drivers.catalog import home
        self.engine, self.model_path = engine, str(model_path)
        self.dir = Path(directory) if directory is not None else home() / "checkpoints"
        self.boot_id = secrets.token_hex(3)        # default names stay unique across restarts
        self.layout = ck.layout_of(engine.storage)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmos-ckpt")
        self.sessions, self.closing = sessions, False
        self._journaled: dict[int, tuple] = {}
        if sessions:
            ops = engine.ops
            wake, exited = ops.on_wake, ops.on_exit
            ops.on_wake = lambda p: (self._journal(p), wake and wake(p))
            ops.on_exit = lambda p: (exited and exited(p), self._exited(p))

    def model(self) -> str:
        return ck.fingerprint(self.model_path)

    # ---- names ------------------------------------------------------------------------------
    def owner_dir(self, owner: str) -> Path:
        return self.dir / quote(owner or "anonymous", safe="")

    def resolve(self, user: str, admin: bool, path, default: str | None = None) -> Path:
        """A checkpoint's file: `path` as a bare name in the user's directory, an absolute path
        (admins only), or (None) the default name. EINVAL, EPERM."""
        if path is None or path == "":
            if default is None:
                raise KernelError(E.EINVAL, "name the checkpoint to restore")
            return self.owner_dir(user) / (default + SUFFIX)
        if type(path) is not str or not path.isprintable() or len(path) > 1024:
            raise KernelError(E.EINVAL, "a checkpoint path is printable text of at most 1024 chars")
        if "/" not in path:
            if path.startswith("."):
                raise KernelError(E.EINVAL, f"bad checkpoint name {path!r}")
            return self.owner_dir(user) / (path if path.endswith(SUFFIX) else path + SUFFIX)
        if not path.startswith("/"):
            raise KernelError(E.EINVAL, "give a bare name or an absolute path")
        if not admin:
            raise KernelError(E.EPERM, "only an admin may name a path outside the checkpoints "
                                       "directory (give a bare name)")
        return Path(path)

    # ---- checkpoint and restore -------------------------------------------------------------
    def checkpoint(self, p: Process, path: Path, kv: bool = True) -> Future:
        """Snapshot p now; encode and write in the worker. The future's value:
        {path, name, tokens, kv_tokens, bytes}. kv=False: a conversation journal, without KV and
        without unread output (its text is in the tokens; the client may read it before a crash)."""
        proc, k, v = ck.snapshot(self.engine, p, kv)
        if not kv:
            proc["output"] = []
        return self.pool.submit(self._write, proc, k, v, path)

    def _write(self, proc, k, v, path: Path) -> dict:
        data = ck.encode(proc, k, v, self.model(), self.layout)
        ck.write(path, data)
        return {"path": str(path), "name": path.stem, "pid": proc["pid"], "tokens": len(proc["tokens"]),
                "kv_tokens": proc["computed"], "bytes": len(data)}

    def load(self, path: Path) -> Future:
        """Read and verify a checkpoint in the worker: the future's value is (header, K, V)."""
        return self.pool.submit(lambda: ck.decode(ck.read(path), self.model(), self.layout))

    def restore(self, loaded, user: str, admin: bool, holder, detached: bool | None = None,
                pid: int | None = None) -> Process:
        """Install a loaded checkpoint as a new process (engine owner thread). EPERM when it
        belongs to another owner and the caller is no admin."""
        header, k, v = loaded
        owner = header["process"]["owner"]
        if owner != user and not admin:
            log.warning("audit: %s denied restoring a checkpoint of %s", user, owner)
            raise KernelError(E.EPERM, f"the checkpoint belongs to {owner!r}, not {user!r}")
        return ck.install(self.engine, header["process"], k, v, holder=holder, pid=pid, detached=detached)

    # ---- sessions that outlive the kernel ---------------------------------------------------
    def session_file(self, owner: str, pid: int) -> Path:
        return self.owner_dir(owner) / f"{SESSION_PREFIX}{pid}{SUFFIX}"

    def _journal(self, p: Process) -> None:
        """on_wake: write a session's conversation when its turn ended or input was queued."""
        if not p.session or self.closing or not p.alive:
            return
        mark = (len(p.tokens), len(p.pending_input), p.state is ProcState.SLEEPING)
        if (p.state is ProcState.SLEEPING or p.turn_tokens == 0) and self._journaled.get(p.pid) != mark:
            self._journaled[p.pid] = mark
            fut = self.checkpoint(p, self.session_file(p.owner, p.pid), kv=False)
            fut.add_done_callback(_log_failure)

    def _exited(self, p: Process) -> None:
        if p.session and not self.closing:
            self._journaled.pop(p.pid, None)
            path = self.session_file(p.owner, p.pid)
            self.pool.submit(path.unlink, missing_ok=True)

    def save_sessions(self) -> int:
        """At shutdown, before the processes are signalled: every live session, with its KV
        (synchronously; the worker's queued journal writes go first). Returns how many."""
        self.closing = True
        self.pool.submit(lambda: None).result()
        self._write_next_pid(self.engine.procs.count_from(1))
        saved = 0
        for p in self.engine.procs.all():
            if p.session and p.alive:
                try:
                    self.checkpoint(p, self.session_file(p.owner, p.pid)).result()
                    saved += 1
                except KernelError as e:
                    log.error("shutdown: session %d not saved: %s", p.pid, e.message)
        return saved

    def boot(self) -> list[int]:
        """Restore every saved session with its old pid (held by init); returns their pids."""
        pids, ops = [], self.engine.ops
        wake, ops.on_wake = ops.on_wake, None          # no event loop yet: nobody is waiting
        try:
            for path in sorted(self.dir.glob(f"*/{SESSION_PREFIX}*{SUFFIX}")):
                self._boot_one(path, pids)
        finally:
            ops.on_wake = wake
        try:
            start = int((self.dir / "next-pid").read_text())
        except (OSError, ValueError):
            start = 1
        self._write_next_pid(self.engine.procs.count_from(start) + PID_RESERVE)
        return pids

    def _write_next_pid(self, pid: int) -> None:
        try:
            ck.write(self.dir / "next-pid", f"{pid}\n".encode())
        except KernelError as e:
            log.error("pids may repeat after a restart: %s", e.message)

    def _boot_one(self, path: Path, pids: list[int]) -> None:
        try:
            pid = int(path.stem[len(SESSION_PREFIX):])
            loaded = self.load(path).result()
            p = self.restore(loaded, "", True, INIT, detached=True, pid=pid)
            self._journaled[p.pid] = (len(p.tokens), len(p.pending_input), p.state is ProcState.SLEEPING)
            pids.append(p.pid)
        except (KernelError, ValueError, RuntimeError) as e:
            log.error("boot: session %s not restored: %s; kept as %s.bad", path.name, e, path.name)
            path.rename(path.with_name(path.name + ".bad"))


def _log_failure(fut: Future) -> None:
    e = fut.exception()
    if e is not None:
        log.error("session journal: %s", e)


def service(k):
    """The kernel's Checkpoints (made on first use when boot did not make one)."""
    if getattr(k, "checkpoints", None) is None:
        k.checkpoints = Checkpoints(k.engine, getattr(k.model, "path", ""))
    return k.checkpoints
