"""Tokenizer built from GGUF metadata: text <-> token ids, chat templates, streaming detokenization.

Vocabulary types (tokenizer.ggml.model):
  'gpt2'  byte-level BPE (tokens + merges) run by the `tokenizers` library; the pre-tokenizer
          regexes follow llama.cpp's table for tokenizer.ggml.pre (unknown values: GPT-2's regex).
  'llama' sentencepiece: a ModelProto is rebuilt from tokens/scores/token_type and loaded into
          SentencePieceProcessor. Model type: UNIGRAM when the normal pieces' scores are real
          log-probabilities, BPE when they are integral merge ranks (Llama-2 style); byte-fallback
          pieces <0xNN> are honoured.
  anything else -> ValueError naming it.

Token types (GGUF and sentencepiece share them): 1 normal, 2 unknown, 3 control, 4 user-defined,
5 unused, 6 byte. "Special" tokens are control and user-defined ones: encode(special=True) matches
their text as one id each; special=False treats that text as plain text (safe for untrusted input).

Decoding maps every id to bytes (byte-level BPE bytes, <0xNN> bytes, sentencepiece '▁' -> ' ',
raw text for special tokens) and decodes UTF-8 with replacement, so decode(), stream() and any
split of the ids agree. With a sentencepiece dummy prefix (tokenizer.ggml.add_space_prefix) one
space is added at the start and after each special token on encode and removed at the same places
on decode, so decode(encode(s)) == s. skip_special drops control tokens only.

Chat: render_chat renders messages with the file's template; render_open and render_turn cut a
rendering where a prompt stays open or where a new turn follows an earlier one (template surgery
with sentinel characters, so that it works for any template). Over 300 lines: two vocabulary
backends, the streaming decoder and the chat template are one noun, the model's tokenizer.
"""
from __future__ import annotations

import codecs
import datetime
import json
import operator
import re
from typing import Iterable

from .arch import default_chat_template

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_TYPES = (CONTROL, USER_DEFINED)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>",
               "<|endoftext|>", "<|end_of_text|>", "<|return|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
           r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_REGEXES = {  # tokenizer.ggml.pre -> regexes applied in turn (as llama.cpp's llm_tokenizer_bpe)
    **dict.fromkeys(("gpt2", "mpt", "olmo", "jais", "default"), (_GPT2,)),
    **dict.fromkeys(("llama-bpe", "llama3", "dbrx", "smaug-bpe", "chatglm-bpe"), (_LLAMA3,)),
    **dict.fromkeys(("qwen2", "stablelm2", "deepseek-r1-qwen"), (_QWEN2,)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
                    (r"\p{N}", _GPT2)),
}
_IGNORE_MERGES = {"llama-bpe", "llama3"}   # llama.cpp: whole-word vocab hit skips the merges


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte -> printable-char table, inverted: printable bytes stand for themselves, the
    other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) map in order to U+0100, U+0101, ..."""
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(moved)}}


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class _BPEBackend:
    """Byte-level BPE ('gpt2') through tokenizers; special tokens registered as added tokens."""
    strip_space = False

    def __init__(self, md, tokens, types, what):
        from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, models, pre_tokenizers

        merges, pre = md.get("tokenizer.ggml.merges"), str(md.get("tokenizer.ggml.pre", "default"))
        if not merges:
            raise ValueError(f"{what}'gpt2' vocabulary without tokenizer.ggml.merges")
        vocab = {}
        for i, tok in enumerate(tokens):
            vocab.setdefault(tok, i)
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                                    ignore_merges=pre in _IGNORE_MERGES))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(rx), "isolated") for rx in _PRE_REGEXES.get(pre, (_GPT2,))]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, ty in zip(tokens, types) if ty in SPECIAL_TYPES and t])
        self._special, self._plain, self._byte_of = hf, None, _byte_decoder()

    def piece(self, token: str, token_type: int) -> bytes:
        if token_type == USER_DEFINED or any(c not in self._byte_of for c in token):
            return token.encode()                   # stored as raw text by llama.cpp's converter
        return bytes(self._byte_of[c] for c in token)

    def encode(self, text: str, special: bool) -> list[int]:
        if not special and self._plain is None:     # built on first use: specials split as text
            self._plain = type(self._special).from_str(self._special.to_str())
            self._plain.encode_special_tokens = True
        return (self._special if special else self._plain).encode(text, add_special_tokens=False).ids


class _SPBackend:
    """Sentencepiece ('llama') rebuilt from GGUF; special-token text is split out first."""

    def __init__(self, md, tokens, types, what):
        scores = [float(s) for s in md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
        if len(scores) != len(tokens):
            raise ValueError(f"{what}{len(scores)} scores for {len(tokens)} tokens")
        unk = md.get("tokenizer.ggml.unknown_token_id", types.index(UNKNOWN) if UNKNOWN in types else None)
        if unk is None:
            raise ValueError(f"{what}'llama' vocabulary without an unknown token")
        self.strip_space = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        self._args = (tokens, types, scores, int(unk), what)
        self._sp, self._plain = self._load(disable_user_defined=False), None
        specials = {t for t, ty in zip(tokens, types) if ty in SPECIAL_TYPES and t}
        self._ids = {t: i for i, t in reversed(list(enumerate(tokens))) if t in specials}  # first wins
        longest_first = "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
        self._split = re.compile(f"({longest_first})") if specials else None

    def _load(self, disable_user_defined: bool):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        tokens, types, scores, unk, what = self._args
        proto, seen = pb.ModelProto(), set()
        unigram = any(s % 1 for s, t in zip(scores, types) if t == NORMAL)  # log-probs, not ranks
        proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM if unigram else pb.TrainerSpec.BPE
        proto.trainer_spec.vocab_size, proto.trainer_spec.byte_fallback = len(tokens), BYTE in types
        norm = proto.normalizer_spec
        norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces = "identity", self.strip_space, False
        for i, (tok, ty, score) in enumerate(zip(tokens, types, scores)):
            if i == unk:
                ty = UNKNOWN
            elif ty not in (NORMAL, CONTROL, USER_DEFINED, BYTE) or (disable_user_defined and ty == USER_DEFINED):
                ty = UNUSED                         # sentencepiece never emits unused pieces
            if not tok or tok in seen:              # it rejects empty and duplicate pieces
                tok, ty = f"<llmos-unused-{i}>", UNUSED
            seen.add(tok)
            proto.pieces.add(piece=tok, score=score, type=ty)
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto.SerializeToString())
        except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError variants
            raise ValueError(f"{what}sentencepiece rejected the vocabulary: {e}") from None
        return sp

    @staticmethod
    def piece(token: str, token_type: int) -> bytes:
        return token.replace("\u2581", " ").encode()

    def encode(self, text: str, special: bool) -> list[int]:
        if not special:
            if self._plain is None:
                self._plain = self._load(disable_user_defined=True)
            return self._plain.encode(text, out_type=int)
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text) if self._split else [text]):
            if i % 2:
                ids.append(self._ids[part])
            elif part:
                ids.extend(self._sp.encode(part, out_type=int))
        return ids


class Tokenizer:
    """Text <-> ids for one model file. Build with Tokenizer.from_metadata(gguf_metadata)."""

    def __init__(self, backend, tokens, types, *, bos_id, eos_id, add_bos, chat_template, stop_ids):
        self._backend, self._tokens, self._types = backend, tokens, types
        self._pieces = [bytes([int(tok[3:5], 16)]) if ty == BYTE and _BYTE_PIECE.fullmatch(tok) else
                        tok.encode() if ty in (CONTROL, UNKNOWN) else backend.piece(tok, ty)
                        for tok, ty in zip(tokens, types)]
        self.vocab_size = len(tokens)
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.stop_ids = frozenset(stop_ids)
        self._strip_space = backend.strip_space
        self._template_src, self._template = chat_template, None

    @classmethod
    def from_metadata(cls, metadata: dict, path: str = "") -> "Tokenizer":
        """Build from GGUF metadata (key -> python value). ValueError("<path>: ...") when unusable."""
        what, md = (f"{path}: " if path else ""), metadata
        kind = md.get("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise ValueError(f"{what}unsupported vocabulary type {kind!r} (tokenizer.ggml.model); "
                             "supported: 'gpt2', 'llama'")
        tokens = [str(t) for t in md.get("tokenizer.ggml.tokens") or []]
        if not tokens:
            raise ValueError(f"{what}no tokenizer.ggml.tokens in the metadata")
        types = [int(t) for t in md.get("tokenizer.ggml.token_type") or []]
        if len(types) != len(tokens):
            types = [BYTE if _BYTE_PIECE.fullmatch(t) else NORMAL for t in tokens]
        backend = (_BPEBackend if kind == "gpt2" else _SPBackend)(md, tokens, types, what)

        def token_id(key):
            value = md.get(key)
            if value is not None and not 0 <= int(value) < len(tokens):
                raise ValueError(f"{what}{key}={value} is outside the vocabulary of {len(tokens)}")
            return None if value is None else int(value)

        bos, eos = token_id("tokenizer.ggml.bos_token_id"), token_id("tokenizer.ggml.eos_token_id")
        if eos is None:
            eos = next((tokens.index(t) for t in END_OF_TURN if t in tokens), None)
            if eos is None:
                raise ValueError(f"{what}no tokenizer.ggml.eos_token_id and no known end token")
        stops = {eos, token_id("tokenizer.ggml.eot_token_id"), token_id("tokenizer.ggml.eom_token_id")} - {None}
        stops |= {i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in SPECIAL_TYPES and t in END_OF_TURN}
        add_bos = bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama")) and bos is not None
        template = (md.get("tokenizer.chat_template") or default_chat_template(md.get("general.architecture"))
                    or CHATML_TEMPLATE)              # drivers/arch.py: e.g. Gemma's, absent from its GGUF
        if not isinstance(template, str):
            raise ValueError(f"{what}tokenizer.chat_template is not a string")
        return cls(backend, tokens, types, bos_id=bos, eos_id=eos, add_bos=add_bos,
                   chat_template=template, stop_ids=stops)

    # -- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Ids for `text`. add_bos None -> the model's default (never doubled if the text already
        starts with the bos token). special=False: special-token text is encoded as plain text."""
        if not isinstance(text, str):
            raise ValueError(f"encode() needs a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode: {e.reason} at index {e.start}") from None
        ids = self._backend.encode(text, special) if text else []
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None \
                and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids` (invalid UTF-8 becomes U+FFFD). ValueError for an id outside the vocab."""
        stream = self.stream(skip_special=skip_special)
        return "".join([stream.push(i) for i in ids]) + stream.finish()

    def stream(self, *, skip_special: bool = False) -> "StreamDecoder":
        """An incremental decoder for generated ids (see StreamDecoder)."""
        return StreamDecoder(self, skip_special)

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of one id as stored in the file (e.g. 'Ġworld', '▁the', '<0x0A>')."""
        return self._tokens[self._check(token_id)]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id decodes to in mid-text (grammar engines match these)."""
        return self._pieces[self._check(token_id)]

    def is_special(self, token_id: int) -> bool:
        """True for control and user-defined tokens (the ones special=True matches as one id)."""
        return self._types[self._check(token_id)] in SPECIAL_TYPES

    def _check(self, token_id) -> int:
        """The id as an int (numpy/torch integers accepted); ValueError unless 0 <= id < vocab_size."""
        try:
            index = None if isinstance(token_id, bool) else operator.index(token_id)
        except TypeError:
            index = None
        if index is None or not 0 <= index < self.vocab_size:
            raise ValueError(f"token id {token_id!r} is outside the vocabulary [0, {self.vocab_size})")
        return index

    # -- chat --------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` ([{"role": str, "content": str}, ...]) via the file's
        chat template (ChatML when it has none). ValueError for bad messages or template errors."""
        import jinja2

        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ValueError("messages must be a list of {'role': str, 'content': str} dicts")
        try:
            if self._template is None:
                self._template = _chat_environment().from_string(self._template_src)
            bos = self._tokens[self.bos_id] if self.bos_id is not None else ""
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         bos_token=bos, eos_token=self._tokens[self.eos_id])
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"chat template syntax error at line {e.lineno}: {e.message}") from None
        except jinja2.TemplateError as e:  # raise_exception(), sandbox violations, undefined calls
            raise ValueError(f"chat template failed: {e}") from None
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
            raise ValueError(f"chat template failed: {type(e).__name__}: {e}") from None

    def render_open(self, messages: list[dict]) -> tuple[str, str]:
        """The prompt for messages split where the last message's content ends, as (head, tail):
        text written later continues that content, and tail closes it. ValueError if the
        template cannot keep a prompt open."""
        marked = list(messages[:-1]) + [dict(messages[-1], content=messages[-1]["content"] + "\x00")]
        head, sep, tail = self.render_chat(marked, add_generation_prompt=True).partition("\x00")
        if not sep:
            raise ValueError("this model's chat template cannot keep a prompt open")
        return head, tail

    def render_turn(self, messages: list[dict], after_stop: bool) -> str:
        """The text of a new turn (messages, then the generation prompt) that follows a context
        ending with an assistant turn; after_stop: that turn ended on an end-of-turn token, which
        is then already in the context. ValueError if the template cannot append a turn."""
        base = [{"role": "user", "content": "\x00"}, {"role": "assistant", "content": "\x01"}]
        head = self.render_chat(base, add_generation_prompt=False)
        full = self.render_chat(base + list(messages), add_generation_prompt=True)
        if not full.startswith(head) or "\x01" not in head:
            raise ValueError("this model's chat template cannot append a turn to a session")
        # What the template puts after an assistant message (ChatML: "<|im_end|>\n"). When the turn
        # ended on an end-of-turn token, only what follows that token is missing; a turn cut short
        # (max_tokens, SIGINT) needs the whole closing text.
        tail = head[head.index("\x01") + 1:]
        if after_stop:
            ends = [(i, len(s)) for s in {self.token_text(s) for s in self.stop_ids} if (i := tail.find(s)) >= 0]
            if ends:
                i, n = min(ends)
                tail = tail[i + n:]
        return tail + full[len(head):]


def _chat_environment():
    """A sandboxed jinja2 environment configured like Hugging Face's apply_chat_template."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


class StreamDecoder:
    """Incremental detokenizer. push(id) returns only complete UTF-8 text (a character split over
    several tokens is held back until its last byte arrives); finish() flushes what is left (U+FFFD
    for a truly invalid tail). O(1) per token; "".join(pushes) + finish() == decode(ids)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tok, self._skip = tokenizer, skip_special
        self._held = b""                            # the start of a UTF-8 character split over tokens
        self._strip_next = tokenizer._strip_space   # sentencepiece dummy prefix: at start/after specials

    def push(self, token_id: int) -> str:
        tok = self._tok
        if type(token_id) is not int or not 0 <= token_id < len(tok._types):   # the sampler's ints skip _check
            token_id = tok._check(token_id)
        ty, data = tok._types[token_id], tok._pieces[token_id]
        if ty in SPECIAL_TYPES:
            self._strip_next = tok._strip_space
            if ty == CONTROL and self._skip:
                return ""
        else:
            if self._strip_next and ty == NORMAL and data[:1] == b" ":
                data = data[1:]
            self._strip_next = False
        if self._held:
            data = self._held + data
        text, used = codecs.utf_8_decode(data, "replace", False)   # what an incremental decoder does
        self._held = data[used:]
        return text

    def finish(self) -> str:
        """Flush held-back bytes; the decoder is reset and can be reused."""
        text = codecs.utf_8_decode(self._held, "replace", True)[0]
        self._held = b""
        self._strip_next = self._tok._strip_space
        return text
