"""What differs between the transformer architectures the driver runs: llama, qwen2, gemma3.

One ``Arch`` record per GGUF ``general.architecture``. drivers/gguf.py asks it for the extra
tensors a layer must have and for the architecture's own hyper-parameters (``arch_params``, in
``ModelConfig.arch_params``); drivers/llama.py asks it whether q/k rows are stored permuted for
interleaved RoPE (llama only: llama.cpp's converter permutes them; qwen2 and gemma3 are stored
as trained, rotate-half) and whether q/k/v carry biases (qwen2), and which model class runs it
(gemma3's forward differs enough to be its own: drivers/gemma3.py). The tokenizer takes the
default chat template from here when a file has none (the Gemma 3 GGUF ships without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# Gemma's turn format (Hugging Face's template for google/gemma-3-*-it, text-only): a system
# message is folded into the first user turn; the assistant's role is called 'model'.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


@dataclass(frozen=True)
class Gemma3Params:
    """Gemma 3's hyper-parameters beyond Llama's. global_layers: indices of full-attention layers
    (the others attend to the last `sliding_window` positions, RoPE base `rope_local_base`)."""
    sliding_window: int
    global_layers: tuple[int, ...]
    rope_local_base: float       # rope.freq_base_swa, 10000 when absent (Gemma 3's value)
    rope_global_scale: float     # linear RoPE scaling of the global layers (1.0: none)
    attn_scale: float            # softmax scale (1/sqrt(query_pre_attn_scalar))
    embed_scale: float           # the embeddings are multiplied by sqrt(hidden)


class ArchError(ValueError):
    """An architecture feature the driver does not implement (the message names it)."""


Meta = Callable[[str, object], object]     # meta(key, default) -> value (None when absent)


def _rope_scale(meta: Meta, a: str) -> float:
    kind = str(meta(f"{a}.rope.scaling.type", "none") or "none")
    if kind not in ("none", "linear"):
        raise ArchError(f"RoPE scaling '{kind}' ({a}.rope.scaling.type) is not supported "
                        f"(supported: none, linear)")
    return 1.0 if kind == "none" else 1.0 / float(meta(f"{a}.rope.scaling.factor", 1.0))


def _gemma3_params(meta: Meta, a: str, n_layers: int, hidden: int, head_dim: int) -> Gemma3Params:
    if meta(f"{a}.attn_logit_softcapping", None) or meta(f"{a}.final_logit_softcapping", None):
        raise ArchError("logit soft-capping (Gemma 2 style) is not supported")
    window = int(meta(f"{a}.attention.sliding_window", 0) or 0)
    if window < 1:
        raise ArchError(f"missing metadata key '{a}.attention.sliding_window'")
    pattern = meta(f"{a}.attention.sliding_window_pattern", None)
    if isinstance(pattern, list):                 # newer converters: one bool per layer (True: local)
        global_layers = tuple(i for i, local in enumerate(pattern) if not local)
    else:                                         # every n-th layer is global (6 for Gemma 3)
        every = int(pattern or 6)
        global_layers = tuple(i for i in range(n_layers) if (i + 1) % every == 0)
    # llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B whose query_pre_attn_scalar is hidden/heads;
    # a converter that knows it writes attention.scale.
    scale = float(meta(f"{a}.attention.scale", 0.0) or head_dim ** -0.5)
    local_base = float(meta(f"{a}.rope.freq_base_swa", 10000.0))
    return Gemma3Params(window, global_layers, local_base, _rope_scale(meta, a), scale, hidden ** 0.5)


@dataclass(frozen=True)
class Arch:
    name: str
    rope_interleaved: bool = False        # GGUF stores q/k rows permuted (llama.cpp converter)
    qkv_bias: bool = False
    # extra per-layer tensors: name suffix after 'blk.N.' -> shape, from (hidden, q_dim, kv_dim, head_dim)
    layer_tensors: Callable[[int, int, int, int], dict] = lambda h, q, kv, d: {}
    extra_norms: tuple[str, ...] = ()     # per-layer 1-D weights loaded into Layer.extra
    params: Callable | None = None        # (meta, arch, n_layers, hidden, head_dim) -> params
    model: str = "llama:LlamaModel"       # drivers.<module>:<class> that runs it
    chat_template: str | None = None      # when the file has none


ARCHS = {
    "llama": Arch("llama", rope_interleaved=True),
    "qwen2": Arch("qwen2", qkv_bias=True, layer_tensors=lambda h, q, kv, d: {
        "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}),
    "gemma3": Arch("gemma3", layer_tensors=lambda h, q, kv, d: {
        "attn_q_norm.weight": (d,), "attn_k_norm.weight": (d,),
        "post_attention_norm.weight": (h,), "post_ffw_norm.weight": (h,)},
        extra_norms=("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"),
        params=_gemma3_params, model="gemma3:Gemma3Model", chat_template=GEMMA_TEMPLATE),
}


def model_class(arch: str):
    """The model class that runs `arch` (a LlamaModel or subclass)."""
    import importlib
    module, name = ARCHS[arch].model.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def default_chat_template(arch) -> str | None:
    spec = ARCHS.get(arch)
    return spec.chat_template if spec else None
