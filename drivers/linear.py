"""Linear: one weight matrix and the fastest way this device multiplies by it.

Weights are kept in the model dtype (fp32 or bf16). On a CPU in bf16 mode an extra int8 copy
(per-output-channel scales) serves small batches: decoding one or a few tokens is bound by weight
bytes, and int8 halves them, while larger batches use bf16 matmuls (AMX/AVX512-BF16), which are
compute-bound and far faster there. fp32 mode never quantises, so fp32 results do not depend on
batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INT8_MAX_ROWS = 4   # at or below this many rows the int8 weight-only kernel wins on CPU


class Linear:
    """y = x @ W.T. Immutable after construction; safe to share between threads."""

    __slots__ = ("weight", "w8", "scales")

    def __init__(self, weight: torch.Tensor, int8: bool = False):
        self.weight = weight.contiguous()
        self.w8 = self.scales = None
        if int8 and weight.device.type == "cpu" and weight.dtype == torch.bfloat16:
            w = weight.float()
            scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.w8 = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
            self.scales = scales.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.w8 is not None and x.shape[0] <= INT8_MAX_ROWS:
            return torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.w8, self.scales)
        return F.linear(x, self.weight)

    def nbytes(self) -> int:
        extra = 0 if self.w8 is None else self.w8.numel() + self.scales.numel() * 2
        return self.weight.numel() * self.weight.element_size() + extra
