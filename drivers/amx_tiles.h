// AMX tiles for the row-grouped GEMM's integer sums (Intel Xeons from Sapphire Rapids on). Included
// by drivers/rowgroup_kernels.h; compiled where -march=native has AMX-TILE and AMX-INT8 with the
// 16-lane kernels, used where the OS lets this process use the tiles (Linux: arch_prctl).
//
// What changes against rg_imicro: only how a chunk's exact integer sums S = sum q x are formed.
// The activations are on the grid (13-bit integers, rowgroup_kernels.h), AMX multiplies bytes, so
// each x is split as x = 256 hi + lo (hi signed, lo unsigned): S = 256 sum(q hi) + sum(q lo), two
// tile products (TDPBSSD, TDPBUSD) a chunk, exact in int32 like vpdpwssd's; rg_sum_start's start
// is added to S. Then the same fp32 steps as rg_imicro, in the same order and lanes (a C tile's row
// is a token, its 16 lanes the group's rows): acc = fma(S g, d, acc), acc = fma(m, xsum, acc)
// where SUM_HAS_M. So the results are the GEMV's bits at any batch size, as on every other path.
//
// Tiles: C (16 tokens x 16 rows, int32) hi and lo for each of RV groups; A = 16 tokens' hi or lo
// bytes of one chunk (CH bytes a row); B = one group's quants of the chunk as AMX wants them, 4
// consecutive k of a row in 32 bits, CH / 4 rows of 16 rows' 4 bytes (rg_quad_panel makes them from
// rg_panel's int16 pairs). A chunk has its own d and m, so a tile product covers one chunk (K = 32
// or Q6_K's 16), not the 64 bytes a tile row could hold.

#if defined(LLMOS_AVX512) && !defined(LLMOS_SIMDE_AVX512) && defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define LLMOS_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

// Whether this process may use the tiles: Linux grants the tile data state on request
// (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), once for all its threads.
static bool amx_ready() {
    static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    return ok;
}

struct alignas(64) AmxConfig { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };

// Tiles 0-3: C hi/lo of groups 0 and 1; 4, 5: A hi, lo; 6, 7: B of groups 0 and 1. Per thread.
template <int CHUNK> static void amx_configure() {
    AmxConfig c{};
    c.palette = 1;
    for (int t = 0; t < 4; t++) { c.rows[t] = 16; c.colsb[t] = 64; }
    for (int t = 4; t < 6; t++) { c.rows[t] = 16; c.colsb[t] = CHUNK; }
    for (int t = 6; t < 8; t++) { c.rows[t] = CHUNK / 4; c.colsb[t] = 64; }
    _tile_loadconfig(&c);
}

// X's int16 grid values (the pairs of one pair order, [T, K / 2]) as hi bytes [T, K], then lo bytes
// [T, K], in bytes; a task a PREP_ROWS tokens. Once a matmul, for all its tasks.
struct AmxSplit { const int32_t* pairs; int64_t T, K; int8_t* bytes; };
static void amx_split_task(void* p, int64_t i) {
    const AmxSplit& j = *(const AmxSplit*)p;
    for (int64_t t = i * PREP_ROWS; t < j.T && t < (i + 1) * PREP_ROWS; t++)
        for (int64_t k = 0; k < j.K; k += 32) {
            const __m512i x = _mm512_loadu_si512((const void*)(j.pairs + t * (j.K / 2) + k / 2));
            _mm256_storeu_si256((__m256i*)(j.bytes + t * j.K + k), _mm512_cvtepi16_epi8(_mm512_srai_epi16(x, 8)));
            _mm256_storeu_si256((__m256i*)(j.bytes + (j.T + t) * j.K + k), _mm512_cvtepi16_epi8(x));
        }
}

// out[c * ldo + v * VN ..], c < 16 tokens, v < RV groups: as rg_imicro<TYPE, RV, 16> computes it,
// the integer sums from tiles. hi, lo: the 16 tokens' bytes (amx_split_task, K a token); bp: the groups'
// B tiles (rg_quad_panel), bstride int32 apart. Caller ran amx_configure<CH<TYPE>>() on this thread.
template <int TYPE, int RV>
static void amx_micro(const int8_t* hi, const int8_t* lo, int64_t K, const int32_t* bp, int64_t bstride,
                      const float* d, const float* m, int64_t dstride, int64_t nch, const float* const* g,
                      const float* const* xsums, const int32_t* const* isum, float* out, int64_t ldo) {
    constexpr int BR = CH<TYPE> / 4;
    alignas(64) int32_t c[4][16 * 16];
    for (int t = 0; t < 16; t++) for (int v = 0; v < RV; v++) vstore(out + t * ldo + v * VN, vzero());
    for (int64_t b = 0; b < nch; b++) {
        const int64_t xb = rg_xbase<TYPE>(b);
        _tile_zero(0); _tile_zero(1);
        _tile_loadd(4, hi + xb, K);
        _tile_loadd(5, lo + xb, K);
        _tile_loadd(6, bp + b * BR * VN, 64);
        _tile_dpbssd(0, 4, 6);
        _tile_dpbusd(1, 5, 6);
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        if constexpr (RV == 2) {
            _tile_zero(2); _tile_zero(3);
            _tile_loadd(7, bp + bstride + b * BR * VN, 64);
            _tile_dpbssd(2, 4, 7);
            _tile_dpbusd(3, 5, 7);
            _tile_stored(2, c[2], 64);
            _tile_stored(3, c[3], 64);
        }
        for (int v = 0; v < RV; v++) {
            const vf dv = vload(d + v * dstride + b * VN);
            for (int t = 0; t < 16; t++) {
                vi s = vadd(vslli<8>(vload_i(c[2 * v] + 16 * t)), vload_i(c[2 * v + 1] + 16 * t));
                if constexpr (M_OFF<TYPE> != 0) s = vadd(s, vset1i(rg_sum_start<TYPE>(isum[t], xb)));
                float* acc = out + t * ldo + v * VN;
                vf a = vfma(vmul(vcvt(s), vset1(g[t][xb / 32])), dv, vload(acc));
                if constexpr (SUM_HAS_M<TYPE>) a = vfma(vload(m + v * dstride + b * VN), vset1(xsums[t][b]), a);
                vstore(acc, a);
            }
        }
    }
}
#endif
