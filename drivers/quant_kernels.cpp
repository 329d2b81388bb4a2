// Quantized matmuls on GGUF weights as they lie in the file (llmos drivers/quant.py builds and
// loads this with ctypes). More than ~300 lines because each GGML block layout needs its own
// unpacking, and all of them share one tiled micro-kernel; splitting would scatter that.
//
// y[t, n] (+)= sum_k W[n, k] * f(x)[t, k] for W in Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1,
// f an optional SwiGLU or GEGLU and/or RMSNorm of the fp32 input. Two layouts:
// - Row-grouped (rowgroup_kernels.h; every type but Q5_K on a vector CPU): rows in the vector
//   lanes, the input on a 13-bit grid whose block sums are exact in fp32, an int16 GEMV for one
//   token (fp32 FMAs for Q4_K and Q6_K without VNNI) and an int16 GEMM (vpmaddwd / vpdpwssd) for
//   more, with the same bits.
// - The file's blocks (Q5_K; LLMOS_ROWGROUP=off): the activations stay fp32; each weight 32-block
//   is dequantised in registers, w = fma(q, d, m) (per-16 d and m for Q6_K's sub-scales), into a
//   small per-thread panel of NR rows x K, and an fp32 FMA micro-kernel multiplies the panel by up
//   to NC tokens at a time, exact up to fp32 rounding.
// Bit-identical results for a (row, token) pair in any tile and at any batch size: every pair
// accumulates the same products in the same order (one 8-lane accumulator over k, then one fixed
// horizontal sum; -ffp-contract=off keeps the compiler from fusing differently per tile).
// Threads: a small pool of its own (below) splits rows (and token chunks) into tasks; the calling
// thread works too and never waits for a worker that has not started, so a busy machine (other
// processes on the cores) costs at most the speed of one thread, not a scheduler time slice per
// matmul as barrier-based OpenMP regions do.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define LLMOS_AVX2 1
#endif
#include "simd_exp.h"
#include "qmatmul.h"
#include "simd_vec.h"

enum { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };
constexpr int RG_TYPES = 100;   // type RG_TYPES + t: t's weights repacked row-grouped (rowgroup_kernels.h)

static inline float h2f(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { exp = 127 - 15 + 1; while (!(man & 0x400)) { man <<= 1; exp--; } bits = sign | (exp << 23) | ((man & 0x3ff) << 13); }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; memcpy(&f, &bits, 4); return f;
#endif
}
static inline float rdh(const uint8_t* p) { uint16_t h; memcpy(&h, p, 2); return h2f(h); }

static inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) { *sc = q[j] & 63; *m = q[j + 4] & 63; }
    else { *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

// Bytes per block and elements per block of each supported type.
static int block_bytes(int type) {
    switch (type) { case Q4_0: return 18; case Q4_1: return 20; case Q5_0: return 22; case Q5_1: return 24;
        case Q8_0: return 34; case Q4_K: return 144; case Q5_K: return 176; case Q6_K: return 210; default: return 0; }
}
static int block_elems(int type) { return (type == Q4_K || type == Q5_K || type == Q6_K) ? 256 : 32; }

// ---- scalar unpacking of one 32-block (reference, dequantisation, non-AVX2 CPUs) -------------
struct Unpacked { int16_t q[32]; float d; int16_t sc[2]; float m[2]; };

static void unpack(int type, const uint8_t* row, int64_t j, Unpacked* u) {
    u->sc[0] = u->sc[1] = 1; u->m[0] = u->m[1] = 0.f;
    if (block_elems(type) == 32) {
        const uint8_t* b = row + j * block_bytes(type);
        u->d = rdh(b);
        if (type == Q8_0) { for (int i = 0; i < 32; i++) u->q[i] = (int8_t)b[2 + i]; return; }
        const uint8_t* qs = b + (type == Q4_0 ? 2 : type == Q5_0 ? 6 : type == Q4_1 ? 4 : 8);
        uint32_t qh = 0;
        if (type == Q5_0) memcpy(&qh, b + 2, 4);
        if (type == Q5_1) memcpy(&qh, b + 4, 4);
        for (int i = 0; i < 16; i++) {
            u->q[i] = (qs[i] & 0xF) | (((qh >> i) & 1) << 4);
            u->q[i + 16] = (qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
        }
        float m = type == Q4_0 ? -8.f * u->d : type == Q5_0 ? -16.f * u->d : rdh(b + 2);
        u->m[0] = u->m[1] = m;
        return;
    }
    const int64_t sb = j / 8; const int sub = (int)(j % 8);
    const uint8_t* b = row + sb * block_bytes(type);
    if (type == Q4_K || type == Q5_K) {
        float d = rdh(b), dmin = rdh(b + 2); int sc, mn;
        scale_min_k4(sub, b + 4, &sc, &mn);
        const uint8_t* qs = b + (type == Q4_K ? 16 : 48) + (sub / 2) * 32;
        for (int i = 0; i < 32; i++) {
            int v = (sub & 1) ? (qs[i] >> 4) : (qs[i] & 0xF);
            if (type == Q5_K) v |= ((b[16 + i] >> sub) & 1) << 4;
            u->q[i] = (int16_t)v;
        }
        u->d = d * sc; u->m[0] = u->m[1] = -dmin * mn;
        return;
    }
    // Q6_K: ql[128] qh[64] scales[16] d
    const int n = sub / 4, t = sub % 4;
    const uint8_t* ql = b + n * 64 + (t & 1) * 32; const uint8_t* qh = b + 128 + n * 32;
    const int8_t* scales = (const int8_t*)(b + 192) + n * 8 + 2 * t;
    for (int i = 0; i < 32; i++)
        u->q[i] = (int16_t)(((t < 2) ? (ql[i] & 0xF) : (ql[i] >> 4)) | (((qh[i] >> (2 * t)) & 3) << 4));
    u->d = rdh(b + 208); u->sc[0] = scales[0]; u->sc[1] = scales[1];
    u->m[0] = -32.f * u->d * scales[0]; u->m[1] = -32.f * u->d * scales[1];
}

// ---- thread pool -------------------------------------------------------------------------------
// One job at a time (calls are serialised). A job is (fn, ctx, n tasks); `word` holds the job's
// generation (high 32 bits) and the next unclaimed task (low 32). Anyone claims a task by CAS on
// word, so a claim can only succeed for the job it read: a worker that wakes late finds the
// generation moved on or no task left and goes back to waiting.
typedef void (*TaskFn)(void* ctx, int64_t i);
namespace pool {
static std::atomic<uint64_t> word{0};
static std::atomic<TaskFn> fn{nullptr};
static std::atomic<void*> ctx{nullptr};
static std::atomic<int64_t> n{0}, done{0};
static std::atomic<int> sleepers{0};
// Never destroyed: workers may be waiting on them when the process exits (glibc's
// pthread_cond_destroy would wait for them forever).
static std::mutex& sleep_mu = *new std::mutex;
static std::mutex& call_mu = *new std::mutex;
static std::condition_variable& wake = *new std::condition_variable;
static int nthreads = 1;
static bool started = false;
// Contention guard: when the caller, its own share done, waits long for a task a preempted worker
// holds (other processes own the cores), the next jobs run on the caller alone. "Long"
// is both past STRAGGLER_S and several of the caller's own tasks: a worker that woke late and took
// a big task (a GEMM chunk, the output layer's rows) is not preempted, and an absolute 300 us
// threshold, tripped that way on a quiet machine, cost a quarter of the decode speed.
// The solo stretch starts at SOLO_MIN jobs and doubles while the guard keeps tripping (up to
// SOLO_MAX), back to SOLO_MIN after a threaded job that did not trip it: a one-off hiccup (a host
// that stole the worker's CPU for a moment) costs a few matmuls, sustained contention ~nothing.
// Only pools of up to SOLO_THREADS go solo: there the caller is a large share of the pool. A
// 16-thread pool that went solo for one lagging worker idled 15 threads (a shared 16-core Xeon,
// SmolLM2 prefill 512: 643-1473 tok/s in runs with 9-28 solo stretches, 4028-4646 in runs with
// none, while llama.cpp in the same runs moved by 1.4x); with 16 threads dynamic task claiming
// leaves a lagging worker one task to hold up.
constexpr int64_t SOLO_MIN = 32, SOLO_MAX = 4096;
constexpr int SOLO_THREADS = 4;
constexpr double STRAGGLER_S = 1e-3;
constexpr double STRAGGLER_TASKS = 4.0;
static int64_t jobs = 0, solo_until = 0, solo_len = SOLO_MIN;
static std::atomic<int64_t> stragglers{0};   // times the guard tripped (benchmarks print it)

// Runs tasks of job `gen` until none is left; returns how many this thread ran.
static int64_t work(uint32_t gen) {
    for (int64_t mine = 0;;) {
        uint64_t w = word.load(std::memory_order_acquire);
        if ((uint32_t)(w >> 32) != gen || (int64_t)(w & 0xffffffffu) >= n.load(std::memory_order_relaxed)) return mine;
        if (word.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel)) {
            fn.load(std::memory_order_relaxed)(ctx.load(std::memory_order_relaxed), (int64_t)(w & 0xffffffffu));
            done.fetch_add(1, std::memory_order_release);
            mine++;
        }
    }
}

static void worker() {
    uint32_t seen = 0;
    for (;;) {
        uint32_t gen = (uint32_t)(word.load(std::memory_order_acquire) >> 32);
        if (gen != seen) { seen = gen; work(gen); continue; }
        bool changed = false;
        for (int spin = 0; spin < 4000 && !changed; spin++) {
#if defined(__AVX2__)
            _mm_pause();
#endif
            changed = (uint32_t)(word.load(std::memory_order_acquire) >> 32) != seen;
        }
        if (changed) continue;
        std::unique_lock<std::mutex> lk(sleep_mu);
        sleepers.fetch_add(1);
        wake.wait(lk, [&] { return (uint32_t)(word.load() >> 32) != seen; });
        sleepers.fetch_sub(1);
    }
}

static void run(TaskFn f, void* c, int64_t count) {
    if (count <= 0) return;
    std::lock_guard<std::mutex> serial(call_mu);
    if (nthreads <= 1 || count == 1 || ++jobs < solo_until) {
        for (int64_t i = 0; i < count; i++) f(c, i);
        return;
    }
    if (!started) {
        for (int i = 1; i < nthreads; i++) std::thread(worker).detach();
        started = true;
    }
    // First a generation with no task left to claim: a worker still inside work() with the last
    // job's word in hand then fails its CAS, where it would otherwise see the new n beside the old
    // generation and run a task of this job before it is published (and count it in `done` early).
    const uint32_t gen = (uint32_t)(word.load() >> 32) + 2;
    word.store((uint64_t)(gen - 1) << 32 | 0xffffffffu);
    fn.store(f); ctx.store(c); n.store(count); done.store(0);
    word.store((uint64_t)gen << 32);
    if (sleepers.load() > 0) { std::lock_guard<std::mutex> lk(sleep_mu); wake.notify_all(); }
    const auto begin = std::chrono::steady_clock::now();
    const int64_t mine = work(gen);
    const auto t0 = std::chrono::steady_clock::now();
    const double patience = std::max(STRAGGLER_S, STRAGGLER_TASKS *
        std::chrono::duration<double>(t0 - begin).count() / (double)(mine > 0 ? mine : 1));
    for (int spins = 0; done.load(std::memory_order_acquire) < count; spins++) {
#if defined(__AVX2__)
        _mm_pause();
#endif
        if ((spins & 1023) == 1023 && nthreads <= SOLO_THREADS &&
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > patience) {
            solo_until = jobs + solo_len;
            solo_len = std::min(2 * solo_len, SOLO_MAX);
            stragglers.fetch_add(1, std::memory_order_relaxed);
            while (done.load(std::memory_order_acquire) < count) std::this_thread::yield();
            return;
        }
    }
    solo_len = SOLO_MIN;
}
}  // namespace pool
// ---- input preparation ----------------------------------------------------------------------
// RMSNorm of one D-wide vector v, v * w / sqrt(mean(v^2) + eps) with the sum of squares in
// double, into out (out may be v), or added into out when `add`. The sum runs in eight lanes (one
// chain of dependent double adds was ~3 % of Gemma 3's serving step, 4 + 2 norms a layer).
static void rms_norm_row(const float* v, int64_t D, const float* w, float eps, float* out, bool add) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= D; i += 8)
        for (int k = 0; k < 8; k++) lane[k] += (double)v[i + k] * v[i + k];
    double ss = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
    for (; i < D; i++) ss += (double)v[i] * v[i];
    const float r = 1.f / sqrtf((float)(ss / D) + eps);
    if (add) for (int64_t i = 0; i < D; i++) out[i] += v[i] * r * w[i];
    else for (int64_t i = 0; i < D; i++) out[i] = v[i] * r * w[i];
}

// Gated activations of the matmul's input (x holds [gate | up], 2K wide): act(gate) * up.
enum { GLU_NONE = 0, GLU_SILU = 1, GLU_GELU_TANH = 2 };
constexpr float GELU_C = 0.7978845608f;     // sqrt(2 / pi)

// Row t of the matmul's input: a gated activation (glu) and/or RMSNorm, into out.
//   SiLU:      g / (1 + e^-g)
//   GELU-tanh: 0.5 g (1 + tanh(c (g + 0.044715 g^3))), tanh(u) = 1 - 2 / (e^2u + 1)
static void prepare_row(const float* x, int64_t K, int glu, const float* norm_w, float eps, float* out) {
    const float* v = x;
    if (glu) {
        int64_t i = 0;
#if defined(LLMOS_AVX2)
        const __m256 one = _mm256_set1_ps(1.f), two = _mm256_set1_ps(2.f), half = _mm256_set1_ps(.5f), zero = _mm256_setzero_ps();
        for (; i + 8 <= K; i += 8) {
            const __m256 g = _mm256_loadu_ps(x + i);
            __m256 a;
            if (glu == GLU_SILU) {
                a = _mm256_div_ps(g, _mm256_add_ps(one, llmos_exp8(_mm256_sub_ps(zero, g))));
            } else {
                const __m256 u = _mm256_mul_ps(_mm256_set1_ps(GELU_C),
                    _mm256_add_ps(g, _mm256_mul_ps(_mm256_set1_ps(0.044715f), _mm256_mul_ps(g, _mm256_mul_ps(g, g)))));
                const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(llmos_exp8(_mm256_add_ps(u, u)), one)));
                a = _mm256_mul_ps(_mm256_mul_ps(half, g), _mm256_add_ps(one, t));
            }
            _mm256_storeu_ps(out + i, _mm256_mul_ps(a, _mm256_loadu_ps(x + K + i)));
        }
#endif
        for (; i < K; i++) {
            const float g = x[i];
            float a;
            if (glu == GLU_SILU) {
                a = g / (1.f + expf(-g));
            } else {
                const float u = GELU_C * (g + 0.044715f * (g * (g * g)));
                a = (.5f * g) * (1.f + (1.f - 2.f / (expf(fminf(u + u, 88.f)) + 1.f)));
            }
            out[i] = a * x[K + i];
        }
        v = out;
    }
    if (norm_w) rms_norm_row(v, K, norm_w, eps, out, false);
}

struct Prep { const float* X; int64_t K, ldx; int glu; const float* norm_w; float eps; float* out; int64_t T; };
constexpr int64_t PREP_ROWS = 8;
static void prep_task(void* p, int64_t i) {
    const Prep& j = *(const Prep*)p;
    for (int64_t t = i * PREP_ROWS; t < j.T && t < (i + 1) * PREP_ROWS; t++)
        prepare_row(j.X + t * j.ldx, j.K, j.glu, j.norm_w, j.eps, j.out + t * j.K);
}

struct Job {   // one matmul, cut into tasks of (token chunk, row chunk)
    int type; const uint8_t* W; int64_t N, K, rb; const float* X; int64_t ldx, T; float* Y; int64_t ldy;
    int add; int64_t rows_per_task, row_tasks;
    const float* xsum;      // row-grouped: the 32-block sums of X on the grid, [T, K / 32] (SUM_HAS_M types but
    //                         a8 Q4_K read them: it reads msums)
    const float* grid_g = nullptr;    // row-grouped: X's grid (rowgroup_kernels.h), [T, K / 32],
    const int32_t* pairs = nullptr;   // and its int16 pairs, [T, K / 2] (more than one token)
    const int8_t* xbytes = nullptr;   // and those as AMX's hi then lo bytes, [2, T, K] (amx_tiles.h), or null
    const int32_t* quads = nullptr;   // or, an a8 job: X at 8 bits, [T, K / 4] quads (grid8_row, K-quants'
    //                                   grid8_row256)
    const int32_t* isum = nullptr;    // row-grouped: X's integers (either grid) summed 16 at a time, [T, K / 16]
    const int32_t* msums = nullptr;   // a K-quant a8 job: X's integers summed a 32-block, int16 pairs [T, K / 64]
    uint64_t* best = nullptr;         // an argmax job (row-grouped): no Y; each token's best key (rg_best_key)
    int64_t col = 0;                  // over this part's columns col .. col + N, max-reduced into best[T]
};
// Tokens a task takes while its panel is reused. Fewer tokens made the panel again more often: 2
// Zen 4 cores, 512 tokens, 64 -> 256, Q4_0 4096 x 2048 -4 %, 2048 x 8192 -4 %; a8 Q4_K 4096 x 2048
// -10 %, Q6_K 2048 x 8192 -14 %, Gemma 3's 640 x 1024 Q4_K -9 %; block-layout Q5_K -7 %. 512: as 256.
constexpr int64_t TCHUNK = 256;
constexpr int NR = 6;           // weight rows per dequantised panel
constexpr int NC = 2;           // tokens per micro-kernel call: 12 accumulators, x in registers
constexpr int64_t KCHUNK = 768; // K per pass over a panel: 6 rows x 768 fp32 + 2 tokens' rows stay in L1
// Rows per one-token (GEMV) call: 4 share each load of x; types with costlier unpacking run out of
// registers at 4 (one Zen 3 core, cycles a 32-block from DRAM at 2: Q5_0 10.7 -> 10.1, Q6_K
// 21.2 -> 20.3; Q4_1 and Q8_0 are faster at 4).
template <int TYPE> constexpr int GV = (TYPE == Q5_0 || TYPE == Q5_1 || TYPE == Q5_K || TYPE == Q6_K) ? 2 : 4;

// ---- vector path (simd_vec.h: AVX-512F or AVX2 + FMA): dequantise a 32-block into registers,
// FMA micro-kernel -----------------------------------------------------------------------------
#if defined(LLMOS_VEC)
constexpr int VB = 32 / VN;     // vectors per 32-block

// Weights are read a super-block at a time: one 32-block, or a K-quant's 256 weights (8 sub-blocks
// of 32). scales() unpacks what the super-block's sub-blocks need beyond their quants, once;
// deq<SUB> then dequantises sub-block SUB with its shifts known at compile time (a Q4_K GEMV on one
// Zen 3 core, weights from DRAM: ~29.5 cycles a 32-block when each sub-block unpacked its own
// scale and shifted by a run-time count, ~12 now, the prefetch change in gemv_rows included).
template <int TYPE> constexpr int SUBS = (TYPE == Q4_K || TYPE == Q5_K || TYPE == Q6_K) ? 8 : 1;
template <int TYPE> constexpr int64_t SUPER_BYTES = TYPE == Q4_0 ? 18 : TYPE == Q4_1 ? 20 : TYPE == Q5_0 ? 22 :
    TYPE == Q5_1 ? 24 : TYPE == Q8_0 ? 34 : TYPE == Q4_K ? 144 : TYPE == Q5_K ? 176 : 210;

// FIFTH.v[b][j] = 16 * bit j of byte b: a byte of Q5_0/Q5_1 high bits as 8 int32 lanes, ready to
// or into the low 4 bits: one load a vector, where shifting and masking the bits took three
// operations (Q5_0 GEMV on one Zen 3 core, weights from DRAM, 4 rows a group: 14.0 -> 10.7 cycles
// a 32-block).
struct FifthBits {
    alignas(32) int32_t v[256][8];
    constexpr FifthBits() : v() {
        for (int b = 0; b < 256; b++) for (int j = 0; j < 8; j++) v[b][j] = ((b >> j) & 1) << 4;
    }
};
static constexpr FifthBits FIFTH{};

// Weights of sub-block s are fma(q, D[s], M[s]); Q6_K has a pair per 16 weights: weights
// 16h .. 16h+15 take D[2s+h], M[2s+h].
template <int TYPE> constexpr int HALVES = TYPE == Q6_K ? 2 : 1;
template <int TYPE> struct Scales { float D[HALVES<TYPE> * SUBS<TYPE>], M[HALVES<TYPE> * SUBS<TYPE>]; };

template <int TYPE> static inline void scales(const uint8_t* b, Scales<TYPE>& s) {
    if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
        // The 8 sub-blocks' 6-bit scale and min from 12 bytes q = b + 4, one sub-block a lane
        // (scale_min_k4's formulas; ~15 vector operations against ~100 scalar ones):
        //   j < 4: sc = q[j] & 63,                       mn = q[j+4] & 63
        //   j >= 4: sc = q[j+4] & 15 | (q[j-4] >> 6) << 4, mn = q[j+4] >> 4 | (q[j] >> 6) << 4
        const __m256i qj = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(b + 4)));
        const __m256i qj4 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(b + 8)));
        const __m256i qjm4 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)b));    // q[j-4] for j >= 4
        const __m256i m63 = _mm256_set1_epi32(63), m15 = _mm256_set1_epi32(15);
        const __m256i sc = _mm256_blend_epi32(_mm256_and_si256(qj, m63),
            _mm256_or_si256(_mm256_and_si256(qj4, m15), _mm256_slli_epi32(_mm256_srli_epi32(qjm4, 6), 4)), 0xF0);
        const __m256i mn = _mm256_blend_epi32(_mm256_and_si256(qj4, m63),
            _mm256_or_si256(_mm256_srli_epi32(qj4, 4), _mm256_slli_epi32(_mm256_srli_epi32(qj, 6), 4)), 0xF0);
        _mm256_storeu_ps(s.D, _mm256_mul_ps(_mm256_set1_ps(rdh(b)), _mm256_cvtepi32_ps(sc)));
        _mm256_storeu_ps(s.M, _mm256_mul_ps(_mm256_set1_ps(-rdh(b + 2)), _mm256_cvtepi32_ps(mn)));
    } else if constexpr (TYPE == Q6_K) {       // ql[128] qh[64] scales[16] d: D = d * scale, M = -32 D
        const __m256 d = _mm256_set1_ps(rdh(b + 208)), m32 = _mm256_set1_ps(-32.f);
        for (int h = 0; h < 2; h++) {
            const __m256 D = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(b + 192 + 8 * h)))));
            _mm256_storeu_ps(s.D + 8 * h, D);
            _mm256_storeu_ps(s.M + 8 * h, _mm256_mul_ps(m32, D));
        }
    } else {
        const float d = rdh(b);
        s.D[0] = d;
        s.M[0] = TYPE == Q4_0 ? -8.f * d : TYPE == Q5_0 ? -16.f * d : TYPE == Q8_0 ? 0.f : rdh(b + 2);
    }
}

// The 32 weights of sub-block SUB of super-block b as fp32, in order: out[i] holds weights
// i*VN .. i*VN+VN-1.
template <int TYPE, int SUB> static inline void deq(const uint8_t* b, const Scales<TYPE>& s, vf out[VB]) {
    vi v[VB];
    const vi lo4 = vset1i(0xF);
    if constexpr (TYPE == Q4_0 || TYPE == Q4_1 || TYPE == Q5_0 || TYPE == Q5_1) {
        const uint8_t* qs = b + (TYPE == Q4_0 ? 2 : TYPE == Q4_1 ? 4 : TYPE == Q5_0 ? 6 : 8);
        constexpr int L = 16 / VN;      // 16 bytes: weights 0-15 in the low nibbles, 16-31 in the high
        vi a[L];
        for (int g = 0; g < L; g++) a[g] = vu8(qs + g * VN);
        for (int g = 0; g < L; g++) { v[g] = vand(a[g], lo4); v[L + g] = vsrli<4>(a[g]); }
        if constexpr (TYPE == Q5_0 || TYPE == Q5_1) {     // weight e's fifth bit is bit e of qh[4]
            const uint8_t* qh = b + (TYPE == Q5_0 ? 2 : 4);
            for (int i = 0; i < VB; i++)
                v[i] = vor(v[i], vload_8_8(FIFTH.v[qh[i * VN / 8]], FIFTH.v[qh[i * VN / 8 + (VN > 8)]]));
        }
    } else if constexpr (TYPE == Q8_0) {
        for (int i = 0; i < VB; i++) v[i] = vs8(b + 2 + VN * i);
    } else if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
        // Sub-blocks 2p and 2p+1 are the low and high nibbles of the same 32 bytes; Q5_K's fifth
        // bits are bit SUB of qh[32].
        const uint8_t* qs = b + (TYPE == Q4_K ? 16 : 48) + (SUB >> 1) * 32;
        for (int i = 0; i < VB; i++) {
            const vi u = vu8(qs + VN * i);
            v[i] = (SUB & 1) ? vsrli<4>(u) : vand(u, lo4);
        }
        if constexpr (TYPE == Q5_K) {
            const vi bit = vset1i(1 << SUB);
            for (int i = 0; i < VB; i++) {
                const vi h = vand(vu8(b + 16 + VN * i), bit);
                if constexpr (SUB <= 4) v[i] = vor(v[i], vslli<4 - SUB>(h));
                else v[i] = vor(v[i], vsrli<SUB - 4>(h));
            }
        }
    } else {  // Q6_K: sub-block (n, t) = (SUB / 4, SUB % 4): 4 bits of ql, bits 2t, 2t+1 of qh
        constexpr int n = SUB >> 2, t = SUB & 3;
        const uint8_t* ql = b + n * 64 + (t & 1) * 32; const uint8_t* qh = b + 128 + n * 32;
        const vi two = vset1i(3 << (2 * t));
        for (int i = 0; i < VB; i++) {
            const vi l = vu8(ql + VN * i), h = vand(vu8(qh + VN * i), two);
            const vi lo = t >= 2 ? vsrli<4>(l) : vand(l, lo4);
            if constexpr (t == 0) v[i] = vor(lo, vslli<4>(h));
            else if constexpr (t == 1) v[i] = vor(lo, vslli<2>(h));
            else if constexpr (t == 2) v[i] = vor(lo, h);
            else v[i] = vor(lo, vsrli<2>(h));
        }
    }
    for (int i = 0; i < VB; i++) {
        const int h = HALVES<TYPE> == 2 ? 2 * SUB + (i * VN >= 16) : SUB;
        out[i] = vfma(vcvt(v[i]), vset1(s.D[h]), vset1(s.M[h]));
    }
}

// f(std::integral_constant<int, S>) for S = 0 .. N-1, unrolled.
template <class F, int... S> static inline void unroll(F&& f, std::integer_sequence<int, S...>) {
    (f(std::integral_constant<int, S>{}), ...);
}

// One token against R rows, dequantising in registers (no panel): the same products in the
// same order as micro<R, 1> on a dequantised panel.
template <int TYPE, int R>
static inline void gemv_rows(const uint8_t* W, int64_t rb, int64_t nb, const float* x, float* y, int add) {
    vf acc[R];
    for (int r = 0; r < R; r++) acc[r] = vzero();
    for (int64_t sb = 0; sb < nb / SUBS<TYPE>; sb++) {
        const uint8_t* b = W + sb * SUPER_BYTES<TYPE>;
        // The next group of R rows streams in while this one computes, a super-block at a time
        // (fetching it all up front stalled on the memory system; from DRAM on one Zen 3 core,
        // cycles a 32-block: Q4_1 11.3 -> 8.6, Q8_0 12.1 -> 8.6, Q4_K 25.8 -> 14.7, Q6_K 37.5 -> 20.2).
        for (int r = 0; r < R; r++)
            for (int64_t o = 0; o < SUPER_BYTES<TYPE>; o += 64) _mm_prefetch((const char*)(b + (R + r) * rb + o), _MM_HINT_T0);
        Scales<TYPE> s[R];
        for (int r = 0; r < R; r++) scales<TYPE>(b + r * rb, s[r]);
        const float* xs = x + sb * SUBS<TYPE> * 32;
        unroll([&](auto SUB) {
            for (int r = 0; r < R; r++) {
                vf w[VB]; deq<TYPE, decltype(SUB)::value>(b + r * rb, s[r], w);
                for (int i = 0; i < VB; i++) acc[r] = vfma(w[i], vload(xs + SUB * 32 + VN * i), acc[r]);
            }
        }, std::make_integer_sequence<int, SUBS<TYPE>>{});
    }
    for (int r = 0; r < R; r++) { const float v = vhsum(acc[r]); y[r] = add ? y[r] + v : v; }
}

// Row `row` (nb 32-blocks) dequantised into out[0 .. 32 nb).
template <int TYPE> static inline void deq_row(const uint8_t* row, int64_t nb, float* out) {
    for (int64_t sb = 0; sb < nb / SUBS<TYPE>; sb++) {
        const uint8_t* b = row + sb * SUPER_BYTES<TYPE>;
        Scales<TYPE> s; scales<TYPE>(b, s);
        float* o = out + sb * SUBS<TYPE> * 32;
        unroll([&](auto SUB) {
            vf v[VB]; deq<TYPE, decltype(SUB)::value>(b, s, v);
            for (int i = 0; i < VB; i++) vstore(o + SUB * 32 + VN * i, v[i]);
        }, std::make_integer_sequence<int, SUBS<TYPE>>{});
    }
}


// R panel rows (fp32, row stride K) x C tokens, over k in [k0, k1): y[c*ldy + r] (+)= sum_k w[r][k] * x[c][k].
// Per (r, c) always: acc = fma(w[k..k+VN], x[k..k+VN], acc) for k = 0, VN, ..., then vhsum(acc). A
// long K runs in chunks (the panel's chunk stays in L1 across the tokens: 576 x 1536 at 64 tokens,
// 141 -> 162 GFLOP/s on Zen 3): `carry` holds the R x C accumulators between chunks, stored and
// reloaded exactly, so the sums are the same as in one pass. Always inlined: GCC stopped inlining
// it into gemm_task as that grew, and the calls cost ~3 % of a 3072 x 576 x 64 GEMM.
template <int R, int C>
__attribute__((always_inline)) static inline void micro(const float* w, int64_t K, int64_t k0, int64_t k1, const float* x, int64_t ldx,
                         float* y, int64_t ldy, int add, float* carry) {
    vf acc[R][C];
    for (int r = 0; r < R; r++) for (int c = 0; c < C; c++)
        acc[r][c] = k0 == 0 ? vzero() : vload(carry + VN * (r * C + c));
    for (int64_t k = k0; k < k1; k += VN) {
        vf xv[C];
        for (int c = 0; c < C; c++) xv[c] = vload(x + c * ldx + k);
        for (int r = 0; r < R; r++) {
            vf wv = vload(w + r * K + k);
            // Keep wv in a register: GCC otherwise folds the load into each of the C FMAs
            // (C loads of the same vector), and the loads, not the FMAs, bound the loop:
            // measured on Zen 3, 106 -> 134 GFLOP/s for a 3072 x 576 Q4_1 matrix x 64 tokens.
            LLMOS_PIN(wv);
            for (int c = 0; c < C; c++) acc[r][c] = vfma(wv, xv[c], acc[r][c]);
        }
    }
    if (k1 < K) {
        for (int r = 0; r < R; r++) for (int c = 0; c < C; c++) vstore(carry + VN * (r * C + c), acc[r][c]);
        return;
    }
    for (int r = 0; r < R; r++) for (int c = 0; c < C; c++) {
        const float v = vhsum(acc[r][c]);
        float* o = y + c * ldy + r;
        *o = add ? *o + v : v;
    }
}

// The hardware prefetcher does not keep up with these loops (measured on a Zen 3 VM: a 30 MB
// GEMV streamed 2.2 GB/s without this, ~9 GB/s with): each panel fetches the one after the next
// (gemv_rows fetches its next group of rows as it goes).
static inline void prefetch(const uint8_t* p, int64_t n) {
    for (int64_t off = 0; off < n; off += 64) _mm_prefetch((const char*)p + off, _MM_HINT_T0);
}

// Rows [r_begin, r_end) of W times one token x into y. Never inlined: compiled inside gemm_task next
// to the inlined micro-kernels, the K-quant GEMVs lost registers (Q4_K 12 -> 15, Q5_K 16 -> 21
// cycles a 32-block on one Zen 3 core).
template <int TYPE>
__attribute__((noinline)) static void gemv_range(const uint8_t* W, int64_t rb, int64_t nb, const float* x, float* y,
                                                 int64_t r_begin, int64_t r_end, int add) {
    int64_t r = r_begin;
    for (; r + GV<TYPE> <= r_end; r += GV<TYPE>) gemv_rows<TYPE, GV<TYPE>>(W + r * rb, rb, nb, x, y + r, add);
    for (; r < r_end; r++) gemv_rows<TYPE, 1>(W + r * rb, rb, nb, x, y + r, add);
}

template <int TYPE>
static void gemm_task(void* p, int64_t i) {
    const Job& j = *(const Job*)p;
    const uint8_t* const W = j.W; const float* const X = j.X; float* const Y = j.Y;
    const int64_t K = j.K, rb = j.rb, ldx = j.ldx, ldy = j.ldy, nb = K / 32; const int add = j.add;
    const int64_t t0 = (i / j.row_tasks) * TCHUNK, tn = j.T - t0 < TCHUNK ? j.T - t0 : TCHUNK;
    const int64_t r_begin = (i % j.row_tasks) * j.rows_per_task;
    const int64_t r_end = r_begin + j.rows_per_task < j.N ? r_begin + j.rows_per_task : j.N;
    if (tn == 1) {                   // one token: dequantise in registers, no panel
        gemv_range<TYPE>(W, rb, nb, X + t0 * ldx, Y + t0 * ldy, r_begin, r_end, add);
        return;
    }
    thread_local std::vector<float> panel;
    if ((int64_t)panel.size() < NR * K) panel.resize((size_t)(NR * K));
    float* const w = panel.data();
    thread_local std::vector<float> carry(VN * NR * TCHUNK);   // accumulators between K chunks
    for (int64_t r0 = r_begin; r0 < r_end; r0 += NR) {
        const int64_t R = r_end - r0 < NR ? r_end - r0 : NR;
        prefetch(W + (r0 + 2 * NR) * rb, NR * rb);
        for (int64_t r = 0; r < R; r++) deq_row<TYPE>(W + (r0 + r) * rb, nb, w + r * K);
        const float* x = X + t0 * ldx; float* y = Y + t0 * ldy + r0;
        for (int64_t k0 = 0; k0 < K; k0 += KCHUNK) {
            const int64_t k1 = K - k0 <= KCHUNK ? K : k0 + KCHUNK;
            float* cy = carry.data();
            if (R == NR) {
                int64_t c = 0;
                for (; c + NC <= tn; c += NC, cy += VN * NR * NC) micro<NR, NC>(w, K, k0, k1, x + c * ldx, ldx, y + c * ldy, ldy, add, cy);
                for (; c < tn; c++, cy += VN * NR) micro<NR, 1>(w, K, k0, k1, x + c * ldx, ldx, y + c * ldy, ldy, add, cy);
            } else {
                for (int64_t r = 0; r < R; r++) {
                    int64_t c = 0;
                    for (; c + NC <= tn; c += NC, cy += VN * NC) micro<1, NC>(w + r * K, K, k0, k1, x + c * ldx, ldx, y + c * ldy + r, ldy, add, cy);
                    for (; c < tn; c++, cy += VN) micro<1, 1>(w + r * K, K, k0, k1, x + c * ldx, ldx, y + c * ldy + r, ldy, add, cy);
                }
            }
        }
    }
}

#include "rowgroup_kernels.h"
#endif

// ---- scalar kernel (CPUs without AVX2 + FMA) ---------------------------------------------------
static void deq32_scalar(int type, const uint8_t* row, int64_t b, float* out) {
    Unpacked u; unpack(type, row, b, &u);
    for (int k = 0; k < 32; k++) out[k] = fmaf((float)u.q[k], u.d * (float)u.sc[k >> 4], u.m[k >> 4]);
}

static void scalar_task(void* p, int64_t i) {
    const Job& j = *(const Job*)p;
    std::vector<float> w((size_t)j.K);
    const int64_t t0 = (i / j.row_tasks) * TCHUNK, t1 = t0 + TCHUNK < j.T ? t0 + TCHUNK : j.T;
    const int64_t r_begin = (i % j.row_tasks) * j.rows_per_task;
    const int64_t r_end = r_begin + j.rows_per_task < j.N ? r_begin + j.rows_per_task : j.N;
    for (int64_t n = r_begin; n < r_end; n++) {
        for (int64_t b = 0; b < j.K / 32; b++) deq32_scalar(j.type, j.W + n * j.rb, b, w.data() + b * 32);
        for (int64_t t = t0; t < t1; t++) {
            const float* x = j.X + t * j.ldx; float acc = 0.f;
            for (int64_t k = 0; k < j.K; k++) acc += w[k] * x[k];
            float* y = j.Y + t * j.ldy + n; *y = j.add ? *y + acc : acc;
        }
    }
}

// ---- exported entry points -------------------------------------------------------------------
extern "C" {

const char* llmos_quant_isa(void) {
#if defined(LLMOS_SIMDE_AVX512)
    return "avx512f (SIMDe emulation)";
#elif defined(LLMOS_AMX)
    return amx_ready() ? "avx512f+vnni+amx" : "avx512f+vnni (AMX refused by the OS)";
#elif defined(LLMOS_AVX512) && defined(__AVX512VNNI__)
    return "avx512f+vnni";
#elif defined(LLMOS_AVX512)
    return "avx512f";
#elif defined(LLMOS_VEC) && (defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__)))
    return "avx2-fma+vnni";
#elif defined(LLMOS_VEC)
    return "avx2-fma";
#else
    return "scalar";
#endif
}

int llmos_quant_supported(int type) { return block_bytes(type) > 0; }

// Bytes of W ([N, K] in `type`) repacked row-grouped (drivers/rowgroup_kernels.h), or 0 where
// this build has no row-grouped kernel for the type (then W is used as it is).
int64_t llmos_rowgroup_bytes(int type, int64_t N, int64_t K) {
#if defined(LLMOS_VEC)
    if (rg_supported(type) && K % block_elems(type) == 0 && N > 0)
        return (N + VN - 1) / VN * rg_group_bytes(type, K);
#endif
    (void)type; (void)N; (void)K;
    return 0;
}

// Repacks W into out (llmos_rowgroup_bytes(type, N, K) bytes); llmos_qmatmul then takes it as type
// RG + type. Returns 0, or -1 where llmos_rowgroup_bytes is 0.
int llmos_rowgroup_pack(int type, const uint8_t* W, int64_t N, int64_t K, int64_t rb, uint8_t* out) {
    if (!llmos_rowgroup_bytes(type, N, K)) return -1;
#if defined(LLMOS_VEC)
    rg_pack(type, W, N, K, rb, out);
#endif
    (void)W; (void)rb; (void)out;
    return 0;
}

// One part's kernel for a Job (its task function); null for a type without one.
static TaskFn task_of(int type) {
#if defined(LLMOS_VEC)
    switch (type) {
        case Q4_0: return gemm_task<Q4_0>;
        case Q4_1: return gemm_task<Q4_1>;
        case Q5_0: return gemm_task<Q5_0>;
        case Q5_1: return gemm_task<Q5_1>;
        case Q8_0: return gemm_task<Q8_0>;
        case Q4_K: return gemm_task<Q4_K>;
        case Q5_K: return gemm_task<Q5_K>;
        case Q6_K: return gemm_task<Q6_K>;
        case RG_Q4_0: return rg_task<Q4_0>;
        case RG_Q4_1: return rg_task<Q4_1>;
        case RG_Q5_0: return rg_task<Q5_0>;
        case RG_Q5_1: return rg_task<Q5_1>;
        case RG_Q8_0: return rg_task<Q8_0>;
        case RG_Q4_K: return rg_task<Q4_K>;
        case RG_Q6_K: return rg_task<Q6_K>;
    }
#endif
    return type < RG_TYPES ? scalar_task : nullptr;
}

// The parts' jobs as one pool job: task i is task i - first[p] of part p's job.
struct Parts { const Job* jobs; const TaskFn* fns; const int64_t* first; int64_t n; };
static void parts_task(void* p, int64_t i) {
    const Parts& m = *(const Parts*)p;
    int64_t k = 0;
    while (i >= m.first[k + 1]) k++;
    m.fns[k]((void*)&m.jobs[k], i - m.first[k]);
}

// Rows per task of a part's job: GEMM tasks of the row-grouped kernels take one micro-kernel's
// groups (RG_RV, an a8 job's a8_rv; more where that makes over 16 tasks a thread), so that tasks
// split evenly between threads (SmolLM2's 576-row matrices made 9 tasks of 64 rows, 5 on one thread
// of two, and its 192-row K and V 3); GEMV tasks (one token, or up to rg_few_max sharing the passes;
// and the block layout's) about 8 a thread, in whole GEMV passes or panels.
static int64_t rows_per_task(int type, int64_t N, int64_t T, bool a8) {
#if defined(LLMOS_VEC)
    if (type >= RG_TYPES) {
        const int base = type - RG_TYPES;
        if (T > 1 && !((a8 || rg_int_gemv(base)) && T <= rg_few_max(base))) {
            const int64_t unit = (a8 ? a8_rv(base) : RG_RV) * VN, units = (N + unit - 1) / unit;
            return unit * std::max<int64_t>(1, units / (16 * (int64_t)pool::nthreads));
        }
        const int64_t want = 8 * (int64_t)pool::nthreads, round = RG_GV * VN;
        return ((N + want - 1) / want + round - 1) / round * round;
    }
#endif
    constexpr int64_t ROUND = 12;                               // whole panels and GEMV groups
    static_assert(ROUND % NR == 0 && ROUND % GV<Q4_0> == 0 && ROUND % GV<Q6_K> == 0,
                  "tasks split rows at panel boundaries");
    const int64_t want = 8 * (int64_t)pool::nthreads;
    return ((N + want - 1) / want + ROUND - 1) / ROUND * ROUND;
}

// Whether an a8 matmul (act8 below) takes x at 8 bits here: where vpdpbusd is one instruction.
int llmos_act8_supported(void) {
#if defined(LLMOS_VDPBUSD)
    return 1;
#else
    return 0;
#endif
}

// llmos_qmatmul_parts, or with best (every part row-grouped, Y null) an argmax job's (Job.best).
static int qmatmul(const QPart* parts, int64_t n_parts, int64_t K, const float* X, int64_t T, int64_t ldx,
                   float* Y, int64_t ldy, int add, int glu, const float* norm_w, float eps, int act8, uint64_t* best) {
    [[maybe_unused]] bool split[2] = {false, false}, fp32_gemv = false, sb256 = false;
#if defined(LLMOS_VEC)
    const bool a8 = act8 && llmos_act8_supported();      // every token count: the same bits alone or batched
#endif
    for (int64_t p = 0; p < n_parts; p++) {
        const int type = (int)parts[p].type, base = type >= RG_TYPES ? type - RG_TYPES : type;
        if (!block_bytes(base) || (base != type && !llmos_rowgroup_bytes(base, parts[p].N, K)) || !task_of(type))
            return -1;
        if (K % block_elems(base)) return -2;
#if defined(LLMOS_VEC)
        if (base != type) {
            fp32_gemv |= !rg_int_gemv(base);
            if (a8 && rg_a8_sb(base)) sb256 = true;        // x with one g a 256-block, below
            else split[rg_split_pairs(base)] = true;
        }
#endif
    }
    if (T <= 0 || n_parts <= 0) return 0;
    // The input's buffers are the calling thread's and only grow: allocating them on every call
    // cost page faults (~5 % of a SmolLM2 prefill).
    thread_local std::vector<float> xp, xsum, xq, grid_g, g256;
    thread_local std::vector<int32_t> pairs[2], quads[2], isum, isum256, quads256, msums;
    thread_local std::vector<int8_t> xbytes[2];
    thread_local std::vector<Job> jobs;
    thread_local std::vector<TaskFn> fns;
    thread_local std::vector<int64_t> first;
    auto grow = [](auto& v, int64_t n) { if ((int64_t)v.size() < n) v.resize((size_t)n); };
    if (glu || norm_w) {
        grow(xp, T * K);
        Prep prep{X, K, ldx, glu, norm_w, eps, xp.data(), T};
        pool::run(prep_task, &prep, (T + PREP_ROWS - 1) / PREP_ROWS);
        X = xp.data(); ldx = K;
    }
#if defined(LLMOS_VEC)
    if (sb256) {          // the K-quants' a8 input (grid8_row256)
        grow(g256, T * (K / 32)); grow(msums, T * (K / 64)); grow(isum256, T * (K / 16)); grow(quads256, T * (K / 4));
        Grid grid{X, ldx, K, T, nullptr, g256.data(), nullptr, {nullptr, nullptr}};
        grid.quads[0] = quads256.data(); grid.isum = isum256.data(); grid.msums = msums.data();
        pool::run(grid_task, &grid, (T + PREP_ROWS - 1) / PREP_ROWS);
    }
    if (split[0] || split[1]) {   // x on the grid (rowgroup_kernels.h), once: int16 pairs, or a8's byte quads,
        grow(grid_g, T * (K / 32)); grow(xsum, T * (K / 32)); grow(isum, T * (K / 16));   // in each pair order used
        if (fp32_gemv && !a8) grow(xq, T * K);  // x on the grid as fp32, for the fp32 GEMV (RG_INT_GEMV)
        Grid grid{X, ldx, K, T, fp32_gemv && !a8 ? xq.data() : nullptr, grid_g.data(), xsum.data(), {nullptr, nullptr}};
        grid.isum = isum.data();
        for (int s = 0; s < 2; s++)
            if (split[s]) {
                std::vector<int32_t>& buf = a8 ? quads[s] : pairs[s];
                grow(buf, T * (K / (a8 ? 4 : 2)));
                (a8 ? grid.quads : grid.pairs)[s] = buf.data();
            }
        pool::run(grid_task, &grid, (T + PREP_ROWS - 1) / PREP_ROWS);
#if defined(LLMOS_AMX)
        for (int s = 0; s < 2; s++)
            if (grid.pairs[s] && T >= 16 && amx_ready()) {      // some tokens' sums come from tiles
                grow(xbytes[s], 2 * T * K);
                AmxSplit split_job{grid.pairs[s], T, K, xbytes[s].data()};
                pool::run(amx_split_task, &split_job, (T + PREP_ROWS - 1) / PREP_ROWS);
            }
#endif
    }
#endif
    jobs.clear(); fns.clear(); first.assign(1, 0);
    for (int64_t p = 0; p < n_parts; p++) {
        const QPart& q = parts[p];
        const int type = (int)q.type;
        Job job{type, q.W, q.N, K, q.rb, X, ldx, T, Y ? Y + q.col : nullptr, ldy, add, 0, 0, nullptr};
        job.best = best; job.col = q.col;
#if defined(LLMOS_VEC)
        if (type >= RG_TYPES && a8 && rg_a8_sb(type - RG_TYPES)) {
            job.X = nullptr; job.ldx = K;
            job.grid_g = g256.data(); job.msums = msums.data(); job.isum = isum256.data(); job.quads = quads256.data();
        } else if (type >= RG_TYPES) {
            job.X = rg_int_gemv(type - RG_TYPES) ? nullptr : xq.data(); job.ldx = K;
            job.grid_g = grid_g.data(); job.xsum = xsum.data(); job.isum = isum.data();
            job.pairs = pairs[rg_split_pairs(type - RG_TYPES)].data();
            if (a8) job.quads = quads[rg_split_pairs(type - RG_TYPES)].data();
#if defined(LLMOS_AMX)
            if (!a8) job.xbytes = T >= 16 && amx_ready() ? xbytes[rg_split_pairs(type - RG_TYPES)].data() : nullptr;
#endif
        }
#endif
        job.rows_per_task = rows_per_task(type, q.N, T, job.quads != nullptr);
        job.row_tasks = (q.N + job.rows_per_task - 1) / job.rows_per_task;
        jobs.push_back(job);
        fns.push_back(task_of(type));
        first.push_back(first.back() + job.row_tasks * ((T + TCHUNK - 1) / TCHUNK));
    }
    Parts all{jobs.data(), fns.data(), first.data(), n_parts};
    pool::run(parts_task, &all, first.back());
    return 0;
}
int llmos_qmatmul_parts(const QPart* parts, int64_t n_parts, int64_t K, const float* X, int64_t T, int64_t ldx,
                        float* Y, int64_t ldy, int add, int glu, const float* norm_w, float eps, int act8) {
    return qmatmul(parts, n_parts, K, X, T, ldx, Y, ldy, add, glu, norm_w, eps, act8, nullptr);
}

// llmos_qmatmul_parts for one part: Y (+)= f(X) W^T, W [N, K].
int llmos_qmatmul(int type, const uint8_t* W, int64_t N, int64_t K, int64_t rb,
                  const float* X, int64_t T, int64_t ldx, float* Y, int64_t ldy, int add,
                  int glu, const float* norm_w, float eps) {
    const QPart part{type, W, N, rb, 0};
    return llmos_qmatmul_parts(&part, 1, K, X, T, ldx, Y, ldy, add, glu, norm_w, eps, 0);
}

// llmos_qmatmul_parts's arguments in one struct (drivers/quant.py's QArgs): a ctypes call with one
// pointer costs ~0.5 us against ~2.2 us for twelve converted arguments, on every matmul.
struct QArgs {
    const QPart* parts; int64_t n_parts, K; const float* X; int64_t T, ldx;
    float* Y; int64_t ldy, add, glu; const float* norm_w; float eps; int64_t act8;
};
int llmos_qmatmul_args(const QArgs* a) {
    return llmos_qmatmul_parts(a->parts, a->n_parts, a->K, a->X, a->T, a->ldx, a->Y, a->ldy, (int)a->add,
                               (int)a->glu, a->norm_w, a->eps, (int)a->act8);
}

// The argmax of llmos_qmatmul_args's outputs, which are not written (a->Y and a->add unused): out[t]
// = the column of token t's largest output over the parts, torch.argmax's pick (the first of equal
// ones; a row's first NaN), its bits those Y would hold (a greedy batch's output layer: Gemma 3's
// 64 x 262144 logits are 67 MB a step). Returns llmos_qmatmul_parts's codes, or -3 where a part
// is not row-grouped (then the caller takes the outputs and their argmax).
int llmos_qmatmul_argmax(const QArgs* a, int64_t* out) {
#if defined(LLMOS_VEC)
    if (a->n_parts <= 0) return -1;
    for (int64_t p = 0; p < a->n_parts; p++)
        if (a->parts[p].type < RG_TYPES) return -3;
    thread_local std::vector<uint64_t> best;
    best.assign((size_t)std::max<int64_t>(a->T, 0), 0);
    const int rc = qmatmul(a->parts, a->n_parts, a->K, a->X, a->T, a->ldx, nullptr, 0, 0, (int)a->glu, a->norm_w,
                           a->eps, (int)a->act8, best.data());
    if (rc == 0)
        for (int64_t t = 0; t < a->T; t++) out[t] = rg_best_col(best[t]);
    return rc;
#else
    (void)a; (void)out;
    return -3;
#endif
}

// Runs fn(ctx, i) for i in [0, n) on the pool (drivers/attention_kernels.cpp uses it).
void llmos_parallel(TaskFn fn, void* ctx, int64_t n) { pool::run(fn, ctx, n); }

// Threads the kernels use (the caller included); takes effect before the first threaded call.
void llmos_quant_set_threads(int n) { if (!pool::started && n >= 1) pool::nthreads = n; }
int llmos_quant_threads(void) { return pool::nthreads; }
// How many times the contention guard sent the pool solo (see pool::run).
int64_t llmos_quant_stragglers(void) { return pool::stragglers.load(); }

// out[i, :] = dequantised row ids[i] of W ([*, K] in `type`, rb bytes per row).
int llmos_dequant_rows(int type, const uint8_t* W, int64_t K, int64_t rb, const int64_t* ids,
                       int64_t n, float* out) {
    const int base = type >= RG_TYPES ? type - RG_TYPES : type;
    if (!block_bytes(base) || (base != type && !llmos_rowgroup_bytes(base, 1, K))) return -1;
    if (K % block_elems(base)) return -2;
#if defined(LLMOS_VEC)
    if (base != type) {
        for (int64_t i = 0; i < n; i++) rg_dequant_row(base, W, K, ids[i], out + i * K);
        return 0;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < K / 32; j++) deq32_scalar(type, W + ids[i] * rb, j, out + i * K + j * 32);
    return 0;
}

// RMSNorm (rms_norm_row) of each D-wide group of T rows (row stride ld). add_to null: in place;
// else add_to[t*ld_add + g*D + i] += the normalised value (x unchanged).
void llmos_rms_norm(float* x, int64_t T, int64_t ld, int64_t groups, int64_t D, const float* w, float eps,
                    float* add_to, int64_t ld_add) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < groups; g++) {
            float* v = x + t * ld + g * D;
            if (add_to) rms_norm_row(v, D, w, eps, add_to + t * ld_add + g * D, true);
            else rms_norm_row(v, D, w, eps, v, false);
        }
}

// Rotate-half RoPE in place on x[t, h*D .. h*D+D) for heads [0, n_heads) of each of T rows
// (row stride ldx floats), angle table cos/sin [*, D] indexed by pos[t].
void llmos_rope(float* x, int64_t T, int64_t ldx, int64_t n_heads, int64_t D, const int64_t* pos,
                const float* cos_t, const float* sin_t) {
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++) {
        const float* c = cos_t + pos[t] * D; const float* s = sin_t + pos[t] * D;
        for (int64_t h = 0; h < n_heads; h++) {
            float* v = x + t * ldx + h * D;
            for (int64_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
    }
}

}  // extern "C"
