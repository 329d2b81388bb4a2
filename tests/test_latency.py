"""kernel/latency.py: the online step-time model, and the scheduler sizing steps so that a
latency-sensitive process's time per token stays within its target while the rest catch up."""

import pytest

from llmos.kernel.latency import INTERACTIVE, StepModel, target_s
from kernelkit import greedy, make_engine, prompt


def test_the_model_fits_fixed_and_per_token_time():
    m = StepModel()
    assert not m.ready()
    for tokens in [1, 64, 8, 32, 1, 64, 16, 2, 40, 5]:
        m.observe(tokens, 0.010 + 0.001 * tokens)
    a, b = m.coefficients()
    assert m.ready() and a == pytest.approx(0.010, rel=1e-6) and b == pytest.approx(0.001, rel=1e-6)
    assert m.tokens_within(0.0165) == 6 and m.tokens_within(0.001) == 1


def test_one_step_size_seen_splits_cautiously():
    m = StepModel()
    for _ in range(10):
        m.observe(64, 0.074)
    a, b = m.coefficients()
    assert a + 64 * b == pytest.approx(0.074) and a > 0 and b > 0


class Fixed(StepModel):
    """A model that says a step takes 10 ms + 1 ms per token, whatever the machine does."""

    def __init__(self):
        super().__init__()
        for tokens in (1, 64) * 8:
            super().observe(tokens, 0.010 + 0.001 * tokens)

    def observe(self, tokens, seconds):
        pass


def test_a_nice_minus_10_process_gets_small_steps_and_the_rest_catch_up(model):
    e = make_engine(model, 512, block_size=4)
    e.sched.step_model = Fixed()
    crowd = [e.spawn(prompt(i, 8), greedy(400)) for i in range(24)]
    for _ in range(6):
        e.step()
    vip = e.spawn(prompt(99, 8), greedy(12), nice=-10)
    budget = e.sched.step_model.tokens_within(target_s(vip, e.sched.step_model))
    assert budget == 6                      # 1.5 x 11 ms idle = 16.5 ms: 6 tokens
    sizes = []
    while vip.alive:
        plan = e.schedule()
        assert any(p is vip for p, _, _ in plan.entries)        # served first, every step
        sizes.append(sum(n for _, _, n in plan.entries))
        e.commit(plan, e.execute(plan))
    assert max(sizes[1:]) <= budget                             # after its own prefill step
    before = sum(len(p.output_ids) for p in crowd)
    e.step()
    assert sum(len(p.output_ids) for p in crowd) - before == 24  # then the whole batch again


def test_an_explicit_target_and_none_for_nice_0(model):
    e = make_engine(model, 64, block_size=4)
    m = Fixed()
    p = e.spawn(prompt(1), greedy(4))
    assert target_s(p, m) is None
    p.latency_ms = 50
    assert target_s(p, m) == 0.05
    q = e.spawn(prompt(2), greedy(4), nice=-10)
    assert target_s(q, m) == pytest.approx(INTERACTIVE * 0.011)
