"""`stat [--json] PID...`: one process in detail: its summary, sampling parameters and statistics."""

from __future__ import annotations

from llmos.userland import program
from llmos.userland.bin import ps

SUMMARY = "one process in detail (parameters, timings)"


def parser(prog: str = "stat") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY, usage=f"{prog} [--json] PID...")
    p.add_argument("--json", action="store_true", help="print the stat records as JSON")
    p.add_argument("pids", nargs="+", type=int, metavar="PID")
    return p


def stat_text(st: dict) -> str:
    lines = [f"{'pid:':<14} {st['pid']}  ({ps.state_of(st)}, ppid {st['ppid']}, owner {st['owner']}, "
             f"nice {st['nice']})", f"{'command:':<14} {st['command']}",
             f"{'tokens:':<14} prompt {st['prompt_tokens']}, out {st['tokens']}, KV blocks {st['blocks']}, "
             f"{ps.decode_speed(st.get('stats', {})):.1f} tok/s"]
    for group in ("params", "stats"):
        for key, value in st.get(group, {}).items():
            if isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"{key + ':':<14} {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos stat")
    return program.run(argv, io, parser(io.prog), _stat)


def _stat(args, io: program.IO) -> int:
    records = []
    for pid in args.pids:
        try:
            records.append(io.client.stat(pid))
        except (ProcessLookupError, PermissionError) as e:
            io.error(program.error_text(e, pid))
    if args.json:
        io.json(records)
    else:
        io.write("\n".join(stat_text(st) for st in records))
    return io.status
