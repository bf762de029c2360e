// One decode step's attention for a query row: scores = q·kᵀ (q already scaled and rotated),
// masked keys -inf, out = softmax(scores)·v. In MLX this is three matmuls and a compiled softmax
// per layer whose cost grows with the context (batched 3-row products over strided cache views);
// here it is one pass over the keys and one over the values, with AVX2/FMA where the CPU has it
// (chosen at run time like the product kernels; a portable version of the same arithmetic
// elsewhere), rows split across the kernel threads.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ENTROPIX_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace entropix {
namespace {

// e^x for x ≤ 0 (scores minus their max): Cephes' range reduction and polynomial, as ops.py's
// `exp`, 1e-7 relative; -inf gives exactly 0. Branch-free so that the loops calling it vectorize.
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  x = std::max(x, -104.0f);
  const float n = std::floor(x * 1.4426950408889634f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = std::max(static_cast<int32_t>(n) + 127, 0);
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

__attribute__((always_inline)) inline float dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 lanes: one AVX register, no serial dependency
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[c + l] * b[c + l];
  }
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; c < d; ++c) s += a[c] * b[c];
  return s;
}

__attribute__((always_inline)) inline void attend_body(const AttendRow& a, float* p) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float top = kNegInf;
  for (int64_t j = 0; j < a.t; ++j) {
    const float s = (a.mask && !a.mask[j]) ? kNegInf : dot(a.q, a.k + j * a.k_stride, a.d);
    a.scores[j] = s;
    top = std::max(top, s);
  }
  std::fill(a.out, a.out + a.d, 0.0f);
  if (top == kNegInf) return;  // no visible key (cannot happen for a decode query: it sees itself)
  float total = 0.0f;
  for (int64_t j = 0; j < a.t; ++j) {
    p[j] = exp_nonpositive(a.scores[j] - top);
    total += p[j];
  }
  for (int64_t j = 0; j < a.t; ++j) {
    const float w = p[j];
    const float* vj = a.v + j * a.v_stride;
    for (int64_t c = 0; c < a.d; ++c) a.out[c] += w * vj[c];
  }
  const float inv = 1.0f / total;
  for (int64_t c = 0; c < a.d; ++c) a.out[c] *= inv;
}

void attend_scalar(const AttendRow& a, float* p) { attend_body(a, p); }

#ifdef ENTROPIX_AVX2
// exp_nonpositive on 8 lanes.
ENTROPIX_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-104.0f));
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.4426950408889634f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  e = _mm256_max_epi32(e, _mm256_setzero_si256());
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

ENTROPIX_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

ENTROPIX_AVX2 void attend_avx2(const AttendRow& a, float* p) {
  if (a.d % 16 != 0) return attend_body(a, p);  // head dims are 64 or 128 in practice
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float top = kNegInf;
  for (int64_t j = 0; j < a.t; ++j) {
    float s = kNegInf;
    if (!a.mask || a.mask[j]) {
      const float* kj = a.k + j * a.k_stride;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      for (int64_t c = 0; c < a.d; c += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.q + c), _mm256_loadu_ps(kj + c), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.q + c + 8), _mm256_loadu_ps(kj + c + 8), acc1);
      }
      s = hsum(_mm256_add_ps(acc0, acc1));
    }
    a.scores[j] = s;
    top = std::max(top, s);
  }
  std::fill(a.out, a.out + a.d, 0.0f);
  if (top == kNegInf) return;
  const __m256 top8 = _mm256_set1_ps(top);
  __m256 total8 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= a.t; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(a.scores + j), top8));
    _mm256_storeu_ps(p + j, e);
    total8 = _mm256_add_ps(total8, e);
  }
  float total = hsum(total8);
  for (; j < a.t; ++j) {
    p[j] = exp_nonpositive(a.scores[j] - top);
    total += p[j];
  }
  for (int64_t c = 0; c < a.d; c += 16) {  // 16 output values in two registers over all keys
    __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < a.t; ++i) {
      const __m256 w = _mm256_broadcast_ss(p + i);
      const float* vi = a.v + i * a.v_stride + c;
      o0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vi), o0);
      o1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vi + 8), o1);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / total);
    _mm256_storeu_ps(a.out + c, _mm256_mul_ps(o0, inv));
    _mm256_storeu_ps(a.out + c + 8, _mm256_mul_ps(o1, inv));
  }
}
#endif

}  // namespace

void attend_rows(const AttendRow* rows, int64_t n) {
  const bool avx2 = std::strcmp(kernel_name(), "avx2") == 0;
  parallel_for(n, [&](int64_t i) {
    thread_local std::vector<float> p;
    p.resize(static_cast<size_t>(rows[i].t));
#ifdef ENTROPIX_AVX2
    if (avx2) return attend_avx2(rows[i], p.data());
#endif
    attend_scalar(rows[i], p.data());
  });
}

}  // namespace entropix
