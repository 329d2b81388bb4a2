"""Sampler: greedy, seeded sampling and batch invariance, filters, distributions, stop strings."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.drivers.sampler import (
    SampleResult,
    SamplingParams,
    StopMatcher,
    make_generator,
    sample,
)

V = 300


def rand_logits(rows, vocab=V, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


# ---------------------------------------------------------------- greedy and filters

def test_greedy_equals_argmax():
    logits = rand_logits(7)
    res = sample(logits, [SamplingParams()] * 7, [None] * 7)
    assert isinstance(res, SampleResult)
    assert res.tokens == logits.argmax(-1).tolist()
    assert res.logprobs is None
    assert all(type(t) is int for t in res.tokens)


@pytest.mark.parametrize("extra", [dict(top_k=1), dict(top_p=1e-9), dict(top_k=1, top_p=0.5)])
def test_degenerate_filters_equal_greedy(extra):
    logits = rand_logits(6, seed=3)
    params = [SamplingParams(temperature=1.5, seed=i, **extra) for i in range(6)]
    gens = [make_generator(i) for i in range(6)]
    for _ in range(5):
        assert sample(logits, params, gens).tokens == logits.argmax(-1).tolist()


def test_tiny_temperature_is_greedy_and_finite():
    logits = rand_logits(4, seed=5)
    params = [SamplingParams(temperature=1e-30, seed=1)] * 4
    gens = [make_generator(1) for _ in range(4)]
    assert sample(logits, params, gens).tokens == logits.argmax(-1).tolist()


def test_top_k_never_leaves_the_top_k():
    logits = rand_logits(4, seed=9)
    ks = [3, 1, 6, 0]  # each row its own k, in one batch
    params = [SamplingParams(temperature=50.0, top_k=k) for k in ks]
    gens = [make_generator(r) for r in range(4)]
    seen = [set() for _ in ks]
    for _ in range(100):
        for r, t in enumerate(sample(logits, params, gens).tokens):
            seen[r].add(t)
    for r, k in enumerate(ks[:3]):
        assert seen[r] == set(torch.topk(logits[r], k).indices.tolist())
    assert len(seen[3]) > 6  # k = 0 is off


def test_top_k_at_least_vocab_is_off():
    logits = torch.zeros(1, 4)
    g = make_generator(2)
    seen = {sample(logits, [SamplingParams(temperature=1.0, top_k=10)], [g]).tokens[0]
            for _ in range(80)}
    assert seen == {0, 1, 2, 3}


# ---------------------------------------------------------------- seeds and batch invariance

def run_steps(logit_steps, params, seeds, steps):
    gens = [make_generator(s) if s is not None else None for s in seeds]
    return [sample(logit_steps[t], params, gens).tokens for t in range(steps)]


def test_same_seed_same_tokens_alone_or_in_a_batch():
    steps = 12
    mine = SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=1234)
    others = [SamplingParams(), SamplingParams(temperature=1.3, seed=1),
              SamplingParams(temperature=0.7, top_p=0.5, seed=99, logprobs=True),
              SamplingParams(temperature=2.0, top_k=5, seed=7), SamplingParams(temperature=1.0)]
    batch_logits = [rand_logits(6, seed=100 + t) for t in range(steps)]
    for pos in (0, 3, 5):  # my row moves around in the batch
        order = others[:pos] + [mine] + others[pos:]
        seeds = [p.seed for p in order]
        rows = [torch.cat([b[1:pos + 1], b[:1], b[pos + 1:]]) if pos else b for b in batch_logits]
        batched = [toks[pos] for toks in run_steps(rows, order, seeds, steps)]
        alone = [toks[0] for toks in run_steps([b[:1] for b in batch_logits], [mine], [1234], steps)]
        assert batched == alone
    assert len(set(alone)) > 3  # it really sampled


def test_different_seeds_differ_and_same_seed_repeats():
    logits = torch.zeros(1, V)
    p = SamplingParams(temperature=1.0)

    def draw(seed):
        g = make_generator(seed)
        return [sample(logits, [p], [g]).tokens[0] for _ in range(20)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_unseeded_generator_is_not_fixed():
    logits = torch.zeros(1, 10_000)
    p = SamplingParams(temperature=1.0)
    a = [sample(logits, [p], [make_generator(None)]).tokens[0] for _ in range(4)]
    assert len(set(a)) > 1


# ---------------------------------------------------------------- distributions

def chi_square(counts, probs):
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs) if p > 0)


def empirical(logits_row, params, n=4000, seed=42):
    g = make_generator(seed)
    counts = [0] * logits_row.numel()
    batch = logits_row.expand(n, -1).contiguous()
    for t in sample(batch, [params] * n, [g] * n).tokens:
        counts[t] += 1
    return counts


CRIT_DF4_P001 = 18.47  # chi-square critical value, 4 degrees of freedom, p = 0.001


@pytest.mark.parametrize("temp", [0.5, 1.0, 2.0])
def test_temperature_distribution(temp):
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    counts = empirical(row, SamplingParams(temperature=temp))
    assert chi_square(counts, torch.softmax(row / temp, 0).tolist()) < CRIT_DF4_P001
    wrong = 1.0 if temp != 1.0 else 2.0  # the test can tell temperatures apart
    assert chi_square(counts, torch.softmax(row / wrong, 0).tolist()) > 5 * CRIT_DF4_P001


def test_top_k_renormalises():
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    counts = empirical(row, SamplingParams(temperature=1.0, top_k=2))
    p = torch.softmax(row[:2], 0).tolist()
    assert counts[2:] == [0, 0, 0]
    assert chi_square(counts[:2], p) < 10.83  # df 1, p = 0.001


def test_top_p_keeps_the_nucleus_and_renormalises():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    counts = empirical(probs.log(), SamplingParams(temperature=1.0, top_p=0.7))
    assert counts[2:] == [0, 0]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: two tokens
    assert chi_square(counts[:2], [0.5 / 0.8, 0.3 / 0.8]) < 10.83
    counts = empirical(probs.log(), SamplingParams(temperature=1.0, top_p=0.85))
    assert counts[3] == 0 and min(counts[:3]) > 0


def reference_nucleus_size(row, top_p):
    probs = torch.sort(torch.softmax(row.double(), 0), descending=True).values
    return int((torch.cumsum(probs, 0) - probs < top_p).sum())


@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 10.0])  # flat rows need more than 256 tokens
def test_nucleus_matches_a_full_sort_reference(scale):
    from llmos.drivers.sampler import NUCLEUS_PREFIX, _nucleus_threshold
    x = rand_logits(5, vocab=1000, seed=int(scale * 100)) * scale
    x = x - x.amax(-1, keepdim=True)
    ps = [0.05, 0.5, 0.9, 0.99, 1.0]
    kept = (x >= _nucleus_threshold(x, ps)).sum(-1).tolist()
    assert kept[:4] == [reference_nucleus_size(x[r], ps[r]) for r in range(4)]
    assert kept[4] == 1000
    if scale == 0.01:
        assert min(kept[1:]) > NUCLEUS_PREFIX  # the full-sort path ran


def test_top_p_on_a_flat_row_samples_past_the_prefix():
    row = torch.linspace(0, 0.5, 1000)
    counts = empirical(row, SamplingParams(temperature=1.0, top_p=0.9), n=3000)
    n_keep = reference_nucleus_size(row, 0.9)
    assert n_keep > 600
    drawn = [i for i, c in enumerate(counts) if c]
    assert min(drawn) >= 1000 - n_keep and min(drawn) < 1000 - 256


# ---------------------------------------------------------------- logprobs and errors

def test_logprobs_are_under_the_unmodified_distribution():
    logits = rand_logits(4, seed=11)
    params = [SamplingParams(), SamplingParams(temperature=0.3, top_k=4, seed=5, logprobs=True),
              SamplingParams(logprobs=True), SamplingParams(temperature=2.0, seed=6)]
    gens = [None, make_generator(5), None, make_generator(6)]
    res = sample(logits, params, gens)
    ref = torch.log_softmax(logits, -1)
    for r, t in enumerate(res.tokens):
        if params[r].logprobs:
            assert res.logprobs[r] == pytest.approx(ref[r, t].item(), abs=1e-5)
        else:                                   # rows that did not ask cost nothing
            assert res.logprobs[r] is None and res.top[r] is None


def test_top_logprobs_only_for_rows_that_ask():
    logits = rand_logits(4, seed=12)
    params = [SamplingParams(logprobs=True, top_logprobs=5), SamplingParams(),
              SamplingParams(temperature=0.9, seed=1, logprobs=True, top_logprobs=2),
              SamplingParams(logprobs=True)]
    res = sample(logits, params, [None, None, make_generator(1), None])
    ref = torch.log_softmax(logits, -1)
    for r, k in ((0, 5), (2, 2)):
        vals, ids = torch.topk(ref[r], k)
        assert [t for t, _ in res.top[r]] == ids.tolist()
        assert [lp for _, lp in res.top[r]] == pytest.approx(vals.tolist(), abs=1e-5)
    assert res.top[0][0] == (res.tokens[0], pytest.approx(res.logprobs[0]))   # greedy: the best
    assert res.top[1] is None and res.logprobs[1] is None
    assert res.top[3] is None and res.logprobs[3] is not None


def test_logit_bias_moves_the_choice_not_the_logprobs():
    logits = rand_logits(2, seed=13)
    worst = int(logits[0].argmin())
    best = int(logits[1].argmax())
    params = [SamplingParams(logit_bias=((worst, 100.0),), logprobs=True),
              SamplingParams(logit_bias=((best, -100.0),), temperature=1.0, seed=3)]
    res = sample(logits, params, [None, make_generator(3)])
    assert res.tokens[0] == worst               # forced by the bias
    assert res.logprobs[0] == pytest.approx(torch.log_softmax(logits[0], -1)[worst].item(), abs=1e-5)
    assert res.tokens[1] != best                # banned
    assert SamplingParams.from_dict({"logit_bias": {"7": -1.5, 2: 3}}).logit_bias == ((2, 3), (7, -1.5))
    assert SamplingParams.from_dict({"logit_bias": [[7, -1.5], [2, 3]]}).logit_bias == ((2, 3), (7, -1.5))
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams.from_dict({"logit_bias": [[7, -1.5, 1]]})
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams.from_dict({"logit_bias": {"x": 1}})


def test_sample_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[S, V\]"):
        sample(torch.zeros(5), [SamplingParams()], [None])
    with pytest.raises(ValueError, match="2 logit rows but 1 params"):
        sample(torch.zeros(2, 5), [SamplingParams()], [None, None])


def test_make_generator_device_and_seed():
    g = make_generator(7, "cpu")
    assert g.device.type == "cpu" and g.initial_seed() == 7


# ---------------------------------------------------------------- validation

def test_defaults_validate():
    p = SamplingParams()
    assert p.validate() is p and p.greedy
    assert SamplingParams(temperature=0.8, top_k=40, top_p=0.95, seed=2**63 - 1,
                          stop=("x",) * 16).validate()


@pytest.mark.parametrize("kw, msg", [
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=1.5), "max_tokens"),
    (dict(max_tokens=True), "max_tokens"),
    (dict(temperature=-0.1), "temperature"), (dict(temperature=math.nan), "temperature"),
    (dict(temperature=math.inf), "temperature"), (dict(temperature="1"), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_k=2.0), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.01), "top_p"), (dict(top_p=math.nan), "top_p"),
    (dict(seed=-1), "seed"), (dict(seed=2**63), "seed"), (dict(seed=1.0), "seed"),
    (dict(stop=["x"]), "tuple"), (dict(stop=("",)), "non-empty"), (dict(stop=(3,)), "non-empty"),
    (dict(stop=("x",) * 17), "at most 16"), (dict(stop=("x" * 257,)), "at most 256"),
    (dict(logprobs=1), "logprobs"), (dict(ignore_eos="yes"), "ignore_eos"),
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"), (dict(logprobs=True, top_logprobs=-1), "top_logprobs"),
    (dict(top_logprobs=3), "needs logprobs"),
    (dict(logit_bias=((1, 101),)), "logit_bias"), (dict(logit_bias=((-1, 1),)), "logit_bias"),
    (dict(logit_bias=(("a", 1),)), "logit_bias"), (dict(logit_bias=[(1, 1)]), "logit_bias"),
    (dict(logit_bias=tuple((i, 1) for i in range(1025))), "at most 1024"),
])
def test_validate_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SamplingParams(**kw).validate()


def test_from_dict():
    p = SamplingParams.from_dict({"temperature": 0.5, "stop": ["a", "b"], "seed": 3})
    assert p == SamplingParams(temperature=0.5, stop=("a", "b"), seed=3)
    assert SamplingParams.from_dict({"stop": "END"}).stop == ("END",)
    with pytest.raises(ValueError, match="unknown sampling parameter 'topk'"):
        SamplingParams.from_dict({"topk": 3})
    with pytest.raises(ValueError, match="must be a map"):
        SamplingParams.from_dict([1])
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams.from_dict({"top_p": 2})


# ---------------------------------------------------------------- stop strings

def run_matcher(stops, chunks):
    m = StopMatcher(stops)
    out = []
    for c in chunks:
        text, stopped = m.feed(c)
        out.append(text)
        if stopped:
            return "".join(out), True, m
    return "".join(out) + m.flush(), False, m


def test_no_stops_passes_through():
    m = StopMatcher(())
    assert m.feed("abc") == ("abc", False) and m.flush() == ""


def test_no_stop_found_holds_only_prefixes():
    m = StopMatcher(("STOP",))
    assert m.feed("hello S") == ("hello ", False)
    assert m.feed("T") == ("", False)
    assert m.feed("x") == ("STx", False)
    assert m.feed(" ST") == (" ", False)
    assert m.flush() == "ST" and m.flush() == ""
    assert not m.stopped


def test_stop_split_across_chunks():
    text, stopped, m = run_matcher(("</answer>",), ["The answer</", "ans", "wer> trailing"])
    assert (text, stopped, m.matched) == ("The answer", True, "</answer>")


def test_stop_at_start():
    assert run_matcher(("###",), ["###", "more"])[:2] == ("", True)
    assert run_matcher(("###",), ["#", "##x"])[:2] == ("", True)


def test_overlapping_prefixes():
    # "aab" where the stop is "ab": the first 'a' is emitted, the second held then matched
    assert run_matcher(("ab",), ["a", "a", "b"])[:2] == ("a", True)
    assert run_matcher(("aaab",), ["aa", "aa", "ab"])[:2] == ("aa", True)
    m = StopMatcher(("abc", "bcd"))
    assert m.feed("xab") == ("x", False)
    assert m.feed("cd") == ("", True) and m.matched == "abc"


def test_first_ending_stop_wins_whatever_the_chunking():
    for chunks in (["abcd"], ["abc", "d"], ["a", "b", "c", "d"]):
        text, stopped, m = run_matcher(("abcd", "c"), chunks)
        assert (text, stopped, m.matched) == ("ab", True, "c")
    assert run_matcher(("bc", "c"), ["abc"])[2].matched == "bc"  # same end: the longer one


def test_feed_after_stop_is_an_error():
    m = StopMatcher(("x",))
    assert m.feed("ax") == ("a", True)
    with pytest.raises(RuntimeError, match="after stop"):
        m.feed("more")


def test_empty_stop_string_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        StopMatcher(("",))


def expected_cut(text, stops):
    hits = [(text.find(s) + len(s), -len(s), text.find(s)) for s in stops if s in text]
    return (text[:min(hits)[2]], True) if hits else (text, False)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc", max_size=30),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
)
def test_emitted_plus_flush_is_the_text_up_to_the_first_stop(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    out, stopped, _ = run_matcher(tuple(stops), chunks)
    assert (out, stopped) == expected_cut(text, stops)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), seed=st.integers(0, 2**31 - 1),
       nans=st.integers(0, 3), infs=st.integers(0, 3), offset=st.integers(0, 2))
def test_the_c_argmax_is_torch_s_on_ties_nans_infinities_and_strided_rows(rows, cols, seed, nans, infs, offset):
    """Greedy rows on the CPU take the kernels' argmax (drivers/argmax_kernels.cpp): torch's contract,
    the first index of the largest value or of the first NaN, on values drawn from a few integers
    (many ties) with NaNs and infinities placed anywhere, rows of any length (vector passes and the
    tail) and rows that are views into wider ones."""
    from llmos.drivers import quant
    if quant.kernels() is None:
        pytest.skip("no C++ compiler: kernels not built")
    g = torch.Generator().manual_seed(seed)
    wide = torch.randint(-3, 4, (rows, cols + 2), generator=g).float()
    for value, count in ((float("nan"), nans), (float("inf"), infs), (float("-inf"), infs)):
        for _ in range(count):
            wide[torch.randint(0, rows, (1,), generator=g), torch.randint(0, cols + 2, (1,), generator=g)] = value
    x = wide[:, offset:offset + cols]
    assert torch.equal(quant.argmax_rows(x), x.argmax(dim=-1))
    assert torch.equal(quant.argmax_rows(x.contiguous()), x.argmax(dim=-1))


def test_greedy_rows_of_a_wide_batch_take_the_first_maximum():
    """A vocabulary-sized batch through sample(): the greedy tokens are torch's argmax (the C pass
    splits rows between threads and lanes; ties across lanes keep the first index)."""
    from llmos.drivers import quant
    if quant.kernels() is None:            # loaded: the sampler takes the C pass only then
        pytest.skip("no C++ compiler: kernels not built")
    logits = torch.zeros(8, 262144)
    logits[:, 100] = logits[:, 70000] = logits[:, 262143] = 5.0    # three tied maxima in other lanes
    logits[3, 9] = float("nan")
    got = sample(logits, [SamplingParams()] * 8, [None] * 8).tokens
    assert got == logits.argmax(dim=-1).tolist() == [100, 100, 100, 9, 100, 100, 100, 100]


def test_sampling_does_not_build_the_kernels():
    """On the fp32 path nothing else needs the kernels: sampling must not build them (a fresh
    $LLMOS_HOME would compile for ~20 s at the first step), only use them once loaded."""
    from llmos.drivers import quant
    quant.kernels.cache_clear()
    try:
        logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
        assert sample(logits, [SamplingParams()] * 3, [None] * 3).tokens == logits.argmax(-1).tolist()
        assert quant.kernels.cache_info().currsize == 0
    finally:
        quant.kernels.cache_clear()
