"""Looking at the system: ps, top, free, uname, models (formatting in views.py, top in top.py)."""

from __future__ import annotations

from llmos.shell import views
from llmos.shell.builtins import Invocation, builtin
from llmos.shell.jobctl import id_args, job_of
from llmos.shell.parse import JobSpec, ParseError, parse_target
from llmos.shell.streams import CommandError

@builtin("ps", "list the kernel's processes", usage="ps [PID...]", takes_ids=True, options=id_args)
def ps(inv: Invocation) -> int:
    procs = views.processes(inv.sh.client)
    if inv.args.ids:
        wanted = set()
        for word in inv.args.ids:
            try:
                target = parse_target(word)
            except ParseError as e:
                raise CommandError(str(e), 2) from None
            wanted |= set(job_of(inv, word).pids) if isinstance(target, JobSpec) else {target}
        procs = [p for p in procs if p["pid"] in wanted]
    inv.out.write(views.ps_text(procs))
    return 0 if procs or not inv.args.ids else 1


@builtin("top", "a live view of processes, KV memory and throughput (q leaves)",
         options=lambda p: (
             p.add_argument("-d", "--delay", type=float, default=1.0, metavar="S", help="seconds between updates"),
             p.add_argument("-n", "--iterations", type=int, metavar="N", help="show N frames, then leave")))
def top(inv: Invocation) -> int:
    from llmos.shell.top import Top
    if inv.args.delay <= 0:
        raise CommandError("-d: delay must be > 0", 2)
    return Top(inv.sh.client, inv.out, inv.args.delay).run(inv.args.iterations)


@builtin("free", "KV blocks, swap, host and GPU memory")
def free(inv: Invocation) -> int:
    inv.out.write(views.free_text(inv.sh.client.meminfo()))
    return 0


@builtin("uname", "the kernel: version, model, device", options=lambda p: p.add_argument(
    "-a", "--all", action="store_true", help="everything the kernel reports"))
def uname(inv: Invocation) -> int:
    inv.out.write(views.uname_text(inv.sh.client.uname(), inv.args.all))
    return 0


@builtin("models", "the loaded model and the cached ones")
def models(inv: Invocation) -> int:
    inv.out.write(views.models_text(inv.sh.client.models()))
    return 0
