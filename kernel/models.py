"""Models as loadable modules: the resident models, loaded on first use, unloaded when idle.
(Over 300 lines: loading, the memory budget and keep-alive all decide one thing, which models
are resident, and share the table's state.)

Why this shape:
  * One Engine per resident model (its driver, tokenizer, KV pool, scheduler, process table).
    Models differ in layers, KV geometry and vocabulary, so a KV pool or a batch cannot be shared
    between them; a whole engine per model keeps every engine invariant exactly as it is with one
    model, and the single-model kernel is this table with one entry (the default model).
  * One pid space: every engine's ProcTable shares the default's pid counter (kernel/proc.py), so
    pids stay global; a call naming a pid goes to the engine whose table holds it (process, view).
  * A model's view is the Kernel the syscall handlers act on, with that model's engine and driver
    (a copy of the boot Kernel): handlers take no model argument, a spawn or a pid picks the view.
  * The server's engine loop steps the resident engines in turn (schedule(): round robin over
    those with work), one forward at a time: on a CPU two at once would only share the cores.
  * Loading (pull, read the file, allocate the KV pool) runs in a worker thread, so the kernel
    keeps answering; calls that need the model park on the load's wait channel (waiters()).
  * Memory: a budget (serve --models-memory; default the default model's footprint plus 80 % of
    the host memory available after boot) bounds weights + KV pools of all resident models. A
    new model's pool is what the config's rule gives (engine.pool_blocks: kv_fraction of free
    memory, capped), never more than the room left; idle models (no processes) are unloaded,
    least recently used first, to make room; a model that still does not fit is ENOMEM, sizes named.
  * Keep-alive (Ollama's, default 5 min): a model other than the default that has had no
    processes for keep_alive_s is unloaded. The default model is never unloaded (EBUSY): calls
    that name no model (spawn, tokenize, hello, checkpoints, sessions restored at boot) need it.
  * Names: a catalog name (pulled on first use) or a cached model's name; a path to a .gguf only
    from an admin (the kernel would otherwise read files for users who cannot).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno as E
import gc
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from .procops import KernelError

log = logging.getLogger("llmos.kernel")

KEEP_ALIVE_S = 300.0         # an idle model (no processes) is unloaded after this (Ollama's 5 min)
LOAD_PARK_S = 20.0           # a call parks at most this long on a load (below clients' call timeout)
_loads = itertools.count(1)   # load wait channels
BUDGET_SHARE = 0.8           # of the host memory available after boot, for models beyond the default


@dataclass(eq=False)
class Resident:
    """A loaded model: its name, file, and the Kernel view handlers use for its processes."""
    name: str
    path: str
    view: object                       # kernel.syscalls.Kernel with this model's engine and driver
    weights_bytes: int
    kv_bytes: int
    default: bool = False
    last_used: float = 0.0             # monotonic time it last had processes (keep-alive)

    @property
    def engine(self):
        return self.view.engine

    @property
    def busy(self) -> bool:
        return len(self.engine.procs) > 0 or self.engine.in_flight

    def record(self, keep_alive_s: float) -> dict:
        idle = None if self.default or self.busy else max(0.0, keep_alive_s - (time.monotonic() - self.last_used))
        return {"name": self.name, "path": self.path, "loaded": True, "default": self.default,
                "weights_bytes": self.weights_bytes, "kv_bytes": self.kv_bytes,
                "kv_blocks": self.engine.storage.num_blocks, "procs": len(self.engine.procs),
                "unload_in_s": None if idle is None else round(idle, 1)}


def display_name(path: Path) -> str:
    """A catalog name when the file is a catalog model's, else the file's stem."""
    from llmos.drivers import catalog
    for name in catalog.CATALOG:
        if catalog.cached_path(name) == path:
            return name
    return path.stem


def footprint(engine) -> tuple[int, int]:
    """(weights, KV pool) bytes of an engine's model."""
    m = engine.model
    weights = m.weight_bytes() if hasattr(m, "weight_bytes") else 0
    return weights, engine.storage.num_blocks * engine.storage.bytes_per_block


class Models:
    """name → resident model. Built by main at boot (or by the server: a table of one)."""

    def __init__(self, kernel, *, load_model=None, budget_bytes: int | None = None,
                 keep_alive_s: float = KEEP_ALIVE_S):
        """kernel: the boot Kernel (its engine and model are the default's); load_model(path) ->
        a driver (None: this kernel loads no other model); budget_bytes: see the module doc."""
        self.kernel, self.load_model, self.keep_alive_s = kernel, load_model, keep_alive_s
        self.table: dict[str, Resident] = {}       # realpath -> resident, the default first
        self.loading: dict[str, asyncio.Task] = {}  # realpath -> its load (loop thread)
        self.reserved = 0                          # bytes promised to loads in progress
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmos-load")
        self._turn = 0
        self._ticking = False
        kernel.models = self
        if kernel.engine is not None:
            path = str(getattr(kernel.model, "path", "") or "")
            name = display_name(Path(path)) if path else kernel.info.get("model", "") or "default"
            kernel.info["model_name"] = name                # ps's MODEL column (uname keeps "model")
            self.table[os.path.realpath(path) if path else "<default>"] = Resident(
                name, path, kernel, *footprint(kernel.engine), default=True)
        if budget_bytes is None:
            import psutil
            budget_bytes = self.used() + int(BUDGET_SHARE * psutil.virtual_memory().available)
        self.budget = budget_bytes

    @classmethod
    def of(cls, kernel) -> "Models":
        """The kernel's table (a table of its one model when main made none)."""
        return kernel.models if getattr(kernel, "models", None) is not None else cls(kernel)

    # ---- lookups (loop thread) ---------------------------------------------------------
    def residents(self) -> list[Resident]:
        return list(self.table.values())

    def engines(self) -> list:
        return [r.engine for r in self.table.values()]

    def view_of(self, pid: int):
        """The view whose process table holds pid (None: no such process)."""
        for r in self.table.values():
            if r.engine.procs.get(pid) is not None:
                return r.view
        return None

    def used(self) -> int:
        return sum(r.weights_bytes + r.kv_bytes for r in self.table.values())

    def group(self, pgid: int) -> list:
        """A process group's members across every model, oldest first."""
        return sorted((p for e in self.engines() for p in e.ops.group(pgid)), key=lambda p: p.pid)

    def orphan(self, holder: int) -> int:
        """A vanished session's processes, on every model, go to init (kernel/lease.py)."""
        return sum(e.orphan(holder) for e in self.engines())

    # ---- stepping (the server's engine loop) ------------------------------------------
    def schedule(self):
        """(engine, plan) of the next resident engine in turn that has work, else (None, None)."""
        rs = self.residents()
        for i in range(len(rs)):
            r = rs[(self._turn + i) % len(rs)]
            plan = r.engine.schedule()
            if plan is not None:
                self._turn = (self._turn + i + 1) % len(rs)
                r.last_used = time.monotonic()
                return r.engine, plan
        return None, None

    @property
    def held(self) -> bool:
        """Some engine has work held back by a token-rate limit (the loop looks again soon)."""
        return any(e.sched.held for e in self.engines())

    # ---- names -------------------------------------------------------------------------
    def resolve(self, name, admin: bool) -> tuple[str, Path]:
        """(key, path) of a model name; ENOENT naming the catalog, EPERM for a path from a user."""
        from llmos.drivers import catalog
        from llmos.drivers.gguf import ModelFileError
        if type(name) is not str or not name or len(name) > 4096:
            raise KernelError(E.EINVAL, "a model is named by a non-empty str")
        if name in catalog.CATALOG:
            if catalog.CATALOG[name].unzip:
                raise KernelError(E.EINVAL, f"{name} is an encoder (the embed syscall uses it), not a language model")
            path = catalog.cached_path(name)
        else:
            if (name.endswith(".gguf") or os.sep in name) and not admin \
                    and os.path.realpath(name) not in self.table:      # a resident one reads no file
                raise KernelError(E.EPERM, "only an admin may load a model from a path; "
                                           f"name a catalog model ({', '.join(_llms())}) or a cached one")
            try:
                path = catalog.resolve(name)
            except ModelFileError:
                cached = ", ".join(f.stem for f in catalog.cached()) or "none"
                raise KernelError(E.ENOENT, f"no model {name[:80]!r} (catalog: {', '.join(_llms())}; "
                                            f"cached: {cached})") from None
        return os.path.realpath(path), path

    def resident(self, name, admin: bool) -> Resident | None:
        """The resident model of that name, or None when it is not loaded."""
        return self.table.get(self.resolve(name, admin)[0])

    # ---- loading (loop thread; the work in self.pool) ---------------------------------
    def load(self, name, admin: bool) -> Resident | asyncio.Task:
        """The resident model, or the task loading it (started now if need be)."""
        key, path = self.resolve(name, admin)
        r = self.table.get(key)
        if r is not None:
            r.last_used = time.monotonic()
            return r
        if self.load_model is None:
            raise KernelError(E.ENOENT, f"this kernel serves only its default model ({self.default_name()})")
        task = self.loading.get(key)
        if task is None:
            task = self.loading[key] = asyncio.ensure_future(self._load(key, path, name))
            task.channel = SimpleNamespace(pid=-(1 << 48) - next(_loads))    # apart from pids and jobs
            task.add_done_callback(lambda t: self._loaded(key, t))
        return task

    def _loaded(self, key: str, task: asyncio.Task) -> None:
        """A load ended: wake the calls parked on it (a failure is theirs to report; logged)."""
        self.loading.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.info("models: load failed: %s", task.exception())
        self.kernel.waits.wake(task.channel)

    async def _load(self, key: str, path: Path, name: str) -> Resident:
        from llmos.drivers import catalog
        from llmos.drivers.gguf import ModelFileError
        from .engine import Engine, pool_blocks
        loop, t0 = asyncio.get_running_loop(), time.monotonic()
        shown = display_name(path)
        log.info("models: loading %s (%s)", shown, path)
        try:
            if name in catalog.CATALOG:
                path = await loop.run_in_executor(self.pool, catalog.pull, name)
            model = await loop.run_in_executor(self.pool, self.load_model, str(path))
        except ModelFileError as e:
            raise KernelError(E.ENOEXEC, f"cannot load {shown}: {e}"[:400]) from None
        except (ValueError, MemoryError) as e:      # the driver refuses weights that do not fit
            raise KernelError(E.ENOMEM, f"cannot load {shown}: {e}"[:400]) from None
        except OSError as e:
            raise KernelError(e.errno or E.EIO, f"cannot load {shown}: {e}"[:400]) from None
        default = self.kernel.engine
        cfg = default.config
        weights = model.weight_bytes() if hasattr(model, "weight_bytes") else 0
        per_block = model.kv_bytes_per_token() * cfg.block_size
        want = pool_blocks(model, cfg)
        least = want if cfg.num_blocks is not None else min(want, -(-min(model.config.context_length, 2048)
                                                                  // cfg.block_size))
        blocks = min(want, self._make_room(weights + least * per_block) // per_block)
        if blocks < least:
            need = weights + least * per_block
            raise KernelError(E.ENOMEM, f"{shown} needs {_mib(need)} (weights {_mib(weights)} + KV "
                                        f"{least} blocks {_mib(least * per_block)}); the models' budget is "
                                        f"{_mib(self.budget)}, {_mib(self.used())} held by "
                                        f"{', '.join(r.name for r in self.residents())} (busy or the default)")
        self.reserved += weights + blocks * per_block
        try:
            engine = await loop.run_in_executor(self.pool, lambda: Engine(
                model, cfg.replace(num_blocks=blocks), on_wake=default.ops.on_wake, limits=default.limits,
                pids=default.procs))
        finally:
            self.reserved -= weights + blocks * per_block
        view = dataclasses.replace(self.kernel, engine=engine, model=model,
                                   info={**self.kernel.info, "model": shown, "model_name": shown,
                                         "model_path": str(path)})
        r = self.table[key] = Resident(shown, str(path), view, *footprint(engine), last_used=time.monotonic())
        log.info("models: %s resident in %.1f s: weights %s, KV %d blocks %s (budget %s, %s used)", shown,
                 time.monotonic() - t0, _mib(r.weights_bytes), blocks, _mib(r.kv_bytes), _mib(self.budget),
                 _mib(self.used()))
        self._arm()
        return r

    def _make_room(self, need: int) -> int:
        """Bytes free in the budget for a new model, after unloading idle ones (least recently
        used first) while fewer than need are free."""
        def room() -> int:
            return self.budget - self.used() - self.reserved
        for r in sorted(self.residents(), key=lambda r: r.last_used):
            if room() >= need:
                break
            if not r.default and not r.busy:
                self._drop(r, "to make room")
        return max(0, room())

    def waiters(self, task: asyncio.Task, then, busy_errno: int | None = E.EAGAIN):
        """A Block for a call that needs task's model: poll() -> then(resident), its load's error,
        or after LOAD_PARK_S then(None) (busy_errno: EAGAIN naming the load instead)."""
        from .syscalls import NOT_READY, Block
        deadline = time.monotonic() + LOAD_PARK_S - 0.05

        def poll():
            if task.done():
                if task.cancelled():
                    raise KernelError(E.ECANCELED, "the load was cancelled (the kernel is stopping)")
                r = task.result()                   # raises the load's KernelError
                if r not in self.table.values():    # unloaded since (room for another load)
                    raise KernelError(E.EAGAIN, f"{r.name} was unloaded again to make room; try again")
                return then(r)
            if time.monotonic() < deadline:
                return NOT_READY
            if busy_errno is not None:
                raise KernelError(busy_errno, "the model is still loading (over "
                                              f"{LOAD_PARK_S:g} s so far); try again")
            return then(None)
        return Block(task.channel.pid, poll, LOAD_PARK_S)

    # ---- unloading ---------------------------------------------------------------------
    def unload(self, name, admin: bool) -> dict:
        key, _ = self.resolve(name, admin)
        r = self.table.get(key)
        if r is None:
            raise KernelError(E.ENOENT, f"{name} is not loaded" + (" (it is loading)" if key in self.loading else ""))
        if r.default:
            raise KernelError(E.EBUSY, f"{r.name} is the kernel's default model; it stays loaded "
                                       "(calls that name no model use it)")
        if r.busy:
            raise KernelError(E.EBUSY, f"{r.name} has {len(r.engine.procs)} processes (kill or wait for them first)"
                              if len(r.engine.procs) else f"{r.name} is computing a step; try again")
        rec = r.record(self.keep_alive_s)
        self._drop(r, "on request")
        return rec

    def _drop(self, r: Resident, why: str) -> None:
        del self.table[os.path.realpath(r.path)]
        freed = r.weights_bytes + r.kv_bytes
        r.view = None                                   # the engine, its pool and the driver go
        gc.collect()
        log.info("models: %s unloaded %s (%s freed)", r.name, why, _mib(freed))

    def _arm(self) -> None:
        """Check for idle models every so often while any but the default is resident."""
        if self._ticking:
            return
        self._ticking = True
        asyncio.get_running_loop().call_later(self._tick_s(), self._tick)

    def _tick_s(self) -> float:
        return max(0.05, min(5.0, self.keep_alive_s / 4))

    def _tick(self) -> None:
        self._ticking = False
        now = time.monotonic()
        for r in self.residents():
            if r.default:
                continue
            if r.busy:
                r.last_used = now
            elif now - r.last_used >= self.keep_alive_s:
                self._drop(r, f"after {self.keep_alive_s:g} s idle (keep-alive)")
        if len(self.table) > 1:
            self._arm()

    # ---- listing -----------------------------------------------------------------------
    def default_name(self) -> str:
        return next((r.name for r in self.table.values() if r.default), "")

    def listing(self) -> list[dict]:
        """Resident models (memory, processes, time to unload), loading ones, then the cache."""
        from llmos.drivers import catalog
        out = [r.record(self.keep_alive_s) for r in self.residents()]
        out += [{"name": display_name(Path(k)), "path": k, "loaded": False, "loading": True} for k in self.loading]
        have = set(self.table) | set(self.loading)
        out += [{"name": display_name(f), "path": str(f), "loaded": False} for f in catalog.cached()
                if os.path.realpath(f) not in have]
        return out


def _llms() -> list[str]:
    from llmos.drivers import catalog
    return [n for n, s in catalog.CATALOG.items() if not s.unzip]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
