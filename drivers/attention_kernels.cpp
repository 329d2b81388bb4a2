// Paged attention on an fp32 or fp16 KV pool, for the CPU (llmos drivers/attention.py calls it through
// drivers/quant.py's library, which compiles this file with quant_kernels.cpp and lends it its
// thread pool). One task per (token, KV head): the query heads that share that KV head read each
// key and value row once, straight from the pool through the sequence's block table (no gather).
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

namespace {

template <typename KV> struct Attn {
    const float* q; int64_t ldq, T, H, KVH, D;
    const KV* k; const KV* v; int64_t block_size;
    const int64_t* tables; int64_t max_blocks; const int64_t* seq_of; const int64_t* pos;
    int64_t window; float scale; float* out; int64_t ldo;
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

void attn_task(void* p, int64_t i) {
    const Attn<float>& a = *(const Attn<float>*)p;
    const int64_t t = i / a.KVH, g = i % a.KVH, G = a.H / a.KVH, D = a.D, bs = a.block_size;
    const int64_t end = a.pos[t] + 1, lo = a.window > 0 && end > a.window ? end - a.window : 0, n = end - lo;
    const int64_t* table = a.tables + a.seq_of[t] * a.max_blocks;
    const int64_t row = a.KVH * D;                       // floats per pool slot
    thread_local std::vector<float> scores;
    if ((int64_t)scores.size() < G * n) scores.resize((size_t)(G * n));
    float* s = scores.data();
    const float* q = a.q + t * a.ldq + g * G * D;
    // Keys lo .. end-1, walked block by block (no division per key).
    auto each_key = [&](auto&& fn) {
        for (int64_t key = lo; key < end;) {
            const int64_t blk = key / bs, stop = (blk + 1) * bs < end ? (blk + 1) * bs : end;
            const int64_t base = table[blk] * bs - blk * bs;       // slot = base + key
            for (; key < stop; key++) fn(key - lo, (base + key) * row + g * D);
        }
    };
    // Scores: 8 consecutive keys of a block at a time where D allows (8 independent FMA chains,
    // one transposing reduction), the rest one by one. Which keys go 8 at a time depends only on
    // (lo, end, block size), never on the batch.
    for (int64_t key = lo; key < end;) {
        const int64_t blk = key / bs, stop = (blk + 1) * bs < end ? (blk + 1) * bs : end;
        const int64_t base = table[blk] * bs - blk * bs;       // slot = base + key
#if defined(__AVX2__) && defined(__FMA__)
        for (; D % 8 == 0 && key + 8 <= stop; key += 8) {
            const float* k = a.k + (base + key) * row + g * D;
            for (int64_t h = 0; h < G; h++)
                _mm256_storeu_ps(s + h * n + key - lo, _mm256_mul_ps(_mm256_set1_ps(a.scale), dot8(q + h * D, k, row, D)));
        }
#endif
        for (; key < stop; key++) {
            const float* k = a.k + (base + key) * row + g * D;
            for (int64_t h = 0; h < G; h++) s[h * n + key - lo] = a.scale * dot(q + h * D, k, D);
        }
    }
    for (int64_t h = 0; h < G; h++) {
        float* sh = s + h * n; float m = -INFINITY;
        for (int64_t j = 0; j < n; j++) m = sh[j] > m ? sh[j] : m;
        for (int64_t j = 0; j < n; j++) sh[j] -= m;
        const float inv = 1.f / exp_sum(sh, n);
        for (int64_t j = 0; j < n; j++) sh[j] *= inv;
        float* o = a.out + t * a.ldo + (g * G + h) * D;
#if defined(__AVX2__) && defined(__FMA__)
        if (D % 64 == 0) {                 // 64 output columns in registers across all keys
            for (int64_t d0 = 0; d0 < D; d0 += 64) {
                __m256 acc[8];
                for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
                each_key([&](int64_t j, int64_t off) {
                    const float* v = a.v + off + d0; const __m256 p = _mm256_set1_ps(sh[j]);
                    for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * i), acc[i]);
                });
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(o + d0 + 8 * i, acc[i]);
            }
            continue;
        }
#endif
        for (int64_t d = 0; d < D; d++) o[d] = 0.f;
        each_key([&](int64_t j, int64_t off) { axpy(sh[j], a.v + off, o, D); });
    }
}

#if defined(__F16C__)
// An fp16 pool: this task's keys and values (KV head g, keys lo..end-1) are converted once into a
// per-thread fp32 copy laid out as a one-block pool, and the fp32 task runs on it: the G query
// heads that share the KV head then read converted rows (3 conversions per element saved for
// SmolLM2's 9 heads over 3), and the pool is still read once, at half the bytes.
void attn_task_f16(void* p, int64_t i) {
    const Attn<uint16_t>& a = *(const Attn<uint16_t>*)p;
    const int64_t t = i / a.KVH, g = i % a.KVH, G = a.H / a.KVH, D = a.D, bs = a.block_size;
    const int64_t end = a.pos[t] + 1, lo = a.window > 0 && end > a.window ? end - a.window : 0;
    const int64_t* table = a.tables + a.seq_of[t] * a.max_blocks;
    const int64_t row = a.KVH * D;
    thread_local std::vector<float> kb, vb;
    if ((int64_t)kb.size() < end * D) { kb.resize((size_t)(end * D)); vb.resize((size_t)(end * D)); }
    for (int64_t key = lo; key < end;) {
        const int64_t blk = key / bs, stop = (blk + 1) * bs < end ? (blk + 1) * bs : end;
        const int64_t base = table[blk] * bs - blk * bs;
        for (; key < stop; key++) {
            const uint16_t* ks = a.k + (base + key) * row + g * D; const uint16_t* vs = a.v + (base + key) * row + g * D;
            float* kd = kb.data() + key * D; float* vd = vb.data() + key * D;
            int64_t d = 0;
            for (; d + 8 <= D; d += 8) {
                _mm256_storeu_ps(kd + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ks + d))));
                _mm256_storeu_ps(vd + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(vs + d))));
            }
            for (; d < D; d++) { kd[d] = _cvtsh_ss(ks[d]); vd[d] = _cvtsh_ss(vs[d]); }
        }
    }
    static const int64_t zero = 0;
    Attn<float> f{a.q + t * a.ldq + g * G * D, a.ldq, 1, G, 1, D, kb.data(), vb.data(), end, &zero, 1, &zero,
                  a.pos + t, a.window, a.scale, a.out + t * a.ldo + g * G * D, a.ldo};
    attn_task(&f, 0);
}
#endif

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
    if (f16) {
#if defined(__F16C__)
        Attn<uint16_t> a{q, ldq, T, H, KVH, D, (const uint16_t*)k, (const uint16_t*)v, block_size, tables,
                         max_blocks, seq_of, pos, window, scale, out, ldo};
        llmos_parallel(attn_task_f16, &a, T * KVH);
        return 0;
#else
        return -2;
#endif
    }
    Attn<float> a{q, ldq, T, H, KVH, D, (const float*)k, (const float*)v, block_size, tables, max_blocks,
                  seq_of, pos, window, scale, out, ldo};
    llmos_parallel(attn_task, &a, T * KVH);
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
