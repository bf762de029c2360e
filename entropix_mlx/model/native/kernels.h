// Quantized matrix products for the CPU: the packed weight layout, activation quantization and
// the kernels. No MLX types here (qmv.cpp wraps these in an MLX primitive), so the arithmetic
// can be read, and benchmarked, on its own.
//
// Weights are affine-quantized per group of 32 values along a row, w = scale * q + bias with q
// unsigned (4 or 8 bits): what MLX's `quantize` produces and what GGUF Q4_0/Q4_1/Q8_0 load as.
// Larger MLX groups (64, 128) repeat their scale and bias on each 32-value block.
//
// Packed layout: rows in tiles of 8, each tile's 32-column blocks one after the other, and in a
// block the 8 rows interleaved 4 bytes at a time, so that one 256-bit load holds 4 bytes of
// every row of the tile and a product with 4 broadcast activation bytes gives 8 row sums at once
// (no horizontal reductions). One (tile, block) record:
//   4-bit: 4 x 32 bytes: register j, lane r, byte i holds q[r][4j + i] in its low nibble and
//          q[r][16 + 4j + i] in its high nibble; then 8 float16 scales and 8 float16 biases.
//   8-bit: 8 x 32 bytes: register j, lane r, byte i holds q[r][4j + i]; then scales and biases.
// Rows past the matrix's end (the last tile) are zero.
#pragma once

#include <cstddef>
#include <cstdint>

namespace entropix {

inline constexpr int kTileRows = 8;
inline constexpr int kBlock = 32;

inline int qs_bytes(int bits) { return kTileRows * kBlock * bits / 8; }  // 128 or 256
inline int record_bytes(int bits) { return qs_bytes(bits) + 2 * kTileRows * 2; }  // + scales, biases
inline int64_t n_tiles(int64_t n) { return (n + kTileRows - 1) / kTileRows; }
inline int64_t packed_bytes(int64_t n, int64_t k, int bits) {
  return n_tiles(n) * (k / kBlock) * record_bytes(bits);
}

// Activations quantized per 32-value block: x ≈ d · q with q in [-127, 127], and optionally a
// second level for what the first leaves, x - d·q ≈ d2 · q2 (~250x smaller error: int8 alone moves
// a small model's logits by up to ~1.5, see quant.py). `qsum` is Σq (the 8-bit AVX2 kernel computes
// with q - 128 and adds 128 · qsum back), `sum` = d · Σq (+ d2 · Σq2), the bias term's factor: the
// result is then exactly W · (d·q + d2·q2), whose error goes with the weights themselves. With the
// exact Σx there instead, it would go with scale · q, which is not centred on zero (~3x larger).
struct QuantRows {
  int8_t* q;       // m x k
  float* d;        // m x k/32
  int32_t* qsum;   // m x k/32
  float* sum;      // m x k/32
  int64_t k;
  int8_t* q2 = nullptr;  // the second level, or null
  float* d2 = nullptr;
  int32_t* qsum2 = nullptr;
};

// Quantize `m` rows of `k` values (row i at x + i * row_stride, elements `col_stride` apart).
// With `norm_weight`, each row is RMS-normalized first: x * rsqrt(mean(x²) + eps) * weight.
void quantize_rows(const float* x, int64_t m, int64_t k, int64_t row_stride, int64_t col_stride,
                   const float* norm_weight, float eps, const QuantRows& out);

// Results for activation rows [m0, m0 + mr) (mr ≤ 4) and one tile of 8 weight rows:
// out[i * 8 + r] = Σ_k w[tile*8 + r][k] * x[m0 + i][k].
void tile_dot(const uint8_t* packed, int64_t tile, int64_t k, int bits, const QuantRows& x,
              int64_t m0, int mr, float* out);

// Which kernel `tile_dot` uses ("avx2" or "scalar"); `force_scalar` is for tests.
const char* kernel_name();
void set_force_scalar(bool on);

// Run f(i) for i in [0, n) on the kernel's threads (the caller's thread takes part).
void parallel_for(int64_t n, void (*f)(void*, int64_t), void* ctx);
template <class F>
void parallel_for(int64_t n, F&& f) {
  parallel_for(n, [](void* c, int64_t i) { (*static_cast<F*>(c))(i); }, static_cast<void*>(&f));
}
int num_threads();
void set_num_threads(int n);  // 0: the machine's cores
// Runs `jobs` small jobs through the pool with every core kept busy; how many indices ran other
// than once or under another job (0 when the pool is right; a test of its hand-over).
int64_t pool_check(int64_t jobs);

// One row of the original matrix back in float32 (embedding lookups, dense prefill).
void dequantize_row(const uint8_t* packed, int64_t row, int64_t k, int bits, float* out);

// One decode query row's attention (attention.cpp): scores[j] = q·k_j (q already scaled), -inf
// where mask[j] is false, and out = softmax(scores)·v. Key/value row j at k + j·k_stride.
struct AttendRow {
  const float* q;
  const float* k;
  const float* v;
  const bool* mask;  // t flags, or null: every key visible
  float* scores;     // t values
  float* out;        // d values
  int64_t d, t, k_stride, v_stride;
};
void attend_rows(const AttendRow* rows, int64_t n);  // on the kernel's threads

}  // namespace entropix
