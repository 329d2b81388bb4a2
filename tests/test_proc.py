"""kernel/proc.py: transitions and their guards, epochs, the output channel, the table."""

import pytest

from llmos.drivers.sampler import SamplingParams
from llmos.kernel import proc
from llmos.kernel.proc import ExitStatus, OutputChannel, Process, ProcState, ProcTable

S = ProcState


def new(pid=1, **kw):
    return Process(pid, [1, 2, 3], SamplingParams(), **kw)


def test_lifecycle_through_every_state_records_time():
    p = new()
    assert p.state is S.NEW and p.alive
    proc.admit(p)
    proc.dispatch(p)
    proc.preempt(p)
    assert p.state is S.READY and p.stats.preemptions == 1
    proc.dispatch(p)
    proc.sleep(p)
    proc.wake(p)
    proc.stop(p)
    proc.cont(p)
    assert p.state is S.READY
    proc.exit_(p, ExitStatus("length"))
    assert p.state is S.ZOMBIE and not p.alive and p.channel.eof and p.exit.reason == "length"
    assert set(p.stats.state_time) == {"NEW", "READY", "RUNNING", "SLEEPING", "STOPPED"}


@pytest.mark.parametrize("fn,state", [
    (proc.admit, S.READY), (proc.dispatch, S.NEW), (proc.preempt, S.READY), (proc.wake, S.READY),
    (proc.cont, S.RUNNING), (proc.stop, S.STOPPED), (proc.sleep, S.STOPPED),
])
def test_illegal_transitions_raise(fn, state):
    p = new()
    p.state = state
    with pytest.raises(RuntimeError, match=fn.__name__.rstrip("_")):
        fn(p)


def test_exit_from_zombie_raises():
    p = new()
    proc.exit_(p, ExitStatus("signal", signal=9))
    with pytest.raises(RuntimeError, match="exit"):
        proc.exit_(p, ExitStatus("signal", signal=9))


def test_leaving_running_bumps_epoch():
    p = new()
    proc.admit(p)
    e0 = p.epoch
    proc.dispatch(p)
    assert p.epoch == e0                     # entering does not
    proc.stop(p)
    assert p.epoch == e0 + 1
    proc.cont(p)
    proc.dispatch(p)
    proc.exit_(p, ExitStatus("eos"))
    assert p.epoch == e0 + 2


def test_cont_returns_a_stopped_sleeper_to_sleep():
    p = new(session=True)
    proc.sleep(p)
    proc.stop(p)
    proc.cont(p)
    assert p.state is S.SLEEPING


def test_channel_reads_stop_at_turn_boundaries_and_eof_comes_last():
    ch = OutputChannel()
    assert not ch.ready()
    ch.put("hello ")
    ch.put("world")
    ch.end_turn()
    ch.put("second")
    assert ch.pending == "hello world" and ch.turn_ended and ch.ready()
    assert ch.take() == ("hello world", True, False)
    ch.close()
    assert ch.take() == ("second", False, True)
    assert ch.take() == ("", False, True) and ch.ready()


def test_channel_eof_waits_for_unread_turns():
    ch = OutputChannel()
    ch.put("a")
    ch.end_turn()
    ch.close()
    assert ch.take() == ("a", True, True)
    assert ch.read() == ""


def test_table_never_reuses_pids_and_only_reaps_zombies():
    t = ProcTable(max_procs=2)
    a, b = new(t.new_pid()), new(t.new_pid())
    t.add(a)
    t.add(b)
    assert t.full() and len(t) == 2 and t.get(a.pid) is a
    with pytest.raises(RuntimeError, match="not ZOMBIE"):
        t.remove(a.pid)
    proc.exit_(a, ExitStatus("eos"))
    assert t.remove(a.pid) is a and t.get(a.pid) is None
    c = new(t.new_pid())
    assert c.pid not in (a.pid, b.pid) and c.pid == 3
    with pytest.raises(RuntimeError, match="already present"):
        t.add(b)
