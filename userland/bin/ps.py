"""`ps [--json] [PID...]`: the kernel's processes, one row each (the CLI's and the shell's).

Columns: PID PPID PGID (process group) USER STATE NI PROMPT (prompt tokens) OUT (tokens generated) KV (blocks held)
TOK/S (decode speed, time spent stopped not counted) AGE MODEL (the model it runs on) COMMAND. Plain text, every column whole
(a pipe or a file gets the same table as a terminal); `--json` prints the ps() records, each with
its tok_s, for scripts. `top` shows the same rows (ps_row).
"""

from __future__ import annotations

from llmos.userland import program

SUMMARY = "list the kernel's processes"
COLUMNS = ("PID", "PPID", "PGID", "USER", "STATE", "NI", "PROMPT", "OUT", "KV", "TOK/S", "AGE", "MODEL", "COMMAND")
RIGHT = frozenset({"PID", "PPID", "PGID", "NI", "PROMPT", "OUT", "KV", "TOK/S", "AGE"})


def options(p: program.ArgParser) -> None:
    p.add_argument("--json", action="store_true", help="print the process records as JSON")
    p.add_argument("-a", "--all", action="store_true", help="also hibernated processes (checkpoint files)")
    p.add_argument("pids", nargs="*", type=int, metavar="PID", help="only these processes")


def decode_speed(stats: dict) -> float:
    """Tokens per second between the first and the last token, not counting time spent STOPPED."""
    first, last, n = stats.get("first_token_at"), stats.get("last_token_at"), stats.get("tokens", 0)
    if not first or not last or last <= first or n < 2:
        return 0.0
    span = last - first
    active = span - stats.get("state_time", {}).get("STOPPED", 0.0)
    return (n - 1) / (active if active > 0 else span)


def processes(client) -> list[dict]:
    """ps() sorted by pid, plus each process's decode speed (tok_s) and preemptions from stat()."""
    procs = sorted(client.ps(), key=lambda p: p["pid"])
    for p in procs:
        try:
            st = client.stat(p["pid"])["stats"]
        except ProcessLookupError:            # reaped between ps and stat
            st = {}
        p["tok_s"] = round(decode_speed(st), 3)
        p["preemptions"], p["swaps"] = st.get("preemptions", 0), st.get("swaps", 0)
    return procs


def state_of(p: dict) -> str:
    state = p["state"] + ("/swap" if p.get("swapped") else "") + ("+d" if p.get("detached") else "")
    if p["state"] == "ZOMBIE" and p.get("exit"):
        state += f"({p['exit']['reason']})"
    return state


def age(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def ps_row(p: dict, tok_s: float | None = None) -> tuple[str, ...]:
    speed = p.get("tok_s", 0.0) if tok_s is None else tok_s
    return (str(p["pid"]), str(p["ppid"]), str(p.get("pgid", p["pid"])), p["owner"], state_of(p), str(p["nice"]),
            str(p["prompt_tokens"]), str(p["tokens"]), str(p["blocks"]), f"{speed:.1f}",
            age(p.get("age_s", 0.0)), p.get("model") or "-", p["command"].replace("\n", " "))


def ps_text(procs: list[dict]) -> str:
    return program.table(COLUMNS, [ps_row(p) for p in procs], RIGHT)


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos ps")
    return program.run(argv, io, parser(io.prog), _ps)


def parser(prog: str = "ps") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY, usage=f"{prog} [-a] [--json] [PID...]")
    options(p)
    return p


def _ps(args, io: program.IO) -> int:
    procs = processes(io.client)
    if args.pids:
        procs = [p for p in procs if p["pid"] in set(args.pids)]
    if args.all:                                  # hibernated: checkpoint files (restore -l)
        from llmos.userland.bin import restore
        procs += [restore.as_ps(r) for r in restore.hibernated()]
    if args.json:
        io.json(procs)
    else:
        io.write(ps_text(procs))
    return 0 if procs or not args.pids else 1
