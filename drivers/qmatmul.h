// llmos_qmatmul_parts: one matmul over weights stored as row blocks (fused QKV, gate/up), defined in
// drivers/quant_kernels.cpp and called by drivers/layer_kernels.cpp and (through its argument
// block) drivers/quant.py.
#pragma once
#include <cstdint>

// A weight part: N rows of rb bytes in GGML type `type` (RG_TYPES + t: row-grouped), the output's
// columns [col, col + N).
struct QPart { int64_t type; const uint8_t* W; int64_t N, rb, col; };

extern "C" {
// Y[t*ldy + n] (+)= sum_k W[n,k] * f(X)[t,k] over the parts' rows n; X is [T, ldx] fp32; f = an
// optional gated activation glu (GLU_SILU: SwiGLU, GLU_GELU_TANH: GEGLU; then X holds 2K columns:
// gate, up) then optional RMSNorm with weight norm_w, computed once for all parts, as is the
// activations' grid. act8: the matmul's row-grouped parts take x at 8 bits where the CPU has
// vpdpbusd (llmos_act8_supported; the 'a8' dtype; one scale a 32-block, the K-quants' a 256-block:
// a call with both kinds of part makes both, each once), else the 13-bit grid. Returns 0, or -1 for a
// type without a kernel, -2 for a K that is not a whole number of the type's blocks (then nothing
// is written).
int llmos_qmatmul_parts(const QPart* parts, int64_t n_parts, int64_t K, const float* X, int64_t T, int64_t ldx,
                        float* Y, int64_t ldy, int add, int glu, const float* norm_w, float eps, int act8);
int llmos_act8_supported(void);
}
