// One decoder layer on the quantized CPU path in a single call, for Llama-style models (Llama,
// Qwen2) and Gemma 3 (llmos drivers/fused.py builds the argument blocks; compiled into
// drivers/quant.py's library with the other kernels). The same kernels in the same order as the
// layer's Python loop in drivers/llama.py or drivers/gemma3.py, so the result is bit-identical;
// what it saves is the interpreter and ctypes work between them (about 25 us a layer, a tenth of
// a batch-1 decode step for a 135M model).
//
//   qkv  = (RMSNorm(x) @ Wqkv^T) [+ bias];  [per-head RMSNorm of q and k];  RoPE on q and k
//   k, v -> the pool at slots;  att = paged attention of q over the pool [in a sliding window]
//   x   += [RMSNorm](att @ Wo^T)
//   gu   = RMSNorm(x) @ Wgu^T
//   x   += [RMSNorm](GLU(gu) @ Wdown^T)          GLU: SwiGLU or GEGLU
// The bracketed steps are Gemma 3's; a null norm or a zero window leaves them out.

#include <cstdint>

#include "qmatmul.h"

extern "C" {
void llmos_rms_norm(float* x, int64_t T, int64_t ld, int64_t groups, int64_t D, const float* w, float eps,
                    float* add_to, int64_t ld_add);
void llmos_rope(float* x, int64_t T, int64_t ldx, int64_t n_heads, int64_t D, const int64_t* pos,
                const float* cos_t, const float* sin_t);
int llmos_kv_store(const float* qkv, int64_t ldq, int64_t T, int64_t H, int64_t KVH, int64_t D,
                   const int64_t* slots, void* k, void* v, int f16);
int llmos_paged_attention(const float* q, int64_t ldq, int64_t T, int64_t H, int64_t KVH, int64_t D,
                          const void* k, const void* v, int64_t block_size, const int64_t* tables,
                          int64_t max_blocks, const int64_t* seq_of, const int64_t* pos, int64_t window,
                          float scale, float* out, int64_t ldo, int f16);
}

namespace {

struct QLin { const QPart* parts; int64_t n_parts, K, out, act8; };
struct LayerW {
    QLin qkv, o, gu, down; const float* attn_norm; const float* ffn_norm; const float* bqkv;
    const float* q_norm; const float* k_norm; const float* post_attn_norm; const float* post_ffw_norm;
    const float* cos_t; const float* sin_t; int64_t window, glu;      // this layer's RoPE table, window
};
struct Step {
    float* x; int64_t T, hidden; float eps;
    float* qkv; float* att; float* gu; float* out;             // [T, qkv.out], [T, H*D], [T, gu.out], [T, hidden]
    int64_t H, KVH, D; const int64_t* pos;
    const int64_t* slots; const int64_t* tables; int64_t max_blocks; const int64_t* seq_of;
    int64_t block_size; float scale; int64_t f16;
};

int linear(const QLin& l, const float* X, int64_t T, int64_t ldx, float* Y, int add, int glu,
           const float* norm_w, float eps) {
    return llmos_qmatmul_parts(l.parts, l.n_parts, l.K, X, T, ldx, Y, l.out, add, glu, norm_w, eps, (int)l.act8);
}

// x += l(X) with the GLU glu, or (post_norm) x += RMSNorm(l(X)) * post_norm, through out.
int add_linear(const QLin& l, const float* X, const Step* s, int64_t ldx, int glu, const float* post_norm) {
    if (!post_norm) return linear(l, X, s->T, ldx, s->x, 1, glu, nullptr, 0.f);
    const int rc = linear(l, X, s->T, ldx, s->out, 0, glu, nullptr, 0.f);
    if (!rc) llmos_rms_norm(s->out, s->T, s->hidden, 1, s->hidden, post_norm, s->eps, s->x, s->hidden);
    return rc;
}

}  // namespace

extern "C" {

// One layer for s->T tokens: x (the residual stream, [T, hidden]) is updated in place; k, v are
// this layer's pool. Returns 0, or the first failing kernel's code (negative).
int llmos_decoder_layer(const LayerW* w, const Step* s, void* k, void* v) {
    const int64_t T = s->T, H = s->H, KVH = s->KVH, D = s->D, nq = w->qkv.out;
    int rc = linear(w->qkv, s->x, T, s->hidden, s->qkv, 0, 0, w->attn_norm, s->eps);
    if (rc) return rc;
    if (w->bqkv)
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < nq; i++) s->qkv[t * nq + i] += w->bqkv[i];
    if (w->q_norm) llmos_rms_norm(s->qkv, T, nq, H, D, w->q_norm, s->eps, nullptr, 0);
    if (w->k_norm) llmos_rms_norm(s->qkv + H * D, T, nq, KVH, D, w->k_norm, s->eps, nullptr, 0);
    llmos_rope(s->qkv, T, nq, H + KVH, D, s->pos, w->cos_t, w->sin_t);
    if ((rc = llmos_kv_store(s->qkv, nq, T, H, KVH, D, s->slots, k, v, (int)s->f16))) return rc;
    if ((rc = llmos_paged_attention(s->qkv, nq, T, H, KVH, D, k, v, s->block_size, s->tables, s->max_blocks,
                                    s->seq_of, s->pos, w->window, s->scale, s->att, H * D, (int)s->f16)))
        return rc;
    if ((rc = add_linear(w->o, s->att, s, H * D, 0, w->post_attn_norm))) return rc;
    if ((rc = linear(w->gu, s->x, T, s->hidden, s->gu, 0, 0, w->ffn_norm, s->eps))) return rc;
    return add_linear(w->down, s->gu, s, w->gu.out, (int)w->glu, w->post_ffw_norm);
}

}  // extern "C"
