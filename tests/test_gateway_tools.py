"""Structured output and tool calls through the kernel's grammars, with the real openai and ollama
clients: response_format (json_object, json_schema) and Ollama's format give content that parses
and validates; tools with tool_choice required / named / auto give tool_calls whose arguments
validate against the function's schema (streamed too, as deltas)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from gatewaykit import env, k, settle, url  # noqa: F401 (fixtures)

CHAT = [{"role": "user", "content": "Tell me about the weather."}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
         "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "the weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "clock", "parameters": CLOCK}}]
SCHEMAS = {"weather": WEATHER, "clock": CLOCK}
SAMPLED = dict(model="tiny-llama", messages=CHAT, max_tokens=60, temperature=0.9)


@pytest.fixture
def oa(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def braces(tiny_tokenizer) -> dict[str, float]:
    """logit_bias banning every token that starts with "{" (after optional blanks)."""
    t = tiny_tokenizer
    return {str(i): -100 for i in range(t.vocab_size) if t.token_bytes(i).lstrip().startswith(b"{")}


def check_call(call, names=SCHEMAS) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_response_format_json_schema_validates(oa, seed):
    r = oa.chat.completions.create(**SAMPLED, seed=seed, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    c = r.choices[0]
    assert c.finish_reason == "stop"
    jsonschema.validate(json.loads(c.message.content), PERSON)


def test_response_format_json_object_is_an_object(oa):
    r = oa.chat.completions.create(**dict(SAMPLED, max_tokens=200), seed=4, response_format={"type": "json_object"},
                                   logit_bias={})
    c = r.choices[0]
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)
    else:                                   # a long object: still one, as far as it went
        assert c.finish_reason == "length" and c.message.content.startswith("{")


@pytest.mark.parametrize("seed", [1, 2])
def test_tool_choice_required_gives_a_valid_call(oa, seed):
    r = oa.chat.completions.create(**SAMPLED, seed=seed, tools=TOOLS, tool_choice="required")
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None and len(c.message.tool_calls) == 1
    check_call(c.message.tool_calls[0])


def test_a_named_tool_is_the_one_called(oa):
    r = oa.chat.completions.create(**SAMPLED, seed=5, tools=TOOLS,
                                   tool_choice={"type": "function", "function": {"name": "clock"}})
    assert check_call(r.choices[0].message.tool_calls[0], {"clock"})["zone"] in ("utc", "cet")


def test_auto_is_a_call_or_text(oa, braces):
    text = oa.chat.completions.create(**SAMPLED, seed=6, tools=TOOLS, logit_bias=braces).choices[0]
    assert text.message.tool_calls is None and text.message.content and text.finish_reason != "tool_calls"
    forced = {k: 100 for k in braces}       # the same tokens made all but certain: the call branch
    call = oa.chat.completions.create(**SAMPLED, seed=6, tools=TOOLS, logit_bias=forced).choices[0]
    assert call.finish_reason == "tool_calls"
    check_call(call.message.tool_calls[0])


def test_a_streamed_call_comes_as_deltas_that_add_up(oa):
    kw = dict(SAMPLED, seed=7, tools=TOOLS, tool_choice="required")
    whole = oa.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    name, args, ids, reasons = "", "", set(), []
    for chunk in oa.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            reasons.append(c.finish_reason)
            for d in c.delta.tool_calls or []:
                assert d.index == 0
                ids.add(d.id) if d.id else None
                name += d.function.name or ""
                args += d.function.arguments or ""
    assert (name, json.loads(args)) == (whole.function.name, json.loads(whole.function.arguments))
    assert len(ids) == 1 and reasons[-1] == "tool_calls"


def test_a_conversation_with_earlier_calls(oa):
    msgs = CHAT + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": '{"zone": "utc"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    r = oa.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=40, temperature=0.9, seed=8,
                                   tools=TOOLS, tool_choice="required")
    check_call(r.choices[0].message.tool_calls[0])


def test_bad_schemas_and_grammar_conflicts_are_400(url):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny-llama", "messages": CHAT,
                                                        "response_format": bad})
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny-llama", "messages": CHAT, "stop": "x",
                                                        "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and "stop" in r.json()["error"]["message"]


@pytest.mark.parametrize("seed", [1, 2])
def test_ollama_format(url, seed):
    cl = ollama.Client(host=url)
    opts = {"num_predict": 60, "temperature": 0.9, "seed": seed}
    r = cl.chat(model="tiny-llama", messages=CHAT, format=PERSON, options=opts, stream=False)
    jsonschema.validate(json.loads(r.message.content), PERSON)
    r = cl.generate(model="tiny-llama", prompt="a person", format=PERSON, options=opts)
    jsonschema.validate(json.loads(r.response), PERSON)
    parts = list(cl.chat(model="tiny-llama", messages=CHAT, format=PERSON, options=opts, stream=True))
    jsonschema.validate(json.loads("".join(p.message.content for p in parts)), PERSON)


def test_ollama_tools_give_a_call_or_text(url, k, braces):
    cl = ollama.Client(host=url)
    opts = {"num_predict": 60, "temperature": 0.9, "seed": 9}
    text = cl.chat(model="tiny-llama", messages=CHAT, tools=TOOLS, options={**opts, "logit_bias": braces}).message
    assert text.content and not text.tool_calls
    forced = {**opts, "logit_bias": {k: 100 for k in braces}}       # (llama.cpp's option, an extension)
    # (the ollama client drops additionalProperties from tools; the gateway then assumes it false)
    whole = cl.chat(model="tiny-llama", messages=CHAT, tools=TOOLS, options=forced).message
    (call,) = whole.tool_calls
    jsonschema.validate(dict(call.function.arguments), SCHEMAS[call.function.name])
    parts = list(cl.chat(model="tiny-llama", messages=CHAT, tools=TOOLS, options=forced, stream=True))
    assert [(t.function.name, dict(t.function.arguments)) for p in parts for t in p.message.tool_calls or []] == \
        [(call.function.name, dict(call.function.arguments))]
    assert parts[-1].done and not "".join(p.message.content for p in parts)
    assert settle(k) == []
