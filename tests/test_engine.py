"""kernel/engine.py on the tiny model (fp32, CPU): outputs, preemption, sessions, fork, signals,
errors. Reference outputs come from a process running alone, uninterrupted."""

import errno
import signal
import threading

import pytest

from llmos.drivers.llama import LlamaModel
from llmos.drivers.sampler import SamplingParams
from llmos.kernel.engine import Engine, KernelError
from llmos.kernel.param import KernelConfig
from llmos.kernel.proc import INIT, ProcState
from kernelkit import greedy, make_engine, prompt, solo

S = ProcState


def engine(model, **cfg):
    return make_engine(model, 128, **cfg)


def test_batched_outputs_equal_solo_outputs(model):
    e = engine(model, max_step_tokens=64)
    ps = [e.spawn(prompt(i, 10 + 9 * i), greedy(12)) for i in range(4)]
    e.run_until_idle()
    for i, p in enumerate(ps):
        assert p.exit.reason == "length" and p.output_ids == solo(model, prompt(i, 10 + 9 * i), 12)
        assert p.channel.read() == model.tokenizer.decode(p.output_ids)
    s = e.kv.stats()
    assert s["used"] == 0 and s["swapped"] == 0


def test_chunked_prefill_gives_the_same_tokens(model):
    e = engine(model, max_step_tokens=7)          # a 60-token prompt in 9 chunks
    p = e.spawn(prompt(1, 60), greedy(8))
    e.run_until_idle()
    assert p.output_ids == solo(model, prompt(1, 60), 8)


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_is_invisible(model, mode):
    # pool of 8 blocks: A (3 blocks by then) must give way to a nice -10 arrival needing 7
    e = engine(model, num_blocks=8, max_running=1, preempt_mode=mode)
    a = e.spawn(prompt(2, 16), greedy(40))
    for _ in range(20):
        e.step()
    b = e.spawn(prompt(3, 100), greedy(8), nice=-10)
    e.run_until_idle()
    assert a.stats.preemptions >= 1
    counters = e.sched.counters
    assert counters["preempt_swap" if mode == "swap" else "preempt_recompute"] >= 1
    assert a.output_ids == solo(model, prompt(2, 16), 40)
    assert b.output_ids == solo(model, prompt(3, 100), 8)
    assert (a.stats.swaps >= 1) == (mode == "swap")


def test_stop_and_cont_lose_no_work(model):
    e = engine(model, num_blocks=8, swap_bytes=1 << 20)
    a = e.spawn(prompt(4, 30), greedy(30))
    for _ in range(6):
        e.step()
    e.signal(a.pid, signal.SIGSTOP)
    assert a.state is S.STOPPED and e.kv.holds(a.pid)       # KV kept while memory allows
    b = e.spawn(prompt(5, 80), greedy(20))                    # wants the memory: A is swapped
    e.run_until_idle()
    assert a.state is S.STOPPED and e.kv.is_swapped(a.pid) and b.exit.reason == "length"
    e.signal(a.pid, signal.SIGCONT)
    e.run_until_idle()
    assert a.output_ids == solo(model, prompt(4, 30), 30)
    assert b.output_ids == solo(model, prompt(5, 80), 20)


def test_priority_arrival_gets_a_token_within_two_steps(model):
    e = engine(model, max_running=4)
    crowd = [e.spawn(prompt(10 + i), greedy(200)) for i in range(4)]
    for _ in range(5):
        e.step()
    vip = e.spawn(prompt(20), greedy(5), nice=-10)
    steps = 0
    while vip.stats.first_token_at is None:
        e.step()
        steps += 1
    assert steps <= 2
    e.run_until_idle()
    assert vip.output_ids == solo(model, prompt(20), 5)
    assert all(p.exit.reason == "length" for p in crowd)


def test_equal_nice_share_within_a_bounded_gap(model):
    e = engine(model, max_running=1, slice_tokens=4)
    a, b = e.spawn(prompt(30), greedy(60)), e.spawn(prompt(31), greedy(60))
    worst = 0
    while a.alive and b.alive:
        e.step()
        if a.output_ids and b.output_ids:
            worst = max(worst, abs(len(a.output_ids) - len(b.output_ids)))
    assert worst <= 4 + 2


def test_nice_0_vs_10_throughput_follows_the_weights(model):
    e = engine(model, max_running=1, slice_tokens=4)
    a = e.spawn(prompt(32), greedy(900))
    b = e.spawn(prompt(33), greedy(900), nice=10)
    for _ in range(600):
        e.step()
    ratio = len(a.output_ids) / max(1, len(b.output_ids))
    assert 1024 / 110 * 0.6 < ratio < 1024 / 110 * 1.5, ratio
    for p in (a, b):
        e.signal(p.pid, signal.SIGKILL)


def test_oversubscription_ten_times_the_pool(model):
    # each process needs 4 blocks (20 + 40 tokens); the pool holds two of them at a time
    e = engine(model, num_blocks=8, max_running=8, swap_bytes=4 * 4096)
    ps = [e.spawn(prompt(40 + i % 5), greedy(40)) for i in range(20)]
    e.run_until_idle()
    for i, p in enumerate(ps):
        assert p.exit.reason == "length"
        assert p.output_ids == solo(model, prompt(40 + i % 5), 40), p.pid
    s = e.kv.stats()
    assert s["used"] == 0 and s["swapped"] == 0


def test_prefix_cache_prefills_only_the_suffix(model):
    e = engine(model)
    prefix = prompt(50, 512)
    first = e.spawn(prefix + [7, 8, 9], greedy(4))
    e.run_until_idle()
    second = e.spawn(prefix + [11, 12, 13, 14], greedy(4))
    e.run_until_idle()
    assert second.stats.cached == 512 and second.stats.prefilled == 4
    assert first.stats.prefilled == 515
    assert second.output_ids == solo(model, prefix + [11, 12, 13, 14], 4)


def test_session_keeps_kv_between_turns(model):
    e = engine(model)
    s = e.spawn(prompt(60), greedy(6), session=True)
    e.run_until_idle()
    assert s.state is S.SLEEPING and s.channel.turn_ended and e.kv.holds(s.pid)
    out1 = list(s.output_ids)
    text, turn_end, eof = s.channel.take()
    assert turn_end and not eof and text == model.tokenizer.decode(out1)
    before = s.stats.prefilled
    e.write(s.pid, [21, 22, 23])
    assert s.state is S.READY
    e.run_until_idle()
    # only the new input (and the last sampled token, never run through the model) is prefilled
    assert s.stats.prefilled - before == 4
    assert s.output_ids[6:] == solo(model, prompt(60) + out1 + [21, 22, 23], 6)


def test_write_while_running_is_queued_for_the_next_turn(model):
    e = engine(model)
    s = e.spawn(prompt(61), greedy(5), session=True)
    e.step()
    e.write(s.pid, [30, 31])
    e.run_until_idle()
    assert s.state is S.SLEEPING and len(s.output_ids) == 10
    assert s.channel.take()[1] and s.channel.take()[1]      # two turns, each ended


def test_sigint_ends_a_generation(model):
    e = engine(model)
    s = e.spawn(prompt(62), greedy(50), session=True)
    p = e.spawn(prompt(63), greedy(50))
    for _ in range(3):
        e.step()
    e.signal(s.pid, signal.SIGINT)
    e.signal(p.pid, signal.SIGINT)
    assert s.state is S.SLEEPING and s.channel.turn_ended
    assert p.state is S.ZOMBIE and p.exit.reason == "signal" and p.exit.signal == signal.SIGINT
    e.write(s.pid, [5, 6])
    e.run_until_idle()
    assert s.state is S.SLEEPING


def test_fork_continues_from_the_exact_state(model):
    e = engine(model)
    a = e.spawn(prompt(70, 21), greedy(20))
    for _ in range(4):
        e.step()
    c = e.fork(a.pid)
    assert c.ppid == a.pid and c.computed == a.computed and c.output_ids == a.output_ids
    e.run_until_idle()
    assert c.output_ids == a.output_ids == solo(model, prompt(70, 21), 20)
    assert e.kv.stats()["cow_copies"] >= 1
    # the child's stream goes on mid-text, where a first piece's word-start space stays; decode()
    # of the same ids starts a text, where it does not (which ids those are depends on the tiny
    # vocabulary sentencepiece's trainer makes)
    assert model.tokenizer.decode(c.output_ids[4:]).startswith(c.channel.read()[:5].lstrip(" "))


def test_seeded_sampling_is_reproducible_and_forks_get_their_own_seed(model):
    def run(interfere):
        e = engine(model, num_blocks=10, max_running=1, preempt_mode="recompute")
        a = e.spawn(prompt(80), greedy(30, temperature=1.0, seed=7))
        for _ in range(5):
            e.step()
        if interfere:
            e.spawn(prompt(81, 120), greedy(3), nice=-10)   # preempts a
        c = e.fork(a.pid)
        e.run_until_idle()
        return a.output_ids, c.output_ids, a.stats.preemptions

    (a1, c1, pre1), (a2, c2, pre2) = run(False), run(True)
    assert pre1 == 0 and pre2 >= 1
    assert a1 == a2 and c1 == c2 and a1 != c1 and a1[:5] == c1[:5]


def test_stop_string_cuts_the_text(model):
    ids = prompt(90)
    text = model.tokenizer.decode(solo(model, ids, 30))
    stop = text[12:15]
    e = engine(model)
    p = e.spawn(ids, greedy(30, stop=(stop,)))
    e.run_until_idle()
    assert p.exit.reason == "stop" and p.channel.read() == text[:text.find(stop)]


def test_context_length_ends_generation(model):
    e = engine(model, max_context=40)
    p = e.spawn(prompt(91, 30), greedy(100))
    e.run_until_idle()
    assert p.exit.reason == "length" and len(p.tokens) == 40
    with pytest.raises(KernelError) as ei:
        e.spawn(prompt(91, 40), greedy(1))
    assert ei.value.errno == errno.E2BIG
    assert ei.value.message == "prompt too long (40 >= 40 tokens, the context)"


def test_kill_in_the_middle_of_a_step_frees_blocks_after_it(model):
    e = engine(model)
    victim = e.spawn(prompt(100), greedy(30))
    other = e.spawn(prompt(101), greedy(10))
    stopped = e.spawn(prompt(102), greedy(10))
    e.step()
    plan = e.schedule()
    box = {}
    t = threading.Thread(target=lambda: box.update(r=e.execute(plan)))
    t.start()
    e.signal(victim.pid, signal.SIGKILL)          # while the forward runs
    e.signal(stopped.pid, signal.SIGSTOP)
    child = e.fork(other.pid)
    late = e.spawn(prompt(103), greedy(5))
    t.join()
    assert e.kv.holds(victim.pid)                 # not freed in the middle of the step
    e.commit(plan, box["r"])
    assert not e.kv.holds(victim.pid) and victim.exit.signal == signal.SIGKILL
    assert len(stopped.output_ids) == 1           # its result of the interrupted step dropped
    e.signal(stopped.pid, signal.SIGCONT)
    e.run_until_idle()
    assert stopped.output_ids == solo(model, prompt(102), 10)
    assert child.output_ids == other.output_ids == solo(model, prompt(101), 10)
    assert late.output_ids == solo(model, prompt(103), 5)
    for p in (victim, other, stopped, child, late):
        e.reap(p.pid)
    assert len(e.procs) == 0 and e.kv.stats()["used"] == 0


class FaultyModel(LlamaModel):
    """The real model, failing any batch that contains the poison token (fault injection)."""
    POISON = 13

    def forward(self, seqs, kv, interrupt=None, logits_out=None, greedy=False):
        if any(self.POISON in s.token_ids for s in seqs):
            raise RuntimeError("poisoned input")
        return super().forward(seqs, kv, interrupt, logits_out, greedy)


def test_a_failing_process_exits_with_error_and_others_continue(tiny_model_path, model):
    bad_model = FaultyModel.load(tiny_model_path, dtype="fp32", device="cpu")
    e = engine(bad_model)
    good = e.spawn(prompt(110), greedy(6))
    bad = e.spawn([5, FaultyModel.POISON, 6], greedy(6))
    e.run_until_idle()
    assert bad.exit.reason == "error" and "poisoned" in bad.exit.message
    assert good.exit.reason == "length" and good.output_ids == solo(model, prompt(110), 6)


def test_inits_processes_are_reaped_on_exit(model):
    """What init holds is reaped when it exits, except a detached process: that one, and what a
    live holder holds, stays a zombie with its status and unread output until wait() reaps it."""
    e = engine(model)
    p = e.spawn(prompt(120), greedy(2), holder=INIT)
    d = e.spawn(prompt(120), greedy(2), detached=True, holder=INIT)
    kept = e.spawn(prompt(121), greedy(2), holder=7)
    e.run_until_idle()
    assert p.exit.reason == "length" and e.procs.get(p.pid) is None
    assert e.procs.get(d.pid) is d and d.channel.pending and d.exit.reason == "length"
    assert e.procs.get(kept.pid) is kept and kept.channel.pending and kept.exit.reason == "length"
    assert e.orphan(7) == 0 and e.procs.get(kept.pid) is None
    e.reap(d.pid)


def test_orphans_are_killed_unless_detached_and_reaped_when_they_exit(model):
    e = engine(model)
    a = e.spawn(prompt(123), greedy(50), holder=3)
    d = e.spawn(prompt(124), greedy(3), holder=3, detached=True)
    z = e.spawn([1, 2], greedy(1), holder=3)
    other = e.spawn(prompt(125), greedy(3), holder=4)
    while z.alive:
        e.step()
    assert e.orphan(3) == 1 and a.exit.signal == signal.SIGKILL
    assert e.procs.get(a.pid) is None and e.procs.get(z.pid) is None       # zombies: reaped now
    assert d.alive and d.holder == INIT
    e.run_until_idle()
    assert e.procs.get(d.pid) is d and d.exit.reason == "length"            # detached: its owner reaps
    e.reap(d.pid)
    assert e.procs.get(other.pid) is other and not other.alive             # another holder's
    e.reap(other.pid)
    assert len(e.procs) == 0 and e.kv.stats()["used"] == 0


def test_on_wake_sees_output_and_exit(model):
    seen = []
    e = engine(model, on_wake=lambda p: seen.append((p.pid, p.state)))
    p = e.spawn(prompt(121), greedy(3))
    e.run_until_idle()
    assert (p.pid, S.ZOMBIE) in seen


def test_renice_changes_weight(model):
    e = engine(model)
    p = e.spawn(prompt(122), greedy(3))
    e.renice(p.pid, 5)
    assert p.nice == 5 and p.weight == 335


@pytest.mark.parametrize("call,err", [
    (lambda e, p, s, z: e.signal(999, signal.SIGTERM), errno.ESRCH),
    (lambda e, p, s, z: e.write(999, [1]), errno.ESRCH),
    (lambda e, p, s, z: e.fork(999), errno.ESRCH),
    (lambda e, p, s, z: e.renice(999, 0), errno.ESRCH),
    (lambda e, p, s, z: e.reap(999), errno.ESRCH),
    (lambda e, p, s, z: e.fork(z.pid), errno.ESRCH),
    (lambda e, p, s, z: e.write(p.pid, [1]), errno.EINVAL),
    (lambda e, p, s, z: e.close(s.pid), errno.EINVAL),
    (lambda e, p, s, z: e.write(s.pid, [1] * 2000), errno.E2BIG),
    (lambda e, p, s, z: e.spawn([1] * 5000, greedy(1)), errno.E2BIG),
    (lambda e, p, s, z: e.reap(p.pid), errno.EAGAIN),
    (lambda e, p, s, z: e.write(z.pid, [1]), errno.EPIPE),
])
def test_mutator_errors(model, call, err):
    """What depends on the process table's state is an errno from the engine."""
    e = engine(model)
    p = e.spawn([1, 2], greedy(3))
    s = e.spawn([1, 2], greedy(3), session=True)
    z = e.spawn([1, 2], greedy(3), session=True)
    e.signal(z.pid, signal.SIGKILL)
    with pytest.raises(KernelError) as ei:
        call(e, p, s, z)
    assert ei.value.errno == err and str(ei.value)


@pytest.mark.parametrize("call", [
    lambda e, p, s: e.signal(p.pid, 7),
    lambda e, p, s: e.write(s.pid, []),
    lambda e, p, s: e.write(s.pid, [10 ** 6]),
    lambda e, p, s: e.renice(p.pid, 20),
    lambda e, p, s: e.spawn([], greedy(1)),
    lambda e, p, s: e.spawn(["a"], greedy(1)),
    lambda e, p, s: e.spawn([1], SamplingParams(max_tokens=0)),
    lambda e, p, s: e.spawn([1], greedy(1), nice=-21),
])
def test_bad_arguments_are_asserted_not_served(model, call):
    """Shapes and ranges are validated once, at the boundary (test_syscalls: the same cases are
    EINVAL there); the engine asserts them and changes nothing."""
    e = engine(model)
    p = e.spawn([1, 2], greedy(3))
    s = e.spawn([1, 2], greedy(3), session=True)
    with pytest.raises((AssertionError, ValueError)):
        call(e, p, s)
    assert len(e.procs) == 2 and not s.pending_input and p.nice == 0


def test_process_table_limit(model):
    e = engine(model, max_procs=2)
    p = e.spawn([1, 2], greedy(1))
    e.spawn([1, 2], greedy(1))
    for call in (lambda: e.spawn([1], greedy(1)), lambda: e.fork(p.pid)):
        with pytest.raises(KernelError) as ei:
            call()
        assert ei.value.errno == errno.EAGAIN


def test_bench_serve_runs_in_process(tiny_model_path, capsys):
    import json

    from llmos.benchmarks import serve
    common = ["--model", tiny_model_path, "--dtype", "fp32", "--device", "cpu", "--json"]
    assert serve.main(["serve", *common, "-n", "6", "--input-len", "20", "--output-len", "5", "--kv-blocks", "64",
                       "--max-running", "4", "--baseline", "sequential", "--baseline-n", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    k = res["kernel"]
    assert k["requests"] == 6 and k["output_throughput"] > 0 and k["ttft_ms"]["p50"] > 0
    assert k["kv_slot_utilisation"] > 0.5 and res["baseline"]["ratio"] > 0
    assert serve.main(["serve", *common, "--overhead", "8,16", "--overhead-steps", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)["overhead"]
    assert [r["running"] for r in rows] == [8, 16] and all(r["schedule_ms"] > 0 for r in rows)
    assert serve.main(["serve", "--model", "/nonexistent/x.gguf"]) == 1
    small = [*common[:-1], "-n", "2", "--input-len", "8", "--output-len", "2", "--kv-blocks", "16"]
    capsys.readouterr()
    assert serve.main(["serve", *small, "--vs", "llama-server", "/nonexistent/llama-server"]) == 1
    assert "llama-server: [Errno 2]" in capsys.readouterr().err          # one line, no traceback
    assert serve.main(["serve", *small, "--vs", "vllm", "x"]) == 1
    assert serve.main(["serve", *small, "--vs", "llama-server", "x", "--rounds", "0"]) == 1
    assert "--rounds at least 1" in capsys.readouterr().err


def test_bench_serve_rounds_take_turns_on_new_prompts(model):
    """--vs --rounds: round 1 pairs the run already made with the other server's; each later round
    runs the engine again, then the server, on prompts of a new seed (no prefix-cache hits from an
    earlier round), each round on a fresh server; the ratios are per round. The server here
    records what it was asked (the real llama-server is the benchmark's; its build takes minutes)."""
    import argparse

    from llmos.benchmarks import serve

    asked, started = [], []

    class RecordingServer:
        def __enter__(self):
            started.append(self)
            return self

        def __exit__(self, *exc):
            pass

        def serve(self, ids, output_len):
            asked.append(ids)
            return {"output_throughput": 10.0 * len(asked)}

    args = argparse.Namespace(rounds=3, num_procs=3, input_len=6, output_len=2, seed=7, shared_prefix=0)
    vocab = model.tokenizer.vocab_size
    ids = serve.prompts(3, 6, vocab, 7)
    e = engine(model)
    first = {"output_throughput": 40.0}
    rounds = serve.take_turns(e, RecordingServer, first, ids, args, vocab)
    assert len(set(map(id, started))) == 3                                # a fresh server each round
    assert asked[0] == ids and asked[1] == serve.prompts(3, 6, vocab, 8) != ids
    assert asked[2] == serve.prompts(3, 6, vocab, 9)
    assert rounds[0]["llmos"] is first and rounds[0]["ratio"] == 4.0
    assert all(r["llmos"]["requests"] == 3 and r["llmos"]["output_throughput"] > 0 for r in rounds[1:])
    assert rounds[2]["ratio"] == rounds[2]["llmos"]["output_throughput"] / 30.0


def test_queued_input_that_no_longer_fits_ends_the_session(model):
    e = engine(model, max_context=60)
    s = e.spawn(prompt(130, 30), greedy(20), session=True)
    e.step()
    e.write(s.pid, list(range(20, 45)))           # 31 + 25 < 60 now; after 20 outputs it is not
    e.run_until_idle()
    assert s.exit.reason == "length" and "context" in s.exit.message and not e.kv.holds(s.pid)


def test_pool_is_sized_by_memory_and_never_beyond_use(model):
    e = Engine(model, KernelConfig(max_running=2))
    assert e.kv.num_blocks == 2 * 1024 // 16 and e.max_context == 1024


@pytest.mark.parametrize("field,value", [
    ("block_size", 0), ("num_blocks", 0), ("kv_fraction", 1.5), ("swap_bytes", -1), ("max_running", 0),
    ("max_step_tokens", 0), ("slice_tokens", 0), ("preempt_mode", "never"), ("max_procs", 0),
    ("max_context", 1), ("block_size", True),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        KernelConfig(**{field: value}).validate()
    assert KernelConfig().replace(max_running=3).as_dict()["max_running"] == 3


def test_eos_ends_a_process_and_a_sessions_turn(model):
    ids = prompt(226, 12)                          # the tiny model's greedy output hits </s> (id 2)
    ref = solo(model, ids, 40)
    end = ref.index(2)
    e = engine(model)
    p = e.spawn(ids, SamplingParams(max_tokens=40))
    s = e.spawn(ids, SamplingParams(max_tokens=40), session=True)
    e.run_until_idle()
    assert p.exit.reason == "eos" and p.output_ids == ref[:end + 1]
    assert p.channel.read() == model.tokenizer.decode(ref[:end])
    assert s.state is S.SLEEPING and s.output_ids == ref[:end + 1] and s.tokens[-1] == 2


def test_open_stdin_fed_in_pieces_equals_the_whole_prompt(model):
    e = engine(model)
    whole = prompt(5, 45)
    ref = e.spawn(whole, greedy(12))
    e.run_until_idle()
    p = e.spawn(whole[:10], greedy(12), stdin=True, stdin_tail=whole[40:])
    e.run_until_idle()
    assert p.state is S.SLEEPING and p.computed == 10 and not p.output_ids   # prefilled, no output
    e.write(p.pid, whole[10:25])
    e.run_until_idle()
    assert p.state is S.SLEEPING and p.computed == 25
    e.write(p.pid, whole[25:40])
    e.close(p.pid)                       # queued behind the write: runs when that one is prefilled
    e.run_until_idle()
    assert p.output_ids == ref.output_ids and p.exit.reason == "length"
    q = e.spawn(whole[:20], greedy(12), stdin=True)      # no tail: close recomputes the last token
    e.step()
    e.write(q.pid, whole[20:])
    e.close(q.pid)
    e.run_until_idle()
    assert q.output_ids == ref.output_ids
    with pytest.raises(KernelError) as ei:
        e.close(q.pid)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(KernelError) as ei:
        e.write(ref.pid, [5])
    assert ei.value.errno == errno.EINVAL


def test_a_forked_child_of_a_stopped_process_runs_its_queued_input(model):
    """Input queued while a process was stopped (close of its stdin, a write to its session) is
    its child's too: the child takes it at once instead of sleeping forever on it."""
    e = engine(model)
    whole = prompt(6, 30)
    ref = e.spawn(whole, greedy(6))
    p = e.spawn(whole[:20], greedy(6), stdin=True, stdin_tail=whole[20:])
    s = e.spawn(whole[:20], greedy(6), session=True)
    e.run_until_idle()
    assert p.state is s.state is S.SLEEPING
    e.signal(p.pid, signal.SIGSTOP)
    e.signal(s.pid, signal.SIGSTOP)
    e.close(p.pid)
    e.write(s.pid, [7, 8])
    pc, sc = e.fork(p.pid), e.fork(s.pid)
    e.run_until_idle()
    assert pc.output_ids == ref.output_ids and pc.exit.reason == "length"
    assert len(sc.output_ids) == 12 and sc.state is S.SLEEPING and not sc.pending_input
    assert p.state is s.state is S.STOPPED and p.pending_input and s.pending_input
    e.signal(p.pid, signal.SIGCONT)
    e.signal(s.pid, signal.SIGCONT)
    e.run_until_idle()
    assert p.output_ids == ref.output_ids and s.output_ids == sc.output_ids
    for q in (p, s, pc, sc):
        e.signal(q.pid, signal.SIGKILL)
    for q in (ref, p, s, pc, sc):
        e.reap(q.pid)
    assert e.kv.stats()["used"] == 0


def test_sigint_to_a_session_flushes_the_text_held_back(model):
    """Text the output processor holds back (a possible start of a stop string) is delivered when
    SIGINT ends the turn, not lost with the turn's state."""
    e = engine(model)
    ref = solo(model, prompt(130), 12)
    text = model.tokenizer.decode(ref[:6])
    assert len(text) >= 3
    s = e.spawn(prompt(130), greedy(12, stop=(text[-3:] + "\x01",)), session=True)
    while len(s.output_ids) < 6:
        e.step()
    assert s.output_ids == ref[:6] and s.channel.pending != text   # the last 3 chars held back
    e.signal(s.pid, signal.SIGINT)
    assert s.channel.read() == text and s.state is S.SLEEPING
