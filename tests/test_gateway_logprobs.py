"""Log-probabilities from the kernel (read replies of a process spawned with logprobs) and the
sampler's other knobs through the gateway: penalties and logit_bias, with the real openai and
ollama clients. Logprobs are checked against a plain dense forward of the tiny model."""

from __future__ import annotations

import math

import httpx
import ollama
import openai
import pytest
import torch

from gatewaykit import env, greedy, k, settle, url  # noqa: F401 (fixtures)
from test_driver import dense_reference

CHAT = [{"role": "user", "content": "Name three rivers."}]
PROMPT = [1, 20, 31, 42, 53, 64, 75]          # token ids: the reference runs on exactly these


@pytest.fixture
def oa(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def reference(path: str, n: int) -> tuple[list[int], torch.Tensor]:
    """Greedy ids after PROMPT and log_softmax rows [n, V] that chose them (dense float64 forward)."""
    ids = list(PROMPT)
    for _ in range(n):
        ids.append(int(dense_reference(path, ids)[-1].argmax()))
    lsm = torch.log_softmax(dense_reference(path, ids)[len(PROMPT) - 1:-1].double(), -1)
    return ids[len(PROMPT):], lsm


def read_all(k, pid) -> tuple[str, list, list]:
    text, entries, replies = "", [], []
    while True:
        r = k.read(pid)
        replies.append(r)
        text += r["text"]
        entries += r.get("logprobs") or []
        if r["eof"]:
            break
    k.wait(pid)
    return text, entries, replies


def test_the_kernel_reads_logprobs_equal_to_a_dense_forward(k, tiny_model_path, tiny_tokenizer):
    want, lsm = reference(tiny_model_path, 6)
    pid = k.spawn(PROMPT, {"max_tokens": 6, "temperature": 0, "ignore_eos": True,
                           "logprobs": True, "top_logprobs": 4})
    text, entries, _ = read_all(k, pid)
    assert [e[0] for e in entries] == want
    for (tid, piece, lp, top), row in zip(entries, lsm):
        assert piece == tiny_tokenizer.token_bytes(tid)
        assert lp == pytest.approx(row[tid].item(), abs=1e-3)
        vals, ids = torch.topk(row, 4)
        assert [t[0] for t in top] == ids.tolist()
        assert [t[2] for t in top] == pytest.approx(vals.tolist(), abs=1e-3)
        assert top[0][0] == tid and top[0][2] == lp           # greedy: the chosen one is the best
    assert b"".join(e[1] for e in entries).decode("utf-8", "replace").strip() == text.strip()
    pid = k.spawn(PROMPT, {"max_tokens": 3, "temperature": 0, "logprobs": True})   # no top asked
    assert all(e[3] == [] for e in read_all(k, pid)[1])
    pid = k.spawn(PROMPT, {"max_tokens": 3, "temperature": 0})        # not asked: the old reply
    assert all(set(r) == {"text", "eof", "turn_end"} for r in read_all(k, pid)[2])


@pytest.mark.parametrize("params, message", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": 2}, "needs logprobs"),
    ({"logprobs": 1}, "logprobs"), ({"logit_bias": {str(10**6): 1.0}}, "past the vocabulary"),
    ({"logit_bias": [[3, 500]]}, "logit_bias"),
])
def test_the_kernel_refuses_bad_logprob_and_bias_params(k, params, message):
    with pytest.raises(OSError, match=message) as e:
        k.spawn(PROMPT, params)
    assert e.value.errno == 22


def test_openai_completion_logprobs_are_the_models(oa, tiny_model_path):
    want, lsm = reference(tiny_model_path, 5)
    r = oa.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3,
                              extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([row[t].item() for t, row in zip(want, lsm)], abs=1e-3)
    for tok, best, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and max(top.values()) == best and top[tok] == best
    assert lp.text_offset[0] == 0 and "".join(lp.tokens).strip() == r.choices[0].text.strip()


def test_openai_chat_logprobs_streamed_and_not(oa):
    kw = dict(model="tiny-llama", messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    whole = oa.chat.completions.create(**kw).choices[0]
    content = whole.logprobs.content
    assert 0 < len(content) <= 8
    for t in content:
        assert t.logprob == max(a.logprob for a in t.top_logprobs) and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert t.logprob <= 0 and math.isfinite(t.logprob)
    assert b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace").strip() == \
        whole.message.content.strip()
    streamed = [t for ch in oa.chat.completions.create(**kw, stream=True)
                for c in ch.choices if c.logprobs for t in c.logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]     # (a cached prefix: other
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-4)  # sums)
    plain = oa.chat.completions.create(model="tiny-llama", messages=CHAT, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None
    forked = oa.chat.completions.create(**dict(kw, n=2)).choices         # n > 1: forks ask too
    assert [[t.token for t in c.logprobs.content] for c in forked] == [[t.token for t in content]] * 2


def test_ollama_logprobs(url):
    r = ollama.Client(host=url).generate(model="tiny-llama", prompt="the sky", logprobs=True, top_logprobs=2,
                                         options={"num_predict": 6, "temperature": 0})
    assert r.logprobs and all(t.logprob == t.top_logprobs[0].logprob for t in r.logprobs)
    def letters(s):                         # a token may hold part of a UTF-8 character: U+FFFD
        return s.replace("\ufffd", "").strip()
    assert letters("".join(t.token for t in r.logprobs)) == letters(r.response)


def test_penalties_reach_the_sampler(oa, k, url):
    plain = greedy(k, CHAT, 12)
    for field, value in (("frequency_penalty", 2.0), ("presence_penalty", 2.0)):
        got = oa.chat.completions.create(model="tiny-llama", messages=CHAT, max_tokens=12, temperature=0,
                                         **{field: value}).choices[0].message.content
        assert got == greedy(k, CHAT, 12, **{field: value}) != plain, field
    opts = {"num_predict": 12, "temperature": 0, "repeat_penalty": 3.0, "repeat_last_n": 8, "min_p": 0.05}
    got = ollama.Client(host=url).chat(model="tiny-llama", messages=CHAT, options=opts).message.content
    assert got == greedy(k, CHAT, 12, repetition_penalty=3.0, penalty_last_n=8, min_p=0.05) != plain
    off = dict(opts, repeat_last_n=0)          # Ollama: 0 turns the penalties off
    assert ollama.Client(host=url).chat(model="tiny-llama", messages=CHAT, options=off).message.content == plain
    assert settle(k) == []


def test_logit_bias_forces_and_bans(oa, k, url):
    forced = k.tokenize("river", False, False)[-1]
    r = oa.completions.create(model="tiny-llama", prompt="a", max_tokens=4, temperature=0,
                              logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text.strip() == k.detokenize([forced] * 4).strip()
    first = oa.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0)
    banned = oa.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0,
                                   logit_bias={str(k.tokenize(first.choices[0].logprobs.tokens[0], False, False)[-1]): -100})
    assert banned.choices[0].logprobs.tokens != first.choices[0].logprobs.tokens
    r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "a", "logit_bias": {"99999999": 5}})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
