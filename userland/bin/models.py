"""`models [--json]`: the models the kernel has loaded and the ones in the local cache.

Asks the running kernel (models syscall); with no kernel running it lists the cache itself
(`llmos models` works before the first `llmos serve`). One table either way: NAME LOADED SIZE PATH.
"""

from __future__ import annotations

import os

from llmos.userland import program

SUMMARY = "the loaded model and the cached ones"


def parser(prog: str = "models") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("--json", action="store_true", help="print the model records as JSON")
    return p


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def models_text(models: list[dict]) -> str:
    rows = [(m["name"], "*" if m.get("loaded") else "",
             program.size(m["size"]) if m.get("size") is not None else "-", m["path"] or "-")
            for m in models]
    return program.table(("NAME", "LOADED", "SIZE", "PATH"), rows, {"SIZE"})


def cache_listing() -> list[dict]:
    """The cache and the catalog, without a kernel (nothing loaded)."""
    from llmos.drivers import catalog
    out = [{"name": f.stem, "path": str(f), "loaded": False} for f in catalog.cached()]
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
