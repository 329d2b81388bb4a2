// The index of each row's largest value, for greedy sampling on the CPU (drivers/sampler.py),
// compiled into drivers/quant.py's library with the other kernels and run on their thread pool.
// torch's argmax over Gemma 3's 64 x 262144 logits took ~7 ms a decode step on 2 Zen 4 cores (it
// reads 67 MB at ~10 GB/s); here the rows split between the threads and each is one vector pass.
//
// The contract is torch.argmax(dim=-1)'s: the first index of the largest value; a row holding a
// NaN gives the index of its first NaN.

#include <cmath>
#include <cstdint>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

typedef void (*TaskFn)(void* ctx, int64_t i);
extern "C" void llmos_parallel(TaskFn fn, void* ctx, int64_t n);

namespace {

struct Argmax { const float* x; int64_t cols, ld; int64_t* out; };

// Row x[0, n): the first index of its largest value, or of its first NaN.
int64_t argmax_row(const float* x, int64_t n) {
    int64_t j = 0, best = 0;
    float m = n ? x[0] : 0.f;
#if defined(__AVX2__)
    if (n >= 8) {        // per lane: the lane's largest value and its first index; a NaN stops the pass
        __m256 mv = _mm256_loadu_ps(x);
        __m256i iv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), cur = iv;
        const __m256i step = _mm256_set1_epi32(8);
        bool nan = _mm256_movemask_ps(_mm256_cmp_ps(mv, mv, _CMP_UNORD_Q)) != 0;
        for (j = 8; !nan && j + 8 <= n && n <= INT32_MAX; j += 8) {
            const __m256 v = _mm256_loadu_ps(x + j);
            cur = _mm256_add_epi32(cur, step);
            const __m256 gt = _mm256_cmp_ps(v, mv, _CMP_GT_OQ);
            mv = _mm256_blendv_ps(mv, v, gt);
            iv = _mm256_blendv_epi8(iv, cur, _mm256_castps_si256(gt));
            nan = _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0;
        }
        if (nan || n > INT32_MAX) j = 0;          // the scalar pass below finds the first NaN
        else {
            alignas(32) float vals[8]; alignas(32) int32_t idx[8];
            _mm256_store_ps(vals, mv); _mm256_store_si256((__m256i*)idx, iv);
            m = vals[0]; best = idx[0];
            for (int l = 1; l < 8; l++)
                if (vals[l] > m || (vals[l] == m && idx[l] < best)) { m = vals[l]; best = idx[l]; }
        }
    }
#endif
    if (j == 0) { m = n ? x[0] : 0.f; best = 0; j = n ? 1 : 0; if (n && std::isnan(m)) return 0; }
    for (; j < n; j++) {
        if (std::isnan(x[j])) return j;
        if (x[j] > m) { m = x[j]; best = j; }
    }
    return best;
}

void argmax_task(void* p, int64_t i) {
    const Argmax& a = *(const Argmax*)p;
    a.out[i] = argmax_row(a.x + i * a.ld, a.cols);
}

}  // namespace

extern "C" {

// out[r] = argmax of x[r * ld .. r * ld + cols) for r < rows (torch.argmax(dim=-1)'s contract).
void llmos_argmax_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, int64_t* out) {
    Argmax a{x, cols, ld, out};
    llmos_parallel(argmax_task, &a, rows);
}

}  // extern "C"
