"""`restore [-f] [--keep] NAME...` and `restore -l`: bring checkpointed processes back.

NAME is a checkpoint's name in the kernel's $LLMOS_HOME/checkpoints/<you>/ (as `checkpoint` and
`hibernate` print it), or an absolute path (admins). The restored process continues exactly where
it was (same tokens for the same seed) under a new pid, detached: it runs on after this command.
-f follows its output to the end of its turn (or its exit), as `fg` would. The file is removed
once the process is back unless --keep. `restore -l` (and `ps -a`) list the checkpoints.

The listing reads each file's header itself (format: kernel/checkpoint.py, a fixed preamble and a
msgpack map), without asking the kernel; files it cannot read are listed as damaged.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import msgpack

from llmos.userland import program

SUMMARY = "bring checkpointed (hibernated) processes back"
MAGIC, PREAMBLE = b"LLMOSCK\0", struct.Struct("<8sII")
COLUMNS = ("NAME", "PID", "USER", "STATE", "TOKENS", "KV", "SIZE", "SAVED", "COMMAND")


def checkpoints_dir() -> Path:
    return Path(os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos") / "checkpoints"


def header(path: Path) -> dict | None:
    """A checkpoint file's header map (None if it is not one)."""
    try:
        with open(path, "rb") as f:
            magic, _, n = PREAMBLE.unpack(f.read(PREAMBLE.size))
            return msgpack.unpackb(f.read(n), raw=False) if magic == MAGIC else None
    except (OSError, ValueError, struct.error, msgpack.UnpackException):
        return None


def hibernated(directory: Path | None = None) -> list[dict]:
    """Every checkpoint file under the checkpoints dir, oldest first: {name, path, pid, owner,
    state, command, session, tokens, kv_tokens, bytes, saved (unix time)}. Not the session-*
    files: those are the kernel's own record of its live sessions (restored at each boot)."""
    out = []
    for path in sorted((directory or checkpoints_dir()).glob("*/*.ckpt")):
        if path.name.startswith("session-"):
            continue
        h = header(path)
        p = (h or {}).get("process", {})
        out.append({"name": path.stem, "path": str(path), "pid": p.get("pid"), "owner": p.get("owner", "?"),
                    "state": "HIBERNATED" if h else "DAMAGED", "command": p.get("command", ""),
                    "session": p.get("session", False), "tokens": len(p.get("tokens", ())),
                    "nice": p.get("nice", 0), "prompt_tokens": len(p.get("prompt_ids", ())),
                    "output_tokens": len(p.get("output_ids", ())),
                    "kv_tokens": (h or {}).get("kv", {}).get("tokens", 0), "bytes": path.stat().st_size,
                    "saved": (h or {}).get("created", path.stat().st_mtime)})
    return sorted(out, key=lambda r: r["saved"])


def rows(records: list[dict]) -> list[tuple[str, ...]]:
    now = time.time()
    return [(r["name"], str(r["pid"]), r["owner"], r["state"] + ("/session" if r["session"] else ""),
             str(r["tokens"]), str(r["kv_tokens"]), program.size(r["bytes"]),
             _ago(now - r["saved"]), r["command"].replace("\n", " ")) for r in records]


def _ago(s: float) -> str:
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def parser(prog: str = "restore") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY, usage=f"{prog} [-f] [--keep] NAME...  |  {prog} -l [--json]")
    p.add_argument("-l", "--list", action="store_true", help="list the checkpoints")
    p.add_argument("--json", action="store_true", help="-l: print the records as JSON")
    p.add_argument("-f", "--follow", action="store_true", help="stream its output until its turn ends or it exits")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint file")
    p.add_argument("names", nargs="*", metavar="NAME")
    return p


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos restore")
    return program.run(argv, io, parser(io.prog), _restore)


def _restore(args, io: program.IO) -> int:
    if args.list:
        records = hibernated()
        io.json(records) if args.json else io.write(program.table(COLUMNS, rows(records), {"PID", "TOKENS", "KV"}))
        return 0
    if not args.names:
        raise program.UsageError("name a checkpoint (restore -l lists them)")
    for name in args.names:
        try:
            pid = io.client.restore(name, detached=True, remove=not args.keep)
        except OSError as e:
            io.error(f"{name}: {program.error_text(e)}")
            continue
        io.write(f"restored {name} as pid {pid}\n")
        if args.follow:
            for text in io.client.stream(pid):
                io.write(text)
            io.write("\n")
    return io.status


def as_ps(r: dict) -> dict:
    """A checkpoint as a ps row: STATE HIBERNATED, no KV held, the command followed by its name."""
    return {"pid": r["pid"], "ppid": 0, "owner": r["owner"], "state": r["state"], "nice": r["nice"],
            "prompt_tokens": r["prompt_tokens"], "tokens": r["output_tokens"], "blocks": 0, "tok_s": 0.0,
            "age_s": max(0.0, time.time() - r["saved"]), "command": f"{r['command']} [restore {r['name']}]",
            "session": r["session"], "hibernated": r["name"]}
