"""`llmos ps [--json]`: every process in the kernel, one row each."""

from __future__ import annotations

import argparse
import json
import sys

from llmos.userland import lib

COLUMNS = ("PID", "PPID", "USER", "STATE", "NI", "PROMPT", "TOKENS", "BLOCKS", "AGE", "COMMAND")


def rows(procs: list[dict]) -> list[tuple[str, ...]]:
    out = []
    for p in sorted(procs, key=lambda p: p["pid"]):
        state = p["state"] + ("/swap" if p.get("swapped") else "") + ("+d" if p.get("detached") else "")
        if p["state"] == "ZOMBIE" and p.get("exit"):
            state += f" ({p['exit']['reason']})"
        out.append((str(p["pid"]), str(p["ppid"]), p["owner"], state, str(p["nice"]), str(p["prompt_tokens"]),
                    str(p["tokens"]), str(p["blocks"]), _age(p["age_s"]), p["command"]))
    return out


def _age(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos ps", description="list the kernel's processes")
    ap.add_argument("--json", action="store_true", help="print the raw ps() result as JSON")
    args = ap.parse_args(argv[1:])
    try:
        with lib.Client(client="llmos-ps") as k:
            procs = k.ps()
    except OSError as e:
        print(f"llmos ps: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(procs, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(box=None, pad_edge=False, header_style="bold")
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="right" if i in (0, 1, 4, 5, 6, 7, 8) else "left",
                         overflow="ellipsis", no_wrap=True)
    for r in rows(procs):
        table.add_row(*r)
    Console().print(table)
    return 0
