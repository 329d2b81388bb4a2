"""`hibernate PID...`: park processes on disk and free their memory (`restore NAME` brings one back).

For each pid: SIGSTOP (it leaves the batch, losing no work), checkpoint, then SIGKILL and reap it,
so its KV blocks go back to the pool. If the checkpoint fails (disk full, ...) the process is
continued (SIGCONT) as it was, and the error is reported. `ps -a` and `restore -l` list what is
hibernated.
"""

from __future__ import annotations

from llmos.kernel import abi
from llmos.userland import program
from llmos.userland.bin.checkpoint import describe

SUMMARY = "stop, checkpoint and free processes (restore brings them back)"


def parser(prog: str = "hibernate") -> program.ArgParser:
    p = program.ArgParser(prog, SUMMARY, usage=f"{prog} PID...")
    p.add_argument("pids", nargs="+", type=int, metavar="PID")
    return p


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos hibernate")
    return program.run(argv, io, parser(io.prog), _hibernate)


def hibernate(client, pid: int) -> dict:
    """STOP, checkpoint, KILL and reap pid; on a failed checkpoint CONT it and raise."""
    client.kill(pid, abi.SIGSTOP)
    try:
        info = client.checkpoint(pid)
    except OSError:
        client.kill(pid, abi.SIGCONT)
        raise
    client.kill(pid, abi.SIGKILL)
    client.wait(pid)
    return info


def _hibernate(args, io: program.IO) -> int:
    for pid in args.pids:
        try:
            info = hibernate(io.client, pid)
        except OSError as e:
            io.error(program.error_text(e, pid))
            continue
        io.write(f"hibernated {pid} as {describe(info)}; bring it back with: restore {info['name']}\n")
    return io.status
