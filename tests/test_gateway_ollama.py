"""The gateway's Ollama API against a real kernel on the tiny model, driven by the real `ollama`
client with host=, and its error shape ({"error": "..."})."""

from __future__ import annotations

import httpx
import ollama
import pytest

from gatewaykit import env, greedy, k, settle, url  # noqa: F401 (fixtures)

GREEDY = {"num_predict": 8, "temperature": 0}


@pytest.fixture
def ol(url):
    return ollama.Client(host=url)


def test_generate_streams_and_ends_with_durations(ol, k):
    parts = list(ol.generate(model="tiny-llama", prompt="Why is the sky blue?", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    text = "".join(p.response for p in parts)
    assert text == greedy(k, [{"role": "user", "content": "Why is the sky blue?"}], 8)
    last = parts[-1]
    assert last.done_reason in ("length", "stop") and 1 <= last.eval_count <= 8 and last.prompt_eval_count > 0
    assert last.total_duration >= last.prompt_eval_duration + last.eval_duration > 0
    whole = ol.generate(model="tiny-llama:latest", prompt="Why is the sky blue?", options=GREEDY)
    assert whole.response == text and whole.done
    raw = ol.generate(model="tiny-llama", prompt="the sky", raw=True, options=GREEDY)
    assert raw.response == greedy(k, "the sky", 8)
    assert settle(k) == []


def test_chat_streams_messages(ol, k):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    parts = list(ol.chat(model="tiny-llama", messages=msgs, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == greedy(k, msgs, 8)
    assert parts[-1].done and parts[-1].message.role == "assistant"
    assert ol.chat(model="tiny-llama", messages=msgs, options=GREEDY).message.content == greedy(k, msgs, 8)


def test_seed_and_stop_options(ol, k):
    opts = {"num_predict": 10, "temperature": 1.0, "seed": 5}
    a, b = (ol.generate(model="tiny-llama", prompt="x", raw=True, options=opts).response for _ in range(2))
    assert a == b
    full = greedy(k, "one two", 12)
    cut = full[2:5]
    r = ol.generate(model="tiny-llama", prompt="one two", raw=True, options={**GREEDY, "num_predict": 12, "stop": [cut]})
    assert r.response == full[:full.index(cut)] and r.done_reason == "stop"


def test_tags_ps_show_version(ol, url):
    assert [m.model for m in ol.list().models] == ["tiny-llama:latest"]
    running = ol.ps().models
    assert running[0].model == "tiny-llama:latest" and running[0].context_length > 0
    info = ol.show("tiny-llama")
    assert info.details.format == "gguf" and {"completion", "tools"} <= set(info.capabilities)
    assert httpx.get(url + "/api/version").json()["version"]


def test_errors_in_ollama_shape(ol, url):
    with pytest.raises(ollama.ResponseError) as e:
        ol.generate(model="llama3", prompt="hi")
    assert e.value.status_code == 404 and "tiny-llama" in e.value.error
    r = httpx.post(url + "/api/generate", json={"model": "tiny-llama", "prompt": 5})
    assert r.status_code == 400 and r.json() == {"error": "'prompt' must be a string, not an integer"}
    r = httpx.post(url + "/api/chat", json={"model": "tiny-llama", "messages": [{"role": "user"}],
                                             "options": {"temperature": "hot"}})
    assert r.status_code == 400 and "options.temperature" in r.json()["error"]
