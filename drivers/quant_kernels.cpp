// Quantized matmuls on GGUF weights as they lie in the file (llmos drivers/quant.py builds and
// loads this with ctypes). More than ~300 lines because each GGML block layout needs its own
// unpacking, and all of them share one tiled int8 micro-kernel; splitting would scatter that.
//
// y[t, n] (+)= sum_k W[n, k] * x[t, k] for W in Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1.
// Activations are first (optionally SwiGLU'd and RMS-normed, then) quantized per block of 32 with
// one float scale as ggml does, plus 8 bits of residual (see QX). Each weight 32-block is unpacked to 32 small unsigned
// (or, for Q8_0, signed) integers q, a float d, per-16-half integer scales and per-half offsets m:
//     sum_i w_i x_i = dx * d * sum_h sc_h * sum_{i in h} q_i (xq_i + xr_i / 254)  +  sum_h m_h * xs_h
// where xs_h is the sum of the activation over half h (stored with it).
// The integer dot runs on AVX2 (maddubs / madd) or AVX-VNNI / AVX512-VNNI (dpbusd); a scalar path
// serves CPUs without AVX2. The result of one (row, token) pair never depends on the tile it was
// computed in or on the batch size: every pair sees the same instruction sequence (-ffp-contract=off).
// Threads: a small pool of its own (below) splits rows (and token chunks) into tasks; the calling
// thread works too and never waits for a worker that has not started, so a busy machine (other
// processes on the cores) costs at most the speed of one thread, not a scheduler time slice per
// matmul as barrier-based OpenMP regions do.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

// One activation block: x ~= d * (q + r / 254). q is the 8-bit quantization ggml uses; r quantizes
// its residual (|x/d - q| <= 1/2) to 8 more bits, so the product keeps ~15 bits of the activation
// (8 bits alone flip near-tied greedy choices of real models). ds0/ds1 = sum of x over each half.
struct QX { float d, ds0, ds1; int8_t q[32], r[32]; };
constexpr float RSCALE = 1.f / 254.f;

static inline float h2f(uint16_t h) {
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { exp = 127 - 15 + 1; while (!(man & 0x400)) { man <<= 1; exp--; } bits = sign | (exp << 23) | ((man & 0x3ff) << 13); }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; memcpy(&f, &bits, 4); return f;
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
// holds (other processes own the cores), the next SOLO_JOBS jobs run on the caller alone.
constexpr int64_t SOLO_JOBS = 512;
constexpr double STRAGGLER_S = 300e-6;
static int64_t jobs = 0, solo_until = 0;

static void work(uint32_t gen) {
    for (;;) {
        uint64_t w = word.load(std::memory_order_acquire);
        if ((uint32_t)(w >> 32) != gen || (int64_t)(w & 0xffffffffu) >= n.load(std::memory_order_relaxed)) return;
        if (word.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel)) {
            fn.load(std::memory_order_relaxed)(ctx.load(std::memory_order_relaxed), (int64_t)(w & 0xffffffffu));
            done.fetch_add(1, std::memory_order_release);
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
    fn.store(f); ctx.store(c); n.store(count); done.store(0);
    uint32_t gen = (uint32_t)(word.load() >> 32) + 1;
    word.store((uint64_t)gen << 32);
    if (sleepers.load() > 0) { std::lock_guard<std::mutex> lk(sleep_mu); wake.notify_all(); }
    work(gen);
    const auto t0 = std::chrono::steady_clock::now();
    for (int spins = 0; done.load(std::memory_order_acquire) < count; spins++) {
#if defined(__AVX2__)
        _mm_pause();
#endif
        if ((spins & 1023) == 1023 &&
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > STRAGGLER_S) {
            solo_until = jobs + SOLO_JOBS;
            while (done.load(std::memory_order_acquire) < count) std::this_thread::yield();
        }
    }
}
}  // namespace pool

// ---- activation quantization -------------------------------------------------------------
static void quantize_row(const float* x, int64_t K, QX* out) {
    for (int64_t b = 0; b < K / 32; b++) {
        const float* v = x + b * 32; float amax = 0.f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(v[i]));
        float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f; int s[2] = {0, 0}, sr[2] = {0, 0};
        for (int i = 0; i < 32; i++) {
            float t = v[i] * id; int q = (int)nearbyintf(t);
            int r = (int)nearbyintf((t - (float)q) * 254.f);
            r = r > 127 ? 127 : r < -127 ? -127 : r;
            out[b].q[i] = (int8_t)q; out[b].r[i] = (int8_t)r; s[i >> 4] += q; sr[i >> 4] += r;
        }
        out[b].d = d;
        out[b].ds0 = d * ((float)s[0] + (float)sr[0] * RSCALE);
        out[b].ds1 = d * ((float)s[1] + (float)sr[1] * RSCALE);
    }
}

// Row t of the matmul's input: SwiGLU (x holds [gate | up], 2K wide) and/or RMSNorm, then quantize.
static void prepare_row(const float* x, int64_t K, int swiglu, const float* norm_w, float eps,
                        float* tmp, QX* out) {
    const float* v = x;
    if (swiglu) {
        for (int64_t i = 0; i < K; i++) { float g = x[i]; tmp[i] = g / (1.f + expf(-g)) * x[K + i]; }
        v = tmp;
    }
    if (norm_w) {
        double ss = 0; for (int64_t i = 0; i < K; i++) ss += (double)v[i] * v[i];
        float r = 1.f / sqrtf((float)(ss / K) + eps);
        for (int64_t i = 0; i < K; i++) tmp[i] = v[i] * r * norm_w[i];
        v = tmp;
    }
    quantize_row(v, K, out);
}

// ---- AVX2 / VNNI micro-kernel --------------------------------------------------------------
#if defined(__AVX2__)
struct WB { __m256i q; __m256i sc; float d, m0, m1; };

static inline __m256i nibbles16(const uint8_t* p) {           // 16 bytes -> 32 nibbles (lo then hi)
    __m128i b = _mm_loadu_si128((const __m128i*)p), m = _mm_set1_epi8(0xF);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}
static inline __m256i bits32(uint32_t x) {                     // bit i of x -> 0x10 in byte i
    __m256i v = _mm256_set1_epi32((int)x);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    v = _mm256_shuffle_epi8(v, shuf);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

template <int TYPE> static inline void load_block(const uint8_t* row, int64_t j, WB& w) {
    static const __m256i ones = _mm256_set1_epi16(1);
    w.sc = ones;
    if constexpr (TYPE == Q4_0 || TYPE == Q4_1 || TYPE == Q5_0 || TYPE == Q5_1 || TYPE == Q8_0) {
        const uint8_t* b = row + j * (TYPE == Q4_0 ? 18 : TYPE == Q4_1 ? 20 : TYPE == Q5_0 ? 22 : TYPE == Q5_1 ? 24 : 34);
        w.d = rdh(b);
        if constexpr (TYPE == Q8_0) { w.q = _mm256_loadu_si256((const __m256i*)(b + 2)); w.m0 = w.m1 = 0.f; }
        else if constexpr (TYPE == Q4_0) { w.q = nibbles16(b + 2); w.m0 = w.m1 = -8.f * w.d; }
        else if constexpr (TYPE == Q4_1) { w.q = nibbles16(b + 4); w.m0 = w.m1 = rdh(b + 2); }
        else {
            uint32_t qh; memcpy(&qh, b + (TYPE == Q5_0 ? 2 : 4), 4);
            w.q = _mm256_or_si256(nibbles16(b + (TYPE == Q5_0 ? 6 : 8)), bits32(qh));
            w.m0 = w.m1 = TYPE == Q5_0 ? -16.f * w.d : rdh(b + 2);
        }
    } else if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
        const int sub = (int)(j & 7);
        const uint8_t* b = row + (j >> 3) * (TYPE == Q4_K ? 144 : 176);
        int sc, mn; scale_min_k4(sub, b + 4, &sc, &mn);
        __m256i raw = _mm256_loadu_si256((const __m256i*)(b + (TYPE == Q4_K ? 16 : 48) + (sub >> 1) * 32));
        if (sub & 1) raw = _mm256_srli_epi16(raw, 4);
        w.q = _mm256_and_si256(raw, _mm256_set1_epi8(0xF));
        if constexpr (TYPE == Q5_K) {
            __m256i h = _mm256_loadu_si256((const __m256i*)(b + 16)), bit = _mm256_set1_epi8((char)(1 << sub));
            w.q = _mm256_or_si256(w.q, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit), _mm256_set1_epi8(0x10)));
        }
        w.d = rdh(b) * sc; w.m0 = w.m1 = -rdh(b + 2) * mn;
    } else {  // Q6_K
        const int sub = (int)(j & 7), n = sub >> 2, t = sub & 3;
        const uint8_t* b = row + (j >> 3) * 210;
        __m256i ql = _mm256_loadu_si256((const __m256i*)(b + n * 64 + (t & 1) * 32));
        if (t >= 2) ql = _mm256_srli_epi16(ql, 4);
        __m256i qh = _mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)(b + 128 + n * 32)), 2 * t);
        qh = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4);
        w.q = _mm256_or_si256(_mm256_and_si256(ql, _mm256_set1_epi8(0xF)), qh);
        const int8_t* s = (const int8_t*)(b + 192) + n * 8 + 2 * t;
        w.sc = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
        w.d = rdh(b + 208); w.m0 = -32.f * w.d * s[0]; w.m1 = -32.f * w.d * s[1];
    }
}

static inline __m256i idot(const WB& w, __m256i xq, bool is_signed, bool scaled) {
    __m256i a = w.q, x = xq;
    if (is_signed) { x = _mm256_sign_epi8(xq, w.q); a = _mm256_sign_epi8(w.q, w.q); }
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
    if (!scaled) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, x);
#else
        return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, x);
#endif
    }
#endif
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, x), w.sc);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// NR weight rows x NC tokens; every (row, token) pair runs the same instruction sequence.
template <int TYPE, int NR, int NC>
static void tile(const uint8_t* W, int64_t rb, int64_t nb, const QX* X, float* Y, int64_t ldy, int add) {
    constexpr bool SIGNED = TYPE == Q8_0, SCALED = TYPE == Q6_K;
    __m256 acc[NR][NC]; float macc[NR][NC];
    for (int r = 0; r < NR; r++) for (int c = 0; c < NC; c++) { acc[r][c] = _mm256_setzero_ps(); macc[r][c] = 0.f; }
    for (int64_t j = 0; j < nb; j++) {
        WB w[NR];
        for (int r = 0; r < NR; r++) load_block<TYPE>(W + r * rb, j, w[r]);
        for (int c = 0; c < NC; c++) {
            const QX& x = X[c * nb + j];
            const __m256i xq = _mm256_loadu_si256((const __m256i*)x.q);
            const __m256i xr = _mm256_loadu_si256((const __m256i*)x.r);
            for (int r = 0; r < NR; r++) {
                __m256 p = _mm256_cvtepi32_ps(idot(w[r], xq, SIGNED, SCALED));
                __m256 pr = _mm256_cvtepi32_ps(idot(w[r], xr, SIGNED, SCALED));
                p = _mm256_fmadd_ps(pr, _mm256_set1_ps(RSCALE), p);
                acc[r][c] = _mm256_fmadd_ps(p, _mm256_set1_ps(w[r].d * x.d), acc[r][c]);
                if constexpr (TYPE != Q8_0)
                    macc[r][c] += w[r].m0 * x.ds0 + w[r].m1 * x.ds1;
            }
        }
    }
    for (int r = 0; r < NR; r++) for (int c = 0; c < NC; c++) {
        float v = hsum(acc[r][c]) + macc[r][c];
        float* y = Y + c * ldy + r;
        *y = add ? *y + v : v;
    }
}

struct Job {   // one matmul, cut into tasks of (token chunk, row chunk)
    int type; const uint8_t* W; int64_t N, rb, nb; const QX* X; int64_t T; float* Y; int64_t ldy;
    int add; int64_t rows_per_task, row_tasks;
};
constexpr int64_t TCHUNK = 64;   // tokens whose activations stay in L2 while rows stream past

template <int TYPE>
static void gemm_task(void* p, int64_t i) {
    constexpr int NR = 4, NC = 2;
    const Job& j = *(const Job*)p;
    const int64_t t0 = (i / j.row_tasks) * TCHUNK, tn = j.T - t0 < TCHUNK ? j.T - t0 : TCHUNK;
    const int64_t r_begin = (i % j.row_tasks) * j.rows_per_task;
    const int64_t r_end = r_begin + j.rows_per_task < j.N ? r_begin + j.rows_per_task : j.N;
    for (int64_t r0 = r_begin; r0 < r_end; r0 += NR) {
        for (int64_t c = 0; c < tn;) {
            const int nc = tn - c >= NC ? NC : 1;
            const QX* x = j.X + (t0 + c) * j.nb;
            if (r0 + NR <= r_end) {
                float* y = j.Y + (t0 + c) * j.ldy + r0;
                if (nc == NC) tile<TYPE, NR, NC>(j.W + r0 * j.rb, j.rb, j.nb, x, y, j.ldy, j.add);
                else tile<TYPE, NR, 1>(j.W + r0 * j.rb, j.rb, j.nb, x, y, j.ldy, j.add);
            } else {
                for (int64_t r = r0; r < r_end; r++) {
                    float* y = j.Y + (t0 + c) * j.ldy + r;
                    if (nc == NC) tile<TYPE, 1, NC>(j.W + r * j.rb, j.rb, j.nb, x, y, j.ldy, j.add);
                    else tile<TYPE, 1, 1>(j.W + r * j.rb, j.rb, j.nb, x, y, j.ldy, j.add);
                }
            }
            c += nc;
        }
    }
}
#endif

// ---- scalar kernel (CPUs without AVX2) -----------------------------------------------------
static void scalar_task(void* p, int64_t i) {
    const Job& j = *(const Job*)p;
    const int64_t t0 = (i / j.row_tasks) * TCHUNK, t1 = t0 + TCHUNK < j.T ? t0 + TCHUNK : j.T;
    const int64_t r_begin = (i % j.row_tasks) * j.rows_per_task;
    const int64_t r_end = r_begin + j.rows_per_task < j.N ? r_begin + j.rows_per_task : j.N;
    for (int64_t n = r_begin; n < r_end; n++) {
        for (int64_t t = t0; t < t1; t++) {
            float acc = 0.f;
            for (int64_t b = 0; b < j.nb; b++) {
                Unpacked u; unpack(j.type, j.W + n * j.rb, b, &u); const QX& x = j.X[t * j.nb + b];
                int32_t h[2] = {0, 0}, hr[2] = {0, 0};
                for (int k = 0; k < 32; k++) { h[k >> 4] += u.q[k] * x.q[k]; hr[k >> 4] += u.q[k] * x.r[k]; }
                float p = (float)(h[0] * u.sc[0] + h[1] * u.sc[1]) + (float)(hr[0] * u.sc[0] + hr[1] * u.sc[1]) * RSCALE;
                acc += x.d * u.d * p + u.m[0] * x.ds0 + u.m[1] * x.ds1;
            }
            float* y = j.Y + t * j.ldy + n; *y = j.add ? *y + acc : acc;
        }
    }
}

struct Prep { const float* X; int64_t K, ldx; int swiglu; const float* norm_w; float eps; QX* out; int64_t T; };
static void prep_task(void* p, int64_t i) {
    const Prep& j = *(const Prep*)p;
    std::vector<float> tmp((size_t)j.K);
    for (int64_t t = i * 8; t < j.T && t < i * 8 + 8; t++)
        prepare_row(j.X + t * j.ldx, j.K, j.swiglu, j.norm_w, j.eps, tmp.data(), j.out + t * (j.K / 32));
}

// ---- exported entry points -------------------------------------------------------------------
extern "C" {

const char* llmos_quant_isa(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return "avx512-vnni";
#elif defined(__AVXVNNI__)
    return "avx-vnni";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "scalar";
#endif
}

int llmos_quant_supported(int type) { return block_bytes(type) > 0; }

// Y[t*ldy + n] (+)= sum_k W[n,k] * f(X)[t,k]. X is [T, ldx] fp32; f = optional SwiGLU (then X
// holds 2K columns: gate, up) then optional RMSNorm with weight norm_w. Returns 0, or -1 for a
// type without a kernel, -2 for a K that is not a whole number of blocks.
int llmos_qmatmul(int type, const uint8_t* W, int64_t N, int64_t K, int64_t rb,
                  const float* X, int64_t T, int64_t ldx, float* Y, int64_t ldy, int add,
                  int swiglu, const float* norm_w, float eps) {
    if (!block_bytes(type)) return -1;
    if (K % block_elems(type)) return -2;
    const int64_t nb = K / 32;
    std::vector<QX> xq((size_t)(T * nb));
    Prep prep{X, K, ldx, swiglu, norm_w, eps, xq.data(), T};
    pool::run(prep_task, &prep, (T + 7) / 8);
    Job job{type, W, N, rb, nb, xq.data(), T, Y, ldy, add, 0, 0};
    const int64_t want = 8 * (int64_t)pool::nthreads;          // tasks per token chunk
    job.rows_per_task = ((N + want - 1) / want + 3) / 4 * 4;
    job.row_tasks = (N + job.rows_per_task - 1) / job.rows_per_task;
    TaskFn fn = scalar_task;
#if defined(__AVX2__)
    switch (type) {
        case Q4_0: fn = gemm_task<Q4_0>; break;
        case Q4_1: fn = gemm_task<Q4_1>; break;
        case Q5_0: fn = gemm_task<Q5_0>; break;
        case Q5_1: fn = gemm_task<Q5_1>; break;
        case Q8_0: fn = gemm_task<Q8_0>; break;
        case Q4_K: fn = gemm_task<Q4_K>; break;
        case Q5_K: fn = gemm_task<Q5_K>; break;
        case Q6_K: fn = gemm_task<Q6_K>; break;
    }
#endif
    pool::run(fn, &job, job.row_tasks * ((T + TCHUNK - 1) / TCHUNK));
    return 0;
}

// Threads the kernels use (the caller included); takes effect before the first threaded call.
void llmos_quant_set_threads(int n) { if (!pool::started && n >= 1) pool::nthreads = n; }
int llmos_quant_threads(void) { return pool::nthreads; }

// out[i, :] = dequantised row ids[i] of W ([*, K] in `type`, rb bytes per row).
int llmos_dequant_rows(int type, const uint8_t* W, int64_t K, int64_t rb, const int64_t* ids,
                       int64_t n, float* out) {
    if (!block_bytes(type)) return -1;
    if (K % block_elems(type)) return -2;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t* row = W + ids[i] * rb;
        for (int64_t j = 0; j < K / 32; j++) {
            Unpacked u; unpack(type, row, j, &u);
            for (int k = 0; k < 32; k++)
                out[i * K + j * 32 + k] = u.d * (float)(u.q[k] * u.sc[k >> 4]) + u.m[k >> 4];
        }
    }
    return 0;
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
