// Row-grouped matmuls: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K weights repacked at load so
// that the VN lanes of a vector hold VN rows (one group) at the same k. Included by
// drivers/quant_kernels.cpp inside its vector section, after the Job struct and pool;
// llmos_qmatmul dispatches the RG_* types here.
//
// Why: the 32-block layout puts k in the lanes, so each weight vector must be dequantised,
// w = q d + m, before its FMA with x: two FMAs per weight vector, plus each row's scales
// broadcast into every lane. With rows in the lanes the scales are vectors (one load for VN
// rows) and the dequantisation factors out of the sum over a block:
//     y[r] += d[r] * sum_k q[r][k] x[k]  +  m[r] * sum_k x[k]        (per 32-block)
// so a weight vector costs one FMA with x broadcast (a Q4_1 GEMV on one Zen 3 core, weights from
// DRAM: ~9.0 cycles a 32-block in the block layout, ~5.2 here).
//
// A group is VN rows (the last group's missing rows are zero), stored super-block by super-block
// (RG_QS below has the fields): as many bytes as GGML's blocks (VN x 18, 20, 22, 24, 34, 210),
// Q4_K's 6-bit scales unpacked (VN x 148 against 144). Q4_0's m is -8 d and Q5_0's -16 d; Q4_K's d
// and m are its sub-blocks'; Q6_K's d is per 16 weights, and its quants are stored as q - 32.
//
// Every (row, token) pair computes, for each chunk (CH below) in order: s = sum of q x over the
// chunk's k, exact (x on the grid below, so the order does not matter); acc = fma(s, d, acc); then
// acc = fma(m, xsum, acc) with xsum the block's sum from grid_row (for Q4_1, Q5_1 and Q4_K; Q4_0's
// and Q5_0's m is in s instead, s = sum (q - M_OFF) x: see M_OFF). The GEMV (one
// token: integer sums of int16 pairs made in registers, or for Q4_K and Q6_K without VNNI fp32 FMAs;
// see RG_INT_GEMV) and the GEMM (an int16 panel, integer sums) do exactly this, so results are
// bit-identical at any batch size, as in the block layout. The 'a8' dtype takes x on 8 bits instead
// (grid8_row, or the K-quants' grid8_row256; rg_imicro8 and rg_igemv_groups<A8> below: twice the
// products an instruction, llama.cpp's precision), its GEMV and GEMM bit-identical in the same way.

enum { RG_Q4_0 = RG_TYPES + Q4_0, RG_Q4_1 = RG_TYPES + Q4_1, RG_Q5_0 = RG_TYPES + Q5_0, RG_Q5_1 = RG_TYPES + Q5_1,
       RG_Q8_0 = RG_TYPES + Q8_0, RG_Q4_K = RG_TYPES + Q4_K, RG_Q6_K = RG_TYPES + Q6_K };
static bool rg_supported(int type) {
    return type == Q4_0 || type == Q4_1 || type == Q5_0 || type == Q5_1 || type == Q8_0 || type == Q4_K
        || type == Q6_K;
}

// Bytes of one row's super-block (32 weights, or a K-quant's 256) in the row-grouped layout:
// GGML's, but Q4_K's packed 6-bit scales and mins are unpacked to a byte each.
template <int TYPE> constexpr int RG_SB = TYPE == Q4_K ? 148 : SUPER_BYTES<TYPE>;
static int rg_super_bytes(int type) {
    switch (type) { case Q4_0: return RG_SB<Q4_0>; case Q4_1: return RG_SB<Q4_1>; case Q8_0: return RG_SB<Q8_0>;
        case Q5_0: return RG_SB<Q5_0>; case Q5_1: return RG_SB<Q5_1>;
        case Q4_K: return RG_SB<Q4_K>; case Q6_K: return RG_SB<Q6_K>; default: return 0; }
}
static int64_t rg_group_bytes(int type, int64_t K) { return K / block_elems(type) * VN * rg_super_bytes(type); }

// Where a group super-block's fields start, in units of VN bytes (one byte a row):
//   Q4_0: d[2] qs[16]          Q4_1: d[2] m[2] qs[16]          Q8_0: d[2] qs[32]
//   Q5_0: d[2] b[16] e[4]      Q5_1: d[2] m[2] b[16] e[4]
//   Q4_K: d[2] dmin[2] sc[8] mn[8] qs[128]          Q6_K: d[2] sc[16] then 64 triples
// Q8_0's qs entries 2i and 2i + 1 are one 2 VN-byte entry holding row r's quants 2i and 2i + 1 at
// bytes 2r and 2r + 1: one sign extension to 16 bits makes its int16 pair vector, where a byte a row
// took two and three more operations (a GEMV on one Zen 4 core, 3072 x 1024: 64.9 -> 87.7 GFLOP/s,
// and the 8-lane build there 50.0-51.1 -> 78.5-79.4 once integer; Gemma 3's 262144 x 640 output
// layer at 2 threads, from DRAM, stays bandwidth-bound: 6.90 / 7.61 -> 6.98 / 6.70 ms).
// Q4_K's qs entry 32p + j holds weight 64p + j (low nibble, sub-block 2p) and 64p + 32 + j (high,
// sub-block 2p + 1).
// Q5_0/Q5_1's b[i] holds the 5-bit quants u = q(i), v = q(i + 16) as u | (v & 7) << 5, and
// e[i / 4] has v >> 3 at bits 2 (i % 4): u is one AND away, v four operations (GGML's bit plane
// of fifth bits needs a shift and a mask a weight; a GEMV on one Zen 3 core, 32768 x 2048 from
// DRAM: Q5_0 6.95 -> 4.9 ms against the block layout).
// Q6_K's triple 32n + j holds the quants of weights 128n + 32t + j, t = 0..3, as signed 6-bit
// s_t = q_t - 32 (two's complement: q_t ^ 32): (s0 << 2 | s2 & 3, s1 << 2 | s3 & 3, (s2 >> 2) << 4 |
// s3 >> 2). Sign-extended bytes give s0 and s1 in one shift each, s2 and s3 in four operations
// each: 13 for the four with their loads, where unsigned triples took 13 and four adds of -32, and
// GGML's ql/qh split 15 and the adds (one Zen 3 core, 32768 x 2048 from DRAM: 9.7-10.5 ms in the
// block layout, 7.07 with GGML's bits regrouped, 6.07 with unsigned triples; side by side on a
// slower day, unsigned 6.27-6.32 against signed 5.63-5.77).
// Q5_K stays in the block layout: in these lanes its fifth bits cost more than the layout saved,
// whether kept as GGML's bit plane per sub-block (8.5 -> 9.5 ms) or regrouped as Q6_K's are
// (8.4-8.6 -> 9.1-9.4 ms: a pair of vectors came from two byte loads and a shift by sub-block).
template <int TYPE> constexpr int RG_QS = TYPE == Q4_1 || TYPE == Q5_1 ? 4 : TYPE == Q4_K ? 20
                                          : TYPE == Q6_K ? 18 : 2;

// Products are summed in chunks of CH weights with one d (and m) each: 32-blocks, Q4_K's
// sub-blocks, Q6_K's 16-weight scale groups (its -32 is in the quants, so it has no m).
template <int TYPE> constexpr int CH = TYPE == Q6_K ? 16 : 32;
static constexpr bool rg_has_m(int type) { return type != Q8_0 && type != Q6_K; }   // reads X's block sums
template <int TYPE> constexpr bool HAS_M = rg_has_m(TYPE);
// Q4_0's and Q5_0's m (-8 d, -16 d) goes into the integer sums: a chunk's sum starts from -M_OFF
// sum xi (rg_sum_start, from the token's isum), so s = sum (q - M_OFF) xi, exact, and no m FMA
// follows: one fp32 operation of four a chunk (2 Zen 4 cores, Q4_0 4096 x 2048 x 512 -4 %). The
// types with a free m keep the FMA (SUM_HAS_M).
template <int TYPE> constexpr int M_OFF = TYPE == Q4_0 ? 8 : TYPE == Q5_0 ? 16 : 0;
template <int TYPE> constexpr bool SUM_HAS_M = HAS_M<TYPE> && M_OFF<TYPE> == 0;
// The start of the integer sum of the chunk at x element xb: -off times the token's integers there
// (isum: its sums 16 at a time, grid_row's or grid8_row's).
template <int TYPE, int OFF = M_OFF<TYPE>> static inline int32_t rg_sum_start(const int32_t* isum, int64_t xb) {
    if constexpr (OFF == 0) return 0;
    const int32_t* is = isum + xb / 16;
    return -OFF * (CH<TYPE> == 16 ? is[0] : is[0] + is[1]);
}

// The k of chunk c's kk-th product is rg_xbase(c) + KPERM(kk): Q4_0/Q4_1 take the two nibbles of
// a byte in turn (k = 0, 16, 1, 17, ...); Q6_K's chunks go (n, h, t) = (c / 8, c / 4 % 2, c % 4)
// over weights 128n + 32t + 16h .. +15 (the GEMV's order, which sums t = 0..3 side by side).
template <int TYPE> static constexpr int KPERM(int kk) {
    return TYPE == Q4_0 || TYPE == Q4_1 || TYPE == Q5_0 || TYPE == Q5_1 ? (kk >> 1) + 16 * (kk & 1) : kk;
}
template <int TYPE> static inline int64_t rg_xbase(int64_t c) {
    if constexpr (TYPE == Q6_K) {
        const int64_t ci = c & 15;
        return 256 * (c >> 4) + 128 * (ci >> 3) + 32 * (ci & 3) + 16 * ((ci >> 2) & 1);
    }
    return 32 * c;
}

// ---- the activations' grid ---------------------------------------------------------------------
// The row-grouped kernels take x on a grid: each 32-block of a token's x becomes integers xi in
// [-GRID_MAX, GRID_MAX] times a power of two g = 2^(e - 12), e the exponent of the block's largest
// |x| (in [2^(e-1), 2^e)): 13 significant bits where bf16 keeps 8 and llama.cpp's Q8 activations 7.
// On the grid every product q xi g (|q| <= 128) and every partial sum of a chunk (<= 32 products:
// < 2^24 g) is exact in fp32, so the fp32 GEMV's chunk sums are the GEMM's integer ones (vpmaddwd
// on int16 pairs, rg_imicro) in whatever order either adds them: a token's results stay
// bit-identical at any batch size. A block with a NaN or an infinity has g = NaN (so do its results).
constexpr int GRID_MAX = 4095;

// A split type pairs k with k + 16 in a 32-block (KPERM), the others k with k + 1.
static constexpr bool rg_split_pairs(int type) { return type == Q4_0 || type == Q4_1 || type == Q5_0 || type == Q5_1; }
// The K-quants' a8 matmuls take x with one g a 256-block (grid8_row256, llama.cpp's Q8_K), the others
// one a 32-block (grid8_row, its Q8_0): a super-block's chunk sums then add up before its one g
// scales them, one fp32 multiply fewer a chunk (rg_imicro8).
static constexpr bool rg_a8_sb(int type) { return type == Q4_K || type == Q6_K; }
template <int TYPE> constexpr bool A8_SB = rg_a8_sb(TYPE);

// 2^e as a float, for e in [-149, 127].
static inline float pow2(int e) {
    if (e < -126) return std::ldexp(1.f, e);
    const uint32_t bits = (uint32_t)(e + 127) << 23;
    float f; memcpy(&f, &bits, 4); return f;
}

// A block's integers q (VB vectors) summed: isum[0], isum[1] over k < 16 and k >= 16 (exact: |q| <
// 2^12, 16 of them), *xsum = their sum times g (exact but for g's rounding; NaN with g).
static inline void rg_block_sums(const vi* q, float g, float* xsum, int32_t* isum) {
    vi lo = q[0], hi = q[VB / 2];
    for (int i = 1; i < VB / 2; i++) { lo = vadd(lo, q[i]); hi = vadd(hi, q[VB / 2 + i]); }
    isum[0] = (int32_t)vhsum(vcvt(lo)); isum[1] = (int32_t)vhsum(vcvt(hi));
    *xsum = (float)(isum[0] + isum[1]) * g;
}

// Token row x (K wide) on the grid: xq (the fp32 values, unless xq is null), g[K / 32], each block's sum xsum[K / 32]
// (g times the integers' sum: exact, as is any fp32 sum of the block's xq), the integers' sums 16 at a
// time isum[K / 16] (for M_OFF) and the int16 pairs of each block in each pair order whose array is
// not null (pairs[s][16 b + i], low half first; s = 1: split pairs).
static void grid_row(const float* x, int64_t K, float* xq, float* g, float* xsum, int32_t* isum,
                     int32_t* const pairs[2]) {
    for (int64_t b = 0; b < K / 32; b++) {
        vf v[VB], amax = vzero(), nan_if_not_finite = vzero();
        for (int i = 0; i < VB; i++) {
            v[i] = vload(x + 32 * b + VN * i);
            amax = vmax(amax, vabs(v[i]));
            nan_if_not_finite = vfma(v[i], vzero(), nan_if_not_finite);     // inf * 0 and NaN * 0 are NaN
        }
        vi q[VB];
        if (vany_nan(nan_if_not_finite)) {
            g[b] = NAN;
            for (int i = 0; i < VB; i++) {
                q[i] = vset1i(0);
                if (xq) vstore(xq + 32 * b + VN * i, vset1(NAN));
            }
        } else {
            const float m = vhmax(amax);
            int e = 0;
            if (m >= FLT_MIN) {                            // frexp's exponent, from the bits
                uint32_t bits; memcpy(&bits, &m, 4);
                e = (int)(bits >> 23) - 126;
            } else {
                std::frexp(m, &e);
            }
            e = std::max(e - 12, -149);                    // 2^-149: the smallest float, exact below
            const int up = std::min(-e, 126);              // 2^-e in two exact factors
            const vf a = vset1(pow2(up)), c = vset1(pow2(-e - up)), gv = vset1(pow2(e));
            g[b] = pow2(e);
            for (int i = 0; i < VB; i++) {
                q[i] = vclamp(vround(vmul(vmul(v[i], a), c)), GRID_MAX);
                if (xq) vstore(xq + 32 * b + VN * i, vmul(vcvt(q[i]), gv));
            }
        }
        rg_block_sums(q, g[b], &xsum[b], isum + 2 * b);
        for (int i = 0; i < VB / 2; i++) {                 // pair i: (2i, 2i + 1), or split (k, k + 16)
            if (pairs[0]) vstore_i(pairs[0] + 16 * b + VN * i, vpack16(q[2 * i], q[2 * i + 1]));
            if (pairs[1])
                vstore_i(pairs[1] + 16 * b + VN * i, vor(vand(q[i], vset1i(0xFFFF)), vslli<16>(q[i + VB / 2])));
        }
    }
}

// ---- 8-bit activations (the 'a8' dtype), where vpdpbusd is one instruction -----------------------
// An a8 matmul takes x as llama.cpp's Q8 activations are made: each
// 32-block's integers xi = round(x / g) in [-127, 127], g = the block's largest |x| / 127. Its GEMM
// then sums four products a vpdpbusd where vpdpwssd sums two: twice the integer rate, at 8 bits
// where the grid keeps 13. Chunk sums S = sum q xi stay exact and take the grid's epilogue
// (acc = fma(S g, d, acc), + m xsum) in both the GEMM and the few-token GEMV (rg_igemv_groups<A8>), so
// a token's results do not depend on its batch. The K-quants (rg_a8_sb) take x as llama.cpp's Q8_K,
// one g a 256-block (grid8_row256): a super-block's chunks add up unscaled, sb = fma(S, d, sb), then
// Q4_K's m term in integers (rg_q4k_msum) and acc = fma(sb, g, acc) at its end (2 Zen 4 cores, 64
// tokens: Q4_K 16384 x 2048 -12 %, Q6_K 2048 x 8192 -6 to -10 %). But 8 bits change greedy tokens the grid keeps:
// 'auto' keeps the grid for the catalog models whose tokens need it (drivers/catalog.py: SmolLM2).
// vpdpbusd multiplies unsigned bytes by signed ones: the panel's quants go as unsigned bytes u (rg_quads:
// q + A8_PANEL_OFF below, 128 for Q8_0's and 32 for Q6_K's signed quants, the others' as they are),
// x as signed ones, and each chunk's sum starts from -A8_OFF sum xi (isum), so S = sum (u - A8_OFF)
// xi. For Q4_0 and Q5_0, A8_OFF = 8, 16 on their unsigned quants: their m (-8 d, -16 d) is then in
// the sum, and their chunks take no m FMA.
// Token row x (K wide) as g[K / 32], xsum[K / 32] (g times the integers' sum), isum[K / 16] (the
// integers' sums, 16 at a time) and each 32-block's xi as 8 quads of signed bytes in each pair
// order whose array is not null (quads[s][8 b + j]: k = 4j .. 4j + 3; s = 1, split pairs: 2j, 2j +
// 16, 2j + 1, 2j + 17, the pairs 2j and 2j + 1 of grid_row).
static inline void grid8_quads(const vi* q, int64_t b, int32_t* const quads[2]) {    // block b's, as below
    const __m128i b0 = vbytes16(q), b1 = vbytes16(q + VB / 2);         // xi of k < 16, k >= 16
    if (quads[0]) {
        _mm_storeu_si128((__m128i*)(quads[0] + 8 * b), b0);
        _mm_storeu_si128((__m128i*)(quads[0] + 8 * b + 4), b1);
    }
    if (quads[1]) {                                    // bytes k, k + 16 interleaved
        _mm_storeu_si128((__m128i*)(quads[1] + 8 * b), _mm_unpacklo_epi8(b0, b1));
        _mm_storeu_si128((__m128i*)(quads[1] + 8 * b + 4), _mm_unpackhi_epi8(b0, b1));
    }
}
// An 8-bit block's scale, llama.cpp's: g = the largest |x| of x[0 .. n) / 127 (0 below the smallest
// normal: all its integers 0; NaN with any non-finite x), and in inv the multiplier making x integers.
static inline float grid8_scale(const float* x, int64_t n, vf& inv) {
    vf amax = vzero(), nan_if_not_finite = vzero();
    for (int64_t i = 0; i < n; i += VN) {
        const vf v = vload(x + i);
        amax = vmax(amax, vabs(v));
        nan_if_not_finite = vfma(v, vzero(), nan_if_not_finite);
    }
    if (vany_nan(nan_if_not_finite)) { inv = vzero(); return NAN; }
    float g = vhmax(amax) / 127.f;
    if (!(g >= FLT_MIN)) g = 0.f;
    inv = vset1(g > 0.f ? 1.f / g : 0.f);
    return g;
}
// The 32-block at x as integers in [-127, 127] (VB vectors) under grid8_scale's g and inv; zeros where g is NaN.
static inline void grid8_ints(const float* x, float g, vf inv, vi* q) {
    for (int i = 0; i < VB; i++) q[i] = g != g ? vset1i(0) : vclamp(vround(vmul(vload(x + VN * i), inv)), 127);
}
static void grid8_row(const float* x, int64_t K, float* g, float* xsum, int32_t* isum, int32_t* const quads[2]) {
    for (int64_t b = 0; b < K / 32; b++) {
        vf inv; vi q[VB];
        g[b] = grid8_scale(x + 32 * b, 32, inv);
        grid8_ints(x + 32 * b, g[b], inv, q);
        rg_block_sums(q, g[b], &xsum[b], isum + 2 * b);
        grid8_quads(q, b, quads);
    }
}

// The K-quants' a8 input (rg_a8_sb above): token row x (K % 256 == 0) as llama.cpp's Q8_K activations,
// one g a 256-block (grid8_scale over it), kept in g[K / 32] for each of its 32-blocks; msums[K / 64]
// the 32-blocks' integers summed, as int16 pairs (blocks 2i and 2i + 1: |sum| <= 32 x 127); isum and
// quads (natural order) as grid8_row's.
static void grid8_row256(const float* x, int64_t K, float* g, int32_t* msums, int32_t* isum, int32_t* quads) {
    int32_t* const order[2] = {quads, nullptr};
    for (int64_t sb = 0; sb < K / 256; sb++) {
        vf inv;
        const float gs = grid8_scale(x + 256 * sb, 256, inv);
        for (int64_t b = 8 * sb; b < 8 * sb + 8; b++) {
            vi q[VB]; float unscaled;
            grid8_ints(x + 32 * b, gs, inv, q);
            g[b] = gs;
            rg_block_sums(q, 1.f, &unscaled, isum + 2 * b);
            const uint32_t half = (uint16_t)(int16_t)(isum[2 * b] + isum[2 * b + 1]);
            msums[b / 2] = (int32_t)(b % 2 ? (uint32_t)msums[b / 2] | half << 16 : half);
            grid8_quads(q, b, order);
        }
    }
}

// X on the grid for a row-grouped matmul, a task a PREP_ROWS tokens: xq [T, K] (the fp32 GEMV's
// input; null where every GEMV is integer), g and xsum [T, K / 32], isum [T, K / 16], pairs[s] [T,
// K / 2] in each pair order s the matmul uses (null otherwise); or, where quads[s] are given
// instead (an a8 GEMM), x at 8 bits (grid8_row): g, xsum, isum and quads[s] [T, K / 4].
// Or, with msums given, x for the K-quants' a8 matmuls (grid8_row256): g, msums, isum, quads[0].
struct Grid {
    const float* X; int64_t ldx, K, T; float* xq; float* g; float* xsum; int32_t* pairs[2];
    int32_t* quads[2] = {nullptr, nullptr}; int32_t* isum = nullptr; int32_t* msums = nullptr;
};
static void grid_task(void* p, int64_t i) {
    const Grid& j = *(const Grid*)p;
    for (int64_t t = i * PREP_ROWS; t < j.T && t < (i + 1) * PREP_ROWS; t++) {
        if (j.msums) {
            grid8_row256(j.X + t * j.ldx, j.K, j.g + t * (j.K / 32), j.msums + t * (j.K / 64), j.isum + t * (j.K / 16),
                         j.quads[0] + t * (j.K / 4));
            continue;
        }
        if (j.quads[0] || j.quads[1]) {
            int32_t* const quads[2] = {j.quads[0] ? j.quads[0] + t * (j.K / 4) : nullptr,
                                       j.quads[1] ? j.quads[1] + t * (j.K / 4) : nullptr};
            grid8_row(j.X + t * j.ldx, j.K, j.g + t * (j.K / 32), j.xsum + t * (j.K / 32), j.isum + t * (j.K / 16),
                      quads);
            continue;
        }
        int32_t* const pairs[2] = {j.pairs[0] ? j.pairs[0] + t * (j.K / 2) : nullptr,
                                   j.pairs[1] ? j.pairs[1] + t * (j.K / 2) : nullptr};
        grid_row(j.X + t * j.ldx, j.K, j.xq ? j.xq + t * j.K : nullptr, j.g + t * (j.K / 32), j.xsum + t * (j.K / 32),
                 j.isum + t * (j.K / 16), pairs);
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

// The d and m vectors of sub-block sub of the group super-block at sb.
template <int TYPE> static inline void rg_scales(const uint8_t* sb, int sub, vf& d, vf& m) {
    if constexpr (TYPE == Q4_K) {
        d = vmul(vh2f(sb), vcvt(vu8(sb + (4 + sub) * VN)));
        m = vmul(vmul(vh2f(sb + 2 * VN), vset1(-1.f)), vcvt(vu8(sb + (12 + sub) * VN)));
    } else {
        d = vh2f(sb);
        if constexpr (TYPE == Q4_1 || TYPE == Q5_1) m = vh2f(sb + 2 * VN);
        else m = vmul(d, vset1(TYPE == Q5_0 ? -16.f : -8.f));       // Q4_0, Q5_0 (integer paths: M_OFF); not Q8_0
    }
}

// The pp-th int16 pair vector of a 32-block type's block: quants 2 pp and 2 pp + 1 in KPERM order
// (Q4_0/Q4_1: the two nibbles of byte pp, (u & 15) | (u >> 4) << 16 in two operations; Q5_0/Q5_1
// in five where the two quants cost about ten; Q8_0 in one).
template <int TYPE> static inline vi rg_qpair(const uint8_t* blk, int pp) {
    if constexpr (TYPE == Q8_0) return vs8x2(blk + (RG_QS<TYPE> + 2 * pp) * VN);
    else if constexpr (TYPE == Q4_0 || TYPE == Q4_1) {
        const vi u = vu8(blk + (RG_QS<TYPE> + pp) * VN);
        return vand(vor(u, vslli<12>(u)), vset1i(0x000F000F));
    }
    else {                                          // b[pp] = u | (v & 7) << 5, e[pp / 4] has v >> 3
        static_assert(TYPE == Q5_0 || TYPE == Q5_1, "the 32-block types only");
        const vi b = vu8(blk + (RG_QS<TYPE> + pp) * VN), e = vu8(blk + (RG_QS<TYPE> + 16 + pp / 4) * VN);
        const vi low = vand(vor(b, vslli<11>(b)), vset1i(0x0007001F));          // u | (v & 7) << 16
        return vor(low, vand(vsrlv(vslli<19>(e), vset1i(2 * (pp % 4))), vset1i(0x00180000)));
    }
}

// Q6_K's quant vector (q - 32) for weight 128n + 32T + j, and the d vector of its scale group idx
// (8n + 2T + j / 16).
template <int T> static inline vi rg_q6i(const uint8_t* sb, int n, int j) {
    const uint8_t* e = sb + (RG_QS<Q6_K> + 3 * (32 * n + j)) * VN;
    const vi a = vs8(e + (T & 1) * VN);         // s_T << 2 | two bits of s_{T+2}, sign-extended
    if constexpr (T < 2) return vsrai<2>(a);
    const vi c = vs8(e + 2 * VN);
    const vi hi = T == 2 ? vand(vsrai<2>(c), vset1i(~3)) : vsrai<26>(vslli<28>(c));    // s_T & ~3
    return vor(hi, vand(a, vset1i(3)));
}
template <int T> static inline vf rg_q6(const uint8_t* sb, int n, int j) { return vcvt(rg_q6i<T>(sb, n, j)); }
// Q6_K's int16 pair vectors of weights j and j + 1 (j even), quarters T = 0..3 into w[T] (rg_q6i's
// values), from the two weights' three bytes each side by side in 16-bit halves: 23 operations for
// the four where rg_q6i twice and a pairing took ~52 (the 13-bit Q6_K GEMV, 2 Zen 4 cores, 32768 x
// 2048: 1.555 -> 1.351 ms).
static inline void rg_q6_pairs(const uint8_t* sb, int n, int j, vi w[4]) {
    const uint8_t* e = sb + (RG_QS<Q6_K> + 3 * (32 * n + j)) * VN;
    auto field = [&](int f) { return vor(vu8(e + f * VN), vslli<16>(vu8(e + (3 + f) * VN))); };
    const vi a0 = field(0), a1 = field(1), c = field(2), low2 = vset1i(0x00030003);
    w[0] = vsrai16<10>(vslli16<8>(a0));                 // bits 7..2 of byte 0, sign-extended
    w[1] = vsrai16<10>(vslli16<8>(a1));
    w[2] = vor(vand(vsrai16<10>(vslli16<8>(c)), vset1i((int)0xFFFCFFFCu)), vand(a0, low2));   // c's high nibble << 2
    w[3] = vor(vsrai16<10>(vslli16<12>(c)), vand(a1, low2));                                 // c's low nibble << 2
}
static inline vf rg_q6_scale(const uint8_t* sb, int idx) { return vmul(vh2f(sb), vcvt(vs8(sb + (2 + idx) * VN))); }

// Q4_K's quant vectors for weight j of sub-blocks 2p (lo) and 2p + 1 (hi).
template <int TYPE> static inline void rg_qi_pair(const uint8_t* sb, int p, int j, vi& lo, vi& hi) {
    const vi u = vu8(sb + (RG_QS<TYPE> + 32 * p + j) * VN);
    lo = vand(u, vset1i(0xF)); hi = vsrli<4>(u);
}
template <int TYPE> static inline void rg_q_pair(const uint8_t* sb, int p, int j, vf& lo, vf& hi) {
    vi l, h; rg_qi_pair<TYPE>(sb, p, j, l, h); lo = vcvt(l); hi = vcvt(h);
}
// Q4_K's int16 pair vectors of weights j and j + 1 (j even) of sub-blocks 2p (lo) and 2p + 1 (hi),
// from the two bytes (vu8x2) in three more operations (pairing rg_qi_pair's four quants took ten;
// vu8x2's vpermb against two vpmovzxbd, a shift and an or: the 13-bit GEMV, 2 Zen 4 cores, 32768 x
// 2048, 0.905 -> 0.652 ms).
static inline void rg_q4k_pairs(const uint8_t* sb, int p, int j, vi& lo, vi& hi) {
    const uint8_t* e = sb + (RG_QS<Q4_K> + 32 * p + j) * VN;
    const vi u = vu8x2(e);
    lo = vand(u, vset1i(0x000F000F));
    hi = vand(vsrli<4>(u), vset1i(0x000F000F));
}

// A GEMV's request for the super-block at sb (SB bytes) of the G groups after its own, into L2
// (T1). Into L1 (T0) the requests held up the loads (one Zen 4 core, 3072 x 1024 in cache, Q8_0
// 84.1-86.8 -> 102.8-108.8 GFLOP/s; 2 threads, 65536 x 2048 from DRAM, ms: Q4_0 2.31-3.11 ->
// 1.90-1.93, Q5_0 3.37-3.69 -> 2.52-2.92, Q4_K 3.59-3.94 -> 3.07-3.48, Q6_K 6.32-6.69 -> 3.94-4.35,
// Q8_0 3.80-5.13 -> 4.17-4.54). No request at all was as fast there, but a Zen 3 VM's hardware
// prefetcher did not keep up without them (quant_kernels.cpp's prefetch).
// PARTS > 1: part `part` of them; the K-quants' GEMV spreads them over its sub-block loop, where
// all at once they held up the loop (2 Zen 4 cores, 65536 x 2048 from DRAM, ms: Q4_K 2.38-2.51 ->
// 1.84-1.85 in four parts, 1.98 in sixteen; Q6_K 3.60-3.67 -> 3.16-3.18; 4096 x 2048 in cache -4 %, -9 %).
template <int G, int PARTS = 1>
static inline void rg_fetch_next(const uint8_t* sb, int64_t gstride, int64_t SB, int part = 0) {
    const int64_t lines = (SB + 63) / 64, l0 = lines * part / PARTS, l1 = lines * (part + 1) / PARTS;
    for (int g = 0; g < G; g++)
        for (int64_t l = l0; l < l1; l++) _mm_prefetch((const char*)(sb + (G + g) * gstride + 64 * l), _MM_HINT_T1);
}

// G groups (G * VN rows from W, groups gstride bytes apart) times one token x into out[G * VN] in fp32
// FMAs: Q4_K and Q6_K where vdpwssd is not one instruction (RG_INT_GEMV).
template <int TYPE, int G>
static inline void rg_gemv_groups(const uint8_t* W, int64_t gstride, int64_t nb, const float* x, const float* xsum,
                                  float* out) {
    static_assert(TYPE == Q4_K || TYPE == Q6_K, "the other types' GEMV is integer everywhere");
    constexpr int64_t SB = VN * RG_SB<TYPE>;
    vf acc[G];
    for (int g = 0; g < G; g++) acc[g] = vzero();
    for (int64_t sbi = 0; sbi < nb / SUBS<TYPE>; sbi++) {
        const uint8_t* sb = W + sbi * SB;
        if constexpr (TYPE == Q6_K) {
            for (int n = 0; n < 2; n++)
                for (int h = 0; h < 2; h++) {   // chunks (n, h, t) for t = 0..3: four chains a group
                    rg_fetch_next<G, 4>(sb, gstride, SB, 2 * n + h);
                    vf s[G][4];
                    for (int g = 0; g < G; g++) for (int t = 0; t < 4; t++) s[g][t] = vzero();
                    const float* xb = x + 256 * sbi + 128 * n + 16 * h;
#pragma GCC unroll 16
                    for (int jj = 0; jj < 16; jj++)
                        for (int g = 0; g < G; g++) {
                            const uint8_t* sg = sb + g * gstride;
                            s[g][0] = vfma(rg_q6<0>(sg, n, 16 * h + jj), vset1(xb[jj]), s[g][0]);
                            s[g][1] = vfma(rg_q6<1>(sg, n, 16 * h + jj), vset1(xb[32 + jj]), s[g][1]);
                            s[g][2] = vfma(rg_q6<2>(sg, n, 16 * h + jj), vset1(xb[64 + jj]), s[g][2]);
                            s[g][3] = vfma(rg_q6<3>(sg, n, 16 * h + jj), vset1(xb[96 + jj]), s[g][3]);
                        }
                    for (int g = 0; g < G; g++)
                        for (int t = 0; t < 4; t++)
                            acc[g] = vfma(s[g][t], rg_q6_scale(sb + g * gstride, 8 * n + 2 * t + h), acc[g]);
                }
        } else {
            for (int p = 0; p < 4; p++) {      // sub-blocks 2p and 2p + 1: two chains a group
                rg_fetch_next<G, 4>(sb, gstride, SB, p);
                vf s0[G], s1[G];
                for (int g = 0; g < G; g++) s0[g] = s1[g] = vzero();
                const float* xb = x + 256 * sbi + 64 * p;
#pragma GCC unroll 32
                for (int j = 0; j < 32; j++) {
                    const vf x0 = vset1(xb[j]), x1 = vset1(xb[32 + j]);
                    for (int g = 0; g < G; g++) {
                        vf lo, hi; rg_q_pair<TYPE>(sb + g * gstride, p, j, lo, hi);
                        s0[g] = vfma(lo, x0, s0[g]); s1[g] = vfma(hi, x1, s1[g]);
                    }
                }
                const float* xs = xsum + 8 * sbi + 2 * p;
                for (int g = 0; g < G; g++) {
                    vf d, m; rg_scales<TYPE>(sb + g * gstride, 2 * p, d, m);
                    acc[g] = vfma(m, vset1(xs[0]), vfma(s0[g], d, acc[g]));
                    rg_scales<TYPE>(sb + g * gstride, 2 * p + 1, d, m);
                    acc[g] = vfma(m, vset1(xs[1]), vfma(s1[g], d, acc[g]));
                }
            }
        }
    }
    for (int g = 0; g < G; g++) vstore(out + g * VN, acc[g]);
}

// The group at grp unpacked into an integer panel: chunk c's quants as CH / 2 vectors of int16 pairs
// (quants kk and kk + 1 in KPERM order, low half first) at q + CH / 2 c VN, its d and m vectors at
// d + c VN, m + c VN (not where m is null: an a8 K-quant's, rg_q4k_mins); only the d and m vectors
// where q is null (an a8 panel of rg_quads' types).
template <int TYPE> static void rg_panel(const uint8_t* grp, int64_t nb, int32_t* q, float* d, float* m) {
    auto put = [&](int64_t chunk, int kk, vi pair) { vstore_i(q + (chunk * (CH<TYPE> / 2) + kk / 2) * VN, pair); };
    for (int64_t sbi = 0; sbi < nb / SUBS<TYPE>; sbi++) {
        const uint8_t* sb = grp + sbi * VN * RG_SB<TYPE>;
        if constexpr (TYPE == Q6_K) {
            for (int ci = 0; ci < 16; ci++)      // chunk ci = (n, h, t) = (ci / 8, ci / 4 % 2, ci % 4)
                vstore(d + (16 * sbi + ci) * VN, rg_q6_scale(sb, 8 * (ci >> 3) + 2 * (ci & 3) + ((ci >> 2) & 1)));
            if (!q) continue;
            for (int n = 0; n < 2; n++)
                for (int j = 0; j < 32; j += 2) {
                    const int64_t c = 16 * sbi + 8 * n + 4 * (j >> 4);
                    vi w[4];
                    rg_q6_pairs(sb, n, j, w);
                    for (int t = 0; t < 4; t++) put(c + t, j & 15, w[t]);
                }
            continue;
        }
        for (int sub = 0; sub < SUBS<TYPE>; sub++) {
            const int64_t b = sbi * SUBS<TYPE> + sub;
            vf dv, mv; rg_scales<TYPE>(sb, sub, dv, mv);
            vstore(d + b * VN, dv);
            if (m) vstore(m + b * VN, mv);
        }
        if (!q) continue;
        if constexpr (SUBS<TYPE> == 1) {
#pragma GCC unroll 16
            for (int pp = 0; pp < 16; pp++) put(sbi, 2 * pp, rg_qpair<TYPE>(sb, pp));
        } else {
            for (int p = 0; p < 4; p++)
                for (int j = 0; j < 32; j += 2) {
                    vi lo, hi;
                    rg_q4k_pairs(sb, p, j, lo, hi);
                    put(8 * sbi + 2 * p, j, lo); put(8 * sbi + 2 * p + 1, j, hi);
                }
        }
    }
}

// Two int16 pair vectors (p0: quants 0, 1; p1: 2, 3 of each lane, each in [-128, 127]) as one
// vector of 4 bytes a lane, in that order.
static inline vi rg_pairs_to_quad(vi p0, vi p1) {
    const vi lo8 = vset1i(0xFF), hi8 = vset1i(0xFF00);
    return vor(vor(vand(p0, lo8), vand(vsrli<8>(p0), hi8)), vslli<16>(vor(vand(p1, lo8), vand(vsrli<8>(p1), hi8))));
}

// A group's panel (rg_panel's int16 pairs) as signed bytes, chunk after chunk, for AMX's B tiles:
// CH / 4 vectors, each lane a row's quants 4r .. 4r + 3 in KPERM order (the order of x's quads).
template <int TYPE> static void rg_quad_panel(const int32_t* q, int64_t nch, int32_t* out) {
    constexpr int P = CH<TYPE> / 2;
    for (int64_t b = 0; b < nch; b++)
        for (int r = 0; r < CH<TYPE> / 4; r++)
            vstore_i(out + (b * (CH<TYPE> / 4) + r) * VN,
                     rg_pairs_to_quad(vload_i(q + (P * b + 2 * r) * VN), vload_i(q + (P * b + 2 * r + 1) * VN)));
}
// The a8 panel's offset o (u = q + o unsigned, each chunk's sum from -o sum xi): Q8_0's and Q6_K's
// quants are signed; Q4_0's and Q5_0's unsigned, their m = -8 d, -16 d folded into the sums.
template <int TYPE> constexpr int A8_OFF = TYPE == Q8_0 ? 128 : TYPE == Q6_K ? 32 : M_OFF<TYPE>;
template <int TYPE> constexpr int A8_PANEL_OFF = TYPE == Q8_0 || TYPE == Q6_K ? A8_OFF<TYPE> : 0;
// Quad j of a 32-block type's block at sb as its a8 panel holds it (unsigned: offset
// A8_PANEL_OFF) straight from the group's bytes: its quants 4j .. 4j + 3 in KPERM order, that is the
// two int16 pairs 2j and 2j + 1 of rg_qpair, here narrowed to bytes in registers (Q4_0/Q4_1: the
// nibbles of bytes 2j and 2j + 1, quants 2j, 2j + 16, 2j + 1, 2j + 17, in four operations; Q8_0: its
// pair entries 2j and 2j + 1 interleaved by vu16x2, then + 128; Q5_0/Q5_1: eleven operations).
template <int TYPE> static inline vi rg_quad(const uint8_t* sb, int j) {
    if constexpr (TYPE == Q8_0) {
        return vxor(vu16x2(sb + (2 + 4 * j) * VN), vset1i((int)0x80808080u));
    } else if constexpr (TYPE == Q4_0 || TYPE == Q4_1) {
        const uint8_t* e = sb + (RG_QS<TYPE> + 2 * j) * VN;        // the bytes of entries 2j, 2j + 1
        const vi u = vu8x2(e);
        return vor(vand(u, vset1i(0x000F000F)), vand(vslli<4>(u), vset1i(0x0F000F00)));
    } else {            // Q5_0/Q5_1: b[pp] = u | (v & 7) << 5, v >> 3 in e[pp / 4]'s bits 2 (pp % 4)
        static_assert(TYPE == Q5_0 || TYPE == Q5_1, "the 32-block types only");
        const uint8_t* b = sb + (RG_QS<TYPE> + 2 * j) * VN;
        const vi u = vu8x2(b), e = vu8(sb + (RG_QS<TYPE> + 16 + j / 2) * VN);
        const vi v_hi = j & 1 ? vor(vslli<7>(e), vslli<21>(e)) : vor(vslli<11>(e), vslli<25>(e));   // to bits 3, 4
        return vor(vor(vand(u, vset1i(0x001F001F)), vand(vslli<3>(u), vset1i(0x07000700))),
                   vand(v_hi, vset1i(0x18001800)));
    }
}
// Q4_K's a8 quads of weights 4q .. 4q + 3 of sub-blocks 2p (lo) and 2p + 1 (hi), from their four
// bytes (vu8x4 and four operations where rg_q4k_pairs and rg_pairs_to_quad took thirty).
static inline void rg_q4k_quads(const uint8_t* sb, int p, int q, vi& lo, vi& hi) {
    const uint8_t* e = sb + (RG_QS<Q4_K> + 32 * p + 4 * q) * VN;
    const vi u = vu8x4(e);
    lo = vand(u, vset1i(0x0F0F0F0F)); hi = vand(vsrli<4>(u), vset1i(0x0F0F0F0F));
}
// Q6_K's a8 quads (q + 32, A8_PANEL_OFF) of weights j .. j + 3 (j % 4 == 0) of half n, quarters T =
// 0..3 into w[T], from their twelve bytes (rg_q6i's fields, a byte of each weight side by side): s_0
// and s_1 are bytes 0 and 1 >> 2, s_2 and s_3 byte 2's high and low nibbles << 2 | bytes 0 and 1's
// low two bits; + 32 flips a 6-bit value's top bit (42 operations for the four where pairs
// and rg_pairs_to_quad took ~120).
static inline void rg_q6_quads(const uint8_t* sb, int n, int j, vi w[4]) {
    const uint8_t* e = sb + (RG_QS<Q6_K> + 3 * (32 * n + j)) * VN;
    auto field = [&](int f) {
        return vor(vor(vu8(e + f * VN), vslli<8>(vu8(e + (3 + f) * VN))),
                   vor(vslli<16>(vu8(e + (6 + f) * VN)), vslli<24>(vu8(e + (9 + f) * VN))));
    };
    const vi a0 = field(0), a1 = field(1), c = field(2);
    const vi six = vset1i(0x3F3F3F3F), hi4 = vset1i(0x3C3C3C3C), lo2 = vset1i(0x03030303), top = vset1i(0x20202020);
    w[0] = vxor(vand(vsrli<2>(a0), six), top);
    w[1] = vxor(vand(vsrli<2>(a1), six), top);
    w[2] = vxor(vor(vand(vsrli<2>(c), hi4), vand(a0, lo2)), top);
    w[3] = vxor(vor(vand(vslli<2>(c), hi4), vand(a1, lo2)), top);
}
static_assert(A8_PANEL_OFF<Q6_K> == 32, "rg_q6_quads' + 32");

// The a8 panel: every quad of the group at grp, chunk after chunk (in rg_panel's chunk order).
template <int TYPE> static void rg_quads(const uint8_t* grp, int64_t nb, int32_t* out) {
    if constexpr (TYPE == Q6_K) {
        for (int64_t sbi = 0; sbi < nb / 8; sbi++)
            for (int n = 0; n < 2; n++)
                for (int h = 0; h < 2; h++)
                    for (int r = 0; r < 4; r++) {       // chunks 16 sbi + 8n + 4h + t, quad r of each
                        vi w[4];
                        rg_q6_quads(grp + sbi * VN * RG_SB<TYPE>, n, 16 * h + 4 * r, w);
                        for (int t = 0; t < 4; t++) vstore_i(out + ((16 * sbi + 8 * n + 4 * h + t) * 4 + r) * VN, w[t]);
                    }
    } else if constexpr (TYPE == Q4_K) {
        for (int64_t sbi = 0; sbi < nb / 8; sbi++)
            for (int p = 0; p < 4; p++)
#pragma GCC unroll 8
                for (int q = 0; q < 8; q++) {
                    vi lo, hi;
                    rg_q4k_quads(grp + sbi * VN * RG_SB<TYPE>, p, q, lo, hi);
                    vstore_i(out + ((8 * sbi + 2 * p) * 8 + q) * VN, lo);
                    vstore_i(out + ((8 * sbi + 2 * p + 1) * 8 + q) * VN, hi);
                }
    } else {
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t* sb = grp + b * VN * RG_SB<TYPE>;
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) vstore_i(out + (b * 8 + j) * VN, rg_quad<TYPE>(sb, j));
        }
    }
}


// A chunk's integer sums S (exact, < 2^24) into the accumulators: acc = fma(S g, d, acc), then
// acc = fma(m, xsum, acc) where SUM_HAS_M (the others ignore m and xsum). S g is exact in fp32.
template <int TYPE> static inline vf rg_chunk_fma(vi s, float g, vf d, vf m, float xsum, vf acc) {
    const vf a = vfma(vmul(vcvt(s), vset1(g)), d, acc);
    if constexpr (SUM_HAS_M<TYPE>) return vfma(m, vset1(xsum), a);
    return a;
}

// An a8 Q4_K super-block's m term (rg_a8_sb): its sub-blocks' mins mn (6 bits, vu8x2 pairs of
// sub-blocks 2p, 2p + 1) times a token's 32-block integer sums (msums, grid8_row256's int16 pairs), in
// four vpdpwssd, exact; then, times -dmin, one fp32 FMA a super-block where m took one a sub-block.
static inline vi rg_q4k_minpair(const uint8_t* sb, int p) { return vu8x2(sb + (12 + 2 * p) * VN); }
static inline vf rg_q4k_negdmin(const uint8_t* sb) { return vmul(vh2f(sb + 2 * VN), vset1(-1.f)); }
static inline vi rg_q4k_msum(const vi mn[4], const int32_t* msums) {
    vi s = vdpwssd(vset1i(0), mn[0], vset1i(msums[0]));
    for (int p = 1; p < 4; p++) s = vdpwssd(s, mn[p], vset1i(msums[p]));
    return s;
}
// A super-block's end in an a8 K-quant's GEMM and GEMV alike (one order, so one token's bits): its
// unscaled sums sb, Q4_K's m term added (mn, negdmin, the token's msums there), times the token's g
// into acc.
template <int TYPE> static inline vf rg_sb_end(vf sb, const vi* mn, vf negdmin, const int32_t* msums, float g,
                                               vf acc) {
    if constexpr (HAS_M<TYPE>) sb = vfma(vcvt(rg_q4k_msum(mn, msums)), negdmin, sb);
    return vfma(sb, vset1(g), acc);
}
// A group's mins for rg_imicro8 (its m panel: 8 VN floats a super-block): the 4 pair vectors, -dmin.
static void rg_q4k_mins(const uint8_t* grp, int64_t nb, float* m) {
    for (int64_t sbi = 0; sbi < nb / 8; sbi++) {
        const uint8_t* sb = grp + sbi * VN * RG_SB<Q4_K>;
        for (int p = 0; p < 4; p++) vstore_i((int32_t*)(m + (8 * sbi + p) * VN), rg_q4k_minpair(sb, p));
        vstore(m + (8 * sbi + 4) * VN, rg_q4k_negdmin(sb));
    }
}

// out[c * ldo + v * VN ..] = the RV groups of panel rows times C tokens over nch chunks: token c's
// grid pairs xp[c], its grid g[c], block sums xsums[c] and isum[c]; each group's panel (rg_panel) is pstride
// int32 after the last, its d and m vectors dstride floats. The fp32 accumulators are variables
// (GCC keeps what fits in registers): ~5-9 % faster than reloading them from out at every chunk
// (one Zen 3 core, Q4_1, Q4_K, Q6_K, Q8_0 3072 x 2048 x 64). A chunk's integer sum S (exact, < 2^24)
// becomes S g in fp32, exactly the GEMV's fp32 chunk sum, then acc = fma(S g, d, acc) (+ m xsum).
template <int TYPE, int RV, int C>
__attribute__((always_inline)) static inline void rg_imicro(const int32_t* q, int64_t pstride, const float* d,
        const float* m, int64_t dstride, int64_t nch, const int32_t* const* xp, const float* const* g,
        const float* const* xsums, const int32_t* const* isum, float* out, int64_t ldo) {
    constexpr int P = CH<TYPE> / 2;
    vf acc[RV][C];
    for (int c = 0; c < C; c++) for (int v = 0; v < RV; v++) acc[v][c] = vzero();
    for (int64_t b = 0; b < nch; b++) {
        const int64_t xb = rg_xbase<TYPE>(b);
        vi s[RV][C];
        for (int c = 0; c < C; c++) {
            const vi start = vset1i(rg_sum_start<TYPE>(isum[c], xb));
            for (int v = 0; v < RV; v++) s[v][c] = start;
        }
#pragma GCC unroll 16
        for (int pp = 0; pp < P; pp++) {
            vi w[RV];
            for (int v = 0; v < RV; v++) { w[v] = vload_i(q + v * pstride + (P * b + pp) * VN); LLMOS_PIN(w[v]); }
            for (int c = 0; c < C; c++) {
                const vi xv = vset1i(xp[c][xb / 2 + pp]);
                // Pinned: integer sums reassociate, and GCC then computes every product before adding
                // any (spilling them all: 30 -> 64 GMAC/s on one Zen 3 core once pinned).
                for (int v = 0; v < RV; v++) { s[v][c] = vdpwssd(s[v][c], w[v], xv); LLMOS_PIN(s[v][c]); }
            }
        }
        for (int v = 0; v < RV; v++) {
            const vf dv = vload(d + v * dstride + b * VN), mv = SUM_HAS_M<TYPE> ? vload(m + v * dstride + b * VN) : dv;
            for (int c = 0; c < C; c++)
                acc[v][c] = rg_chunk_fma<TYPE>(s[v][c], g[c][xb / 32], dv, mv, SUM_HAS_M<TYPE> ? xsums[c][b] : 0.f,
                                               acc[v][c]);
        }
    }
    for (int c = 0; c < C; c++) for (int v = 0; v < RV; v++) vstore(out + c * ldo + v * VN, acc[v][c]);
}

#if defined(LLMOS_VDPBUSD)
// rg_imicro for an a8 matmul: the groups' unsigned quads (rg_quads, pstride int32 apart) times
// C tokens' signed quads xq[c] (grid8_row, their pair order), four products a vpdpbusd, each chunk's
// sum from -A8_OFF sum xi (isum[c], 16 at a time); then rg_imicro's epilogue with the tokens' g and
// xsums (the m FMA only where SUM_HAS_M). The K-quants (A8_SB: x from grid8_row256) sum a super-block's
// chunks unscaled, then Q4_K's m term from msums[c] (rg_q4k_msum, m: rg_q4k_mins) and out += the sum
// times g, out zeroed first.
template <int TYPE, int RV, int C>
__attribute__((always_inline)) static inline void rg_imicro8(const int32_t* q, int64_t pstride, const float* d,
        const float* m, int64_t dstride, int64_t nch, const int32_t* const* xq, const int32_t* const* isum,
        const float* const* g, const float* const* xsums, const int32_t* const* msums, float* out, int64_t ldo) {
    constexpr int P = CH<TYPE> / 4;
    constexpr int64_t CPS = 256 / CH<TYPE>;             // A8_SB: chunks a super-block
    vf acc[RV][C];                                      // A8_SB: the super-block's, before its g
    for (int c = 0; c < C; c++) for (int v = 0; v < RV; v++) acc[v][c] = vzero();
    if constexpr (A8_SB<TYPE>)
        for (int c = 0; c < C; c++) for (int v = 0; v < RV; v++) vstore(out + c * ldo + v * VN, vzero());
    for (int64_t b = 0; b < nch; b++) {
        const int64_t xb = rg_xbase<TYPE>(b);
        vi s[RV][C];
        for (int c = 0; c < C; c++) {
            const vi start = vset1i(rg_sum_start<TYPE, A8_OFF<TYPE>>(isum[c], xb));
            for (int v = 0; v < RV; v++) s[v][c] = start;
        }
#pragma GCC unroll 8
        for (int pp = 0; pp < P; pp++) {
            vi w[RV];
            for (int v = 0; v < RV; v++) { w[v] = vload_i(q + v * pstride + (P * b + pp) * VN); LLMOS_PIN(w[v]); }
            for (int c = 0; c < C; c++) {
                const vi xv = vset1i(xq[c][xb / 4 + pp]);
                for (int v = 0; v < RV; v++) { s[v][c] = vdpbusd(s[v][c], w[v], xv); LLMOS_PIN(s[v][c]); }
            }
        }
        for (int v = 0; v < RV; v++) {
            const vf dv = vload(d + v * dstride + b * VN);
            for (int c = 0; c < C; c++) {
                const vf si = vcvt(s[v][c]);
                const vf a = vfma(A8_SB<TYPE> ? si : vmul(si, vset1(g[c][xb / 32])), dv, acc[v][c]);
                constexpr bool M_FMA = SUM_HAS_M<TYPE> && !A8_SB<TYPE>;
                acc[v][c] = M_FMA ? vfma(vload(m + v * dstride + b * VN), vset1(xsums[c][b]), a) : a;
            }
        }
        if constexpr (A8_SB<TYPE>)          // a super-block's end: its m term, then out += its sums times its g
            if (b % CPS == CPS - 1) {
                const int64_t sbi = b / CPS;
                for (int v = 0; v < RV; v++) {
                    [[maybe_unused]] vi mn[4]; [[maybe_unused]] vf negdmin;
                    if constexpr (HAS_M<TYPE>) {        // rg_q4k_mins
                        const float* mp = m + v * dstride + 8 * sbi * VN;
                        for (int p = 0; p < 4; p++) mn[p] = vload_i((const int32_t*)(mp + p * VN));
                        negdmin = vload(mp + 4 * VN);
                    }
                    for (int c = 0; c < C; c++) {
                        float* o = out + c * ldo + v * VN;
                        const int32_t* ms = HAS_M<TYPE> ? msums[c] + 4 * sbi : nullptr;
                        vstore(o, rg_sb_end<TYPE>(acc[v][c], mn, negdmin, ms, g[c][8 * sbi], vload(o)));
                        acc[v][c] = vzero();
                    }
                }
            }
    }
    if constexpr (!A8_SB<TYPE>)
        for (int c = 0; c < C; c++) for (int v = 0; v < RV; v++) vstore(out + c * ldo + v * VN, acc[v][c]);
}
#endif

// A GEMV's weight vectors and products: x's int16 pairs and vdpwssd on the 13-bit grid, or (A8) x's
// byte quads and vdpbusd, each vector made in registers as the GEMM's panel holds it.
template <bool A8> constexpr int RG_PER = A8 ? 4 : 2;         // x elements a vector's lane takes
template <bool A8> static inline vi rg_dot(vi s, vi w, vi x) {
#if defined(LLMOS_VDPBUSD)
    if constexpr (A8) return vdpbusd(s, w, x);
#else
    static_assert(!A8, "8-bit activations need vpdpbusd");
#endif
    return vdpwssd(s, w, x);
}
template <int TYPE, bool A8> static inline vi rg_wvec(const uint8_t* blk, int k) {    // a 32-block type's
    if constexpr (A8) return rg_quad<TYPE>(blk, k);
    else return rg_qpair<TYPE>(blk, k);
}
template <bool A8> static inline void rg_q4k_vecs(const uint8_t* sb, int p, int k, vi& lo, vi& hi) {
    if constexpr (A8) rg_q4k_quads(sb, p, k, lo, hi);
    else rg_q4k_pairs(sb, p, 2 * k, lo, hi);
}
template <bool A8> static inline void rg_q6_vecs(const uint8_t* sb, int n, int j, vi w[4]) {
    if constexpr (A8) rg_q6_quads(sb, n, j, w);
    else rg_q6_pairs(sb, n, j, w);
}
static_assert(A8_PANEL_OFF<Q4_K> == 0, "Q4_K's a8 quads are its unsigned quants");

// G groups (G * VN rows from W, groups gstride bytes apart) times C tokens into out[c * ldo + G * VN]:
// the GEMM's integer sums without a panel in memory. Each weight vector (rg_wvec, rg_q4k_vecs,
// rg_q6_vecs: int16 pairs, or A8's unsigned quads) is made in registers as the GEMM's panel holds it
// and meets each token's x vectors xv[c] (pairs, or A8's quads, in their order) in rg_dot, from
// rg_sum_start (isum[c]; A8_OFF for A8); each chunk then takes the GEMM's epilogue (grid g[c], block
// sums xsum[c]; an A8 K-quant's super-block sums, Q4_K's m term from msums[c], as rg_imicro8's),
// chunks in the panel's order, so a token's results are the GEMM's bits (rg_imicro's,
// or A8's rg_imicro8's) whatever its batch. A few tokens (C > 1) share each weight vector, and the
// weights stream once for all. (A8 through the GEMM's panels cost a few tokens twice the time: 2 Zen
// 4 cores, one token, Gemma 3's 262144 x 640 Q8_0 output layer 3.8 -> 9.4 ms.)
template <int TYPE, int G, int C, bool A8 = false>
static inline void rg_igemv_groups(const uint8_t* W, int64_t gstride, int64_t nb, const int32_t* const* xv,
                                   const float* const* g, const float* const* xsum, const int32_t* const* isum,
                                   float* out, int64_t ldo, const int32_t* const* msums = nullptr) {
    constexpr int64_t SB = VN * RG_SB<TYPE>;
    constexpr int OFF = A8 ? A8_OFF<TYPE> : M_OFF<TYPE>, PER = RG_PER<A8>;
    vf acc[G][C];
    for (int r = 0; r < G; r++) for (int c = 0; c < C; c++) acc[r][c] = vzero();
    auto sums_at = [&](int c, int64_t b) { return SUM_HAS_M<TYPE> ? xsum[c][b] : 0.f; };
    auto start = [&](int c, int64_t xb) { return vset1i(rg_sum_start<TYPE, OFF>(isum[c], xb)); };
    for (int64_t sbi = 0; sbi < nb / SUBS<TYPE>; sbi++) {
        const uint8_t* sb = W + sbi * SB;
        if constexpr (SUBS<TYPE> == 1) {
            rg_fetch_next<G>(sb, gstride, SB);
            vi s[G][C];
            for (int c = 0; c < C; c++) {
                const vi st = start(c, 32 * sbi);
                for (int r = 0; r < G; r++) s[r][c] = st;
            }
#pragma GCC unroll 16
            for (int k = 0; k < 32 / PER; k++) {
                vi x[C];
                for (int c = 0; c < C; c++) x[c] = vset1i(xv[c][32 / PER * sbi + k]);
                for (int r = 0; r < G; r++) {
                    const vi w = rg_wvec<TYPE, A8>(sb + r * gstride, k);
                    for (int c = 0; c < C; c++) { s[r][c] = rg_dot<A8>(s[r][c], w, x[c]); LLMOS_PIN(s[r][c]); }
                }
            }
            for (int r = 0; r < G; r++) {
                vf d, m; rg_scales<TYPE>(sb + r * gstride, 0, d, m);
                for (int c = 0; c < C; c++)
                    acc[r][c] = rg_chunk_fma<TYPE>(s[r][c], g[c][sbi], d, m, sums_at(c, sbi), acc[r][c]);
            }
        } else if constexpr (TYPE == Q6_K) {
            static_assert(!A8 || A8_SB<TYPE>, "an a8 K-quant sums a super-block before its g (rg_imicro8)");
            vf sbacc[G][C];                    // A8 (A8_SB): the super-block's sums, before its g
            for (int r = 0; r < G; r++) for (int c = 0; c < C; c++) sbacc[r][c] = vzero();
            for (int n = 0; n < 2; n++)
                for (int h = 0; h < 2; h++) {      // chunks 16 sbi + 8n + 4h + t, t = 0..3 (rg_xbase)
                    rg_fetch_next<G, 4>(sb, gstride, SB, 2 * n + h);
                    const int64_t c0 = 16 * sbi + 8 * n + 4 * h;
                    vi s[G][4][C];
                    for (int t = 0; t < 4; t++)
                        for (int c = 0; c < C; c++) {
                            const vi st = start(c, rg_xbase<Q6_K>(c0 + t));
                            for (int r = 0; r < G; r++) s[r][t][c] = st;
                        }
#pragma GCC unroll 8
                    for (int k = 0; k < 16 / PER; k++) {      // weights 16h + PER k .. of each quarter
                        for (int r = 0; r < G; r++) {
                            vi w[4];
                            rg_q6_vecs<A8>(sb + r * gstride, n, 16 * h + PER * k, w);
                            for (int t = 0; t < 4; t++)
                                for (int c = 0; c < C; c++) {
                                    const vi x = vset1i(xv[c][rg_xbase<Q6_K>(c0 + t) / PER + k]);
                                    s[r][t][c] = rg_dot<A8>(s[r][t][c], w[t], x); LLMOS_PIN(s[r][t][c]);
                                }
                        }
                    }
                    for (int r = 0; r < G; r++)
                        for (int t = 0; t < 4; t++) {
                            const vf d = rg_q6_scale(sb + r * gstride, 8 * n + 2 * t + h);
                            for (int c = 0; c < C; c++)
                                if constexpr (A8) sbacc[r][c] = vfma(vcvt(s[r][t][c]), d, sbacc[r][c]);
                                else acc[r][c] = rg_chunk_fma<TYPE>(s[r][t][c], g[c][rg_xbase<Q6_K>(c0 + t) / 32], d,
                                                                    acc[r][c], 0.f, acc[r][c]);
                        }
                }
            if constexpr (A8)
                for (int r = 0; r < G; r++)
                    for (int c = 0; c < C; c++)
                        acc[r][c] = rg_sb_end<TYPE>(sbacc[r][c], nullptr, vzero(), nullptr, g[c][8 * sbi], acc[r][c]);
        } else {
            static_assert(!A8 || A8_SB<TYPE>, "an a8 K-quant sums a super-block before its g (rg_imicro8)");
            vf sbacc[G][C];                    // A8 (A8_SB): as Q6_K's
            for (int r = 0; r < G; r++) for (int c = 0; c < C; c++) sbacc[r][c] = vzero();
            for (int p = 0; p < 4; p++) {          // sub-blocks (chunks) 2p and 2p + 1
                rg_fetch_next<G, 4>(sb, gstride, SB, p);
                const int64_t b0 = 8 * sbi + 2 * p;
                vi s0[G][C], s1[G][C];
                for (int c = 0; c < C; c++) {
                    const vi st0 = start(c, 32 * b0), st1 = start(c, 32 * (b0 + 1));
                    for (int r = 0; r < G; r++) { s0[r][c] = st0; s1[r][c] = st1; }
                }
#pragma GCC unroll 16
                for (int k = 0; k < 32 / PER; k++) {
                    for (int r = 0; r < G; r++) {
                        vi lo, hi;
                        rg_q4k_vecs<A8>(sb + r * gstride, p, k, lo, hi);
                        for (int c = 0; c < C; c++) {
                            const vi x0 = vset1i(xv[c][32 / PER * b0 + k]), x1 = vset1i(xv[c][32 / PER * (b0 + 1) + k]);
                            s0[r][c] = rg_dot<A8>(s0[r][c], lo, x0); LLMOS_PIN(s0[r][c]);
                            s1[r][c] = rg_dot<A8>(s1[r][c], hi, x1); LLMOS_PIN(s1[r][c]);
                        }
                    }
                }
                for (int r = 0; r < G; r++) {
                    vf d, m; rg_scales<TYPE>(sb + r * gstride, 2 * p, d, m);
                    vf d1, m1; rg_scales<TYPE>(sb + r * gstride, 2 * p + 1, d1, m1);
                    for (int c = 0; c < C; c++) {
                        if constexpr (A8) {            // m at the super-block's end
                            sbacc[r][c] = vfma(vcvt(s0[r][c]), d, sbacc[r][c]);
                            sbacc[r][c] = vfma(vcvt(s1[r][c]), d1, sbacc[r][c]);
                        } else {
                            acc[r][c] = rg_chunk_fma<TYPE>(s0[r][c], g[c][b0], d, m, sums_at(c, b0), acc[r][c]);
                            acc[r][c] = rg_chunk_fma<TYPE>(s1[r][c], g[c][b0 + 1], d1, m1, sums_at(c, b0 + 1),
                                                           acc[r][c]);
                        }
                    }
                }
            }
            if constexpr (A8)
                for (int r = 0; r < G; r++) {
                    vi mn[4];
                    for (int p = 0; p < 4; p++) mn[p] = rg_q4k_minpair(sb + r * gstride, p);
                    const vf negdmin = rg_q4k_negdmin(sb + r * gstride);
                    for (int c = 0; c < C; c++)
                        acc[r][c] = rg_sb_end<TYPE>(sbacc[r][c], mn, negdmin, msums[c] + 4 * sbi, g[c][8 * sbi],
                                                    acc[r][c]);
                }
        }
    }
    for (int c = 0; c < C; c++) for (int r = 0; r < G; r++) vstore(out + c * ldo + r * VN, acc[r][c]);
}

// ---- argmax jobs (llmos_qmatmul_argmax): each token's largest output and its column, not Y ----------
// A key orders (value, column) as torch.argmax picks: a NaN above every value, then larger values,
// equal ones by the lower column (no output is -0: every sum starts at +0). Keys of nothing yet are
// 0, below all of these.
static inline uint64_t rg_best_key(float v, int64_t col) {
    uint32_t b; std::memcpy(&b, &v, 4);
    const uint32_t k = v != v ? 0xFFFFFFFFu : b >> 31 ? ~b : b | 0x80000000u;
    return (uint64_t)k << 32 | (0xFFFFFFFFu - (uint32_t)col);
}
static inline int64_t rg_best_col(uint64_t key) { return (int64_t)(0xFFFFFFFFu - (uint32_t)key); }
// The running task's best key per token t (index t - rg_best_t0) and its value (+inf for a NaN):
// rg_task sets them up and max-reduces them into the job's at its end (a larger key wins, whatever
// the order rows come in).
static thread_local uint64_t rg_best_keys[TCHUNK];
static thread_local float rg_best_vals[TCHUNK];
static thread_local int64_t rg_best_t0;
static inline void rg_best_rows(const float* acc, int64_t n, int64_t t, int64_t col) {
    const int64_t i = t - rg_best_t0;
    float top = -INFINITY;
    bool scan = false;
    int64_t r = 0;
    if (n >= VN) {                            // the rows' largest value; a NaN or infinity: scan them
        vf m = vload(acc), odd = vfma(m, vzero(), vzero());
        for (r = VN; r + VN <= n; r += VN) { const vf v = vload(acc + r); m = vmax(m, v); odd = vfma(v, vzero(), odd); }
        scan = vany_nan(odd);
        top = vhmax(m);
    }
    for (; r < n; r++) { scan |= !std::isfinite(acc[r]); top = acc[r] > top ? acc[r] : top; }
    if (!scan && top < rg_best_vals[i]) return;          // most calls, once a task has seen a few groups
    for (r = 0; r < n; r++) {
        const uint64_t k = rg_best_key(acc[r], col + r);
        if (k > rg_best_keys[i]) { rg_best_keys[i] = k; rg_best_vals[i] = acc[r] != acc[r] ? INFINITY : acc[r]; }
    }
}

// Rows row0 .. row0 + n of token t's output: into Y (added where j.add), or an argmax job's task best.
static inline void rg_out(const Job& j, const float* acc, int64_t n, int64_t t, int64_t row0) {
    if (j.best) return rg_best_rows(acc, n, t, j.col + row0);
    float* y = j.Y + t * j.ldy + row0;
    for (int64_t r = 0; r < n; r++) y[r] = j.add ? y[r] + acc[r] : acc[r];
}

// The one-token GEMV: integer sums (rg_igemv_groups) where vdpwssd is one instruction (VNNI), and
// for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 everywhere; fp32 FMAs (rg_gemv_groups) for Q4_K and Q6_K without
// VNNI, where vpmaddwd + vpaddd cost about what the FMAs do. One Zen 4 core, 3072 x 1024, GFLOP/s
// fp32 -> integer: 16 lanes with VNNI Q4_0 49.5 -> 70.6, Q4_1 48.7 -> 67.8, Q5_0 39.4 -> 45.0 (55.0
// with rg_qpair's five operations), Q8_0 45.7 -> 62.6, Q4_K 43.1 -> 56.3 (64.4-64.9 with
// rg_q4k_pairs), Q6_K 36.1 -> 36.0; the 8-lane build without VNNI, Q4_0 48.1 -> 54.5, Q4_1 47.9 ->
// 55.2, and with the cheaper pairs Q5_0 29.0-33.6 -> 38.1-38.7, Q5_1 34.4-34.5 -> 37.6-37.8, Q8_0
// 51.4-51.5 -> 46.2-48.8 (78.5-79.4 with Q8_0's pair entries, above), Q4_K 44.1-44.5 -> 45.3-46.5,
// Q6_K 27.6-29.7 -> 27.7-28.1. Both give the GEMM's bits.
static constexpr bool rg_int_gemv(int type) { return VDPWSSD_ONE || (type != Q4_K && type != Q6_K); }
template <int TYPE> constexpr bool RG_INT_GEMV = rg_int_gemv(TYPE);
constexpr int RG_GV = 4;    // groups per GEMV pass: independent FMA chains (4 cycles of latency each)
template <int TYPE> constexpr int RG_G = TYPE == Q6_K ? 1 : RG_GV;   // Q6_K: four chains a group already
// Up to this many tokens (where the GEMV is integer) take GEMV passes that share each weight pair
// vector between the tokens (rg_few_tokens) instead of the GEMM's panel, whose unpacking a few
// tokens do not repay: 2 threads, Q4_1 65536 x 2048 from DRAM, ms, 1 / 2 / 4 / 8 tokens: 2.64 /
// 7.26 / 7.10 / 10.02 with the panel from 2 tokens on. 8 lanes: Q4_K and Q6_K to 2 (16 registers).
static constexpr int rg_few_max(int type) { return VN == 8 && (type == Q4_K || type == Q6_K) ? 2 : 4; }
// GEMM micro-kernel: groups x tokens. 8 integer accumulators; at 2 x 6 (12) GCC spilled on AVX2's 16
// registers (one Zen 3 core, Q4_1 3072 x 2048 x 64: 2 x 4 ~100 GFLOP/s, 3 x 3 ~97, 2 x 6 ~80).
constexpr int RG_RV = 2, RG_NC = 4;
// The a8 GEMM's groups x tokens a micro-kernel call: 3 x 4 of vpdpbusd's accumulators with AVX-512's
// 32 registers (2 Zen 4 cores, 4096 x 2048 x 512, GFLOP/s against 2 x 4: Q4_0 504-534 against
// 478-507, Q4_K 501-510 against 437-461), Q8_0 4 x 3: four weight vectors a token's broadcast
// (interleaved A/B runs, 2 Zen 4 cores, 64 tokens: 262144 x 640 -5.5 %, 1024 x 640 -7 %; Q4_0 and
// Q5_0 the same, Q6_K -1 %, Q4_K +5 %, whose m FMA needs registers); 2 x 4 with 8 lanes, whose
// AVX-VNNI CPUs have 16.
static constexpr int a8_rv(int type) { return VN == 8 ? 2 : type == Q8_0 ? 4 : 3; }
template <int TYPE> constexpr int A8_RV = a8_rv(TYPE);
template <int TYPE> constexpr int A8_NC = VN == 16 && TYPE == Q8_0 ? 3 : RG_NC;

#include "amx_tiles.h"     // AMX tile products for the integer sums, where the CPU and OS have them

// Groups [g_begin, g_end) of a row-grouped job times its C tokens from t0 (C <= rg_few_max), in
// integer GEMV passes of RG_G / C groups (one pass holds G x C accumulators): x's int16 pairs, or
// an a8 job's quads (A8).
template <int TYPE, int C, bool A8 = false>
static void rg_few_tokens(const Job& j, int64_t t0, int64_t g_begin, int64_t g_end) {
    constexpr int G = RG_G<TYPE> / C > 1 ? RG_G<TYPE> / C : 1;
    const int64_t K = j.K, nb = K / 32, gs = rg_group_bytes(TYPE, K);
    const int32_t* xp[C]; const float* xg[C]; const float* xs[C]; const int32_t* xi[C]; const int32_t* ms[C];
    for (int c = 0; c < C; c++) {
        xp[c] = A8 ? j.quads + (t0 + c) * (K / 4) : j.pairs + (t0 + c) * (K / 2); xg[c] = j.grid_g + (t0 + c) * nb;
        xs[c] = SUM_HAS_M<TYPE> && !(A8 && A8_SB<TYPE>) ? j.xsum + (t0 + c) * nb : nullptr;
        xi[c] = j.isum + (t0 + c) * (K / 16);
        ms[c] = A8 && A8_SB<TYPE> && HAS_M<TYPE> ? j.msums + (t0 + c) * (K / 64) : nullptr;
    }
    alignas(64) float acc[C * G * VN];
    auto pass = [&](auto g_c, int64_t g) {      // g_c groups from group g, into Y or the task's bests
        constexpr int NG = decltype(g_c)::value;
        rg_igemv_groups<TYPE, NG, C, A8>(j.W + g * gs, gs, nb, xp, xg, xs, xi, acc, NG * VN, ms);
        for (int c = 0; c < C; c++)
            rg_out(j, acc + c * NG * VN, std::min<int64_t>(NG * VN, j.N - g * VN), t0 + c, g * VN);
    };
    int64_t g = g_begin;
    for (; g + G <= g_end; g += G) pass(std::integral_constant<int, G>{}, g);
    for (; g < g_end; g++) pass(std::integral_constant<int, 1>{}, g);
}

// The next groups' bytes (lines cache lines from next) requested into L2 a share at a time while
// a GEMM's tokens meet the current panel (upto(c, tn): the first c / tn of them): in one burst
// ahead of the panel they had stalled on the memory's queue and pushed the panel out of L1 (a8, 2
// Zen 4 cores, 64 tokens: Gemma 3's 262144 x 640 Q8_0 output layer -9 %, a Q4_0 32768 x 2048 from
// DRAM -4 %; L2-resident shapes within 1.5 %).
struct RgFetch {
    const uint8_t* next; int64_t lines, done = 0;
    void upto(int64_t c, int64_t tn) {
        for (const int64_t end = lines * c / tn; done < end; done++)
            _mm_prefetch((const char*)next + 64 * done, _MM_HINT_T1);
    }
};

#if defined(LLMOS_VDPBUSD)
// Groups [g_begin, g_end) of an a8 job times its tn tokens from t0 (more than rg_few_max in the
// task): A8_RV groups at a time, their quads made once (rg_quads) and their d, m vectors (rg_panel;
// Q4_K's mins, rg_q4k_mins), then rg_imicro8 over A8_NC tokens at a time.
template <int TYPE>
static void rg_task8(const Job& j, int64_t t0, int64_t tn, int64_t g_begin, int64_t g_end) {
    const int64_t K = j.K, nb = K / 32, nch = K / CH<TYPE>, gs = rg_group_bytes(TYPE, K);
    constexpr int RV = A8_RV<TYPE>, NC = A8_NC<TYPE>;
    thread_local std::vector<int32_t> quads;
    thread_local std::vector<float> scales, out;
    auto grow = [](auto& v, int64_t n) { if ((int64_t)v.size() < n) v.resize((size_t)n); };
    grow(quads, RV * VN * K / 4); grow(scales, 2 * RV * VN * nch); grow(out, TCHUNK * RV * VN);
    float* const d = scales.data(); float* const m = d + RV * VN * nch;
    const int64_t ldo = RV * VN, qs = VN * K / 4, ds = VN * nch;
    const int32_t* xq[NC]; const int32_t* is[NC]; const float* g[NC]; const float* sums[NC]; const int32_t* ms[NC];
    auto tokens = [&](int64_t c, int n) {      // micro-kernel arguments of tokens c .. c + n - 1
        for (int u = 0; u < n; u++) {
            const int64_t t = t0 + c + u;
            xq[u] = j.quads + t * (K / 4); is[u] = j.isum + t * (K / 16); g[u] = j.grid_g + t * nb;
            sums[u] = SUM_HAS_M<TYPE> && !A8_SB<TYPE> ? j.xsum + t * nb : nullptr;
            ms[u] = A8_SB<TYPE> && HAS_M<TYPE> ? j.msums + t * (K / 64) : nullptr;
        }
    };
    auto micro = [&](int rv, int n, float* o) {
        const int32_t* q = quads.data();
        auto run = [&](auto rv_c, auto n_c) {
            rg_imicro8<TYPE, decltype(rv_c)::value, decltype(n_c)::value>(q, qs, d, m, ds, nch, xq, is, g, sums, ms, o,
                                                                          ldo);
        };
        using one = std::integral_constant<int, 1>;
        using nc = std::integral_constant<int, NC>;
        using full = std::integral_constant<int, RV>;        // every call but a job's last groups'
        if (n == NC) {
            if (rv == RV) run(full{}, nc{});
            else if (rv == 3) run(std::integral_constant<int, 3>{}, nc{});
            else if (rv == 2) run(std::integral_constant<int, 2>{}, nc{});
            else run(one{}, nc{});
        } else {
            if (rv == RV) run(full{}, one{});
            else if (rv == 3) run(std::integral_constant<int, 3>{}, one{});
            else if (rv == 2) run(std::integral_constant<int, 2>{}, one{});
            else run(one{}, one{});
        }
    };
    static_assert(RV <= 4, "micro dispatches rv up to 4");
    for (int64_t g0 = g_begin; g0 < g_end; g0 += RV) {
        const int rv = (int)std::min<int64_t>(RV, g_end - g0);
        RgFetch fetch{j.W + (g0 + RV) * gs, g0 + RV < g_end ? RV * gs / 64 : 0};
        for (int v = 0; v < rv; v++) {
            const uint8_t* grp = j.W + (g0 + v) * gs;
            rg_panel<TYPE>(grp, nb, nullptr, d + v * ds, A8_SB<TYPE> ? nullptr : m + v * ds);
            if constexpr (A8_SB<TYPE> && HAS_M<TYPE>) rg_q4k_mins(grp, nb, m + v * ds);
            rg_quads<TYPE>(grp, nb, quads.data() + v * qs);
        }
        int64_t c = 0;
        for (; c + NC <= tn; c += NC) { fetch.upto(c + NC, tn); tokens(c, NC); micro(rv, NC, out.data() + c * ldo); }
        for (; c < tn; c++) { tokens(c, 1); micro(rv, 1, out.data() + c * ldo); }
        fetch.upto(tn, tn);
        const int64_t rows = std::min<int64_t>(rv * VN, j.N - g0 * VN);
        for (int64_t t = 0; t < tn; t++) rg_out(j, out.data() + t * ldo, rows, t0 + t, g0 * VN);
    }
}
#endif

// The rows of a task of a row-grouped matmul: Job's rows are group-aligned; X's block sums are in
// j.xsum (SUM_HAS_M types; an a8 Q4_K job's in j.msums), its integers' sums in j.isum (M_OFF types).
template <int TYPE>
static void rg_task_rows(const Job& j, int64_t i) {
    const int64_t K = j.K, nb = K / 32, nch = K / CH<TYPE>, gs = rg_group_bytes(TYPE, K);
    constexpr int G = RG_G<TYPE>;
    const int64_t t0 = (i / j.row_tasks) * TCHUNK, tn = j.T - t0 < TCHUNK ? j.T - t0 : TCHUNK;
    const int64_t r_begin = (i % j.row_tasks) * j.rows_per_task;
    const int64_t r_end = r_begin + j.rows_per_task < j.N ? r_begin + j.rows_per_task : j.N;
    const int64_t g_begin = r_begin / VN, g_end = (r_end + VN - 1) / VN;
    auto sums_of = [&](int64_t t) -> const float* { return SUM_HAS_M<TYPE> ? j.xsum + t * nb : nullptr; };
#if defined(LLMOS_VDPBUSD)
    if (j.quads) {             // an a8 job: a few tokens in GEMV passes, more in the a8 GEMM; the same bits
        if (tn <= rg_few_max(TYPE)) switch (tn) {
            case 1: return rg_few_tokens<TYPE, 1, true>(j, t0, g_begin, g_end);
            case 2: return rg_few_tokens<TYPE, 2, true>(j, t0, g_begin, g_end);
            case 3: return rg_few_tokens<TYPE, 3, true>(j, t0, g_begin, g_end);
            default: return rg_few_tokens<TYPE, 4, true>(j, t0, g_begin, g_end);
        }
        return rg_task8<TYPE>(j, t0, tn, g_begin, g_end);
    }
#endif
    if constexpr (RG_INT_GEMV<TYPE>) {
        if (tn <= rg_few_max(TYPE)) switch (tn) {
            case 1: return rg_few_tokens<TYPE, 1>(j, t0, g_begin, g_end);
            case 2: return rg_few_tokens<TYPE, 2>(j, t0, g_begin, g_end);
            case 3: return rg_few_tokens<TYPE, 3>(j, t0, g_begin, g_end);
            default: return rg_few_tokens<TYPE, 4>(j, t0, g_begin, g_end);
        }
    } else if (tn == 1) {       // fp32 FMAs over x on the grid (xq)
        alignas(64) float acc[G * VN];
        const float* x = j.X + t0 * j.ldx; const float* xs = sums_of(t0);
        int64_t g = g_begin;
        for (; g + G <= g_end; g += G) {
            rg_gemv_groups<TYPE, G>(j.W + g * gs, gs, nb, x, xs, acc);
            rg_out(j, acc, std::min<int64_t>(G * VN, j.N - g * VN), t0, g * VN);
        }
        for (; g < g_end; g++) {
            rg_gemv_groups<TYPE, 1>(j.W + g * gs, gs, nb, x, xs, acc);
            rg_out(j, acc, std::min<int64_t>(VN, j.N - g * VN), t0, g * VN);
        }
        return;
    }
    thread_local std::vector<int32_t> panel;
    thread_local std::vector<float> scales, out;
    if ((int64_t)panel.size() < RG_RV * VN * K / 2 + 16) panel.resize((size_t)(RG_RV * VN * K / 2 + 16));
    if ((int64_t)scales.size() < 2 * RG_RV * VN * nch) scales.resize((size_t)(2 * RG_RV * VN * nch));
    if ((int64_t)out.size() < TCHUNK * RG_RV * VN) out.resize((size_t)(TCHUNK * RG_RV * VN));
    int32_t* const q = (int32_t*)(((uintptr_t)panel.data() + 63) & ~(uintptr_t)63);
    float* const d = scales.data(); float* const m = d + RG_RV * VN * nch;
    const int64_t ldo = RG_RV * VN, ps = VN * K / 2, ds = VN * nch;
    const int32_t* xp[RG_NC]; const float* g[RG_NC]; const float* sums[RG_NC]; const int32_t* is[RG_NC];
    auto tokens = [&](int64_t c, int n) {      // micro-kernel arguments of tokens c .. c + n - 1
        for (int u = 0; u < n; u++) {
            const int64_t t = t0 + c + u;
            xp[u] = j.pairs + t * (K / 2); g[u] = j.grid_g + t * nb; sums[u] = sums_of(t);
            is[u] = j.isum + t * (K / 16);
        }
    };
#if defined(LLMOS_AMX)
    const float* g16[16]; const float* s16[16]; const int32_t* i16[16];
    auto tokens16 = [&](int64_t c) {           // amx_micro's arguments of tokens c .. c + 15
        for (int u = 0; u < 16; u++) {
            const int64_t t = t0 + c + u;
            g16[u] = j.grid_g + t * nb; s16[u] = sums_of(t); i16[u] = j.isum + t * (K / 16);
        }
    };
    const int64_t tiled = j.xbytes ? tn / 16 * 16 : 0;          // tokens whose sums come from tiles
    thread_local std::vector<int32_t> bpanel;
    if (tiled) {
        if ((int64_t)bpanel.size() < RG_RV * VN * K / 4) bpanel.resize((size_t)(RG_RV * VN * K / 4));
        amx_configure<CH<TYPE>>();
    }
#endif
    for (int64_t g0 = g_begin; g0 < g_end; g0 += RG_RV) {
        const int rv = (int)std::min<int64_t>(RG_RV, g_end - g0);
        prefetch(j.W + (g0 + RG_RV) * gs, RG_RV * gs);
        for (int v = 0; v < rv; v++) rg_panel<TYPE>(j.W + (g0 + v) * gs, nb, q + v * ps, d + v * ds, m + v * ds);
        int64_t c = 0;
#if defined(LLMOS_AMX)
        if (tiled) {
            const int64_t bs = VN * K / 4;
            for (int v = 0; v < rv; v++) rg_quad_panel<TYPE>(q + v * ps, nch, bpanel.data() + v * bs);
            for (; c < tiled; c += 16) {
                tokens16(c);
                const int8_t* hi = j.xbytes + (t0 + c) * K; const int8_t* lo = hi + j.T * K;
                float* o = out.data() + c * ldo;
                const int32_t* bp = bpanel.data();
                if (rv == RG_RV) amx_micro<TYPE, RG_RV>(hi, lo, K, bp, bs, d, m, ds, nch, g16, s16, i16, o, ldo);
                else amx_micro<TYPE, 1>(hi, lo, K, bp, bs, d, m, ds, nch, g16, s16, i16, o, ldo);
            }
        }
#endif
        for (; c + RG_NC <= tn; c += RG_NC) {
            tokens(c, RG_NC);
            float* o = out.data() + c * ldo;
            if (rv == RG_RV) rg_imicro<TYPE, RG_RV, RG_NC>(q, ps, d, m, ds, nch, xp, g, sums, is, o, ldo);
            else rg_imicro<TYPE, 1, RG_NC>(q, ps, d, m, ds, nch, xp, g, sums, is, o, ldo);
        }
        for (; c < tn; c++) {
            tokens(c, 1);
            float* o = out.data() + c * ldo;
            if (rv == RG_RV) rg_imicro<TYPE, RG_RV, 1>(q, ps, d, m, ds, nch, xp, g, sums, is, o, ldo);
            else rg_imicro<TYPE, 1, 1>(q, ps, d, m, ds, nch, xp, g, sums, is, o, ldo);
        }
        const int64_t rows = std::min<int64_t>(rv * VN, j.N - g0 * VN);
        for (int64_t t = 0; t < tn; t++) rg_out(j, out.data() + t * ldo, rows, t0 + t, g0 * VN);
    }
#if defined(LLMOS_AMX)
    if (tiled) _tile_release();
#endif
}

// A task of a row-grouped matmul (rg_task_rows); of an argmax job, its tokens' best keys start
// empty and go into the job's at the end (the largest key wins, whichever task comes first).
template <int TYPE>
static void rg_task(void* p, int64_t i) {
    const Job& j = *(const Job*)p;
    if (!j.best) return rg_task_rows<TYPE>(j, i);
    const int64_t t0 = (i / j.row_tasks) * TCHUNK, tn = std::min<int64_t>(TCHUNK, j.T - t0);
    rg_best_t0 = t0;
    for (int64_t u = 0; u < tn; u++) { rg_best_keys[u] = 0; rg_best_vals[u] = -INFINITY; }
    rg_task_rows<TYPE>(j, i);
    for (int64_t u = 0; u < tn; u++) {
        uint64_t* slot = j.best + t0 + u;
        uint64_t seen = __atomic_load_n(slot, __ATOMIC_RELAXED);
        while (rg_best_keys[u] > seen &&
               !__atomic_compare_exchange_n(slot, &seen, rg_best_keys[u], true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    }
}

// Repacks W ([N, K] in type's GGML blocks, rb bytes a row) into the row-grouped layout at out.
static void rg_pack(int type, const uint8_t* W, int64_t N, int64_t K, int64_t rb, uint8_t* out) {
    const int64_t nsb = K / block_elems(type), bb = block_bytes(type), sbb = VN * rg_super_bytes(type);
    const int64_t gs = rg_group_bytes(type, K), ng = (N + VN - 1) / VN;
    memset(out, 0, (size_t)(ng * gs));
    for (int64_t n = 0; n < N; n++) {
        const int64_t r = n % VN;
        for (int64_t s = 0; s < nsb; s++) {
            const uint8_t* src = W + n * rb + s * bb;
            uint8_t* dst = out + (n / VN) * gs + s * sbb;
            auto put = [&](int field, const uint8_t* from, int count) {      // count bytes, one a VN-byte entry
                for (int e = 0; e < count; e++) dst[(field + e) * VN + r] = from[e];
            };
            if (type == Q6_K) {
                memcpy(dst + 2 * r, src + 208, 2);
                put(2, src + 192, 16);
                for (int n6 = 0; n6 < 2; n6++)
                    for (int jj = 0; jj < 32; jj++) {
                        int q[4];
                        for (int t = 0; t < 4; t++) {       // GGML: low 4 bits in ql, high 2 in qh
                            const uint8_t ql = src[64 * n6 + 32 * (t & 1) + jj];
                            q[t] = (t >= 2 ? ql >> 4 : ql & 0xF) | ((src[128 + 32 * n6 + jj] >> (2 * t)) & 3) << 4;
                        }
                        const int e = RG_QS<Q6_K> + 3 * (32 * n6 + jj);
                        for (int t = 0; t < 4; t++) q[t] ^= 32;          // q - 32 as a signed 6-bit field
                        dst[e * VN + r] = (uint8_t)(q[0] << 2 | (q[2] & 3));
                        dst[(e + 1) * VN + r] = (uint8_t)(q[1] << 2 | (q[3] & 3));
                        dst[(e + 2) * VN + r] = (uint8_t)((q[2] >> 2) << 4 | q[3] >> 2);
                    }
                continue;
            }
            memcpy(dst + 2 * r, src, 2);                                    // d
            if (type == Q4_1 || type == Q5_1 || type == Q4_K) memcpy(dst + 2 * VN + 2 * r, src + 2, 2);   // m, dmin
            if (type == Q5_0 || type == Q5_1) {     // GGML: qh (4 bytes, bit w = weight w's fifth bit), qs[16]
                const uint8_t* qs = src + (type == Q5_0 ? 6 : 8);
                uint32_t qh; memcpy(&qh, src + (type == Q5_0 ? 2 : 4), 4);
                auto q5 = [&](int w) { return (w < 16 ? qs[w] & 0xF : qs[w - 16] >> 4) | ((qh >> w) & 1) << 4; };
                const int qo = type == Q5_1 ? RG_QS<Q5_1> : RG_QS<Q5_0>;
                for (int i = 0; i < 16; i++) {
                    dst[(qo + i) * VN + r] = (uint8_t)(q5(i) | (q5(i + 16) & 7) << 5);
                    dst[(qo + 16 + i / 4) * VN + r] |= (uint8_t)((q5(i + 16) >> 3) << (2 * (i % 4)));
                }
                continue;
            }
            if (type == Q4_K) {
                for (int j = 0; j < 8; j++) {
                    int sc, mn; scale_min_k4(j, src + 4, &sc, &mn);
                    dst[(4 + j) * VN + r] = (uint8_t)sc; dst[(12 + j) * VN + r] = (uint8_t)mn;
                }
                put(20, src + 16, 128);
            } else if (type == Q8_0) {          // quants 2i, 2i + 1 side by side in entry 2i
                for (int k = 0; k < 32; k++) dst[(2 + (k & ~1)) * VN + 2 * r + (k & 1)] = src[2 + k];
            } else {
                const int qoff = type == Q4_1 ? 4 : 2;
                put(qoff, src + qoff, (int)bb - qoff);
            }
        }
    }
}

// Row n of a row-grouped W, dequantised as the block layout's deq32_scalar does (w = q d + m).
static void rg_dequant_row(int type, const uint8_t* W, int64_t K, int64_t n, float* out) {
    const int64_t nb = K / 32, sbb = VN * rg_super_bytes(type), r = n % VN;
    const uint8_t* grp = W + (n / VN) * rg_group_bytes(type, K);
    auto at = [&](const uint8_t* sb, int field) { return sb[field * VN + r]; };
    for (int64_t b = 0; b < nb; b++) {
        const int subs = block_elems(type) / 32, sub = (int)(b % subs);
        const uint8_t* sb = grp + (b / subs) * sbb;
        float d = rdh(sb + 2 * r), m;
        if (type == Q6_K) {         // deq32_scalar's d * sc and -32 d * sc per 16 weights
            for (int k = 0; k < 32; k++) {
                const int w = 32 * sub + k, n6 = w / 128, t = (w % 128) / 32, j6 = w % 32;
                const int e = RG_QS<Q6_K> + 3 * (32 * n6 + j6);
                const int8_t a = (int8_t)at(sb, e + (t & 1)), c = (int8_t)at(sb, e + 2);   // see rg_q6
                const int s = t < 2 ? a >> 2 : (t == 2 ? c >> 4 : (int8_t)(c << 4) >> 4) * 4 | (a & 3);
                const float sc = (float)(int8_t)at(sb, 2 + w / 16);
                out[b * 32 + k] = fmaf((float)(s + 32), d * sc, -32.f * d * sc);
            }
            continue;
        }
        if (type == Q4_K) { m = -rdh(sb + 2 * VN + 2 * r) * at(sb, 12 + sub); d = d * at(sb, 4 + sub); }
        else m = type == Q4_1 || type == Q5_1 ? rdh(sb + 2 * VN + 2 * r) : type == Q4_0 ? -8.f * d
                 : type == Q5_0 ? -16.f * d : 0.f;
        for (int k = 0; k < 32; k++) {
            int q;
            if (type == Q8_0) q = (int8_t)sb[(2 + (k & ~1)) * VN + 2 * r + (k & 1)];
            else if (type == Q5_0 || type == Q5_1) {
                const int qo = type == Q5_1 ? 4 : 2, i = k & 15, b = at(sb, qo + i);
                q = k < 16 ? b & 31 : b >> 5 | ((at(sb, qo + 16 + i / 4) >> (2 * (i % 4))) & 3) << 3;
            }
            else if (type == Q4_0 || type == Q4_1) {
                const uint8_t byte = at(sb, (type == Q4_1 ? 4 : 2) + (k & 15)); q = k < 16 ? byte & 0xF : byte >> 4;
            } else {
                const uint8_t byte = at(sb, 20 + 32 * (sub / 2) + k);
                q = sub & 1 ? byte >> 4 : byte & 0xF;
            }
            out[b * 32 + k] = fmaf((float)q, d, m);
        }
    }
}
