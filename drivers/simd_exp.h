// e^x on 8 floats at once (AVX2 + FMA), shared by the kernels that need it: softmax in
// drivers/attention_kernels.cpp, SiLU and GELU-tanh in drivers/quant_kernels.cpp.
// Cephes' expf: x = k ln2 + r, e^r by a degree-5 polynomial, 2^k through the exponent bits.
// About 1 ulp on [-88, 88]; x is clamped to that range (below -87.3 the result is 0 or a tiny
// normal, above 88 it is ~1.65e38, never inf or NaN for finite x).
#pragma once
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline __m256 llmos_exp8(__m256 x) {
    __m256 v = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.f)), _mm256_set1_ps(88.f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), v);
    v = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), v);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(v, v), _mm256_add_ps(v, _mm256_set1_ps(1.f)));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127));   // k <= -127: 0
    e = _mm256_slli_epi32(_mm256_max_epi32(e, _mm256_setzero_si256()), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif
