// The matmul kernels' vector width, chosen when the library is built (-march=native): AVX-512F
// (16 fp32 lanes) where the CPU has it, else AVX2 + FMA (8 lanes). drivers/quant_kernels.cpp
// writes its dequantisation and micro-kernels once on these names; VN is the lane count.
//
// LLMOS_SIMDE_AVX512 (tests only) builds the AVX-512 code on a CPU without AVX-512 through SIMDe's
// portable implementations of the same intrinsics, so the 16-lane code runs in CI on any x86 CPU.
#pragma once
#include <cstdint>

#if defined(LLMOS_SIMDE_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define LLMOS_AVX512 1
// SIMDe 0.7 (Debian 12's) lacks four conversions and a shift; each is the same operation on two halves.
#ifndef _mm512_cvtepi32_ps
static inline simde__m512 llmos_cvtepi32_ps(simde__m512i v) {
    const simde__m512d lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_cvtepi32_ps(_mm512_castsi512_si256(v))));
    return _mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(v, 1))), 1));
}
#define _mm512_cvtepi32_ps llmos_cvtepi32_ps
#endif
#ifndef _mm512_cvtepu8_epi32
static inline simde__m512i llmos_cvtepu8_epi32(__m128i b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_cvtepu8_epi32(b)), _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), 1);
}
#define _mm512_cvtepu8_epi32 llmos_cvtepu8_epi32
#endif
#ifndef _mm512_cvtepu16_epi32
static inline simde__m512i llmos_cvtepu16_epi32(__m256i w) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(w))),
                              _mm256_cvtepu16_epi32(_mm256_extracti128_si256(w, 1)), 1);
}
#define _mm512_cvtepu16_epi32 llmos_cvtepu16_epi32
#endif
#ifndef _mm512_cvtepi8_epi32
static inline simde__m512i llmos_cvtepi8_epi32(__m128i b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)), 1);
}
#define _mm512_cvtepi8_epi32 llmos_cvtepi8_epi32
#endif
#ifndef _mm512_cvtps_epi32
static inline simde__m512i llmos_cvtps_epi32(simde__m512 v) {
    const simde__m512d d = _mm512_castps_pd(v);
    const simde__m512i lo = _mm512_castsi256_si512(_mm256_cvtps_epi32(_mm256_castpd_ps(_mm512_castpd512_pd256(d))));
    return _mm512_inserti64x4(lo, _mm256_cvtps_epi32(_mm256_castpd_ps(_mm512_extractf64x4_pd(d, 1))), 1);
}
#define _mm512_cvtps_epi32 llmos_cvtps_epi32
#endif
#ifndef _mm512_srai_epi32
static inline simde__m512i llmos_srai_epi32(simde__m512i v, int s) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_srai_epi32(_mm512_castsi512_si256(v), s)),
                              _mm256_srai_epi32(_mm512_extracti64x4_epi64(v, 1), s), 1);
}
#define _mm512_srai_epi32 llmos_srai_epi32
#endif
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__FMA__) && !defined(LLMOS_8_LANES)
#include <immintrin.h>
#define LLMOS_AVX512 1
#endif

#if defined(LLMOS_AVX512) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define LLMOS_VEC 1

// Sum of 8 lanes in a fixed order (pairs of halves, then pairs, then the last two).
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Largest of 8 lanes (order-free: max is exact).
static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
// The 16 int32 lanes of lo, then hi, as int16 in order (each lane must fit: packs saturates).
static inline __m256i pack16x8(__m256i lo, __m256i hi) {
    return _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
}
// 16 int16 (each in [-128, 127]) as 16 bytes, in order.
static inline __m128i bytes16(__m256i v) {
    return _mm_packs_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

#if defined(LLMOS_SIMDE_AVX512)
typedef simde__m512 vf;
typedef simde__m512i vi;
#elif defined(LLMOS_AVX512)
typedef __m512 vf;
typedef __m512i vi;
#endif
#if defined(LLMOS_AVX512)
constexpr int VN = 16;
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vset1(float f) { return _mm512_set1_ps(f); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vcvt(vi v) { return _mm512_cvtepi32_ps(v); }
// VN bytes at p, zero- or sign-extended to 32-bit lanes.
static inline vi vu8(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
static inline vi vu16(const uint8_t* p) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)); }
static inline vi vs8(const uint8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
// 2 VN bytes at p, each sign-extended to 16 bits: lane i holds bytes 2i (low half) and 2i + 1.
static inline vi vs8x2(const uint8_t* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)p)); }
// Two vectors of VN 16-bit entries at p and p + 2 VN, interleaved: lane i holds entry i of the
// first (low half) and of the second (one load and one vpermw, where vu16 twice took five).
static inline vi vu16x2(const uint8_t* p) {
    const __m512i idx = _mm512_setr_epi32(0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005,
                                          0x00160006, 0x00170007, 0x00180008, 0x00190009, 0x001A000A, 0x001B000B,
                                          0x001C000C, 0x001D000D, 0x001E000E, 0x001F000F);
    return _mm512_permutexvar_epi16(idx, _mm512_loadu_si512((const void*)p));
}
static inline vi vset1i(int v) { return _mm512_set1_epi32(v); }
static inline vi viota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
static inline vi vadd(vi a, vi b) { return _mm512_add_epi32(a, b); }
static inline vi vsub(vi a, vi b) { return _mm512_sub_epi32(a, b); }
static inline vi vand(vi a, vi b) { return _mm512_and_si512(a, b); }
static inline vi vor(vi a, vi b) { return _mm512_or_si512(a, b); }
static inline vi vxor(vi a, vi b) { return _mm512_xor_si512(a, b); }
template <int S> static inline vi vsrli(vi a) { return _mm512_srli_epi32(a, S); }
template <int S> static inline vi vslli(vi a) { return _mm512_slli_epi32(a, S); }
template <int S> static inline vi vsrai(vi a) { return _mm512_srai_epi32(a, S); }
template <int S> static inline vi vslli16(vi a) { return _mm512_slli_epi16(a, S); }   // each 16-bit half
template <int S> static inline vi vsrai16(vi a) { return _mm512_srai_epi16(a, S); }
static inline vi vsrl(vi a, __m128i count) { return _mm512_srl_epi32(a, count); }
static inline vi vsrlv(vi a, vi counts) { return _mm512_srlv_epi32(a, counts); }
static inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vabs(vf a) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
}
static inline vi vround(vf a) { return _mm512_cvtps_epi32(a); }      // to nearest, ties to even
static inline vi vclamp(vi a, int lim) {
    return _mm512_min_epi32(_mm512_max_epi32(a, _mm512_set1_epi32(-lim)), _mm512_set1_epi32(lim));
}
static inline vi vload_i(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
static inline void vstore_i(int32_t* p, vi v) { _mm512_storeu_si512((void*)p, v); }
// Bytes i of p and p + VN in lane i's bytes 0 and 2 (zeros between), and bytes i of p, p + VN,
// p + 2 VN, p + 3 VN in lane i's bytes 0..3: one load and one vpermb with AVX512-VBMI, where vu8 per
// byte row, shifts and ors took five or eleven operations.
#if defined(__AVX512VBMI__) && !defined(LLMOS_SIMDE_AVX512)
static inline vi vu8x2(const uint8_t* p) {
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(0x00100000),
                                         _mm512_mullo_epi32(viota(), _mm512_set1_epi32(0x00010001)));
    return _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, idx,
                                         _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)p)));
}
static inline vi vu8x4(const uint8_t* p) {
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(0x30201000),
                                         _mm512_mullo_epi32(viota(), _mm512_set1_epi32(0x01010101)));
    return _mm512_permutexvar_epi8(idx, _mm512_loadu_si512((const void*)p));
}
#else
static inline vi vu8x2(const uint8_t* p) { return vor(vu8(p), vslli<16>(vu8(p + VN))); }
static inline vi vu8x4(const uint8_t* p) {
    return vor(vor(vu8(p), vslli<8>(vu8(p + VN))), vor(vslli<16>(vu8(p + 2 * VN)), vslli<24>(vu8(p + 3 * VN))));
}
#endif
// acc + the pairwise products of a and b's int16 halves (VNNI: one instruction).
#if !defined(LLMOS_SIMDE_AVX512) && defined(__AVX512VNNI__)
constexpr bool VDPWSSD_ONE = true;
#else
constexpr bool VDPWSSD_ONE = false;
#endif
static inline vi vdpwssd(vi acc, vi a, vi b) {
#if defined(LLMOS_SIMDE_AVX512)      // SIMDe 0.7's alias of this name takes four arguments
    return _mm512_add_epi32(acc, simde_mm512_madd_epi16(a, b));
#elif defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, a, b);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}
// acc + the sums of four products of a's unsigned bytes and b's signed bytes, lane by lane (VNNI's
// vpdpbusd: exact, no saturation). Only where it is one instruction: the 8-bit GEMM needs nothing else.
#if !defined(LLMOS_SIMDE_AVX512) && defined(__AVX512VNNI__)
#define LLMOS_VDPBUSD 1
static inline vi vdpbusd(vi acc, vi a, vi b) { return _mm512_dpbusd_epi32(acc, a, b); }
#endif
// Lanes 0-7 plus lanes 8-15, then hsum8.
static inline float vhsum(vf v) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v),
                               _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}
static inline float vhmax(vf v) {
    return hmax8(_mm256_max_ps(_mm512_castps512_ps256(v),
                               _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}
static inline bool vany_nan(vf v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }
// The 16 int32 of q[0] (values in [-128, 127]) as 16 bytes, in order (SIMDe 0.7 lacks the
// conversion: through int16 as vpack16 goes).
static inline __m128i vbytes16(const vi* q) {
#if defined(LLMOS_SIMDE_AVX512)
    return bytes16(pack16x8(_mm512_castsi512_si256(q[0]), _mm512_extracti64x4_epi64(q[0], 1)));
#else
    return _mm512_cvtepi32_epi8(q[0]);
#endif
}
// The lanes of a, then b, as int16 in order (each lane must fit in int16).
static inline vi vpack16(vi a, vi b) {
#if defined(LLMOS_SIMDE_AVX512)
    const __m256i lo = pack16x8(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    const __m256i hi = pack16x8(_mm512_castsi512_si256(b), _mm512_extracti64x4_epi64(b, 1));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
#else
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(a)), _mm512_cvtepi32_epi16(b), 1);
#endif
}
// Lanes 0-7 from the 8 int32 at lo, 8-15 from hi (32-byte aligned).
static inline vi vload_8_8(const int32_t* lo, const int32_t* hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256((const __m256i*)lo)),
                              _mm256_load_si256((const __m256i*)hi), 1);
}
#else
typedef __m256 vf;
typedef __m256i vi;
constexpr int VN = 8;
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vzero() { return _mm256_setzero_ps(); }
static inline vf vset1(float f) { return _mm256_set1_ps(f); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vcvt(vi v) { return _mm256_cvtepi32_ps(v); }
static inline vi vu8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
static inline vi vu16(const uint8_t* p) { return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)); }
static inline vi vs8(const uint8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
static inline vi vs8x2(const uint8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p)); }
static inline vi vu16x2(const uint8_t* p) {
    const __m128i a = _mm_loadu_si128((const __m128i*)p), b = _mm_loadu_si128((const __m128i*)(p + 16));
    return _mm256_set_m128i(_mm_unpackhi_epi16(a, b), _mm_unpacklo_epi16(a, b));
}
static inline vi vset1i(int v) { return _mm256_set1_epi32(v); }
static inline vi viota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
static inline vi vadd(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vi vsub(vi a, vi b) { return _mm256_sub_epi32(a, b); }
static inline vi vand(vi a, vi b) { return _mm256_and_si256(a, b); }
static inline vi vor(vi a, vi b) { return _mm256_or_si256(a, b); }
static inline vi vxor(vi a, vi b) { return _mm256_xor_si256(a, b); }
template <int S> static inline vi vsrli(vi a) { return _mm256_srli_epi32(a, S); }
template <int S> static inline vi vslli(vi a) { return _mm256_slli_epi32(a, S); }
template <int S> static inline vi vsrai(vi a) { return _mm256_srai_epi32(a, S); }
template <int S> static inline vi vslli16(vi a) { return _mm256_slli_epi16(a, S); }
template <int S> static inline vi vsrai16(vi a) { return _mm256_srai_epi16(a, S); }
static inline vi vsrl(vi a, __m128i count) { return _mm256_srl_epi32(a, count); }
static inline vi vsrlv(vi a, vi counts) { return _mm256_srlv_epi32(a, counts); }
static inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vabs(vf a) {
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(a), _mm256_set1_epi32(0x7fffffff)));
}
static inline vi vround(vf a) { return _mm256_cvtps_epi32(a); }      // to nearest, ties to even
static inline vi vclamp(vi a, int lim) {
    return _mm256_min_epi32(_mm256_max_epi32(a, _mm256_set1_epi32(-lim)), _mm256_set1_epi32(lim));
}
static inline vi vload_i(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
static inline void vstore_i(int32_t* p, vi v) { _mm256_storeu_si256((__m256i*)p, v); }
static inline vi vu8x2(const uint8_t* p) { return vor(vu8(p), vslli<16>(vu8(p + VN))); }
static inline vi vu8x4(const uint8_t* p) {
    return vor(vor(vu8(p), vslli<8>(vu8(p + VN))), vor(vslli<16>(vu8(p + 2 * VN)), vslli<24>(vu8(p + 3 * VN))));
}
// acc + the pairwise products of a and b's int16 halves (AVX-VNNI: one instruction).
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
constexpr bool VDPWSSD_ONE = true;
#else
constexpr bool VDPWSSD_ONE = false;
#endif
static inline vi vdpwssd(vi acc, vi a, vi b) {
#if defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, a, b);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}
// acc + the sums of four products of a's unsigned bytes and b's signed bytes (vpdpbusd), where one instruction.
#if defined(__AVXVNNI__)
#define LLMOS_VDPBUSD 1
static inline vi vdpbusd(vi acc, vi a, vi b) { return _mm256_dpbusd_avx_epi32(acc, a, b); }
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define LLMOS_VDPBUSD 1
static inline vi vdpbusd(vi acc, vi a, vi b) { return _mm256_dpbusd_epi32(acc, a, b); }
#endif
static inline float vhsum(vf v) { return hsum8(v); }
static inline float vhmax(vf v) { return hmax8(v); }
static inline bool vany_nan(vf v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
static inline vi vpack16(vi a, vi b) { return pack16x8(a, b); }
// The 16 int32 of q[0], q[1] (values in [-128, 127]) as 16 bytes, in order.
static inline __m128i vbytes16(const vi* q) { return bytes16(pack16x8(q[0], q[1])); }
static inline vi vload_8_8(const int32_t* lo, const int32_t*) { return _mm256_load_si256((const __m256i*)lo); }
#endif

// Keeps v in a register: GCC otherwise folds a load of v into each instruction that uses it
// (see the GEMM micro-kernel). SIMDe's vectors are not register operands, so no pin there.
#if defined(LLMOS_SIMDE_AVX512)
#define LLMOS_PIN(v) ((void)0)
#else
#define LLMOS_PIN(v) __asm__("" : "+v"(v))
#endif
#endif  // LLMOS_VEC
