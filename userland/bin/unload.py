"""`unload MODEL...`: unload resident models now (their weights and KV pool are freed).

A model with processes is busy (EBUSY: kill or wait for them first); the kernel's default model
stays loaded. Prints one line per model with the memory freed.
"""

from __future__ import annotations

from llmos.userland import program

SUMMARY = "unload models from the kernel (frees their memory)"


def parser(prog: str = "unload") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("models", nargs="+", metavar="MODEL", help="a resident model's name")
    return p


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos unload")
    return program.run(argv, io, parser(io.prog), _unload)


def _unload(args, io: program.IO) -> int:
    for name in args.models:
        try:
            rec = io.client.unload(name)
            io.write(f"{rec['name']}: unloaded, {program.size(rec['weights_bytes'] + rec['kv_bytes'])} freed\n")
        except OSError as e:
            if isinstance(e, ConnectionError):
                raise
            io.error(f"{name}: {program.error_text(e)}")
    return io.status
