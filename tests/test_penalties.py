"""drivers/sampler.py penalties and min_p: repetition (llama.cpp / HF style), presence and frequency
(OpenAI's definitions), min-p; row-wise, so a row's token never depends on the batch; temperature 0
with no penalty stays exact greedy."""

import math

import pytest
import torch

from llmos.drivers.sampler import SamplingParams, make_generator, sample
from kernelkit import make_engine, prompt


def _logits():
    x = torch.full((1, 10), -1.0)
    x[0, 3], x[0, 4], x[0, 5] = 2.0, 1.5, -0.5
    return x


def test_repetition_penalty_turns_greedy_away_from_what_was_said():
    plain = SamplingParams()
    rep = SamplingParams(repetition_penalty=2.0)
    assert sample(_logits(), [plain], [None], [[3, 3]]).tokens == [3]      # no penalty: exact greedy
    assert sample(_logits(), [rep], [None], [[3, 3]]).tokens == [4]        # 2.0 / 2 = 1.0 < 1.5
    assert sample(_logits(), [rep], [None], [[7]]).tokens == [3]


def test_presence_and_frequency_follow_openai():
    pres = SamplingParams(presence_penalty=0.6)
    freq = SamplingParams(frequency_penalty=0.3)
    assert sample(_logits(), [pres], [None], [[3, 3, 3]]).tokens == [4]     # 2.0 - 0.6 = 1.4 < 1.5
    assert sample(_logits(), [freq], [None], [[3]]).tokens == [3]           # 2.0 - 0.3 = 1.7
    assert sample(_logits(), [freq], [None], [[3, 3]]).tokens == [4]        # 2.0 - 0.6 = 1.4
    long = SamplingParams(frequency_penalty=0.3, penalty_last_n=1)
    assert sample(_logits(), [long], [None], [[3, 3, 9]]).tokens == [3]     # only the last token counts


def test_logprobs_stay_those_of_the_unmodified_logits():
    p = SamplingParams(repetition_penalty=2.0, logprobs=True)
    r = sample(_logits(), [p], [None], [[3]])
    x = _logits()[0]
    assert r.tokens == [4] and r.logprobs[0] == pytest.approx((x[4] - torch.logsumexp(x, 0)).item())


def test_min_p_keeps_only_tokens_near_the_best():
    x = torch.tensor([[0.0, math.log(0.6), math.log(0.3), -9.0, -9.0]])
    p = SamplingParams(temperature=1.0, min_p=0.5)
    seen = {sample(x, [p], [make_generator(s)]).tokens[0] for s in range(200)}
    assert seen == {0, 1}


def test_a_row_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    x = torch.randn(4, 50)
    ps = [SamplingParams(temperature=0.8, repetition_penalty=1.3, presence_penalty=0.5, min_p=0.05, seed=1),
          SamplingParams(), SamplingParams(frequency_penalty=1.0), SamplingParams(temperature=1.0, seed=2)]
    hist = [[1, 2, 2, 7], None, [5, 5, 5], None]
    gens = [make_generator(11), None, None, make_generator(12)]
    together = sample(x, ps, gens, hist).tokens
    gens = [make_generator(11), None, None, make_generator(12)]
    alone = [sample(x[i:i + 1], [ps[i]], [gens[i]], [hist[i]]).tokens[0] for i in range(4)]
    assert together == alone


@pytest.mark.parametrize("bad", [dict(repetition_penalty=0), dict(repetition_penalty=11), dict(presence_penalty=3),
                                 dict(frequency_penalty=-2.5), dict(min_p=1.0), dict(min_p=-0.1),
                                 dict(penalty_last_n=0), dict(repetition_penalty="1.1")])
def test_bad_values_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams.from_dict(bad)


def _repeats(ids, context, window=64) -> int:
    """How many tokens of ids were among the `window` tokens before them."""
    seen, n = list(context), 0
    for t in ids:
        n += t in seen[-window:]
        seen.append(t)
    return n


def test_the_engine_applies_penalties_from_the_process_context(model):
    e = make_engine(model, 64, block_size=4)
    base = dict(max_tokens=24, ignore_eos=True)
    plain = e.spawn(prompt(1), SamplingParams(**base))
    rep = e.spawn(prompt(1), SamplingParams(**base, repetition_penalty=5.0))
    e.run_until_idle()
    assert _repeats(plain.output_ids, prompt(1)) > 0          # the tiny model repeats itself greedily
    assert _repeats(rep.output_ids, prompt(1)) < _repeats(plain.output_ids, prompt(1))
