// Row-grouped matmuls: Q4_0, Q4_1 and Q8_0 weights repacked at load so that the VN lanes of a
// vector hold VN rows (one group) at the same k. Included by drivers/quant_kernels.cpp inside its
// vector section, after the Job struct and pool; llmos_qmatmul dispatches the RG_* types here.
//
// Why: the 32-block layout puts k in the lanes, so each weight vector must be dequantised,
// w = q d + m, before its FMA with x: two FMAs per weight vector, plus each row's scales
// broadcast into every lane. With rows in the lanes the scales are vectors (one load for VN
// rows) and the dequantisation factors out of the sum over a block:
//     y[r] += d[r] * sum_k q[r][k] x[k]  +  m[r] * sum_k x[k]        (per 32-block)
// so a weight vector costs one FMA with x broadcast (a Q4_1 GEMV on one Zen 3 core, weights from
// DRAM: ~9.0 cycles a 32-block in the block layout, ~5.2 here).
//
// Layout of a group (VN rows; the last group's missing rows are zero), block b at b * VN * bytes:
//   Q4_0: d[VN] fp16, then 16 x VN bytes: byte r of entry i = q[r][i] | q[r][i + 16] << 4
//   Q4_1: d[VN] fp16, m[VN] fp16, then the same 16 x VN bytes
//   Q8_0: d[VN] fp16, then 32 x VN int8: entry k holds q[r][k]
// the same bytes per block as GGML's (VN x 18, 20, 34). Q4_0's m is -8 d.
//
// Every (row, token) pair computes, for each block in order: s = 0; s = fma(q, x, s) over the
// block's k in the order KPERM gives (Q4: k = 0, 16, 1, 17, ...); acc = fma(s, d, acc); then
// acc = fma(m, xsum, acc) with xsum from block_sums (not for Q8_0). The GEMV (one token,
// accumulators in registers) and the GEMM (a dequantised panel, accumulators in memory) do
// exactly this, so results are bit-identical at any batch size, as in the block layout.

enum { RG_Q4_0 = RG_TYPES + Q4_0, RG_Q4_1 = RG_TYPES + Q4_1, RG_Q8_0 = RG_TYPES + Q8_0 };
static bool rg_supported(int type) { return type == Q4_0 || type == Q4_1 || type == Q8_0; }
static int64_t rg_group_bytes(int type, int64_t K) { return K / 32 * VN * block_bytes(type); }

// The k of the kk-th product of a block.
template <int TYPE> static constexpr int KPERM(int kk) { return TYPE == Q8_0 ? kk : (kk >> 1) + 16 * (kk & 1); }

// Sums of each 32-block of x, in a fixed order (both kernels read them from here).
static void block_sums(const float* x, int64_t nb, float* out) {
    for (int64_t b = 0; b < nb; b++) {
        vf s = vload(x + 32 * b);
        for (int i = 1; i < VB; i++) s = vadd(s, vload(x + 32 * b + VN * i));
        out[b] = vhsum(s);
    }
}

// VN fp16 at p as fp32.
static inline vf vh2f(const uint8_t* p) {
#if defined(LLMOS_SIMDE_AVX512)
    alignas(64) float f[VN];
    for (int i = 0; i < VN; i++) f[i] = rdh(p + 2 * i);
    return vload(f);
#elif defined(LLMOS_AVX512)
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
#else
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#endif
}

template <int TYPE> constexpr int RG_QOFF = (TYPE == Q4_1 ? 4 : 2) * VN;    // quants' offset in a block

// Block b's d and m vectors of the group at g.
template <int TYPE> static inline void rg_scales(const uint8_t* blk, vf& d, vf& m) {
    d = vh2f(blk);
    if constexpr (TYPE == Q4_1) m = vh2f(blk + 2 * VN);
    else m = vmul(d, vset1(-8.f));       // Q4_0; unused for Q8_0
}

// The kk-th quant vector of a block (kk in KPERM order) as fp32.
// (Callers unroll their kk loops fully, so kk is a constant here; GCC did not inline the
// lambdas of unroll() in these loops.)
template <int TYPE> static inline vf rg_q(const uint8_t* blk, int kk) {
    if constexpr (TYPE == Q8_0) return vcvt(vs8(blk + RG_QOFF<TYPE> + kk * VN));
    const vi u = vu8(blk + RG_QOFF<TYPE> + (kk >> 1) * VN);
    return vcvt((kk & 1) ? vsrli<4>(u) : vand(u, vset1i(0xF)));
}

// G groups (G * VN rows from W, groups gstride bytes apart) times one token x into out[G * VN].
template <int TYPE, int G>
static inline void rg_gemv_groups(const uint8_t* W, int64_t gstride, int64_t nb, const float* x, const float* xsum,
                                  float* out) {
    constexpr int64_t BB = VN * SUPER_BYTES<TYPE>;
    vf acc[G];
    for (int g = 0; g < G; g++) acc[g] = vzero();
    for (int64_t b = 0; b < nb; b++) {
        for (int g = 0; g < G; g++)
            for (int64_t o = 0; o < BB; o += 64) _mm_prefetch((const char*)(W + (G + g) * gstride + b * BB + o), _MM_HINT_T0);
        vf s[G];
        for (int g = 0; g < G; g++) s[g] = vzero();
        const float* xb = x + 32 * b;
#pragma GCC unroll 32
        for (int kk = 0; kk < 32; kk++) {
            const vf xv = vset1(xb[KPERM<TYPE>(kk)]);
            for (int g = 0; g < G; g++) s[g] = vfma(rg_q<TYPE>(W + g * gstride + b * BB, kk), xv, s[g]);
        }
        for (int g = 0; g < G; g++) {
            vf d, m; rg_scales<TYPE>(W + g * gstride + b * BB, d, m);
            acc[g] = vfma(s[g], d, acc[g]);
            if constexpr (TYPE != Q8_0) acc[g] = vfma(m, vset1(xsum[b]), acc[g]);
        }
    }
    for (int g = 0; g < G; g++) vstore(out + g * VN, acc[g]);
}

// out[c * ldo + v * VN ..] = the RV groups of panel rows times C tokens (xs[c], their block sums
// xsums[c]); the panel holds each group's quant vectors (pstride floats apart) in KPERM order, and
// its d and m vectors (dstride floats apart).
template <int TYPE, int RV, int C>
__attribute__((always_inline)) static inline void rg_micro(const float* q, int64_t pstride, const float* d,
        const float* m, int64_t dstride, int64_t nb, const float* const* xs, const float* const* xsums,
        float* out, int64_t ldo) {
    for (int c = 0; c < C; c++) for (int v = 0; v < RV; v++) vstore(out + c * ldo + v * VN, vzero());
    for (int64_t b = 0; b < nb; b++) {
        vf s[RV][C];
        for (int v = 0; v < RV; v++) for (int c = 0; c < C; c++) s[v][c] = vzero();
#pragma GCC unroll 32
        for (int kk = 0; kk < 32; kk++) {
            vf w[RV];
            for (int v = 0; v < RV; v++) { w[v] = vload(q + v * pstride + (32 * b + kk) * VN); LLMOS_PIN(w[v]); }
            for (int c = 0; c < C; c++) {
                const vf xv = vset1(xs[c][32 * b + KPERM<TYPE>(kk)]);
                for (int v = 0; v < RV; v++) s[v][c] = vfma(w[v], xv, s[v][c]);
            }
        }
        for (int v = 0; v < RV; v++) {
            const vf dv = vload(d + v * dstride + b * VN), mv = vload(m + v * dstride + b * VN);
            for (int c = 0; c < C; c++) {
                float* o = out + c * ldo + v * VN;
                vf a = vfma(s[v][c], dv, vload(o));
                if constexpr (TYPE != Q8_0) a = vfma(mv, vset1(xsums[c][b]), a);
                vstore(o, a);
            }
        }
    }
}

// Writes n of a group's results (VN floats at acc) to y (stride ldy), or adds them.
static inline void rg_put(const float* acc, int64_t n, float* y, int64_t ldy, int add) {
    for (int64_t r = 0; r < n; r++) y[r * ldy] = add ? y[r * ldy] + acc[r] : acc[r];
}

constexpr int RG_GV = 4;    // groups per GEMV pass: independent FMA chains (4 cycles of latency each)
constexpr int RG_RV = 2, RG_NC = 4;     // GEMM micro-kernel: groups x tokens

// A task of a row-grouped matmul: Job's rows are group-aligned; X's block sums are in j.xsum.
template <int TYPE>
static void rg_task(void* p, int64_t i) {
    const Job& j = *(const Job*)p;
    const int64_t K = j.K, nb = K / 32, gs = rg_group_bytes(TYPE, K);
    const int64_t t0 = (i / j.row_tasks) * TCHUNK, tn = j.T - t0 < TCHUNK ? j.T - t0 : TCHUNK;
    const int64_t r_begin = (i % j.row_tasks) * j.rows_per_task;
    const int64_t r_end = r_begin + j.rows_per_task < j.N ? r_begin + j.rows_per_task : j.N;
    const int64_t g_begin = r_begin / VN, g_end = (r_end + VN - 1) / VN;
    alignas(64) float acc[RG_GV * VN];
    if (tn == 1) {
        const float* x = j.X + t0 * j.ldx; const float* xs = j.xsum + t0 * nb; float* y = j.Y + t0 * j.ldy;
        int64_t g = g_begin;
        for (; g + RG_GV <= g_end; g += RG_GV) {
            rg_gemv_groups<TYPE, RG_GV>(j.W + g * gs, gs, nb, x, xs, acc);
            rg_put(acc, std::min<int64_t>(RG_GV * VN, j.N - g * VN), y + g * VN, 1, j.add);
        }
        for (; g < g_end; g++) {
            rg_gemv_groups<TYPE, 1>(j.W + g * gs, gs, nb, x, xs, acc);
            rg_put(acc, std::min<int64_t>(VN, j.N - g * VN), y + g * VN, 1, j.add);
        }
        return;
    }
    thread_local std::vector<float> panel, out;
    const int64_t need = RG_RV * VN * (K + 2 * nb) + 16;
    if ((int64_t)panel.size() < need) panel.resize((size_t)need);
    if ((int64_t)out.size() < TCHUNK * RG_RV * VN) out.resize((size_t)(TCHUNK * RG_RV * VN));
    float* const q = (float*)(((uintptr_t)panel.data() + 63) & ~(uintptr_t)63);
    float* const d = q + RG_RV * VN * K; float* const m = d + RG_RV * VN * nb;
    const int64_t ldo = RG_RV * VN;
    for (int64_t g0 = g_begin; g0 < g_end; g0 += RG_RV) {
        const int rv = (int)std::min<int64_t>(RG_RV, g_end - g0);
        prefetch(j.W + (g0 + RG_RV) * gs, RG_RV * gs);
        for (int v = 0; v < rv; v++)
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t* blk = j.W + (g0 + v) * gs + b * VN * block_bytes(TYPE);
                vf dv, mv; rg_scales<TYPE>(blk, dv, mv);
                vstore(d + v * VN * nb + b * VN, dv); vstore(m + v * VN * nb + b * VN, mv);
                float* o = q + v * VN * K + 32 * b * VN;
#pragma GCC unroll 32
                for (int kk = 0; kk < 32; kk++) vstore(o + kk * VN, rg_q<TYPE>(blk, kk));
            }
        const float* xs[RG_NC]; const float* sums[RG_NC];
        int64_t c = 0;
        for (; c + RG_NC <= tn; c += RG_NC) {
            for (int u = 0; u < RG_NC; u++) { xs[u] = j.X + (t0 + c + u) * j.ldx; sums[u] = j.xsum + (t0 + c + u) * nb; }
            if (rv == RG_RV) rg_micro<TYPE, RG_RV, RG_NC>(q, VN * K, d, m, VN * nb, nb, xs, sums, out.data() + c * ldo, ldo);
            else rg_micro<TYPE, 1, RG_NC>(q, VN * K, d, m, VN * nb, nb, xs, sums, out.data() + c * ldo, ldo);
        }
        for (; c < tn; c++) {
            xs[0] = j.X + (t0 + c) * j.ldx; sums[0] = j.xsum + (t0 + c) * nb;
            for (int v = 0; v < rv; v++)
                rg_micro<TYPE, 1, 1>(q + v * VN * K, VN * K, d + v * VN * nb, m + v * VN * nb, VN * nb, nb, xs, sums,
                                     out.data() + c * ldo + v * VN, ldo);
        }
        const int64_t rows = std::min<int64_t>(rv * VN, j.N - g0 * VN);
        for (int64_t t = 0; t < tn; t++) rg_put(out.data() + t * ldo, rows, j.Y + (t0 + t) * j.ldy + g0 * VN, 1, j.add);
    }
}

// Repacks W ([N, K] in TYPE's GGML blocks, rb bytes a row) into the row-grouped layout at out.
static void rg_pack(int type, const uint8_t* W, int64_t N, int64_t K, int64_t rb, uint8_t* out) {
    const int64_t nb = K / 32, bb = block_bytes(type), gs = rg_group_bytes(type, K), ng = (N + VN - 1) / VN;
    const int qoff = type == Q4_1 ? 4 : 2;
    memset(out, 0, (size_t)(ng * gs));
    for (int64_t n = 0; n < N; n++) {
        const int64_t g = n / VN, r = n % VN;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t* src = W + n * rb + b * bb;
            uint8_t* blk = out + g * gs + b * VN * bb;
            memcpy(blk + 2 * r, src, 2);
            if (type == Q4_1) memcpy(blk + 2 * VN + 2 * r, src + 2, 2);
            for (int e = 0; e < bb - qoff; e++) blk[qoff * VN + e * VN + r] = src[qoff + e];
        }
    }
}

// Row n of a row-grouped W, dequantised (w = q d + m, as the block layout's deq32_scalar).
static void rg_dequant_row(int type, const uint8_t* W, int64_t K, int64_t n, float* out) {
    const int64_t nb = K / 32, bb = block_bytes(type), r = n % VN;
    const int qoff = type == Q4_1 ? 4 : 2;
    const uint8_t* grp = W + (n / VN) * rg_group_bytes(type, K);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* blk = grp + b * VN * bb;
        const float d = rdh(blk + 2 * r), m = type == Q4_1 ? rdh(blk + 2 * VN + 2 * r) : type == Q4_0 ? -8.f * d : 0.f;
        for (int k = 0; k < 32; k++) {
            int q;
            if (type == Q8_0) q = (int8_t)blk[qoff * VN + k * VN + r];
            else { const uint8_t byte = blk[qoff * VN + (k & 15) * VN + r]; q = k < 16 ? byte & 0xF : byte >> 4; }
            out[b * 32 + k] = fmaf((float)q, d, m);
        }
    }
}
