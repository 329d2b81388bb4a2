"""`uname [-a]`: the kernel's version, model and device (-a: everything uname() reports)."""

from __future__ import annotations

from llmos.userland import program

SUMMARY = "the kernel: version, model, device"


def parser(prog: str = "uname") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("-a", "--all", action="store_true", help="everything the kernel reports")
    p.add_argument("--json", action="store_true", help="print the uname record as JSON")
    return p


def uname_text(info: dict, all_fields: bool = False) -> str:
    short = " ".join(str(info.get(k, "?")) for k in ("sysname", "release", "model", "device"))
    if not all_fields:
        return short + "\n"
    lines = [short]
    for key, value in info.items():
        if isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = " ".join(map(str, value))
        lines.append(f"{key + ':':<12} {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos uname")
    return program.run(argv, io, parser(io.prog), _uname)


def _uname(args, io: program.IO) -> int:
    info = io.client.uname()
    io.json(info) if args.json else io.write(uname_text(info, args.all))
    return 0
