// One Llama decoder layer on the quantized CPU path in a single call (llmos drivers/fused.py
// builds the argument blocks; compiled into drivers/quant.py's library with the other kernels).
// The same kernels in the same order as the layer's Python loop in drivers/llama.py, so the result
// is bit-identical; what it saves is the interpreter and ctypes work between them (about 25 us a
// layer, a tenth of a batch-1 decode step for a 135M model).
//
//   qkv  = (RMSNorm(x) @ Wqkv^T) [+ bias];  RoPE on q and k;  k, v -> the pool at slots
//   att  = paged attention of q over the pool
//   x   += att @ Wo^T
//   gu   = RMSNorm(x) @ Wgu^T
//   x   += SwiGLU(gu) @ Wdown^T

#include <cstdint>

extern "C" {
int llmos_qmatmul(int type, const uint8_t* W, int64_t N, int64_t K, int64_t rb, const float* X, int64_t T,
                  int64_t ldx, float* Y, int64_t ldy, int add, int glu, const float* norm_w, float eps);
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

struct QPart { int64_t type; const uint8_t* W; int64_t N, rb, col; };     // rows [col, col + N) of the output
struct QLin { const QPart* parts; int64_t n_parts, K, out; };
struct LayerW { QLin qkv, o, gu, down; const float* attn_norm; const float* ffn_norm; const float* bqkv; };
struct Step {
    float* x; int64_t T, hidden; float eps;
    float* qkv; float* att; float* gu;                         // [T, qkv.out], [T, H*D], [T, gu.out]
    int64_t H, KVH, D; const int64_t* pos; const float* cos_t; const float* sin_t;
    const int64_t* slots; const int64_t* tables; int64_t max_blocks; const int64_t* seq_of;
    int64_t block_size; float scale; int64_t window; int64_t f16;
};

int linear(const QLin& l, const float* X, int64_t T, int64_t ldx, float* Y, int add, int glu,
           const float* norm_w, float eps) {
    for (int64_t i = 0; i < l.n_parts; i++) {
        const QPart& p = l.parts[i];
        const int rc = llmos_qmatmul((int)p.type, p.W, p.N, l.K, p.rb, X, T, ldx, Y + p.col, l.out, add,
                                     glu, norm_w, eps);
        if (rc) return rc;
    }
    return 0;
}

}  // namespace

extern "C" {

// One layer for s->T tokens: x (the residual stream, [T, hidden]) is updated in place; k, v are
// this layer's pool. Returns 0, or the first failing kernel's code (negative).
int llmos_llama_layer(const LayerW* w, const Step* s, void* k, void* v) {
    const int64_t T = s->T, H = s->H, KVH = s->KVH, D = s->D, nq = w->qkv.out;
    int rc = linear(w->qkv, s->x, T, s->hidden, s->qkv, 0, 0, w->attn_norm, s->eps);
    if (rc) return rc;
    if (w->bqkv)
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < nq; i++) s->qkv[t * nq + i] += w->bqkv[i];
    llmos_rope(s->qkv, T, nq, H + KVH, D, s->pos, s->cos_t, s->sin_t);
    if ((rc = llmos_kv_store(s->qkv, nq, T, H, KVH, D, s->slots, k, v, (int)s->f16))) return rc;
    if ((rc = llmos_paged_attention(s->qkv, nq, T, H, KVH, D, k, v, s->block_size, s->tables, s->max_blocks,
                                    s->seq_of, s->pos, s->window, s->scale, s->att, H * D, (int)s->f16)))
        return rc;
    if ((rc = linear(w->o, s->att, T, H * D, s->x, 1, 0, nullptr, 0.f))) return rc;
    if ((rc = linear(w->gu, s->x, T, s->hidden, s->gu, 0, 0, w->ffn_norm, s->eps))) return rc;
    return linear(w->down, s->gu, T, w->gu.out, s->x, 1, 1, nullptr, 0.f);
}

}  // extern "C"
