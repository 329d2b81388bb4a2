"""Looking at the system: ps, stat, free, uname, models, load, unload, pull (the userland programs
in userland/bin, the same as `llmos ps` ...) and top (top.py)."""

from __future__ import annotations

from llmos.shell.builtins import Invocation, builtin, userland_program
from llmos.shell.jobctl import job_of
from llmos.shell.parse import JobSpec, ParseError, parse_target
from llmos.shell.streams import CommandError
from llmos.userland.bin import free, load, models, ps, pull, stat, uname, unload
from llmos.userland.bin import checkpoint, hibernate, restore
from llmos.userland.bin import agent, summarize, translate


def job_pids(inv: Invocation, words: list[str]) -> list[str]:
    """Job specs (%1) among the words become their pids; options and pids pass unchanged."""
    out = []
    for word in words:
        if not word.startswith("%"):
            out.append(word)
            continue
        try:
            target = parse_target(word)
        except ParseError as e:
            raise CommandError(str(e), 2) from None
        if isinstance(target, JobSpec):
            out += [str(pid) for pid in job_of(inv, word).pids]
    return out


userland_program(ps, takes_ids=True, expand=job_pids)


@builtin("top", "a live view of processes, KV memory and throughput (q leaves)",
         options=lambda p: (
             p.add_argument("-d", "--delay", type=float, default=1.0, metavar="S", help="seconds between updates"),
             p.add_argument("-n", "--iterations", type=int, metavar="N", help="show N frames, then leave")))
def top(inv: Invocation) -> int:
    from llmos.shell.top import Top
    if inv.args.delay <= 0:
        raise CommandError("-d: delay must be > 0", 2)
    return Top(inv.sh.client, inv.out, inv.args.delay).run(inv.args.iterations)


userland_program(stat, takes_ids=True, expand=job_pids)
userland_program(free)
userland_program(uname)
userland_program(models)
userland_program(load)
userland_program(unload)
userland_program(pull)
userland_program(checkpoint, takes_ids=True, expand=job_pids)
userland_program(hibernate, takes_ids=True, expand=job_pids)
userland_program(restore)
userland_program(agent)
userland_program(summarize)
userland_program(translate)
