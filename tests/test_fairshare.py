"""Fair share between users (kernel/sched.py: CFS group scheduling, flattened): when the batch is
contended, every user with runnable processes gets an equal share of the generated tokens, however
many processes it runs; nice orders a user's own processes."""

from kernelkit import greedy, make_engine, prompt


def _tokens(procs) -> int:
    return sum(len(p.output_ids) for p in procs)


def test_one_process_and_thirty_get_equal_shares(model):
    e = make_engine(model, 256, max_running=2, slice_tokens=4)
    solo = [e.spawn(prompt(0), greedy(100_000), owner="ann")]
    crowd = [e.spawn(prompt(i + 1), greedy(100_000), owner="ben") for i in range(30)]
    for _ in range(40):                       # past the prefills
        e.step()
    a0, b0 = _tokens(solo), _tokens(crowd)
    for _ in range(300):
        e.step()
    a, b = _tokens(solo) - a0, _tokens(crowd) - b0
    assert a > 0 and abs(a / b - 1) <= 0.10, (a, b)


def test_within_a_user_nice_still_orders(model):
    e = make_engine(model, 256, max_running=1, slice_tokens=4)
    fast = e.spawn(prompt(1), greedy(100_000), owner="ann")
    slow = e.spawn(prompt(2), greedy(100_000), owner="ann", nice=10)
    other = e.spawn(prompt(3), greedy(100_000), owner="ben")
    for _ in range(30):
        e.step()
    f0, s0, o0 = len(fast.output_ids), len(slow.output_ids), len(other.output_ids)
    for _ in range(600):
        e.step()
    f, s, o = len(fast.output_ids) - f0, len(slow.output_ids) - s0, len(other.output_ids) - o0
    assert abs((f + s) / o - 1) <= 0.10, (f, s, o)          # ann's two together = ben's one
    assert f / max(s, 1) > 5, (f, s)                         # and ann's nice 0 well ahead of her nice 10


def test_shares_follow_the_runnable_set_and_nice(model):
    """The per-process weights are resplit when a process leaves or joins the runnable set or is
    reniced (the scheduler caches them between those events)."""
    from llmos.kernel import abi
    e = make_engine(model, 256, max_running=1, slice_tokens=4)
    ann = e.spawn(prompt(0), greedy(100_000), owner="ann")
    b1, b2, b3 = (e.spawn(prompt(i + 1), greedy(100_000), owner="ben") for i in range(3))
    for _ in range(20):
        e.step()
    assert ann.weight == 1024 and b1.weight == b2.weight == 1024 / 3
    e.signal(b2.pid, abi.SIGSTOP)
    e.signal(b3.pid, abi.SIGSTOP)          # leave the runnable set: ben's one left has his whole share
    e.step()
    assert b1.weight == 1024
    a0, b0 = len(ann.output_ids), len(b1.output_ids)
    for _ in range(200):
        e.step()
    a, b = len(ann.output_ids) - a0, len(b1.output_ids) - b0
    assert a > 0 and abs(a / b - 1) <= 0.10, (a, b)
    e.signal(b2.pid, abi.SIGCONT)          # joins again: ben's share is split in two
    e.step()
    assert b1.weight == b2.weight == 512
    e.renice(b2.pid, 5)                    # nice splits a user's share: 1024 : 335
    e.step()
    assert b1.weight == 1024 * 1024 / (1024 + 335) and b2.weight == 1024 * 335 / (1024 + 335)
