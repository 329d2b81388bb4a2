"""The gateway's OpenAI API against a real kernel on the tiny model, driven by the real `openai`
client (sync, async, streaming), and its errors (status and OpenAI's shape)."""

from __future__ import annotations

import asyncio
import getpass

import httpx
import openai
import pytest

from gatewaykit import env, greedy, k, settle, url  # noqa: F401 (fixtures)
from llmos.kernel.abi import Sys

CHAT = [{"role": "user", "content": "Name three rivers."}]


@pytest.fixture
def oa(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def killed(k) -> int:
    """How many of this user's processes have exited by a signal (the kernel's counters)."""
    return k.syscall(Sys.COUNTERS)["users"].get(getpass.getuser(), {}).get("finished", {}).get("signal", 0)


def test_models_and_health(oa, url):
    assert [m.id for m in oa.models.list()] == ["tiny-llama"]
    assert oa.models.retrieve("tiny-llama").owned_by == "llmos"
    assert httpx.get(url + "/health").status_code == 200


def test_chat_is_the_kernel_answer(oa, k):
    r = oa.chat.completions.create(model="tiny-llama", messages=CHAT, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == greedy(k, CHAT, 8)
    assert r.choices[0].finish_reason in ("length", "stop")
    pid = k.spawn(CHAT, {"max_tokens": 1})
    assert r.usage.prompt_tokens == k.stat(pid)["prompt_tokens"] and 1 <= r.usage.completion_tokens <= 8
    k.wait(pid)
    assert settle(k) == []                                  # the gateway reaped its process


def test_chat_stream_with_usage(oa, k):
    chunks = list(oa.chat.completions.create(model="tiny-llama", messages=CHAT, max_completion_tokens=8,
                                             temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy(k, CHAT, 8)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].choices == [] and 1 <= chunks[-1].usage.completion_tokens <= 8
    assert all(c.usage is None for c in chunks[:-1])


def test_async_clients_run_concurrently(url, k):
    prompts = ["one two", "three four five", "six", "seven eight"]

    async def go():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        rs = await asyncio.gather(*[client.completions.create(model="tiny-llama", prompt=p, max_tokens=6,
                                                              temperature=0) for p in prompts])
        await client.close()
        return [r.choices[0].text for r in rs]
    assert asyncio.run(go()) == [greedy(k, p, 6) for p in prompts]


def test_completions_token_ids_echo_and_several_prompts(oa, k):
    ids = k.tokenize("the river")
    r = oa.completions.create(model="tiny-llama", prompt=ids, max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text == k.detokenize(ids) + greedy(k, ids, 4)
    r = oa.completions.create(model="tiny-llama", prompt=["a b", "c d"], max_tokens=3, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [greedy(k, "a b", 3), greedy(k, "c d", 3)]


def test_stop_and_seed(oa, k):
    full = greedy(k, "one two three", 12)
    cut = full[3:6]
    r = oa.completions.create(model="tiny-llama", prompt="one two three", max_tokens=12, temperature=0, stop=[cut])
    assert r.choices[0].text == full[:full.index(cut)] and r.choices[0].finish_reason == "stop"
    same = [oa.completions.create(model="tiny-llama", prompt="x y", max_tokens=10, temperature=1.0, seed=7,
                                  top_p=0.9).choices[0].text for _ in range(2)]
    assert same[0] == same[1]


def test_n_choices_fork_one_prefill(oa, k):
    """n answers share one prefill: the prompt's process is forked, not spawned n times."""
    prompt = " ".join(f"word{i}" for i in range(40))
    before = k.syscall(Sys.COUNTERS)["engine"]["prefill_tokens"]
    r = oa.completions.create(model="tiny-llama", prompt=prompt, max_tokens=5, temperature=1.0, seed=3, n=3,
                              extra_body={"ignore_eos": True})
    prefilled = k.syscall(Sys.COUNTERS)["engine"]["prefill_tokens"] - before
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.prompt_tokens == len(k.tokenize(prompt, True, True)) and r.usage.completion_tokens == 15
    assert prefilled < 1.5 * r.usage.prompt_tokens          # one prefill, not three
    assert len({c.text for c in r.choices}) > 1               # the copies sample on their own


def test_disconnect_mid_stream_kills_the_process(oa, k):
    before = killed(k)
    stream = oa.completions.create(model="tiny-llama", prompt="tell a long story", max_tokens=400,
                                   temperature=0, stream=True, extra_body={"ignore_eos": True})
    it = iter(stream)
    next(it), next(it)
    assert [p["command"] for p in k.ps()] == ["http completion"]
    stream.close()
    assert settle(k) == []
    assert k.meminfo()["kv"]["used"] == 0
    assert killed(k) == before + 1


def test_disconnect_while_collecting_kills_the_process(url, k):
    before = killed(k)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "a", "max_tokens": 1000,
                                                   "ignore_eos": True}, timeout=0.3)
    assert settle(k) == [] and k.meminfo()["kv"]["used"] == 0
    assert killed(k) == before + 1


def test_tokenize_detokenize(url, k):
    r = httpx.post(url + "/tokenize", json={"model": "tiny-llama", "prompt": "hello world"}).json()
    assert r["tokens"] == k.tokenize("hello world", True, False) and r["count"] == len(r["tokens"])
    assert httpx.post(url + "/detokenize", json={"tokens": r["tokens"]}).json()["prompt"] == \
        k.detokenize(r["tokens"])


@pytest.mark.parametrize("body, status, param", [
    ({"model": "tiny-llama", "messages": CHAT, "max_tokens": "8"}, 400, "max_tokens"),
    ({"model": "tiny-llama", "messages": CHAT, "temperature": True}, 400, "temperature"),
    ({"model": "tiny-llama", "messages": "hi"}, 400, "messages"),
    ({"model": "tiny-llama", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": "tiny-llama", "messages": CHAT, "n": 99}, 400, "n"),
    ({"model": "tiny-llama", "messages": CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"messages": CHAT}, 400, "model"),
    ({"model": "gpt-4o", "messages": CHAT}, 404, "model"),
    ({"model": "tiny-llama", "messages": CHAT, "logprobs": "yes"}, 400, "logprobs"),
    ({"model": "tiny-llama", "messages": CHAT, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ({"model": "tiny-llama", "messages": CHAT, "top_logprobs": 3}, 400, "top_logprobs"),
    ({"model": "tiny-llama", "messages": CHAT, "presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"model": "tiny-llama", "messages": CHAT, "frequency_penalty": "1"}, 400, "frequency_penalty"),
    ({"model": "tiny-llama", "messages": CHAT, "logit_bias": {"x": 1}}, 400, "logit_bias"),
    ({"model": "tiny-llama", "messages": CHAT, "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ({"model": "tiny-llama", "messages": CHAT, "response_format": {"type": "xml"}}, 400, "response_format.type"),
    ({"model": "tiny-llama", "messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "schema": []}}}, 400, "response_format.json_schema.schema"),
    ({"model": "tiny-llama", "messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools[0].function.name"),
    ({"model": "tiny-llama", "messages": CHAT, "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "tiny-llama", "messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "tool_choice"),
    ({"model": "tiny-llama", "messages": CHAT, "suffix": "x"}, 501, "suffix"),
])
def test_bad_requests_in_openai_shape(url, body, status, param):
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_errors_from_the_kernel_and_the_transport(url, oa):
    r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "x " * 2000})
    assert r.status_code == 400 and "prompt too long" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "E2BIG"
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url + "/v1/completions", content=b" " * (5 << 20))
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/completions", content=(b" " * (1 << 20) for _ in range(5)))     # chunked
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert httpx.get(url + "/v1/nothing").status_code == 404
    with pytest.raises(openai.NotFoundError) as e:
        oa.chat.completions.create(model="nope", messages=CHAT)
    assert e.value.code == "model_not_found"
