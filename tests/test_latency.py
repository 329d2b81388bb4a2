"""kernel/latency.py: the online step-time model, and the scheduler sizing steps so that a
latency-sensitive process's time per token stays within its target while the rest catch up."""

import pytest

from llmos.kernel.latency import INTERACTIVE, StepModel, target_s
from kernelkit import greedy, make_engine, prompt, solo


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


def test_a_step_in_flight_is_preempted_between_layers_for_a_latency_goal(model):
    """A nice -10 arrival while a background-only step is in flight stops that step at its next
    layer (nothing sampled, nothing applied); the arrival is served next and everyone's output is
    what it would have been uninterrupted, greedy and seeded."""
    from llmos.drivers.sampler import SamplingParams
    e = make_engine(model, 512, block_size=4)
    e.sched.step_model = Fixed()
    seeded = SamplingParams(max_tokens=10, ignore_eos=True, temperature=0.9, seed=5)
    crowd = [e.spawn(prompt(i, 8), greedy(10)) for i in range(3)] + [e.spawn(prompt(7, 8), seeded)]
    for _ in range(3):
        e.step()
    made = [len(p.output_ids) for p in crowd]
    plan = e.schedule()                                  # background only
    assert not e.runner.interrupt.is_set()
    vip = e.spawn(prompt(99, 8), greedy(4), nice=-10)
    assert e.runner.interrupt.is_set()                   # the in-flight step is told to stop
    result = e.execute(plan)
    assert result.preempted and all(t is None for t in result.tokens)
    e.commit(plan, result)
    assert [len(p.output_ids) for p in crowd] == made and e.counters["preempted_steps"] == 1
    plan = e.schedule()
    assert plan.entries[0][0] is vip and not e.runner.interrupt.is_set()
    e.commit(plan, e.execute(plan))
    assert len(vip.output_ids) == 1                      # its first token, one step after arriving
    e.run_until_idle()
    assert vip.output_ids == solo(model, prompt(99, 8), 4)
    for i, p in enumerate(crowd[:3]):
        assert p.output_ids == solo(model, prompt(i, 8), 10)
    alone = make_engine(model, 512, block_size=4)
    q = alone.spawn(prompt(7, 8), seeded)
    alone.run_until_idle()
    assert crowd[3].output_ids == q.output_ids


def test_no_preemption_for_nice_0_or_when_the_step_already_serves_a_latency_goal(model):
    e = make_engine(model, 512, block_size=4)
    e.sched.step_model = Fixed()
    [e.spawn(prompt(i, 8), greedy(20)) for i in range(3)]
    e.step()
    plan = e.schedule()
    e.spawn(prompt(50, 8), greedy(4))                    # nice 0: no latency goal
    assert not e.runner.interrupt.is_set()
    e.commit(plan, e.execute(plan))
    e.spawn(prompt(51, 8), greedy(30), nice=-10)
    plan = e.schedule()                                  # holds the nice -10 process
    e.spawn(prompt(52, 8), greedy(4), nice=-10)
    assert not e.runner.interrupt.is_set()
    assert not e.execute(plan).preempted


def test_a_model_that_saw_only_big_steps_knows_no_fixed_cost_and_the_vip_runs_alone_first(model):
    """From 64-token steps alone, a + b·tokens is a guess: the first step of a latency-sensitive
    process holds it alone (that step is the observation), later ones are sized by the fit."""
    m = StepModel()
    for _ in range(20):
        m.observe(64, 0.074)
    assert m.ready() and not m.knows_small()
    m.observe(1, 0.011)
    assert m.knows_small()
    e = make_engine(model, 512, block_size=4)
    e.sched.step_model = big = StepModel()
    crowd = [e.spawn(prompt(i, 8), greedy(400)) for i in range(24)]
    for _ in range(12):
        plan = e.schedule()
        res = e.execute(plan)
        res.seconds = 0.010 + 0.001 * sum(n for _, _, n in plan.entries)   # the machine, made exact
        e.commit(plan, res)
    assert not big.knows_small()
    vip = e.spawn(prompt(99, 8), greedy(6), nice=-10)
    sizes = []
    while vip.alive:
        plan = e.schedule()
        sizes.append(sum(n for _, _, n in plan.entries))
        res = e.execute(plan)
        res.seconds = 0.010 + 0.001 * sizes[-1]
        e.commit(plan, res)
    assert sizes[0] == 8 and sizes[1] == 1          # its prefill alone, then one decode alone
    assert big.knows_small() and sizes[2] == 6      # then sized by the fit: 1.5 x 11 ms = 6 tokens
    assert all(p.alive for p in crowd)


def test_only_decode_steps_feed_the_step_model(model):
    e = make_engine(model, 512, block_size=4)
    [e.spawn(prompt(i, 8), greedy(4)) for i in range(3)]
    e.step()                                      # the prefills
    assert e.sched.step_model.n == 0
    e.step()                                      # three decodes
    assert e.sched.step_model.n == 1 and e.sched.step_model.x == 3


def test_a_sized_step_that_misses_its_target_halves_the_others_share(model):
    """The step-time model is a guess: each sized step's measured time corrects it (AIMD)."""
    e = make_engine(model, 512, block_size=4)
    e.sched.step_model = Fixed()                 # says 10 ms + 1 ms per token: 6 tokens fit 16.5 ms
    [e.spawn(prompt(i, 8), greedy(400)) for i in range(24)]
    for _ in range(3):
        e.step()
    vip = e.spawn(prompt(99, 8), greedy(12), nice=-10)
    sizes = []
    for _ in range(6):
        plan = e.schedule()
        sizes.append(sum(n for _, _, n in plan.entries))
        res = e.execute(plan)
        res.seconds = 0.010 + 0.004 * sizes[-1]  # the machine is 4x slower per token than said
        e.commit(plan, res)
    assert sizes[0] == 8                          # its prefill alone
    assert sizes[1:] == [6, 3, 2, 1, 2]          # halved on each miss, one more after a hit
    assert vip.alive


def test_a_prefix_hit_does_not_let_others_into_a_latency_sensitive_prefill(model):
    """The prefill's budget is counted before its prefix-cache hit: what the hit saves is not
    handed to the others (the step stays as small as the prefill itself)."""
    e = make_engine(model, 512, block_size=4)
    e.sched.step_model = Fixed()
    shared = prompt(98, 16)
    first = e.spawn(shared + [7, 8, 9, 10], greedy(2))
    e.run_until_idle()
    crowd = [e.spawn(prompt(i, 8), greedy(400)) for i in range(24)]
    for _ in range(3):
        e.step()
    vip = e.spawn(shared + [11, 12, 13, 14], greedy(4), nice=-10)
    plan = e.schedule()
    assert [(p, n) for p, _, n in plan.entries] == [(vip, 4)] and vip.stats.cached == 16
    e.commit(plan, e.execute(plan))
    assert first.exit and all(p.alive for p in crowd)


class SetAfter:
    """An interrupt that reads as set from its n-th check on (the forward checks before each
    layer and before the output layer)."""

    def __init__(self, n):
        self.n, self.checks = n, 0

    def is_set(self):
        self.checks += 1
        return self.checks > self.n


@pytest.mark.parametrize("layers_done", [0, 1, "all"])
def test_forward_stops_before_any_layer_and_before_the_output_layer(model, layers_done):
    from llmos.drivers.llama import Preempted, SeqInput
    n = model.config.n_layers if layers_done == "all" else layers_done
    kv = model.new_kv(8, 4)
    flag = SetAfter(n)
    with pytest.raises(Preempted):
        model.forward([SeqInput(prompt(1, 6), 0, [1, 2])], kv, flag)
    assert flag.checks == n + 1
    assert model.forward([SeqInput(prompt(1, 6), 0, [1, 2])], kv, SetAfter(10 ** 6)).shape[0] == 1
