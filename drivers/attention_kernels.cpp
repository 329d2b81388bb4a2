// Paged attention on an fp32 or fp16 KV pool, for the CPU (llmos drivers/attention.py calls it through
// drivers/quant.py's library, which compiles this file with quant_kernels.cpp and lends it its
// thread pool). One task per (token, KV head): the query heads that share that KV head read each
// key and value row once from the pool through the sequence's block table (no gather), staged as
// fp32 a chunk of keys at a time so that all those heads work on rows in L1 (reading them from L2
// or converting them once per head bounded the loops: ~2x slower at batch 64 on Zen 3).
//
// o[t, h] = sum_j softmax_j(scale * q[t, h] . k_j) v_j over keys j in [lo, pos[t]] of token t's
// sequence, lo = pos[t] - window + 1 when window > 0 (sliding window), else 0. The keys of this
// step are already in the pool. Every (token, head) runs the same instruction sequence whatever
// the batch, so a token's output does not depend on what it is batched with.
// An fp16 pool (IEEE half, converted with F16C; the quantized path's default) halves the bytes a
// step reads from the pool; the arithmetic stays fp32. Without F16C only fp32 pools are served.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#include "simd_exp.h"

typedef void (*TaskFn)(void* ctx, int64_t i);
extern "C" void llmos_parallel(TaskFn fn, void* ctx, int64_t n);
extern "C" int llmos_quant_threads(void);

namespace {

template <typename KV> struct Attn {
    const float* q; int64_t ldq, T, H, KVH, D;
    const KV* k; const KV* v; int64_t block_size;
    const int64_t* tables; int64_t max_blocks; const int64_t* seq_of; const int64_t* pos;
    int64_t window; float scale; float* out; int64_t ldo;
    int64_t kv_per_task;    // KV heads per task: KVH (a task per token) or 1 (per token and head)
};

inline float dot(const float* a, const float* b, int64_t D) {
#if defined(__AVX2__) && defined(__FMA__)
    if (D % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < D; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
#endif
    float s = 0.f;
    for (int64_t i = 0; i < D; i++) s += a[i] * b[i];
    return s;
}

#if defined(__AVX2__) && defined(__FMA__)
// The dot products of q (D floats, D % 8 == 0) with 8 keys k, k + stride, ..., as one vector.
inline __m256 dot8(const float* q, const float* k, int64_t stride, int64_t D) {
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + i * stride + d), acc[i]);
    }
    // Transposing reduction: lane i of the result = sum of acc[i]'s 8 lanes.
    const __m256 a01 = _mm256_hadd_ps(acc[0], acc[1]), a23 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 a45 = _mm256_hadd_ps(acc[4], acc[5]), a67 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 b0 = _mm256_hadd_ps(a01, a23), b1 = _mm256_hadd_ps(a45, a67);
    // b0 = [k0 k1 k2 k3 | k0 k1 k2 k3] partial (low/high 128-bit halves), b1 the same for k4..k7.
    return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}
#endif

inline void axpy(float a, const float* x, float* y, int64_t D) {     // y += a * x
#if defined(__AVX2__) && defined(__FMA__)
    if (D % 8 == 0) {
        const __m256 av = _mm256_set1_ps(a);
        for (int64_t i = 0; i < D; i += 8)
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        return;
    }
#endif
    for (int64_t i = 0; i < D; i++) y[i] += a * x[i];
}

// e^x for x <= 0 (softmax after the max is subtracted) into x in place, returns their sum.
inline float exp_sum(float* x, int64_t n) {
    int64_t j = 0; float sum = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        const __m256 y = llmos_exp8(_mm256_loadu_ps(x + j));
        _mm256_storeu_ps(x + j, y);
        acc = _mm256_add_ps(acc, y);
    }
    alignas(32) float lanes[8]; _mm256_store_ps(lanes, acc);
    for (int l = 0; l < 8; l++) sum += lanes[l];
#endif
    for (; j < n; j++) { x[j] = expf(x[j]); sum += x[j]; }
    return sum;
}

constexpr int64_t CHUNK = 16;      // keys staged at a time: a chunk's rows stay in L1 (12 KB for 3 x 64)

// Keys (values when `values`) [from, to) of KV heads [g0, g0 + gn) as fp32 into out, key by key
// (gn * D floats per key, heads in order), walked block by block (no division per key). One key's
// heads lie side by side in the pool, so gn > 1 reads whole slot rows.
template <typename KV>
void stage(const Attn<KV>& a, const int64_t* table, int64_t g0, int64_t gn, int64_t from, int64_t to,
           bool values, float* out) {
    const int64_t w = gn * a.D, bs = a.block_size, row = a.KVH * a.D;
    const KV* pool = values ? a.v : a.k;
    for (int64_t key = from; key < to;) {
        const int64_t blk = key / bs, stop = (blk + 1) * bs < to ? (blk + 1) * bs : to;
        const int64_t base = table[blk] * bs - blk * bs;       // slot = base + key
        for (; key < stop; key++) {
            const KV* src = pool + (base + key) * row + g0 * a.D;
            float* dst = out + (key - from) * w;
            if constexpr (sizeof(KV) == 4) {
                memcpy(dst, src, w * sizeof(float));
            } else {
#if defined(__F16C__)
                int64_t d = 0;
                for (; d + 8 <= w; d += 8)
                    _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + d))));
                for (; d < w; d++) dst[d] = _cvtsh_ss(src[d]);
#endif
            }
        }
    }
}

// Task i: token t and KV heads [g0, g0 + gn) (all of them, or one: see kv_per_task), each with
// the G query heads that share it. Keys are taken CHUNK at a time, staged as fp32 once for all
// those heads: scores for the chunk (8 keys at a time with one transposing reduction where D
// allows, the rest one by one; which keys go 8 at a time depends only on (lo, end)), then the
// softmax per head, then the values chunk by chunk, each output accumulating over the keys in
// order. A (token, head)'s arithmetic is the same whatever the task's shape.
template <typename KV>
void attn_task(void* p, int64_t i) {
    const Attn<KV>& a = *(const Attn<KV>*)p;
    const int64_t gn = a.kv_per_task, t = i * gn / a.KVH, g0 = i * gn % a.KVH;
    const int64_t G = a.H / a.KVH, D = a.D, w = gn * D;
    const int64_t end = a.pos[t] + 1, lo = a.window > 0 && end > a.window ? end - a.window : 0, n = end - lo;
    const int64_t* table = a.tables + a.seq_of[t] * a.max_blocks;
    thread_local std::vector<float> scores, staged;
    if ((int64_t)scores.size() < gn * G * n) scores.resize((size_t)(gn * G * n));
    if ((int64_t)staged.size() < CHUNK * w) staged.resize((size_t)(CHUNK * w));
    float* buf = staged.data();
    const float* q = a.q + t * a.ldq + g0 * G * D;        // query heads of KV heads g0.. in order
    for (int64_t c0 = lo; c0 < end; c0 += CHUNK) {
        const int64_t m = end - c0 < CHUNK ? end - c0 : CHUNK;
        stage(a, table, g0, gn, c0, c0 + m, false, buf);
        for (int64_t gi = 0; gi < gn; gi++) {
            const float* k = buf + gi * D; float* s = scores.data() + gi * G * n + c0 - lo;
            int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
            for (; D % 8 == 0 && j + 8 <= m; j += 8)
                for (int64_t h = 0; h < G; h++)
                    _mm256_storeu_ps(s + h * n + j, _mm256_mul_ps(_mm256_set1_ps(a.scale),
                                                                  dot8(q + (gi * G + h) * D, k + j * w, w, D)));
#endif
            for (; j < m; j++)
                for (int64_t h = 0; h < G; h++) s[h * n + j] = a.scale * dot(q + (gi * G + h) * D, k + j * w, D);
        }
    }
    float* const out = a.out + t * a.ldo + g0 * G * D;     // output heads in the same order as q
    for (int64_t h = 0; h < gn * G; h++) {
        float* sh = scores.data() + h * n; float m = -INFINITY;
        for (int64_t j = 0; j < n; j++) m = sh[j] > m ? sh[j] : m;
        for (int64_t j = 0; j < n; j++) sh[j] -= m;
        const float inv = 1.f / exp_sum(sh, n);
        for (int64_t j = 0; j < n; j++) sh[j] *= inv;
        for (int64_t d = 0; d < D; d++) out[h * D + d] = 0.f;
    }
    for (int64_t c0 = lo; c0 < end; c0 += CHUNK) {
        const int64_t m = end - c0 < CHUNK ? end - c0 : CHUNK;
        stage(a, table, g0, gn, c0, c0 + m, true, buf);
        for (int64_t h = 0; h < gn * G; h++) {
            const float* sh = scores.data() + h * n + c0 - lo;
            const float* v0 = buf + (h / G) * D;
            float* o = out + h * D;
#if defined(__AVX2__) && defined(__FMA__)
            if (D % 64 == 0) {             // 64 output columns in registers across the chunk
                for (int64_t d0 = 0; d0 < D; d0 += 64) {
                    __m256 acc[8];
                    for (int r = 0; r < 8; r++) acc[r] = _mm256_loadu_ps(o + d0 + 8 * r);
                    for (int64_t j = 0; j < m; j++) {
                        const float* v = v0 + j * w + d0; const __m256 pj = _mm256_set1_ps(sh[j]);
                        for (int r = 0; r < 8; r++) acc[r] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8 * r), acc[r]);
                    }
                    for (int r = 0; r < 8; r++) _mm256_storeu_ps(o + d0 + 8 * r, acc[r]);
                }
                continue;
            }
#endif
            for (int64_t j = 0; j < m; j++) axpy(sh[j], v0 + j * w, o, D);
        }
    }
}

}  // namespace

extern "C" {

// Whether fp16 pools are served (the CPU has F16C).
int llmos_kv_f16_supported(void) {
#if defined(__F16C__)
    return 1;
#else
    return 0;
#endif
}

// See the file's head. q: [T, ldq] (heads at columns h*D); k, v: the layer's pool
// [blocks, block_size, KVH, D], fp16 when f16 else fp32; tables: [n_seqs, max_blocks]; seq_of, pos:
// [T]; out: [T, ldo]. Returns 0, -1 when H is not a multiple of KVH, -2 for fp16 without F16C.
int llmos_paged_attention(const float* q, int64_t ldq, int64_t T, int64_t H, int64_t KVH, int64_t D,
                          const void* k, const void* v, int64_t block_size, const int64_t* tables,
                          int64_t max_blocks, const int64_t* seq_of, const int64_t* pos, int64_t window,
                          float scale, float* out, int64_t ldo, int f16) {
    if (KVH <= 0 || H % KVH) return -1;
    // A task per token reads whole slot rows (all KV heads side by side: ~2x the throughput of
    // per-head rows at batch 64 on Zen 3); a task per (token, head) when tokens are too few to
    // keep the threads busy (one decode).
    const int64_t per = T >= 4 * llmos_quant_threads() ? KVH : 1;
    if (f16) {
#if defined(__F16C__)
        Attn<uint16_t> a{q, ldq, T, H, KVH, D, (const uint16_t*)k, (const uint16_t*)v, block_size, tables,
                         max_blocks, seq_of, pos, window, scale, out, ldo, per};
        llmos_parallel(attn_task<uint16_t>, &a, T * KVH / per);
        return 0;
#else
        return -2;
#endif
    }
    Attn<float> a{q, ldq, T, H, KVH, D, (const float*)k, (const float*)v, block_size, tables, max_blocks,
                  seq_of, pos, window, scale, out, ldo, per};
    llmos_parallel(attn_task<float>, &a, T * KVH / per);
    return 0;
}

// The K and V of T new tokens (columns [H*D, (H+KVH)*D) and [(H+KVH)*D, (H+2*KVH)*D) of qkv rows,
// row stride ldq) into pool slots slots[t] of the layer's k and v ([*, KVH, D] per slot), rounded
// to fp16 (nearest even) when f16. Returns 0, or -2 for fp16 without F16C.
int llmos_kv_store(const float* qkv, int64_t ldq, int64_t T, int64_t H, int64_t KVH, int64_t D,
                   const int64_t* slots, void* k, void* v, int f16) {
    const int64_t n = KVH * D;
    if (!f16) {
        for (int64_t t = 0; t < T; t++) {
            memcpy((float*)k + slots[t] * n, qkv + t * ldq + H * D, n * sizeof(float));
            memcpy((float*)v + slots[t] * n, qkv + t * ldq + (H + KVH) * D, n * sizeof(float));
        }
        return 0;
    }
#if defined(__F16C__)
    for (int64_t t = 0; t < T; t++) {
        const float* src[2] = {qkv + t * ldq + H * D, qkv + t * ldq + (H + KVH) * D};
        uint16_t* dst[2] = {(uint16_t*)k + slots[t] * n, (uint16_t*)v + slots[t] * n};
        for (int kv = 0; kv < 2; kv++) {
            int64_t i = 0;
            for (; i + 8 <= n; i += 8)
                _mm_storeu_si128((__m128i*)(dst[kv] + i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(src[kv] + i), _MM_FROUND_TO_NEAREST_INT));
            for (; i < n; i++) dst[kv][i] = _cvtss_sh(src[kv][i], _MM_FROUND_TO_NEAREST_INT);
        }
    }
    return 0;
#else
    return -2;
#endif
}

}  // extern "C"
