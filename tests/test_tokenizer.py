"""drivers/tokenizer.py: both vocabulary types, checked against independent references.

- the tiny sentencepiece ('llama') vocab against the SentencePieceProcessor it was trained as
  (unigram and BPE variants), with byte fallback for CJK/emoji;
- a hand-made byte-level BPE ('gpt2') vocab whose tokenization is known exactly;
- the real SmolLM2 ('gpt2', pre 'smollm') vocab against a Hugging Face tokenizer assembled here with
  the library's own Digits + ByteLevel pre-tokenizers and ByteLevel decoder (marked slow).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings, strategies as st

import tinymodel
from llmos.drivers.gguf import GGUFModelFile
from llmos.drivers.tokenizer import Tokenizer

TEXTS = {
    "ascii": "Hello world, the kernel process 2024 is ready!",
    "cjk": "你好，世界。日本語のテキスト",
    "emoji": "🤖👍🏽 family: 👨‍👩‍👧",
    "mixed": "café naïve — 你好 🤖 x=3.14\n\tindented  double  spaces ",
    "whitespace": "  leading and trailing  \n\n",
    "controls": "a\x00b\r\nc\x7f\ufeff",
}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHATML_TWO_TURNS = ("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! 你好<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
TWO_TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! 你好"},
             {"role": "user", "content": "What is 2+2?"}]


def stream_all(tok, ids, **kw):
    """(list of push() results, finish())."""
    s = tok.stream(**kw)
    return [s.push(i) for i in ids], s.finish()


def sp_reference(model_type="unigram"):
    ref = spm.SentencePieceProcessor()
    ref.LoadFromSerializedProto(tinymodel.sp_model_bytes(512, model_type))
    return ref


@pytest.fixture(scope="module")
def tiny_bpe_tokenizer(tmp_path_factory):
    path = tinymodel.build_tiny_model(tmp_path_factory.mktemp("tinybpe") / "bpe.gguf", sp_model_type="bpe")
    return Tokenizer.from_metadata(GGUFModelFile(path).metadata, path)


# -- tiny sentencepiece vocab --------------------------------------------------------------------

@pytest.mark.parametrize("name", TEXTS)
def test_tiny_round_trip(tiny_tokenizer, name):
    text = TEXTS[name]
    ids = tiny_tokenizer.encode(text)
    assert ids[0] == tiny_tokenizer.bos_id == 1
    assert tiny_tokenizer.decode(ids, skip_special=True) == text
    assert tiny_tokenizer.decode(ids[1:]) == text
    assert tiny_tokenizer.decode(ids) == "<s>" + text


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
@pytest.mark.parametrize("name", TEXTS)
def test_tiny_matches_sentencepiece(tiny_tokenizer, tiny_bpe_tokenizer, model_type, name):
    tok = tiny_tokenizer if model_type == "unigram" else tiny_bpe_tokenizer
    ref = sp_reference(model_type)
    ids = tok.encode(TEXTS[name], add_bos=False)
    assert ids == ref.encode(TEXTS[name])
    assert tok.decode(ids) == ref.decode(ids)


@SETTINGS
@given(st.lists(st.integers(6, 511), max_size=12))
def test_tiny_decode_matches_sentencepiece_on_valid_utf8(tiny_tokenizer, ids):
    ref = sp_reference()
    data = b"".join(bytes([int(ref.id_to_piece(i)[3:5], 16)]) if ref.is_byte(i) else
                    ref.id_to_piece(i).replace("\u2581", " ").encode() for i in ids)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:       # sentencepiece replaces per byte, we per maximal subpart
        return
    assert tiny_tokenizer.decode(ids) == ref.decode(ids)


_pieces = st.one_of(st.text(st.characters(blacklist_characters="\u2581", blacklist_categories=("Cs",)), max_size=8),
                    st.sampled_from(["<|im_start|>", "<|im_end|>", "<|tool|>", "<s>", "</s>", "<unk>", " ", "\n"]))


@SETTINGS
@given(st.lists(_pieces, max_size=6).map("".join), st.booleans())
def test_tiny_round_trip_any_text(tiny_tokenizer, text, special):
    ids = tiny_tokenizer.encode(text, add_bos=False, special=special)
    assert tiny_tokenizer.decode(ids) == text
    pushes, tail = stream_all(tiny_tokenizer, ids)
    assert "".join(pushes) + tail == text
    assert "\ufffd" not in "".join(pushes)


def test_tiny_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.encode("<|im_start|>", add_bos=False) == [3]
    assert tok.encode("<|im_end|>", add_bos=False) == [4]
    assert tok.encode("<|tool|>", add_bos=False) == [5]
    ids = tok.encode("a<|im_end|>b<|im_start|>", add_bos=False)
    assert ids.count(4) == 1 and ids[-1] == 3 and tok.decode(ids) == "a<|im_end|>b<|im_start|>"
    assert tok.decode(ids, skip_special=True) == "ab"
    assert [tok.is_special(i) for i in (0, 1, 2, 3, 4, 5, 6)] == [False, True, True, True, True, True, False]
    for text in ("<|im_start|>", "<|im_end|>", "<|tool|>", "</s>"):
        plain = tok.encode(text, add_bos=False, special=False)
        assert len(plain) > 1 and not any(tok.is_special(i) for i in plain)
        assert tok.decode(plain) == text


def test_tiny_bos_eos_stops(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (512, 1, 2)
    assert tok.stop_ids == {2, 4}                     # </s> and <|im_end|>
    assert tok.encode("hi", add_bos=False)[0] != 1
    assert tok.encode("<s>hi")[:2] != [1, 1]          # bos already there: not doubled
    assert tok.encode("") == [1] and tok.encode("", add_bos=False) == []


def test_tiny_chat_template(tiny_tokenizer):
    assert tiny_tokenizer.render_chat(TWO_TURNS) == CHATML_TWO_TURNS
    assert tiny_tokenizer.render_chat(TWO_TURNS[:2], add_generation_prompt=False) == \
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! 你好<|im_end|>\n"
    ids = tiny_tokenizer.encode(CHATML_TWO_TURNS)
    assert ids.count(3) == 4 and ids.count(4) == 3
    assert tiny_tokenizer.decode(ids, skip_special=True) == CHATML_TWO_TURNS.replace(
        "<|im_start|>", "").replace("<|im_end|>", "")


# -- streaming -----------------------------------------------------------------------------------

def test_stream_holds_back_split_characters(tiny_tokenizer):
    ids = tiny_tokenizer.encode("你🤖", add_bos=False)
    assert [tiny_tokenizer.token_text(i) for i in ids] == ["▁", "<0xE4>", "<0xBD>", "<0xA0>",
                                                         "<0xF0>", "<0x9F>", "<0xA4>", "<0x96>"]
    pushes, tail = stream_all(tiny_tokenizer, ids)
    assert pushes == ["", "", "", "你", "", "", "", "🤖"] and tail == ""


@pytest.mark.parametrize("pieces, pushes, tail", [
    (["<0xE4>", "<0xBD>", "▁the"], ["", "", "\ufffd the"], ""),     # truncated, then text
    (["<0xFF>", "▁a"], ["\ufffd", " a"], ""),                       # never valid
    (["<0x80>"], ["\ufffd"], ""),                                   # lone continuation byte
    (["▁the", "<0xF0>", "<0x9F>"], ["the", "", ""], "\ufffd"),      # truncated at the end
    (["<0xE4>", "<|im_end|>", "<0xA0>"], ["", "\ufffd<|im_end|>", "\ufffd"], ""),
    (["<0xED>", "<0xA0>", "<0x80>"], ["", "", "\ufffd" * 3], ""),     # an encoded surrogate
])
def test_stream_invalid_utf8(tiny_tokenizer, pieces, pushes, tail):
    ids = [tiny_tokenizer.encode(p, add_bos=False)[0] if p.startswith("<|") else
           next(i for i in range(512) if tiny_tokenizer.token_text(i) == p) for p in pieces]
    got, got_tail = stream_all(tiny_tokenizer, ids)
    assert (got, got_tail) == (pushes, tail)
    assert tiny_tokenizer.decode(ids) == "".join(pushes) + tail


@SETTINGS
@given(st.lists(st.integers(0, 511), max_size=30), st.booleans())
def test_stream_equals_decode_for_any_ids(tiny_tokenizer, ids, skip):
    pushes, tail = stream_all(tiny_tokenizer, ids, skip_special=skip)
    assert "".join(pushes) + tail == tiny_tokenizer.decode(ids, skip_special=skip)
    raw = [tiny_tokenizer.token_text(i) for i in ids]
    if all(t.startswith("<0x") for t in raw):           # pure byte pieces: an exact oracle
        assert tiny_tokenizer.decode(ids) == bytes(int(t[3:5], 16) for t in raw).decode("utf-8", "replace")


def test_stream_is_constant_time_per_token(tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXTS["mixed"] * 400, add_bos=False)
    assert len(ids) > 10_000
    start = time.perf_counter()
    pushes, tail = stream_all(tiny_tokenizer, ids)
    assert time.perf_counter() - start < 2.0          # re-decoding the history would take minutes
    assert "".join(pushes) + tail == TEXTS["mixed"] * 400


# -- a hand-made byte-level BPE vocab ------------------------------------------------------------

def mini_gpt2_metadata(**overrides):
    from llmos.drivers.tokenizer import _byte_decoder
    chars = sorted(_byte_decoder(), key=_byte_decoder().get)        # 256 byte symbols, byte order
    tokens = chars + ["he", "ll", "hell", "Ġw", "Ġwo", "12", "'T", "<|eot|>", "<tool call>"]
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": [1] * 263 + [3, 4],
          "tokenizer.ggml.merges": ["h e", "l l", "he ll", "Ġ w", "Ġw o", "1 2", "' T"],
          "tokenizer.ggml.eos_token_id": 263, "tokenizer.ggml.bos_token_id": 263}
    md.update(overrides)
    return md


def test_mini_gpt2_exact():
    tok = Tokenizer.from_metadata(mini_gpt2_metadata())
    assert tok.encode("hello world") == [258, ord("o"), 260, ord("r"), ord("l"), ord("d")]
    assert [tok.token_text(i) for i in tok.encode("hello world")] == ["hell", "o", "Ġwo", "r", "l", "d"]
    assert tok.encode("<|eot|>x<tool call>") == [263, ord("x"), 264]
    assert len(tok.encode("<|eot|>", special=False)) == 7
    assert tok.decode(tok.encode("a<|eot|> <tool call>é")) == "a<|eot|> <tool call>é"
    assert tok.decode(tok.encode("a<|eot|> <tool call>"), skip_special=True) == "a <tool call>"
    assert tok.stop_ids == {263} and tok.add_bos is False
    pushes, _ = stream_all(tok, tok.encode("é"))
    assert pushes == ["", "é"]


@pytest.mark.parametrize("pre, ids", [
    ("gpt2", [261, ord("'"), ord("T")]),            # "'T" is not a GPT-2 contraction
    ("default", [261, ord("'"), ord("T")]),
    ("smollm", [ord("1"), ord("2"), ord("'"), ord("T")]),   # digits split one by one
    ("llama-bpe", [261, 262]),                      # case-insensitive contractions
    ("qwen2", [ord("1"), ord("2"), 262]),
])
def test_pre_tokenizer_regexes(pre, ids):
    tok = Tokenizer.from_metadata(mini_gpt2_metadata(**{"tokenizer.ggml.pre": pre}))
    assert tok.encode("12'T") == ids
    assert tok.decode(ids) == "12'T"


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"tokenizer.ggml.model": "bert"}, "'bert'"),
    ({"tokenizer.ggml.model": None}, "None"),
    ({"tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.merges": None}, "merges"),
    ({"tokenizer.ggml.eos_token_id": 9999}, "eos_token_id=9999"),
    ({"tokenizer.ggml.eos_token_id": None}, "eos_token_id"),
    ({"tokenizer.chat_template": 7}, "chat_template"),
])
def test_metadata_errors(change, message):
    with pytest.raises(ValueError, match="model.gguf: .*" + message.replace("(", r"\(")):
        Tokenizer.from_metadata(mini_gpt2_metadata(**change), "model.gguf")


def test_llama_vocab_errors(tiny_metadata):
    md = dict(tiny_metadata, **{"tokenizer.ggml.scores": [0.0] * 3})
    with pytest.raises(ValueError, match="3 scores for 512 tokens"):
        Tokenizer.from_metadata(md)
    md = {k: v for k, v in tiny_metadata.items() if k != "tokenizer.ggml.unknown_token_id"}
    md["tokenizer.ggml.token_type"] = [1 if t == 2 else t for t in tiny_metadata["tokenizer.ggml.token_type"]]
    with pytest.raises(ValueError, match="without an unknown token"):
        Tokenizer.from_metadata(md)


@pytest.mark.parametrize("template, message", [
    ("{% for m in messages %}{{ m.content }", "syntax error at line 1"),
    ("{{ raise_exception('only user turns, please') }}", "only user turns, please"),
    ("{{ messages.__class__.__mro__ }}", "chat template failed"),
    ("{{ messages[0]['content'] + 1 }}", "chat template failed: TypeError"),
])
def test_broken_templates(tiny_metadata, template, message):
    tok = Tokenizer.from_metadata(dict(tiny_metadata, **{"tokenizer.chat_template": template}))
    with pytest.raises(ValueError, match=message):
        tok.render_chat([{"role": "user", "content": "hi"}])


def test_template_fallback_and_variables(tiny_metadata):
    md = {k: v for k, v in tiny_metadata.items() if k != "tokenizer.chat_template"}
    assert Tokenizer.from_metadata(md).render_chat(TWO_TURNS) == CHATML_TWO_TURNS
    md["tokenizer.chat_template"] = "{{ bos_token }}{{ messages | tojson }}{{ eos_token }}"
    assert Tokenizer.from_metadata(md).render_chat([{"role": "u", "content": "é"}]) == \
        '<s>[{"role": "u", "content": "é"}]</s>'


@pytest.mark.parametrize("messages", [None, [{"role": "user"}], [{"role": 1, "content": "x"}], ["hi"]])
def test_bad_messages(tiny_tokenizer, messages):
    with pytest.raises(ValueError, match="messages must be"):
        tiny_tokenizer.render_chat(messages)


@pytest.mark.parametrize("bad", [-1, 512, 1.0, True, "3"])
def test_bad_ids_and_text(tiny_tokenizer, bad):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_tokenizer.decode([5, bad])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_tokenizer.stream().push(bad)
    with pytest.raises(ValueError, match="needs a str"):
        tiny_tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match="not valid Unicode: surrogates not allowed at index 1"):
        tiny_tokenizer.encode("a\ud800")
    assert tiny_tokenizer.decode([np.int64(5)]) == "<|tool|>"    # numpy ids from a sampler are fine


# -- the real SmolLM2 vocabulary (gpt2, pre 'smollm') --------------------------------------------

@pytest.fixture(scope="module")
def smol(smollm2_metadata, smollm2_path):
    return Tokenizer.from_metadata(smollm2_metadata, smollm2_path)


@pytest.fixture(scope="module")
def smol_reference(smollm2_metadata):
    """SmolLM2's tokenizer.json pipeline rebuilt with the library's own components."""
    from tokenizers import AddedToken, Tokenizer as HF, decoders, models, pre_tokenizers
    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in smollm2_metadata["tokenizer.ggml.merges"]]
    hf = HF(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True) for t in tokens[:17]])
    return hf


@pytest.mark.slow
def test_smollm2_known_ids(smol):
    assert smol.encode("Hello world") == [19556, 905]
    assert [smol.token_text(i) for i in (19556, 905)] == ["Hello", "Ġworld"]
    assert smol.encode("<|im_start|>") == [1] and smol.encode("<|im_end|>") == [2]
    plain = smol.encode("<|im_start|>", special=False)
    assert len(plain) > 1 and not any(smol.is_special(i) for i in plain)
    assert (smol.vocab_size, smol.bos_id, smol.eos_id, smol.add_bos) == (49152, 1, 2, False)
    assert smol.stop_ids == {0, 2}                      # <|endoftext|>, <|im_end|>


@pytest.mark.slow
@pytest.mark.parametrize("name", TEXTS)
def test_smollm2_matches_reference(smol, smol_reference, name):
    text = TEXTS[name] + " <|im_start|>user\nI'll say 12345 don't<|im_end|>"
    ids = smol.encode(text)
    assert ids == smol_reference.encode(text).ids
    assert smol.decode(ids) == text == smol_reference.decode(ids, skip_special_tokens=False)
    pushes, tail = stream_all(smol, ids)
    assert "".join(pushes) + tail == text and "\ufffd" not in "".join(pushes)


@pytest.mark.slow
def test_smollm2_stream_splits_characters(smol):
    ids = smol.encode("你好")
    assert len(ids) > 2                                  # the characters' bytes straddle tokens
    pushes, tail = stream_all(smol, ids)
    assert "".join(pushes) == "你好" and tail == "" and "" in pushes
    assert smol.decode([ids[0]]) == "\ufffd"              # a partial character alone is invalid


@pytest.mark.slow
def test_smollm2_chat_template(smol):
    expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                "<|im_end|>\n" + CHATML_TWO_TURNS)
    assert smol.render_chat(TWO_TURNS) == expected
    system = [{"role": "system", "content": "Be brief."}] + TWO_TURNS[:1]
    assert smol.render_chat(system, add_generation_prompt=False) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"


@pytest.mark.slow
def test_smollm2_unknown_pre_falls_back(smollm2_metadata):
    tok = Tokenizer.from_metadata(dict(smollm2_metadata, **{"tokenizer.ggml.pre": "no-such-pre"}))
    assert tok.encode("Hello world") == [19556, 905]
