"""`load MODEL...`: make models resident in the kernel now (else a spawn naming one loads it).

A catalog name (pulled on first use) or a cached model's name. Waits while the kernel loads
(the load syscall parks up to 20 s at a time and is asked again). Prints one line per model:
its name, weights and KV memory. An idle model is unloaded after the kernel's keep-alive
(`llmos serve --keep-alive`); `unload MODEL` does it now.
"""

from __future__ import annotations

from llmos.userland import program

SUMMARY = "load models into the kernel (weights + KV pool)"


def parser(prog: str = "load") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("models", nargs="+", metavar="MODEL", help="catalog or cached model name")
    return p


def load(client, name: str) -> dict:
    """The model's record once it is resident (asks again while it is still loading)."""
    while True:
        rec = client.load(name)
        if not rec.get("loading"):
            return rec


def describe(rec: dict) -> str:
    return (f"{rec['name']}: weights {program.size(rec['weights_bytes'])}, "
            f"KV {program.size(rec['kv_bytes'])} ({rec['kv_blocks']} blocks)")


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos load")
    return program.run(argv, io, parser(io.prog), _load)


def _load(args, io: program.IO) -> int:
    for name in args.models:
        try:
            io.write(describe(load(io.client, name)) + "\n")
        except OSError as e:
            if isinstance(e, ConnectionError):
                raise
            io.error(f"{name}: {program.error_text(e)}")
    return io.status
