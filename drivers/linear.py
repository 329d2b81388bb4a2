"""Linear: one float weight matrix and the fastest way this device multiplies by it.

Weights are kept in the model dtype (fp32 or bf16). On a CPU in bf16 mode an extra int8 copy
(per-output-channel scales) serves small batches: decoding one or a few tokens is bound by weight
bytes, and int8 halves them, while larger batches use bf16 matmuls (AMX/AVX512-BF16), which are
compute-bound and far faster there. fp32 mode never quantises, so fp32 results do not depend on
batch size. GGUF-quantized weights run in drivers/quant.py's QLinear, which has the same call
signature: y = f(x) @ W.T, f an optional SwiGLU then RMSNorm, optionally added into `out`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INT8_MAX_ROWS = 4   # at or below this many rows the int8 weight-only kernel wins on CPU


def prepare(x: torch.Tensor, norm: torch.Tensor | None, eps: float, swiglu: bool,
            geglu: bool = False) -> torch.Tensor:
    """What a linear does to its input first: SwiGLU or GEGLU (x = [gate | up]), then RMSNorm."""
    if swiglu:
        gate, up = x.chunk(2, dim=-1)
        x = F.silu(gate) * up
    elif geglu:                                          # GELU(tanh) in fp32, back to x's type
        gate, up = x.chunk(2, dim=-1)
        x = (F.gelu(gate.float(), approximate="tanh") * up.float()).to(gate.dtype)
    if norm is not None:
        x = F.rms_norm(x, (x.shape[-1],), norm, eps)
    return x


class Linear:
    """y = f(x) @ W.T. Immutable after construction; safe to share between threads."""

    __slots__ = ("weight", "w8", "scales")

    def __init__(self, weight: torch.Tensor, int8: bool = False):
        self.weight = weight.contiguous()
        self.w8 = self.scales = None
        if int8 and weight.device.type == "cpu" and weight.dtype == torch.bfloat16:
            w = weight.float()
            scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.w8 = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
            self.scales = scales.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor, norm: torch.Tensor | None = None, eps: float = 0.0,
                 swiglu: bool = False, out: torch.Tensor | None = None, geglu: bool = False) -> torch.Tensor:
        """out given: out += result in place (out stays fp32) and out is returned."""
        x = prepare(x, norm, eps, swiglu, geglu)
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        if self.w8 is not None and x.shape[0] <= INT8_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.w8, self.scales)
        else:
            y = F.linear(x, self.weight)
        if out is None:
            return y
        return out.add_(y if y.dtype == torch.float32 else y.float())

    def stream_bytes(self, rows: int) -> int:
        """Weight bytes one product of `rows` input rows reads."""
        if self.w8 is not None and rows <= INT8_MAX_ROWS:
            return self.w8.numel() + self.scales.numel() * self.scales.element_size()
        return self.weight.numel() * self.weight.element_size()

    def nbytes(self) -> int:
        extra = 0 if self.w8 is None else self.w8.numel() + self.scales.numel() * 2
        return self.weight.numel() * self.weight.element_size() + extra
