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
