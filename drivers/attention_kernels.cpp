// Paged attention on an fp32 or fp16 KV pool, for the CPU (llmos drivers/attention.py calls it through
// drivers/quant.py's library, which compiles this file with quant_kernels.cpp and lends it its
// thread pool). A task is a token and its KV heads (all of them when tokens are many, one when
// few): the query heads that share a KV head read each key and value row of the pool once,
// through the sequence's block table (no gather), each vector loaded (fp16: converted) once into
// registers for up to HG_MAX query heads (staging rows as fp32 in a buffer first cost ~25 % more).
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

// Pool rows requested ahead of their use, a few cache lines at a time (step) through the scores
// pass of the keys before them: key rows into L1, value rows into L2 for the values pass. Requested
// in one burst before each pass instead, they waited on the memory's queue: 2 Zen 4 cores, a
// decode step's attention, 64 tokens x 192 keys, fp16 pool, Gemma 3's 18 layers (4 query heads, 1
// KV head of 256) 13.1-13.8 -> 11.7-12.4 ms, 16 heads of 128 with 4 KV heads -17 to -23 %,
// SmolLM2's -5 to -9 %.
struct RowFetch {
    const char* rows[2][4]; int64_t n = 0, lines = 0;       // [0]: keys', [1]: values' rows; lines each
    int64_t kind = 0, r = 0, l = 0;                         // the next line to request
    void add(const void* key, const void* value) {
        rows[0][n] = (const char*)key; rows[1][n++] = (const char*)value;
    }
    void step(int64_t count) {
        for (; count > 0 && kind < 2; count--) {
            const char* p = rows[kind][r] + 64 * l;
            if (kind == 0) __builtin_prefetch(p, 0, 3); else __builtin_prefetch(p, 0, 2);   // T0, T1
            if (++l == lines) { l = 0; if (++r == n) { r = 0; kind++; } }
        }
    }
    void rest() { if (n) step(2 * n * lines); }
};

template <typename KV> struct Attn {
    const float* q; int64_t ldq, T, H, KVH, D;
    const KV* k; const KV* v; int64_t block_size;
    const int64_t* tables; int64_t max_blocks; const int64_t* seq_of; const int64_t* pos;
    int64_t window; float scale; float* out; int64_t ldo;
    int64_t kv_per_task;    // KV heads per task: KVH (a task per token) or 1 (per token and head)
};

// One element (elem) or 8 (load8) of a pool row as fp32 (fp16 converted with F16C).
template <typename KV> inline float elem(const KV* p);
template <> inline float elem<float>(const float* p) { return *p; }
#if defined(__F16C__)
template <> inline float elem<uint16_t>(const uint16_t* p) { return _cvtsh_ss(*p); }
#endif
#if defined(__AVX2__) && defined(__FMA__)
template <typename KV> inline __m256 load8(const KV* p);
template <> inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
#if defined(__F16C__)
template <> inline __m256 load8<uint16_t>(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
#endif
#endif

// q . k for one key (a key left over from the blocks of 4 below).
template <typename KV> inline float dot(const float* q, const KV* k, int64_t D) {
#if defined(__AVX2__) && defined(__FMA__)
    if (D % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < D; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
#endif
    float s = 0.f;
    for (int64_t i = 0; i < D; i++) s += q[i] * elem(k + i);
    return s;
}

#if defined(__AVX2__) && defined(__FMA__)
// Query heads a pass takes together: their 4 x HG accumulators, queries (or weights) and one key
// (value) vector stay in registers: 3 with AVX2's 16, 4 with AVX-512's 32 (GQA's common 4 query
// heads a KV head in one pass, where 3 + 1 read each row twice: Gemma 3 and the 4 x 2048 file).
#if defined(__AVX512F__)
constexpr int64_t HG_MAX = 4;
#else
constexpr int64_t HG_MAX = 3;
#endif
// Vector widths the scores and values passes run in: AVX2's 8 fp32 lanes, or AVX-512's 16 (the same
// products, half the instructions; the sums' order differs, the same for every token). One layer's
// attention of 64 tokens x 256 keys, 16 query and 4 KV heads of 128, fp16 pool, 2 Zen 4 cores, three
// interleaved rounds: 8 lanes 1.98-2.57, 16 lanes 1.52-1.87 ms.
struct Lanes8 {
    using V = __m256;
    static constexpr int64_t W = 8;
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float a) { return _mm256_set1_ps(a); }
    static V loadq(const float* p) { return _mm256_loadu_ps(p); }
    template <typename KV> static V load(const KV* p) { return load8(p); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static __m256 to8(V v) { return v; }              // the lanes summed down to 8
};
#if defined(__AVX512F__) && defined(__F16C__)
struct Lanes16 {
    using V = __m512;
    static constexpr int64_t W = 16;
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(float a) { return _mm512_set1_ps(a); }
    static V loadq(const float* p) { return _mm512_loadu_ps(p); }
    template <typename KV> static V load(const KV* p);
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static __m256 to8(V v) {
        return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    }
};
template <> inline __m512 Lanes16::load<float>(const float* p) { return _mm512_loadu_ps(p); }
template <> inline __m512 Lanes16::load<uint16_t>(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}
#endif

// Scores of HG query heads (q, D floats apart) against 4 keys k[0..4) (pool rows, D % L::W == 0)
// into s[h * ld + i] = scale * q_h . k_i. Each key vector is loaded (converted) once for all HG
// heads: 4 x HG accumulators, HG <= HG_MAX. ahead: rows to request meanwhile (or null).
template <int HG, typename L, typename KV>
inline void scores4(const float* q, const KV* const k[4], int64_t D, float scale, float* s, int64_t ld,
                    RowFetch* ahead) {
    typename L::V acc[HG][4];
    for (int h = 0; h < HG; h++) for (int i = 0; i < 4; i++) acc[h][i] = L::zero();
    const int64_t per = ahead && ahead->n ? (2 * ahead->n * ahead->lines * L::W + D - 1) / D : 0;
    for (int64_t d = 0; d < D; d += L::W) {
        if (per) ahead->step(per);
        typename L::V qv[HG];
        for (int h = 0; h < HG; h++) {
            qv[h] = L::loadq(q + h * D + d);
            __asm__("" : "+v"(qv[h]));     // in a register: GCC would reload it in each of its 4 FMAs
        }
        for (int i = 0; i < 4; i++) {
            const typename L::V kv = L::template load<KV>(k[i] + d);
            for (int h = 0; h < HG; h++) acc[h][i] = L::fma(qv[h], kv, acc[h][i]);
        }
    }
    for (int h = 0; h < HG; h++) {     // lane i of the result = the sum of acc[h][i]'s lanes
        const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(L::to8(acc[h][0]), L::to8(acc[h][1])),
                                        _mm256_hadd_ps(L::to8(acc[h][2]), L::to8(acc[h][3])));
        const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        _mm_storeu_ps(s + h * ld, _mm_mul_ps(_mm_set1_ps(scale), sum));
    }
}

// o[h * D + d] = sum_j p[h * n + j] * v_j[d] for HG heads (HG <= HG_MAX) over keys j < n, v_j = the
// pool row at v + rows[j] (D % (4 L::W) == 0). 4 L::W columns a sweep over the keys: each value
// vector is loaded (converted) once for all HG heads, 4 x HG accumulators in registers; every output
// accumulates over the keys in order. pf: bytes of each row from v on to request 8 keys ahead (0: none).
template <int HG, typename L, typename KV>
inline void values(const float* p, int64_t n, const KV* v, const int64_t* rows, int64_t D, float* o, int64_t pf) {
    for (int64_t d0 = 0; d0 < D; d0 += 4 * L::W) {
        typename L::V acc[HG][4];
        for (int h = 0; h < HG; h++) for (int r = 0; r < 4; r++) acc[h][r] = L::zero();
        for (int64_t j = 0; j < n; j++) {
            if (d0 == 0 && j + 8 < n)      // the row 8 keys on, from memory meanwhile
                for (int64_t off = 0; off < pf; off += 64) _mm_prefetch((const char*)(v + rows[j + 8]) + off, _MM_HINT_T0);
            const KV* vj = v + rows[j] + d0;
            typename L::V pj[HG];
            for (int h = 0; h < HG; h++) pj[h] = L::set1(p[h * n + j]);
            for (int r = 0; r < 4; r++) {
                const typename L::V x = L::template load<KV>(vj + L::W * r);
                for (int h = 0; h < HG; h++) acc[h][r] = L::fma(pj[h], x, acc[h][r]);
            }
        }
        for (int h = 0; h < HG; h++) for (int r = 0; r < 4; r++) L::store(o + h * D + d0 + L::W * r, acc[h][r]);
    }
}

// The passes for hg (1 .. HG_MAX) query heads.
template <typename L, typename KV>
inline void scores4_of(int64_t hg, const float* q, const KV* const k[4], int64_t D, float scale, float* s,
                       int64_t ld, RowFetch* ahead) {
    if (HG_MAX >= 4 && hg == 4) scores4<HG_MAX, L>(q, k, D, scale, s, ld, ahead);
    else if (hg == 3) scores4<3, L>(q, k, D, scale, s, ld, ahead);
    else if (hg == 2) scores4<2, L>(q, k, D, scale, s, ld, ahead);
    else scores4<1, L>(q, k, D, scale, s, ld, ahead);
}
template <typename L, typename KV>
inline void values_of(int64_t hg, const float* p, int64_t n, const KV* v, const int64_t* rows, int64_t D, float* o,
                      int64_t pf) {
    if (HG_MAX >= 4 && hg == 4) values<HG_MAX, L>(p, n, v, rows, D, o, pf);
    else if (hg == 3) values<3, L>(p, n, v, rows, D, o, pf);
    else if (hg == 2) values<2, L>(p, n, v, rows, D, o, pf);
    else values<1, L>(p, n, v, rows, D, o, pf);
}
#endif

template <typename KV> inline void axpy(float a, const KV* x, float* y, int64_t D) {     // y += a * x
#if defined(__AVX2__) && defined(__FMA__)
    if (D % 8 == 0) {
        const __m256 av = _mm256_set1_ps(a);
        for (int64_t i = 0; i < D; i += 8)
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load8(x + i), _mm256_loadu_ps(y + i)));
        return;
    }
#endif
    for (int64_t i = 0; i < D; i++) y[i] += a * elem(x + i);
}


// The largest of x[0..n), NaNs skipped (-inf when all are NaN or n == 0). As a scalar loop this
// was a dependency chain of one max per key: ~5 % of the attention's time at batch 64.
inline float max_of(const float* x, int64_t n) {
    float m = -INFINITY; int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= n; j += 8) acc = _mm256_max_ps(_mm256_loadu_ps(x + j), acc);   // NaN in x: acc kept
    alignas(32) float lanes[8]; _mm256_store_ps(lanes, acc);
    for (int l = 0; l < 8; l++) m = lanes[l] > m ? lanes[l] : m;
#endif
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
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

// Task i: token t and KV heads [g0, g0 + gn) (all of them, or one: see kv_per_task), each with
// the G query heads that share it: the scores (scores4), the softmax per head, the values
// (values), the pool's rows requested a few keys ahead. A (token, head)'s arithmetic is the
// same whatever the task's shape.
template <typename KV>
void attn_task(void* p, int64_t i) {
    const Attn<KV>& a = *(const Attn<KV>*)p;
    const int64_t gn = a.kv_per_task, t = i * gn / a.KVH, g0 = i * gn % a.KVH;
    const int64_t G = a.H / a.KVH, D = a.D;
#if defined(__AVX2__) && defined(__FMA__)
    constexpr int64_t HG = HG_MAX;      // query heads a pass
#else
    constexpr int64_t HG = 3;
#endif
    const int64_t end = a.pos[t] + 1, lo = a.window > 0 && end > a.window ? end - a.window : 0, n = end - lo;
    const int64_t* table = a.tables + a.seq_of[t] * a.max_blocks;
    thread_local std::vector<float> scores;
    thread_local std::vector<int64_t> rows;                 // pool offset of each key's row
    if ((int64_t)scores.size() < gn * G * n) scores.resize((size_t)(gn * G * n));
    const float* q = a.q + t * a.ldq + g0 * G * D;        // query heads of KV heads g0.. in order
    // Scores straight from the pool: the key rows' addresses once, then blocks of 4 keys (all the
    // task's KV heads of those keys, so whole slot rows are read together) for up to HG_MAX query heads
    // at a time; the keys left over one by one. Which keys go 4 at a time depends only on (lo, end).
    if ((int64_t)rows.size() < n) rows.resize((size_t)n);
    for (int64_t key = lo; key < end;) {
        const int64_t blk = key / a.block_size, stop = (blk + 1) * a.block_size < end ? (blk + 1) * a.block_size : end;
        const int64_t base = table[blk] * a.block_size - blk * a.block_size;     // slot = base + key
        for (; key < stop; key++) rows[key - lo] = (base + key) * a.KVH * D;
    }
    const KV* const kpool = a.k + g0 * D;
    const int64_t span = gn * D * (int64_t)sizeof(KV);     // bytes of a key's row this task reads
    auto scores_of = [&](int64_t j, int64_t nk, RowFetch* ahead) {   // keys j .. j+nk-1, every head
        for (int64_t gi = 0; gi < gn; gi++)
            for (int64_t h0 = 0; h0 < G; h0 += HG) {
                const int64_t hg = G - h0 < HG ? G - h0 : HG;
                const float* qh = q + (gi * G + h0) * D;
                float* s = scores.data() + (gi * G + h0) * n + j;
                const KV* kg = kpool + gi * D;
#if defined(__AVX2__) && defined(__FMA__)
                if (nk == 4) {
                    const KV* const k4[4] = {kg + rows[j], kg + rows[j + 1], kg + rows[j + 2], kg + rows[j + 3]};
                    RowFetch* const fetch = gi == 0 && h0 == 0 ? ahead : nullptr;     // the first pass
#if defined(__AVX512F__) && defined(__F16C__)
                    if (D % 16 == 0) { scores4_of<Lanes16>(hg, qh, k4, D, a.scale, s, n, fetch); continue; }
#endif
                    scores4_of<Lanes8>(hg, qh, k4, D, a.scale, s, n, fetch);
                    continue;
                }
#endif
                for (int64_t h = 0; h < hg; h++) s[h * n] = a.scale * dot(qh + h * D, kg + rows[j], D);
            }
    };
    const KV* const vpool = a.v + g0 * D;
    int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    // Keys whose rows are requested ahead of their scores (RowFetch); their value rows too, into L2, for the
    // values pass (a token's are ~75 KB at 192 keys for SmolLM2): at batch 64 that pass had waited
    // on memory at each row (64 tokens x 192 keys, 2 Zen 4 cores: 0.78-0.86 -> 0.64-0.65 ms a layer).
    constexpr int64_t AHEAD = 8;
    for (; D % 8 == 0 && j + 4 <= n; j += 4) {
        RowFetch ahead;
        ahead.lines = (span + 63) / 64;
        for (int64_t r = j + AHEAD; r < j + AHEAD + 4 && r < n; r++) ahead.add(kpool + rows[r], vpool + rows[r]);
        scores_of(j, 4, &ahead);
        ahead.rest();
    }
#endif
    for (; j < n; j++) scores_of(j, 1, nullptr);
    float* const out = a.out + t * a.ldo + g0 * G * D;     // output heads in the same order as q
    for (int64_t h = 0; h < gn * G; h++) {
        float* sh = scores.data() + h * n; const float m = max_of(sh, n);
        for (int64_t j = 0; j < n; j++) sh[j] -= m;
        const float inv = 1.f / exp_sum(sh, n);
        for (int64_t j = 0; j < n; j++) sh[j] *= inv;
    }
    // Values straight from the pool, each row read once for all the heads that share it.
    for (int64_t gi = 0; gi < gn; gi++)
        for (int64_t h0 = 0; h0 < G; h0 += HG) {
            const int64_t hg = G - h0 < HG ? G - h0 : HG;
            const float* p = scores.data() + (gi * G + h0) * n;
            float* o = out + (gi * G + h0) * D;
#if defined(__AVX2__) && defined(__FMA__)
            const int64_t pf = gi == 0 && h0 == 0 ? span : 0;           // the first pass fetches whole rows
#if defined(__AVX512F__) && defined(__F16C__)
            if (D % 64 == 0) { values_of<Lanes16>(hg, p, n, vpool + gi * D, rows.data(), D, o, pf); continue; }
#endif
            if (D % 32 == 0) { values_of<Lanes8>(hg, p, n, vpool + gi * D, rows.data(), D, o, pf); continue; }
#endif
            for (int64_t h = 0; h < hg; h++) {
                for (int64_t d = 0; d < D; d++) o[h * D + d] = 0.f;
                for (int64_t j = 0; j < n; j++) axpy(p[h * n + j], vpool + gi * D + rows[j], o + h * D, D);
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
