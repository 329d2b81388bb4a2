"""`free [--json]`: KV blocks, swap, host and GPU memory (the meminfo syscall)."""

from __future__ import annotations

from llmos.userland import program
from llmos.userland.program import size

SUMMARY = "KV blocks, swap, host and GPU memory"


def parser(prog: str = "free") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY)
    p.add_argument("--json", action="store_true", help="print the meminfo record as JSON")
    return p


def kv_usage(kv: dict) -> str:
    """'12/512 blocks (2.3%)' for top."""
    return f"{kv['used']}/{kv['total']} blocks ({percent(kv['used'], kv['total'])})"


def percent(part: float, whole: float) -> str:
    """A share as the prompt and top show it: one decimal below 10 %, so a little is not 0 %."""
    pct = 100 * part / whole if whole else 0.0
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def free_text(mem: dict) -> str:
    kv, host = mem["kv"], mem["host"]
    bpb = kv["bytes_per_block"]
    header = ("", "total", "used", "cached", "free", "swapped")
    rows = [("KV blocks", str(kv["total"]), str(kv["used"]), str(kv["cached"]), str(kv["free"]),
             str(kv["swapped"])),
            ("KV memory", size(kv["total"] * bpb), size(kv["used"] * bpb), size(kv["cached"] * bpb),
             size(kv["free"] * bpb), size(kv["swapped"] * bpb)),
            ("host", size(host["total"]), size(host["total"] - host["available"]), "-",
             size(host["available"]), "-")]
    for g in mem.get("gpu", []):
        rows.append((f"gpu{g['index']}", size(g["total"]), size(g["used"]), "-", size(g["free"]), "-"))
    out = program.table(header, rows, set(header[1:]))
    out += (f"{kv['block_size']} tokens/block, {size(bpb)}/block; swap pool {kv['swapped']}/"
            f"{kv['swap_capacity']} blocks; prefix hits {100 * kv['prefix_hit_rate']:.1f}%; "
            f"slots in use {100 * kv['slot_utilisation']:.1f}%; kernel RSS {size(host['kernel_rss'])}\n")
    w = mem.get("weights") or {}
    if w.get("bytes"):
        out += f"weights {size(w['bytes'])} ({w.get('format') or '-'}), apart from the KV pool\n"
    return out


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos free")
    return program.run(argv, io, parser(io.prog), _free)


def _free(args, io: program.IO) -> int:
    mem = io.client.meminfo()
    io.json(mem) if args.json else io.write(free_text(mem))
    return 0
