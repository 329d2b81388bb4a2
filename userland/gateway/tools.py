"""Structured output and tool calls, through the kernel's grammars (drivers/grammar.py).

- ``response_format`` json_object -> the kernel's ``json_schema`` {"type": "object"};
  json_schema -> its schema. Ollama's ``format``: "json" or a schema, likewise.
- ``tools``: the model is told the functions (a system message: their JSON list and the one
  answer shape, ``{"name": NAME, "arguments": {...}}``) and its output is constrained:
  tool_choice "required" -> a call of any of them (an anyOf JSON schema, one branch per
  function: the name as a const, the arguments matching its parameters schema, with no
  properties beyond those it names unless it says otherwise); a named
  function -> a call of that one; "auto" (the default) -> a Lark grammar: such a call, or text
  that does not start with "{" (or, with a json response_format too, that JSON); "none" -> no
  tools at all. One call per answer (parallel calls are not generated).
- The answer is parsed back: a call becomes OpenAI's ``tool_calls`` (arguments as JSON text) or
  Ollama's (arguments as an object), anything else stays content. Streaming: ``CallStream``
  decides from the first non-blank character, then streams a call as OpenAI deltas (the name
  first, then the arguments' text as it comes).
- Earlier turns: an assistant message's tool_calls become that same JSON in its content, so the
  model sees one convention; "tool" messages pass through as role "tool".
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from .body import Body
from .errors import ApiError

ANY_OBJECT = {"type": "object"}
COMPACT = {"x-guidance": {"whitespace_flexible": False}}    # no free whitespace inside %json
CALL_HEAD = re.compile(r'\s*\{"name":("(?:[^"\\]|\\.)*"),"arguments":')


@dataclass
class Tools:
    functions: dict[str, dict]      # name -> {"description": str, "parameters": schema}
    choice: str                     # "auto" | "required" | a function's name
    answer: dict | None = None      # a response_format schema for the text alternative


def response_schema(b: Body) -> dict | None:
    """OpenAI's response_format -> a JSON schema for the answer (None: plain text)."""
    rf = b.sub("response_format")
    kind = rf.get("type", "string", "text", choices=("text", "json_object", "json_schema"))
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        schema = rf.sub("json_schema").get("schema", "object")
        return schema if schema else ANY_OBJECT
    return None


def ollama_format(b: Body) -> dict | None:
    """Ollama's format: "json" or a JSON schema."""
    f = b.data.get("format")
    if f in (None, ""):
        return None
    if f == "json":
        return ANY_OBJECT
    if isinstance(f, dict):
        return f
    raise ApiError(400, "'format' must be \"json\" or a JSON schema object", param="format")


def functions(tools: list, prefix: str = "tools") -> dict[str, dict]:
    """OpenAI/Ollama tools [{type: function, function: {name, description?, parameters?}}]."""
    out = {}
    for i, t in enumerate(tools):
        tb = Body(t, f"{prefix}[{i}].")
        tb.get("type", "string", "function", choices=("function",))
        fb = tb.sub("function")
        name = fb.get("name", "string", required=True)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ApiError(400, f"'{prefix}[{i}].function.name' must be 1-64 letters, digits, _ . -",
                           param=f"{prefix}[{i}].function.name")
        params = fb.get("parameters", "object") or ANY_OBJECT
        if "properties" in params and "additionalProperties" not in params:
            params = {**params, "additionalProperties": False}      # the function takes what it names
        out[name] = {"description": fb.get("description", "string", ""), "parameters": params}
    return out


def openai_tools(b: Body, answer: dict | None) -> Tools | None:
    """tools + tool_choice of an OpenAI request (None: no tools, or tool_choice "none")."""
    tools = b.get("tools", "array")
    choice = b.data.get("tool_choice")
    if not tools:
        if choice not in (None, "none"):
            raise ApiError(400, "'tool_choice' needs 'tools'", param="tool_choice")
        return None
    fns = functions(tools)
    if isinstance(choice, dict):
        name = Body(choice, "tool_choice.").sub("function").get("name", "string", required=True)
        if name not in fns:
            raise ApiError(400, f"tool_choice names '{name}', which is not among the tools", param="tool_choice")
        choice = name
    elif choice is None:
        choice = "auto"
    elif choice not in ("none", "auto", "required"):
        raise ApiError(400, "'tool_choice' must be none, auto, required or {type: function, function: {name}}",
                       param="tool_choice")
    return None if choice == "none" else Tools(fns, choice, answer)


def _call_schema(fns: dict[str, dict]) -> dict:
    return {"anyOf": [{"type": "object", "properties": {"name": {"const": name}, "arguments": f["parameters"]},
                       "required": ["name", "arguments"], "additionalProperties": False}
                      for name, f in fns.items()]}


def constraint(t: Tools | None, answer: dict | None) -> dict:
    """The kernel's grammar param for a request ({} when unconstrained)."""
    if t is None:
        return {"json_schema": answer} if answer is not None else {}
    if t.choice == "required":
        return {"json_schema": _call_schema(t.functions)}
    if t.choice != "auto":
        return {"json_schema": _call_schema({t.choice: t.functions[t.choice]})}
    call = json.dumps({**_call_schema(t.functions), **COMPACT})
    text = f"%json {json.dumps({**answer, **COMPACT})}" if answer is not None else r"/\s*[^{\s](.|\n)*/"
    return {"grammar": f"start: call | text\ncall: %json {call}\ntext: {text}\n"}


def system_prompt(t: Tools) -> str:
    specs = [{"name": n, "description": f["description"], "parameters": f["parameters"]}
             for n, f in t.functions.items()]
    must = {"auto": "When a function helps, answer with only",
            "required": "Answer with only"}.get(t.choice, f"Call {t.choice}: answer with only")
    return (f"You can call these functions:\n{json.dumps(specs)}\n{must} a JSON object "
            '{"name": <function name>, "arguments": <its arguments as a JSON object>}.')


def with_tools(messages: list[dict], t: Tools | None) -> list[dict]:
    """The messages with the tools' description in the (first) system message."""
    if t is None:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + system_prompt(t)}] + messages[1:]
    return [{"role": "system", "content": system_prompt(t)}] + messages


def history_call(calls: list, where: str) -> str:
    """An earlier assistant message's tool_calls as the JSON the model answers with."""
    out = []
    for i, c in enumerate(calls):
        fb = Body(c, f"{where}.tool_calls[{i}].").sub("function")
        args = fb.data.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                raise ApiError(400, f"'{where}.tool_calls[{i}].function.arguments' is not JSON",
                               param=f"{where}.tool_calls") from None
        out.append(json.dumps({"name": fb.get("name", "string", required=True), "arguments": args or {}}))
    return "\n".join(out)


def parse(text: str, t: Tools | None) -> tuple[str, dict] | None:
    """(name, arguments) when text is a call of one of the tools, else None."""
    if t is None or not text.lstrip().startswith("{"):
        return None
    try:
        v = json.loads(text)
    except ValueError:
        return None
    if (isinstance(v, dict) and set(v) == {"name", "arguments"} and v["name"] in t.functions
            and isinstance(v["arguments"], dict)):
        return v["name"], v["arguments"]
    return None


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class CallStream:
    """Streamed text -> OpenAI chat deltas: {"content": ...} for text, {"tool_calls": [...]}
    for a call (its id and name once the name is complete, then pieces of the arguments' JSON;
    the call object's closing brace is held back and dropped)."""

    def __init__(self, t: Tools):
        self.t, self.mode, self.buf, self.sent = t, None, "", 0    # mode: None, "text", "call"
        self.name: str | None = None
        self.id = call_id()

    def feed(self, text: str) -> list[dict]:
        if self.mode == "text":
            return [{"content": text}] if text else []
        self.buf += text
        if self.mode is None:
            head = self.buf.lstrip()
            if not head:
                return []
            if head[0] != "{":
                self.mode = "text"
                return [{"content": self.buf}]
            self.mode = "call"
        return self._call(final=False)

    def finish(self) -> list[dict]:
        if self.mode == "call" and self.name is None:      # never became a call: it was text
            return [{"content": self.buf}] if self.buf else []
        return self._call(final=True) if self.mode == "call" else []

    @property
    def called(self) -> bool:
        return self.name is not None

    def _call(self, final: bool) -> list[dict]:
        out = []
        if self.name is None:
            m = CALL_HEAD.match(self.buf)
            if not m:
                return []
            self.name, self.buf = json.loads(m.group(1)), self.buf[m.end():]
            out.append({"tool_calls": [{"index": 0, "id": self.id, "type": "function",
                                        "function": {"name": self.name, "arguments": ""}}]})
        end = len(self.buf.rstrip().removesuffix("}")) if final else len(self.buf) - 1
        if end > self.sent:
            out.append({"tool_calls": [{"index": 0, "function": {"arguments": self.buf[self.sent:end]}}]})
            self.sent = end
        return out
