"""`kill [-s SIG | -SIG] PID...` and `kill -l`: send a signal (default TERM), as kill(1) does.
A PID of -N names the process group N (`kill -STOP -12` pauses a whole agent).

The CLI's `llmos kill` and the shell's `kill` (which first turns job specs like %1 into pids and
then records STOP/CONT in its job table). `-l` lists the signals as bash does: ` 2) SIGINT ...`.
Exit status 1 if any process could not be signalled, 2 for a usage error.
"""

from __future__ import annotations

from llmos.kernel import abi
from llmos.userland import program

SUMMARY = "send a signal to processes (default TERM)"
USAGE = "kill [-s SIG | -SIG] PID...  |  kill -l"


def parser(prog: str = "kill") -> program.ArgParser:
    """For help and completion only: kill reads its words itself (-STOP is not an option)."""
    p = program.ArgParser(prog, SUMMARY, usage=USAGE.replace("kill", prog))
    p.add_argument("ids", nargs="*", metavar="PID")
    return p


def signal_list() -> str:
    return " ".join(f"{n:2d}) SIG{s}" for s, n in sorted(abi.SIGNALS.items(), key=lambda kv: kv[1])) + "\n"


def parse(words: list[str]) -> tuple[int | None, list[str]]:
    """(signal, target words) from kill's arguments; (None, []) for -l. Raises UsageError."""
    if words[:1] in (["-h"], ["--help"]):
        raise program.UsageError(f"usage: {USAGE}")
    if words[:1] == ["-l"]:
        return None, []
    if words[:1] == ["-s"]:
        if len(words) < 2:
            raise program.UsageError(f"-s: option requires an argument (usage: {USAGE})")
        spec, words = words[1], words[2:]
    elif words and words[0].startswith("-") and words[0] != "--":
        spec, words = words[0][1:], words[1:]
    else:
        spec = None
    sig = abi.SIGTERM
    if spec is not None:
        try:
            sig = abi.parse_signal(spec)
        except ValueError as e:
            raise program.UsageError(f"{spec}: invalid signal specification: {e}") from None
    words = words[1:] if words[:1] == ["--"] else words
    if not words:
        raise program.UsageError(f"usage: {USAGE}")
    return sig, words


def pid_of(word: str) -> int:
    """A pid, or -PGID (a process group, as kill(2) takes it)."""
    digits = word[1:] if word.startswith("-") else word
    if digits.isascii() and digits.isdigit() and int(digits) > 0:
        return int(word)
    raise program.UsageError(f"{word}: arguments must be process or job IDs")


def send(io: program.IO, sig: int, pids: list[int]) -> None:
    """Signal each pid; each failure is reported (`kill: (42) - No such process`) and counted."""
    for pid in pids:
        try:
            io.client.kill(pid, sig)
        except OSError as e:
            io.error(program.error_text(e, pid))


def main(argv: list[str], io: program.IO | None = None) -> int:
    io = io or program.IO("llmos kill")
    return program.run(["kill"], io, parser(io.prog), lambda _, io: _kill(list(argv[1:]), io))


def _kill(words: list[str], io: program.IO) -> int:
    if words[:1] in (["-h"], ["--help"]):
        io.write(parser(io.prog).format_help())
        return 0
    sig, words = parse(words)
    if sig is None:
        io.write(signal_list())
        return 0
    pids = []
    for word in words:
        try:
            pids.append(pid_of(word))
        except program.UsageError as e:
            io.error(str(e))
    send(io, sig, pids)
    return io.status
