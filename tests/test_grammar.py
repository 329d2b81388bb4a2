"""Constrained decoding (drivers/grammar.py) in the engine on the tiny model: every output of a
generated set of JSON schemas and regexes is valid (checked by jsonschema and Python's re, not by
llguidance), also across fork, SIGSTOP/SIGCONT, swap and recompute preemption and session turns;
forced tokens are fed without sampling; a grammar that cannot finish ends with "length"; bad
grammars are EINVAL naming the problem; a fork given its own params (another grammar) between
turns, EBUSY within one."""

from __future__ import annotations

import errno
import json
import random
import re
import signal

import jsonschema
import pytest
import torch

from llmos.drivers.grammar import Constraint, GrammarError
from llmos.drivers.sampler import SamplingParams
from llmos.kernel.engine import KernelError
from kernelkit import make_engine, prompt


def engine(model, **cfg):
    return make_engine(model, 256, **cfg)


def params(max_tokens=300, seed=0, **grammar) -> SamplingParams:
    return SamplingParams.from_dict({"max_tokens": max_tokens, "temperature": 1.0, "seed": seed, **grammar})


def text(model, p) -> str:
    """The output as a reader sees it (the end-of-turn token, if sampled, is no text)."""
    ids = p.output_ids[:-1] if p.output_ids[-1:] and p.output_ids[-1] in model.tokenizer.stop_ids else p.output_ids
    return model.tokenizer.decode(ids)


# ---- generated constraints ---------------------------------------------------------------------

def _schema(rng: random.Random, depth: int = 0) -> dict:
    kind = rng.choice(["string", "integer", "boolean", "enum", "array", "object", "number"]
                      if depth < 2 else ["string", "integer", "boolean", "enum"])
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 8)}
    if kind == "integer":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if kind == "number":
        return {"type": "number", "minimum": 0, "maximum": 10}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "cyan", 7, True, None], rng.randint(1, 4))}
    if kind == "array":
        return {"type": "array", "items": _schema(rng, depth + 1), "maxItems": rng.randint(0, 3)}
    names = rng.sample(["id", "name", "tags", "ok", "size", "kind", "note"], rng.randint(1, 4))
    props = {n: _schema(rng, depth + 1) for n in names}
    return {"type": "object", "properties": props, "required": rng.sample(names, rng.randint(0, len(names))),
            "additionalProperties": False}


SCHEMAS = [_schema(random.Random(i)) for i in range(16)] + [
    {"type": "object", "properties": {"tool": {"const": "calculator"},
                                      "args": {"type": "object", "properties": {"expr": {"type": "string", "maxLength": 12}},
                                               "required": ["expr"], "additionalProperties": False}},
     "required": ["tool", "args"], "additionalProperties": False}]

REGEXES = [
    r"[a-z]{3,6}-[0-9]{2}", r"(yes|no|maybe)", r"[A-Z][a-z]{1,6}( [A-Z][a-z]{1,6}){0,2}",
    r"[0-9]{3}-[0-9]{4}", r"0x[0-9a-f]{2,8}", r"(ab|cd){1,4}e{0,3}", r"[a-z]{1,8}@[a-z]{2,5}\.(com|org)",
    r"\(([0-9]{1,3}, ){1,3}[0-9]{1,3}\)", r"-?[1-9][0-9]{0,4}(\.[0-9]{1,2})?", r"[^a-z\n]{1,5}z",
]


def test_generated_schemas_give_valid_json_every_time(model):
    e = engine(model)
    ps = [(s, e.spawn(prompt(i, 12), params(seed=i, json_schema=s))) for i, s in enumerate(SCHEMAS)]
    e.run_until_idle()
    for schema, p in ps:
        assert p.exit.reason == "eos", (schema, p.exit, text(model, p))
        jsonschema.validate(json.loads(text(model, p)), schema)


def test_generated_regexes_match_every_time(model):
    e = engine(model)
    ps = [(rx, e.spawn(prompt(i, 9), params(seed=100 + i, regex=rx))) for i, rx in enumerate(REGEXES)]
    e.run_until_idle()
    for rx, p in ps:
        assert p.exit.reason == "eos", (rx, p.exit, text(model, p))
        assert re.fullmatch(rx, text(model, p)), (rx, text(model, p))


def test_lark_gbnf_and_choice(model):
    e = engine(model)
    lark = e.spawn(prompt(1), params(grammar='start: "sum(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,3}/'))
    gbnf = e.spawn(prompt(2), params(grammar='root ::= "go " dir\ndir ::= "north" | "south"'))
    choice = e.spawn(prompt(3), params(choice=["a long answer about rivers", "short"]))
    e.run_until_idle()
    assert re.fullmatch(r"sum\([0-9]{1,3}(,[0-9]{1,3})*\)", text(model, lark)), text(model, lark)
    assert text(model, gbnf) in ("go north", "go south")
    assert text(model, choice) in ("a long answer about rivers", "short")


def test_forced_tokens_are_fed_without_sampling(model):
    e = engine(model)
    p = e.spawn(prompt(4), params(regex="the grammar allows exactly this sentence"))
    e.run_until_idle()
    assert text(model, p) == "the grammar allows exactly this sentence" and p.exit.reason == "eos"
    assert len(p.output_ids) > 4 and e.counters["steps"] <= 2        # one sampled token, the rest forced


def test_unfinishable_grammar_ends_with_length(model):
    e = engine(model)
    p = e.spawn(prompt(5), params(max_tokens=6, regex="[a-z]{200}"))
    e.run_until_idle()
    assert p.exit.reason == "length" and re.fullmatch("[a-z]+", text(model, p))


# ---- the matcher is part of the process ----------------------------------------------------------

SCHEMA = SCHEMAS[-1]


def test_fork_copies_the_matcher(model):
    e = engine(model)
    p = e.spawn(prompt(6), params(seed=3, json_schema=SCHEMA))
    while len(p.output_ids) < 3:
        e.step()
    kids = [e.fork(p.pid) for _ in range(3)]
    e.run_until_idle()
    outs = [text(model, q) for q in [p, *kids]]
    for q, out in zip([p, *kids], outs):
        assert q.exit.reason == "eos", (q.exit, out)
        jsonschema.validate(json.loads(out), SCHEMA)


def _solo(model, ids, sp):
    e = engine(model, prefix_cache=False)
    p = e.spawn(ids, sp)
    e.run_until_idle()
    return p.output_ids


def test_stop_and_cont_keep_the_matcher(model):
    e = engine(model)
    sp = params(seed=4, regex=r"([a-z]{2,6} ){8}[a-z]{2,6}\.")
    a, b = e.spawn(prompt(7), sp), e.spawn(prompt(8), params(seed=5, json_schema=SCHEMA))
    for _ in range(3):
        e.step()
    e.signal(a.pid, signal.SIGSTOP)
    for _ in range(5):
        e.step()
    e.signal(a.pid, signal.SIGCONT)
    e.run_until_idle()
    assert a.exit.reason == "eos" and re.fullmatch(r"([a-z]{2,6} ){8}[a-z]{2,6}\.", text(model, a))
    assert a.output_ids == _solo(model, prompt(7), sp)
    jsonschema.validate(json.loads(text(model, b)), SCHEMA)


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_keeps_the_matcher(model, mode):
    # as test_engine's preemption test: A gives way to a nice -10 arrival that needs the memory
    e = make_engine(model, 8, max_running=1, preempt_mode=mode, slice_tokens=8)
    rx = r"([a-z]{3,6} ){14}[a-z]{3,6}\."
    sp = params(max_tokens=110, seed=6, regex=rx)
    a = e.spawn(prompt(2, 16), sp)
    while len(a.output_ids) < 8:
        e.step()
    b = e.spawn(prompt(3, 100), params(max_tokens=8, seed=7, choice=["x", "y"]), nice=-10)
    e.run_until_idle()
    assert a.stats.preemptions >= 1
    assert e.sched.counters["preempt_swap" if mode == "swap" else "preempt_recompute"] >= 1
    assert a.exit.reason == "eos" and re.fullmatch(rx, text(model, a)), text(model, a)
    assert a.output_ids == _solo(model, prompt(2, 16), sp)
    assert text(model, b) in ("x", "y")


def test_each_session_turn_starts_the_grammar_again_and_sigint_ends_one(model):
    e = engine(model)
    s = e.spawn(prompt(9), params(seed=8, json_schema=SCHEMA), session=True)
    while len(s.output_ids) < 4:
        e.step()
    e.signal(s.pid, signal.SIGINT)                   # cut mid-object: the turn ends, the session sleeps
    assert s.state.name == "SLEEPING"
    cut, ended, _ = s.channel.take()
    assert ended and cut
    e.write(s.pid, model.tokenizer.encode("again", add_bos=False))
    e.run_until_idle()
    second, ended, _ = s.channel.take()
    assert ended and s.state.name == "SLEEPING"
    jsonschema.validate(json.loads(second), SCHEMA)


ANSWER = {"type": "object", "required": ["answer"], "additionalProperties": False,
          "properties": {"answer": {"type": "string", "maxLength": 6}}}


def test_fork_with_params_gives_the_child_its_own_grammar_from_its_next_turn(model):
    e = engine(model)
    s = e.spawn(prompt(10), params(seed=4, json_schema=SCHEMA), session=True)
    e.run_until_idle()
    s.channel.take()
    kid = e.fork(s.pid, params=params(seed=5, json_schema=ANSWER))
    assert kid.grammar.constraint.kind == "json_schema" and kid.grammar is not s.grammar
    for q in (s, kid):
        e.write(q.pid, model.tokenizer.encode("next", add_bos=False))
    e.run_until_idle()
    jsonschema.validate(json.loads(s.channel.take()[0]), SCHEMA)      # the parent keeps its own
    jsonschema.validate(json.loads(kid.channel.take()[0]), ANSWER)
    plain = e.fork(s.pid, params=params(max_tokens=7, seed=6))          # no grammar at all
    e.write(plain.pid, model.tokenizer.encode("free", add_bos=False))
    e.run_until_idle()
    assert plain.grammar is None and plain.turn_tokens == 7


def test_fork_with_params_of_an_open_prompt(model):
    e = engine(model)
    p = e.spawn(prompt(11), params(seed=1), stdin=True)
    e.run_until_idle()
    kid = e.fork(p.pid, params=params(seed=2, json_schema=ANSWER))
    e.write(kid.pid, model.tokenizer.encode("part", add_bos=False))
    e.close(kid.pid)
    e.run_until_idle()
    assert kid.exit.reason == "eos"
    jsonschema.validate(json.loads(text(model, kid)), ANSWER)


def test_fork_with_params_in_a_turn_is_ebusy_and_a_bad_grammar_einval(model):
    e = engine(model)
    s = e.spawn(prompt(13), params(max_tokens=3, seed=1), session=True)
    e.run_until_idle()
    with pytest.raises(KernelError) as ei:
        e.fork(s.pid, params=SamplingParams.from_dict({"json_schema": {"type": "nope"}}))
    assert ei.value.errno == errno.EINVAL and "nope" in str(ei.value)
    p = e.spawn(prompt(12), params(seed=1, ignore_eos=True))
    e.step()
    with pytest.raises(KernelError) as ei:
        e.fork(p.pid, params=params(json_schema=ANSWER))
    assert ei.value.errno == errno.EBUSY and "between its turns" in str(ei.value)
    assert {q.pid for q in e.procs.all()} == {p.pid, s.pid}               # no half-made child
    assert e.fork(p.pid).grammar is None                                    # without params: as before


def test_apply_masks_skips_only_greedy_rows_whose_best_token_is_allowed():
    from llmos.drivers.grammar import apply_masks
    gen = torch.Generator().manual_seed(0)
    v, n = 200, 8                                        # a padded head: 200 logits, 7 mask words (224 bits)
    logits = torch.randn(n, v, generator=gen)
    best = logits.argmax(-1)
    masks = [torch.randint(-2**31, 2**31 - 1, (7,), dtype=torch.int32, generator=gen) for _ in range(n)]
    for i in (0, 2, 4):                                  # rows whose best token the grammar forbids
        masks[i][best[i] >> 5] &= ~(1 << (best[i] & 31))
    for i in (1, 3, 5, 6):
        masks[i][best[i] >> 5] |= 1 << (best[i] & 31)
    masks[7] = None
    greedy, hot = SamplingParams(), SamplingParams(temperature=1.0)
    params_ = [greedy, greedy, greedy, greedy, hot, hot, SamplingParams(logprobs=True), greedy]
    full = apply_masks(logits.clone(), masks)
    lazy = apply_masks(logits.clone(), masks, params_)
    for i in range(n):
        allowed = torch.tensor([(int(masks[i][t >> 5]) >> (t & 31)) & 1 == 1 if t < 224 else False
                                for t in range(v)]) if masks[i] is not None else torch.ones(v, dtype=torch.bool)
        assert torch.equal(torch.isinf(full[i]), ~allowed)                  # the full mask: exactly the bits
        assert int(lazy[i].argmax()) == int(full[i].argmax())               # greedy picks the same token
    skipped = [i for i in range(n) if not torch.isinf(lazy[i]).any()]
    assert skipped == [1, 3, 7]            # greedy + allowed best, and the unconstrained row; never the others


# ---- bad grammars ------------------------------------------------------------------------------

@pytest.mark.parametrize("wire,words", [
    ({"json_schema": {"type": "nope"}}, "nope"),
    ({"json_schema": "{not json"}, "json_schema is not valid JSON"),
    ({"json_schema": [1]}, "json_schema must be a map"),
    ({"regex": "a("}, "unclosed group"),
    ({"regex": ""}, "non-empty"),
    ({"grammar": "start: missing_rule"}, "missing_rule"),
    ({"choice": []}, "choice must be a list"),
    ({"choice": ["a", 3]}, "non-empty string"),
    ({"regex": "a", "choice": ["a"]}, "at most one of"),
    ({"regex": "a", "stop": ["x"]}, "cannot be combined"),
    ({"regex": "a", "ignore_eos": True}, "cannot be combined"),
    ({"regex": "a" * 70000}, "exceeds"),
])
def test_bad_grammars_are_einval_naming_the_problem(model, wire, words):
    e = engine(model)
    with pytest.raises((ValueError, KernelError)) as ei:
        e.spawn(prompt(1), SamplingParams.from_dict({"max_tokens": 5, **wire}))
    err = ei.value
    assert words in str(err), str(err)
    if isinstance(err, KernelError):
        assert err.errno == errno.EINVAL
    assert len(e.procs) == 0


def test_constraint_is_compact_hashable_and_keeps_the_property_order(model):
    a = Constraint.from_wire("json_schema", {"b": 1, "a": {"type": "string"}})
    b = Constraint.from_wire("json_schema", '{"b": 1,  "a": {"type": "string"}}')
    assert a == b and hash(a) == hash(b) and a.text == '{"b":1,"a":{"type":"string"}}'
    schema = {"type": "object", "required": ["zeta", "alpha"], "additionalProperties": False,
              "properties": {"zeta": {"enum": ["z"]}, "alpha": {"enum": ["a"]}}}
    e = engine(model)
    p = e.spawn(prompt(1), params(json_schema=schema))
    e.run_until_idle()
    assert text(model, p) == '{"zeta":"z","alpha":"a"}'         # the schema's order, not sorted
    with pytest.raises(GrammarError, match="unknown grammar kind"):
        Constraint.from_wire("xml", "<a/>")
