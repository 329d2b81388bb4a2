"""What ps, free, uname, models and top show: kernel replies turned into rows and lines of text.

Pure formatting over the dicts the syscalls return (kernel/syscalls.py: _summary, sys_stat,
sys_meminfo, sys_uname, sys_models), so the same columns appear in `ps` and in `top`. Plain
aligned text (not rich markup) for everything a pipe or a file may receive.
"""

from __future__ import annotations

PS_COLUMNS = ("PID", "PPID", "USER", "STATE", "NI", "PROMPT", "OUT", "KV", "TOK/S", "COMMAND")
_RIGHT = {"PID", "PPID", "NI", "PROMPT", "OUT", "KV", "TOK/S"}


def processes(client) -> list[dict]:
    """ps() plus each process's decode speed (tok_s) and preemptions from stat()."""
    procs = sorted(client.ps(), key=lambda p: p["pid"])
    for p in procs:
        try:
            st = client.stat(p["pid"])["stats"]
        except ProcessLookupError:            # reaped between ps and stat
            st = {}
        first, last = st.get("first_token_at"), st.get("last_token_at")
        p["tok_s"] = (st.get("tokens", 0) - 1) / (last - first) if first and last and last > first else 0.0
        p["preemptions"], p["swaps"] = st.get("preemptions", 0), st.get("swaps", 0)
    return procs


def state_of(p: dict) -> str:
    state = p["state"] + ("/swap" if p.get("swapped") else "")
    if p["state"] == "ZOMBIE" and p.get("exit"):
        state += f"({p['exit']['reason']})"
    return state


def ps_row(p: dict, tok_s: float | None = None) -> tuple[str, ...]:
    speed = p.get("tok_s", 0.0) if tok_s is None else tok_s
    return (str(p["pid"]), str(p["ppid"]), p["owner"], state_of(p), str(p["nice"]),
            str(p["prompt_tokens"]), str(p["tokens"]), str(p["blocks"]), f"{speed:.1f}",
            p["command"].replace("\n", " "))


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], right=frozenset()) -> str:
    """Columns padded to their widest cell; a left-aligned last column is left ragged."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(r, widths, header)]
        if header[-1] not in right:
            cells[-1] = r[-1]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def ps_text(procs: list[dict]) -> str:
    return table(PS_COLUMNS, [ps_row(p) for p in procs], _RIGHT)


def size(n: float) -> str:
    """Bytes as ls -h does: 812, 4.0K, 192M, 24G."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}P"


def kv_usage(kv: dict) -> str:
    """'12/512 blocks (2%)' for the prompt and top."""
    pct = 100 * kv["used"] / kv["total"] if kv["total"] else 0
    return f"{kv['used']}/{kv['total']} blocks ({pct:.0f}%)"


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
    out = table(header, rows, set(header[1:]))
    out += (f"{kv['block_size']} tokens/block, {size(bpb)}/block; swap pool {kv['swapped']}/"
            f"{kv['swap_capacity']} blocks; prefix hits {100 * kv['prefix_hit_rate']:.1f}%; "
            f"slots in use {100 * kv['slot_utilisation']:.1f}%; kernel RSS {size(host['kernel_rss'])}\n")
    return out


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


def models_text(models: list[dict]) -> str:
    rows = [(m["name"], "*" if m.get("loaded") else "", m["path"]) for m in models]
    return table(("NAME", "LOADED", "PATH"), rows)


def uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 86400 \
        else f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
