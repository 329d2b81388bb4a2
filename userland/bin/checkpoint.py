"""`checkpoint [--json] PID [NAME]`: write a process's whole state to a checkpoint file.

The process keeps running. The file goes to the kernel's $LLMOS_HOME/checkpoints/<owner>/NAME.ckpt
(NAME defaults to PID-<boot id>); an admin may give an absolute path. `restore NAME` brings it back
as a new process that continues exactly from this point.
"""

from __future__ import annotations

from llmos.userland import program

SUMMARY = "save a process's state to a checkpoint file (it keeps running)"


def parser(prog: str = "checkpoint") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY, usage=f"{prog} [--json] PID [NAME]")
    p.add_argument("--json", action="store_true", help="print the checkpoint's record as JSON")
    p.add_argument("pid", type=int, metavar="PID")
    p.add_argument("name", nargs="?", metavar="NAME", help="a bare name, or an absolute path (admins)")
    return p


def describe(info: dict) -> str:
    return (f"{info['name']} ({info['tokens']} tokens, KV of {info['kv_tokens']}, "
            f"{program.size(info['bytes'])}, {info['path']})")


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos checkpoint")
    return program.run(argv, io, parser(io.prog), _checkpoint)


def _checkpoint(args, io: program.IO) -> int:
    try:
        info = io.client.checkpoint(args.pid, args.name)
    except OSError as e:
        io.error(program.error_text(e, args.pid))
        return 1
    io.json(info) if args.json else io.write(f"checkpointed {args.pid} as {describe(info)}\n")
    return 0
