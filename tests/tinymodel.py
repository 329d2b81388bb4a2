"""A tiny, deterministic Llama GGUF for tests: built in about a second, no downloads.

build_tiny_model(path, ...) writes the file exactly as llama.cpp's converter lays one out:
  - metadata: general.*, llama.* hyper-parameters, a ChatML chat template;
  - a sentencepiece ('llama' vocab) tokenizer trained here with SentencePieceTrainer on generated
    deterministic text: <unk> <s> </s> (ids 0, 1, 2), control symbols <|im_start|> <|im_end|>,
    one user-defined symbol <|tool|>, 256 byte-fallback pieces <0x00>..<0xFF>, then learned pieces.
    Training text is ASCII plus a few accented letters, so CJK and emoji reach the model only as
    byte-fallback pieces (which is what the streaming-decoder tests need).
  - tensors in torch layout [out, in], float32, or quantized to `qtype` (2-D matrices only).

Weight scales: matrices N(0, 1/fan_in) (output.weight 3x that, so logits have std ~3 and greedy
picks are not decided by rounding), embeddings N(0, 1), norms 1 + N(0, 0.1). (Not the 0.02 of
real initialisations: with 0.02 every layer is a no-op next to the residual stream, attention is
uniform, and a wrong RoPE or KV gather would go unnoticed. These scales give O(1) contributions
from every layer, peaked attention and greedy outputs that are not one repeated token.)
The weights are random, so the q/k row order used for RoPE (llama.cpp permutes q/k rows on
conversion) is not something this model can check; the real SmolLM2 model does that.

Deterministic: the same arguments give byte-identical files. The trained tokenizer depends only
on (vocab_size, sp_model_type) and is cached per process.
"""
from __future__ import annotations

import functools
import io
import random
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONTROL_SYMBOLS = ("<|im_start|>", "<|im_end|>")
USER_DEFINED_SYMBOLS = ("<|tool|>",)

_ENGLISH = (
    "the a an of to and in is it you that he she was for on are with as I his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use your how "
    "said each which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find hello world user assistant "
    "system model token kernel process memory page block cache queue signal stop start end run ask "
    "answer question helpful tiny llama story once upon there lived little cat dog house tree sun"
).split()
_SYLLABLES = "ka lo mi ne ru sa te vi zo ba de fi gu ha jo ku li mo na pe qu ri so tu ve wa xi yo ze".split()
_ACCENTED = ("café", "naïve", "résumé", "über", "jalapeño", "façade")


def training_text(n_sentences: int = 600) -> list[str]:
    """The deterministic corpus the tiny tokenizer is trained on (a few thousand words)."""
    rng = random.Random(1234)
    coined = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(200)]
    lexicon = _ENGLISH + coined
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]   # Zipf-like frequencies
    lines = []
    for i in range(n_sentences):
        words = rng.choices(lexicon, weights, k=rng.randint(5, 14))
        if i % 7 == 0:
            words.append(rng.choice(_ACCENTED))
        if i % 5 == 0:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2025)))
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ".", "!", "?", ",", ":"]))
    return lines


@functools.lru_cache(maxsize=4)
def sp_model_bytes(vocab_size: int = 512, model_type: str = "unigram") -> bytes:
    """Train (once per process) the tiny sentencepiece model; returns the serialized ModelProto."""
    import sentencepiece as spm

    spm.set_random_generator_seed(1234)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_writer=out, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, control_symbols=list(CONTROL_SYMBOLS),
        user_defined_symbols=list(USER_DEFINED_SYMBOLS), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    return out.getvalue()


def sp_vocab(vocab_size: int = 512, model_type: str = "unigram"):
    """(tokens, scores, token_types) of the tiny model, in GGUF order (types share sentencepiece's
    numbering: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(sp_model_bytes(vocab_size, model_type))
    pieces = list(proto.pieces)
    return ([p.piece for p in pieces], [float(p.score) for p in pieces], [int(p.type) for p in pieces])


def _matrix(rng: np.random.Generator, out_features: int, in_features: int) -> np.ndarray:
    return (rng.standard_normal((out_features, in_features)) / np.sqrt(in_features)).astype(np.float32)


def _norm(rng: np.random.Generator, n: int) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def build_tiny_model(path, *, seed: int = 0, n_layers: int = 2, hidden: int = 64, n_heads: int = 4,
                     n_kv_heads: int = 2, intermediate: int = 128, context_length: int = 1024,
                     vocab_size: int = 512, tied: bool = False, qtype=None,
                     sp_model_type: str = "unigram") -> str:
    """Write a tiny Llama GGUF at `path` (a file path) and return it as a str.

    qtype: None for float32, or a gguf.GGMLQuantizationType (e.g. Q8_0, Q4_0) applied to every
    2-D matrix (embeddings and output included, as llama.cpp's quantizer does); 1-D norms stay F32.
    """
    import gguf

    if hidden % n_heads or n_heads % n_kv_heads:
        raise ValueError("hidden must divide by n_heads and n_heads by n_kv_heads")
    head_dim = hidden // n_heads
    tokens, scores, types = sp_vocab(vocab_size, sp_model_type)
    rng = np.random.default_rng(seed)

    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((vocab_size, hidden)).astype(np.float32)}
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = _norm(rng, hidden)
        tensors[p + "attn_q.weight"] = _matrix(rng, n_heads * head_dim, hidden)
        tensors[p + "attn_k.weight"] = _matrix(rng, n_kv_heads * head_dim, hidden)
        tensors[p + "attn_v.weight"] = _matrix(rng, n_kv_heads * head_dim, hidden)
        tensors[p + "attn_output.weight"] = _matrix(rng, hidden, n_heads * head_dim)
        tensors[p + "ffn_norm.weight"] = _norm(rng, hidden)
        tensors[p + "ffn_gate.weight"] = _matrix(rng, intermediate, hidden)
        tensors[p + "ffn_up.weight"] = _matrix(rng, intermediate, hidden)
        tensors[p + "ffn_down.weight"] = _matrix(rng, hidden, intermediate)
    tensors["output_norm.weight"] = _norm(rng, hidden)
    if not tied:
        tensors["output.weight"] = 3.0 * _matrix(rng, vocab_size, hidden)   # logits std ~3

    file_type = {None: gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
                 gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
                 gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16}.get(qtype)
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"tiny-llama-{n_layers}x{hidden}-seed{seed}")
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_block_count(n_layers)
    w.add_context_length(context_length)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(intermediate)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab_size)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(CHATML_TEMPLATE)
    return write_tensors(w, tensors, qtype, path)


def write_tensors(w, tensors: dict, qtype, path):
    """Add the tensors (matrices quantized to qtype when given), write the file, return path."""
    import gguf
    for name, array in tensors.items():
        if qtype is not None and array.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

