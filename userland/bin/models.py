"""`models [--json]`: the resident models (their memory), the ones loading, and the local cache.

Asks the running kernel (models syscall); with no kernel running it lists the cache itself
(`llmos models` works before the first `llmos serve`). One table either way:
NAME LOADED (default / yes / loading / empty) SIZE (the file) WEIGHTS KV (the model's pool) PROCS
UNLOAD (when keep-alive unloads it if still idle: 4m12s; never for the default, busy with processes) PATH.
"""

from __future__ import annotations

import os

from llmos.userland import program

SUMMARY = "the resident models (weights + KV memory) and the cached ones"
COLUMNS = ("NAME", "LOADED", "SIZE", "WEIGHTS", "KV", "PROCS", "UNLOAD", "PATH")


def parser(prog: str = "models") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("--json", action="store_true", help="print the model records as JSON")
    return p


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _bytes(n) -> str:
    return program.size(n) if n is not None else "-"


def _loaded(m: dict) -> str:
    if m.get("loading"):
        return "loading"
    return "default" if m.get("default") else "yes" if m.get("loaded") else ""


def _unload(m: dict) -> str:
    if not m.get("loaded"):
        return "-"
    if m.get("default"):
        return "never"
    left = m.get("unload_in_s")
    if left is None:
        return "busy"
    return f"{int(left // 60)}m{int(left % 60):02d}s"


def models_text(models: list[dict]) -> str:
    rows = [(m["name"], _loaded(m), _bytes(m.get("size")), _bytes(m.get("weights_bytes")),
             _bytes(m.get("kv_bytes")), str(m["procs"]) if "procs" in m else "-", _unload(m), m["path"] or "-")
            for m in models]
    return program.table(COLUMNS, rows, {"SIZE", "WEIGHTS", "KV", "PROCS"})


def cache_listing() -> list[dict]:
    """The cache and the catalog, without a kernel (nothing loaded)."""
    from llmos.drivers import catalog
    names = {catalog.cached_path(n): n for n in catalog.CATALOG}
    out = [{"name": names.get(f, f.stem), "path": str(f), "loaded": False} for f in catalog.cached()]
    have = {m["path"] for m in out}
    out += [{"name": n, "path": "", "loaded": False, "pull": f"llmos pull {n}"}
            for n in catalog.CATALOG if str(catalog.cached_path(n)) not in have]
    return out


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos models")
    return program.run(argv, io, parser(io.prog), _models)


def _models(args, io: program.IO) -> int:
    try:
        models = io.client.models()
    except ConnectionRefusedError:
        models = cache_listing()
    for m in models:
        m["size"] = _size(m["path"]) if m.get("path") else None
    io.json(models) if args.json else io.write(models_text(models))
    return 0
