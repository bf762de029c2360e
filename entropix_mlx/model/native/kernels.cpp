// Kernels for the layout described in kernels.h: AVX2/FMA on x86-64 (chosen at run time, so the
// library runs on any x86-64), a portable scalar version of the same arithmetic elsewhere, and a
// small spinning thread pool (a decode step makes ~120 calls of 20-100 µs each: waking a
// sleeping thread per call would cost as much as the work).
#include "kernels.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ENTROPIX_X86 1
#define ENTROPIX_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace entropix {
namespace {

int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000 | (man << 13);  // inf, nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: value = man * 2^-24
    float f = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// ---------------------------------------------------------------------------------- scalar

// The 32 quantized values of row r of one (tile, block) record.
void unpack_row(const uint8_t* rec, int bits, int r, int* q) {
  for (int j = 0; j < (bits == 4 ? 4 : 8); ++j) {
    for (int i = 0; i < 4; ++i) {
      const uint8_t byte = rec[j * 32 + r * 4 + i];
      if (bits == 4) {
        q[4 * j + i] = byte & 0x0f;
        q[16 + 4 * j + i] = byte >> 4;
      } else {
        q[4 * j + i] = byte;
      }
    }
  }
}

int32_t dot32(const int* q, const int8_t* x) {
  int32_t dot = 0;
  for (int c = 0; c < kBlock; ++c) dot += q[c] * x[c];
  return dot;
}

void tile_scalar(const uint8_t* rec, int64_t nb, int bits, const QuantRows& x, int64_t m0, int mr,
                 float* out) {
  float acc[4][kTileRows] = {};
  const int qb = qs_bytes(bits);
  for (int64_t b = 0; b < nb; ++b, rec += record_bytes(bits)) {
    for (int r = 0; r < kTileRows; ++r) {
      int q[kBlock];
      unpack_row(rec, bits, r, q);
      const float d = half_to_float(load_u16(rec + qb + 2 * r));
      const float m = half_to_float(load_u16(rec + qb + 2 * kTileRows + 2 * r));
      for (int i = 0; i < mr; ++i) {
        const int64_t xo = (m0 + i) * x.k + b * kBlock, xb = (m0 + i) * nb + b;
        float& a = acc[i][r];
        a = std::fma(static_cast<float>(dot32(q, x.q + xo)), d * x.d[xb], a);
        if (x.q2) a = std::fma(static_cast<float>(dot32(q, x.q2 + xo)), d * x.d2[xb], a);
        a = std::fma(m, x.sum[xb], a);
      }
    }
  }
  for (int i = 0; i < mr; ++i) std::memcpy(out + i * kTileRows, acc[i], sizeof(acc[i]));
}

// One block of 32 values → q (round half to even), returns the scale; *qs = Σq.
float quantize_block_scalar(const float* v, int8_t* q, int32_t* qs) {
  float amax = 0.0f;
  for (int c = 0; c < kBlock; ++c) amax = std::max(amax, std::fabs(v[c]));
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  int32_t total = 0;
  for (int c = 0; c < kBlock; ++c) {
    const int qi = static_cast<int>(std::nearbyint(v[c] * inv));
    q[c] = static_cast<int8_t>(qi);
    total += qi;
  }
  *qs = total;
  return amax / 127.0f;
}

void quantize_row_scalar(const float* v, int64_t k, const QuantRows& o, int64_t row) {
  const int64_t nb = k / kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t xo = row * k + b * kBlock, xb = row * nb + b;
    const float d = quantize_block_scalar(v + b * kBlock, o.q + xo, o.qsum + xb);
    o.d[xb] = d;
    o.sum[xb] = d * static_cast<float>(o.qsum[xb]);
    if (o.q2) {
      float rest[kBlock];
      for (int c = 0; c < kBlock; ++c) rest[c] = v[b * kBlock + c] - d * o.q[xo + c];
      o.d2[xb] = quantize_block_scalar(rest, o.q2 + xo, o.qsum2 + xb);
      o.sum[xb] += o.d2[xb] * static_cast<float>(o.qsum2[xb]);
    }
  }
}

// ---------------------------------------------------------------------------------- AVX2

#ifdef ENTROPIX_X86

// 4-bit: per (tile, block) 4 loads give, per register j, bytes 4j..4j+3 (low nibbles) and
// 16+4j..16+4j+3 (high nibbles) of all 8 rows. Each maddubs pairs them with 4 broadcast
// activation bytes; the 8 partial sums per row stay in int16 (|sum| ≤ 8 · 2 · 15 · 127 < 2^15).
// TWO: the second activation level rides along on the same unpacked weights.
template <int MR, bool TWO>
ENTROPIX_AVX2 void tile_q4_avx2(const uint8_t* rec, int64_t nb, const QuantRows& x, int64_t m0,
                                float* out) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, rec += 160) {
    _mm_prefetch(reinterpret_cast<const char*>(rec + 640), _MM_HINT_T0);
    __m256i s16[MR], t16[MR];
    for (int i = 0; i < MR; ++i) s16[i] = t16[i] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * j));
      const __m256i lo = _mm256_and_si256(raw, low);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      for (int i = 0; i < MR; ++i) {
        const int64_t xo = (m0 + i) * x.k + b * kBlock;
        const int8_t* xq = x.q + xo;
        s16[i] = _mm256_add_epi16(
            s16[i],
            _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(xq + 4 * j))),
                             _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(xq + 16 + 4 * j)))));
        if constexpr (TWO) {
          const int8_t* xr = x.q2 + xo;
          t16[i] = _mm256_add_epi16(
              t16[i],
              _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(xr + 4 * j))),
                               _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(xr + 16 + 4 * j)))));
        }
      }
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 128)));
    const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 144)));
    for (int i = 0; i < MR; ++i) {
      const int64_t xb = (m0 + i) * nb + b;
      const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[i], ones));
      acc[i] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, _mm256_set1_ps(x.d[xb])), acc[i]);
      if constexpr (TWO) {
        const __m256 dot2 = _mm256_cvtepi32_ps(_mm256_madd_epi16(t16[i], ones));
        acc[i] = _mm256_fmadd_ps(dot2, _mm256_mul_ps(d, _mm256_set1_ps(x.d2[xb])), acc[i]);
      }
      acc[i] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.sum[xb]), acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + kTileRows * i, acc[i]);
}

// 8-bit: maddubs needs one unsigned operand and |pair sum| < 2^15, so the weights go in as
// w = q - 128 (|w| ≤ 128) with the sign moved onto the activations; 128 · Σx is added back.
template <int MR, bool TWO>
ENTROPIX_AVX2 void tile_q8_avx2(const uint8_t* rec, int64_t nb, const QuantRows& x, int64_t m0,
                                float* out) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, rec += 288) {
    _mm_prefetch(reinterpret_cast<const char*>(rec + 1152), _MM_HINT_T0);
    __m256i s32[MR], t32[MR];
    for (int i = 0; i < MR; ++i) s32[i] = t32[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i w = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * j)), flip);
      const __m256i aw = _mm256_abs_epi8(w);
      for (int i = 0; i < MR; ++i) {
        const int64_t xo = (m0 + i) * x.k + b * kBlock;
        const __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(load_i32(x.q + xo + 4 * j)), w);
        s32[i] = _mm256_add_epi32(s32[i], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones));
        if constexpr (TWO) {
          const __m256i xr = _mm256_sign_epi8(_mm256_set1_epi32(load_i32(x.q2 + xo + 4 * j)), w);
          t32[i] = _mm256_add_epi32(t32[i], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xr), ones));
        }
      }
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 256)));
    const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 272)));
    for (int i = 0; i < MR; ++i) {
      const int64_t xb = (m0 + i) * nb + b;
      const __m256i full = _mm256_add_epi32(s32[i], _mm256_set1_epi32(128 * x.qsum[xb]));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(full), _mm256_mul_ps(d, _mm256_set1_ps(x.d[xb])),
                               acc[i]);
      if constexpr (TWO) {
        const __m256i full2 = _mm256_add_epi32(t32[i], _mm256_set1_epi32(128 * x.qsum2[xb]));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(full2),
                                 _mm256_mul_ps(d, _mm256_set1_ps(x.d2[xb])), acc[i]);
      }
      acc[i] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.sum[xb]), acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + kTileRows * i, acc[i]);
}

ENTROPIX_AVX2 float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

ENTROPIX_AVX2 int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// 32 values → q (round half to even, as quantize_block_scalar); returns the scale, *qs = Σq.
ENTROPIX_AVX2 float quantize_block_avx2(const float* v, int8_t* q, int32_t* qs) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 x[4];
  __m256 amax = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    x[i] = _mm256_loadu_ps(v + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, x[i]));
  }
  const float mx = hmax(amax);
  const __m256 inv = _mm256_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f);
  __m256i qi[4];
  for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(x[i], inv));
  *qs = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3])));
  // int32 → int8, undoing the lane interleave of the two packs.
  __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
  p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), p8);
  return mx / 127.0f;
}

ENTROPIX_AVX2 void quantize_row_avx2(const float* v, int64_t k, const QuantRows& o, int64_t row) {
  const int64_t nb = k / kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t xo = row * k + b * kBlock, xb = row * nb + b;
    const float d = quantize_block_avx2(v + b * kBlock, o.q + xo, o.qsum + xb);
    o.d[xb] = d;
    o.sum[xb] = d * static_cast<float>(o.qsum[xb]);
    if (o.q2) {
      alignas(32) float rest[kBlock];
      const __m256 dv = _mm256_set1_ps(d);
      for (int i = 0; i < 4; ++i) {
        const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(o.q + xo + 8 * i));
        const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
        _mm256_store_ps(rest + 8 * i, _mm256_fnmadd_ps(dv, qf, _mm256_loadu_ps(v + b * kBlock + 8 * i)));
      }
      o.d2[xb] = quantize_block_avx2(rest, o.q2 + xo, o.qsum2 + xb);
      o.sum[xb] += o.d2[xb] * static_cast<float>(o.qsum2[xb]);
    }
  }
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
}
#else
bool has_avx2() { return false; }
#endif

std::atomic<bool> force_scalar{false};

bool use_avx2() { return has_avx2() && !force_scalar.load(std::memory_order_relaxed); }

// ---------------------------------------------------------------------------------- threads

void pause() {
#ifdef ENTROPIX_X86
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

// Workers spin for a while after each job (ENTROPIX_QMV_SPIN_US, default 200 µs), then sleep on
// a condition variable until the next one. The job counter packs (job id << 32 | next index), so a worker
// that wakes late can never take an index of a job that is over, nor run one job's index with the
// next job's function (a stress test in tests/test_quant_kernels.py).
class Pool {
 public:
  explicit Pool(int threads) : spin_us_(env_int("ENTROPIX_QMV_SPIN_US", 200)) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { loop(); });
  }

  ~Pool() {
    stop_.store(true);
    epoch_.fetch_add(1);
    wake();
    for (auto& t : workers_) t.join();
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, void (*f)(void*, int64_t), void* ctx) {
    std::lock_guard<std::mutex> lock(run_mutex_);  // one job at a time (several MLX CPU streams)
    if (workers_.empty() || n <= 1) {
      for (int64_t i = 0; i < n; ++i) f(ctx, i);
      return;
    }
    // Closed first: a late worker of the last job that already read this state can no longer claim
    // an index (its compare-exchange fails), so it never pairs that job's index with these fields.
    const uint64_t job = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store(job << 32 | kClosed, std::memory_order_seq_cst);
    fn_.store(f, std::memory_order_release);
    ctx_.store(ctx, std::memory_order_release);
    n_.store(n, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    state_.store(job << 32, std::memory_order_seq_cst);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) wake();
    work(job);
    while (done_.load(std::memory_order_acquire) < n) pause();
  }

 private:
  static constexpr uint64_t kClosed = 0xffffffffu;  // index part of a state no one may claim

  // Take indices of `job` until none are left. The fields are read after the state and count only
  // if the compare-exchange then finds that state unchanged: run() changes the state before it
  // writes the fields of the next job.
  void work(uint64_t job) {
    uint64_t s = state_.load(std::memory_order_acquire);
    while ((s >> 32) == job) {
      auto f = fn_.load(std::memory_order_acquire);
      void* ctx = ctx_.load(std::memory_order_acquire);
      const int64_t n = n_.load(std::memory_order_acquire);
      const int64_t i = static_cast<int64_t>(s & kClosed);
      if (i >= n) return;
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
        f(ctx, i);
        done_.fetch_add(1, std::memory_order_release);
        s = state_.load(std::memory_order_acquire);
      }
    }
  }

  void loop() {
    uint32_t seen = epoch_.load();
    while (true) {
      auto start = std::chrono::steady_clock::now();
      int spins = 0;
      // stop_ too: a worker that starts after its pool is already being destroyed sees no new epoch.
      while (epoch_.load(std::memory_order_acquire) == seen && !stop_.load()) {
        pause();
        if (++spins % 64 == 0 &&
            std::chrono::steady_clock::now() - start > std::chrono::microseconds(spin_us_)) {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          sleep_.wait(lock, [&] { return epoch_.load(std::memory_order_seq_cst) != seen || stop_.load(); });
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        }
      }
      seen = epoch_.load(std::memory_order_acquire);
      if (stop_.load()) return;
      work(state_.load(std::memory_order_acquire) >> 32);
    }
  }

  // The epoch moved before this: a sleeper either saw it under the lock or is waiting and is woken.
  void wake() {
    { std::lock_guard<std::mutex> lock(sleep_mutex_); }
    sleep_.notify_all();
  }

  const int spin_us_;
  std::mutex run_mutex_;
  std::mutex sleep_mutex_;
  std::condition_variable sleep_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> epoch_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int64_t> n_{0};
  std::atomic<void (*)(void*, int64_t)> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<bool> stop_{false};
};

std::mutex pool_mutex;
std::unique_ptr<Pool> pool;
int requested_threads = -1;  // -1: not set yet (ENTROPIX_QMV_THREADS, else the machine's cores)

Pool& get_pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (!pool) {
    int n = requested_threads >= 0 ? requested_threads : env_int("ENTROPIX_QMV_THREADS", 0);
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    pool = std::make_unique<Pool>(n);
  }
  return *pool;
}

}  // namespace

// ---------------------------------------------------------------------------------- public

void quantize_rows(const float* x, int64_t m, int64_t k, int64_t row_stride, int64_t col_stride,
                   const float* norm_weight, float eps, const QuantRows& out) {
  std::vector<float> buf;
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * row_stride;
    if (col_stride != 1 || norm_weight != nullptr) {
      buf.resize(k);
      for (int64_t c = 0; c < k; ++c) buf[c] = row[c * col_stride];
      if (norm_weight != nullptr) {
        float ss = 0.0f;
        for (int64_t c = 0; c < k; ++c) ss += buf[c] * buf[c];
        const float r = 1.0f / std::sqrt(ss / static_cast<float>(k) + eps);
        for (int64_t c = 0; c < k; ++c) buf[c] = buf[c] * r * norm_weight[c];
      }
      row = buf.data();
    }
#ifdef ENTROPIX_X86
    if (use_avx2()) {
      quantize_row_avx2(row, k, out, i);
      continue;
    }
#endif
    quantize_row_scalar(row, k, out, i);
  }
}

#ifdef ENTROPIX_X86
template <int MR>
void tile_avx2(const uint8_t* rec, int64_t nb, int bits, const QuantRows& x, int64_t m0,
               float* out) {
  if (bits == 4) {
    return x.q2 ? tile_q4_avx2<MR, true>(rec, nb, x, m0, out)
                : tile_q4_avx2<MR, false>(rec, nb, x, m0, out);
  }
  return x.q2 ? tile_q8_avx2<MR, true>(rec, nb, x, m0, out)
              : tile_q8_avx2<MR, false>(rec, nb, x, m0, out);
}
#endif

void tile_dot(const uint8_t* packed, int64_t tile, int64_t k, int bits, const QuantRows& x,
              int64_t m0, int mr, float* out) {
  const int64_t nb = k / kBlock;
  const uint8_t* rec = packed + tile * nb * record_bytes(bits);
#ifdef ENTROPIX_X86
  if (use_avx2()) {
    switch (mr) {
      case 1: return tile_avx2<1>(rec, nb, bits, x, m0, out);
      case 2: return tile_avx2<2>(rec, nb, bits, x, m0, out);
      case 3: return tile_avx2<3>(rec, nb, bits, x, m0, out);
      default: return tile_avx2<4>(rec, nb, bits, x, m0, out);
    }
  }
#endif
  tile_scalar(rec, nb, bits, x, m0, mr, out);
}

const char* kernel_name() { return use_avx2() ? "avx2" : "scalar"; }

void set_force_scalar(bool on) { force_scalar.store(on); }

void parallel_for(int64_t n, void (*f)(void*, int64_t), void* ctx) { get_pool().run(n, f, ctx); }

int num_threads() { return get_pool().size(); }

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  requested_threads = n;
  pool.reset();
}

int64_t pool_check(int64_t jobs) {
  struct Job {
    int64_t id = -1;
    int hits[32] = {};
  };
  std::array<Job, 4> ring;
  std::atomic<int64_t> current{-1}, bad{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> hogs;  // every core busy, so that workers are preempted mid-job
  for (unsigned i = 0; i < std::max(1u, std::thread::hardware_concurrency()); ++i) {
    hogs.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) pause();
    });
  }
  for (int64_t j = 0; j < jobs; ++j) {
    Job& job = ring[j % ring.size()];
    const int64_t n = 2 + j % 30;
    job.id = j;
    std::fill(std::begin(job.hits), std::end(job.hits), 0);
    current.store(j);
    parallel_for(n, [&](int64_t i) {
      if (job.id != current.load() || i < 0 || i >= n) bad.fetch_add(1);
      if (i >= 0 && i < 32) __atomic_fetch_add(&job.hits[i], 1, __ATOMIC_RELAXED);
    });
    for (int64_t i = 0; i < n; ++i) bad.fetch_add(job.hits[i] != 1);
  }
  stop.store(true);
  for (auto& t : hogs) t.join();
  return bad.load();
}

void dequantize_row(const uint8_t* packed, int64_t row, int64_t k, int bits, float* out) {
  const int64_t nb = k / kBlock;
  const int r = static_cast<int>(row % kTileRows);
  const int qb = qs_bytes(bits);
  const uint8_t* rec = packed + (row / kTileRows) * nb * record_bytes(bits);
  for (int64_t b = 0; b < nb; ++b, rec += record_bytes(bits)) {
    int q[kBlock];
    unpack_row(rec, bits, r, q);
    const float d = half_to_float(load_u16(rec + qb + 2 * r));
    const float m = half_to_float(load_u16(rec + qb + 2 * kTileRows + 2 * r));
    for (int c = 0; c < kBlock; ++c) out[b * kBlock + c] = d * static_cast<float>(q[c]) + m;
  }
}

}  // namespace entropix
