// MLX primitives over kernels.h's packed weights, and their Python bindings (module `_qmv`).
//
//   qmatmul(x, packed, n, k, bits, *, norm=None, eps, residual=None, glu=False, splits=[])
//       x @ W.T for x (..., k) float32 and W (n, k) packed, with optional fusions that save a
//       decode step whole MLX operations (each costs ~5-10 µs on the CPU whatever its size):
//       `norm`: RMS-normalize each x row with this weight first; `residual`: add it to the result;
//       `glu`: W holds gate and up rows tile-pairwise (2n rows) and the result is silu(gate)·up;
//       `splits`: return the result's columns as several arrays (q, k, v from one product).
//       `precise`: activations in two int8 levels (x ≈ d·q + d2·q2) instead of one.
//   qembed(ids, packed, n, k, bits): rows `ids` of W in float32 (embedding lookups).
//   qdequant(packed, n, k, bits): all of W in float32 (prompts of many rows go to BLAS).
//   decode_attention(q, k, v, mask=None, *, length, cos, sin, scale): one decode step's attention
//       for every query row, (out, scores) = (softmax(q'·kᵀ)·v, q'·kᵀ) with q' = RoPE(q)·scale,
//       over the first `length` keys, masked keys -inf (attention.cpp). q (B, Hkv, G, D), k and v
//       (B, Hkv, ≥length, D): the cache's buffers, read in place.
//   cache_write(buf, values, slot, *, cos, sin): the cache buffer with one position written
//       (RoPE'd keys, or values as they are), the buffer donated: a decode step's cache update.
//   decode_block(x, q, k, v, weights, dims, norm, eps, *, length, heads, cos, sin, mask): the rest
//       of a decoder block after the step's cache writes (decode_attention, o with the residual,
//       gate/up with the norm, down with the residual) as one operation instead of ~8: on the CPU
//       each costs ~10 µs to schedule whatever its size, ~2 ms a step on the default model.
//
// CPU only: the GPU backends keep MLX's own quantized kernels.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/stream.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

namespace entropix {
namespace {

struct MatmulSpec {
  int64_t n, k;
  int bits;
  float eps;
  bool norm, residual, glu, precise;
  std::vector<int> splits;

  bool operator==(const MatmulSpec&) const = default;
};

mx::Stream cpu_stream() { return mx::default_stream(mx::Device(mx::Device::cpu)); }

// Dispatches `run(in, out)` on the CPU stream with every output allocated.
template <class Run>
void dispatch(mx::Stream stream, const std::vector<mx::array>& inputs,
              std::vector<mx::array>& outputs, Run run) {
  for (auto& o : outputs) {
    if (!o.data_shared_ptr()) o.set_data(mx::allocator::malloc(o.nbytes()));
  }
  auto& encoder = mx::cpu::get_command_encoder(stream);
  std::vector<mx::array> in, out;
  for (auto& a : inputs) {
    encoder.set_input_array(a);
    in.push_back(mx::array::unsafe_weak_copy(a));
  }
  for (auto& o : outputs) {
    encoder.set_output_array(o);
    out.push_back(mx::array::unsafe_weak_copy(o));
  }
  encoder.dispatch([in = std::move(in), out = std::move(out), run]() mutable { run(in, out); });
}

// Element offset of each row (every axis but the last) of `a`; broadcast axes have stride 0.
std::vector<int64_t> row_offsets(const mx::array& a) {
  const int nd = static_cast<int>(a.ndim());
  const int64_t cols = nd ? a.shape(-1) : 1;
  const int64_t rows = cols ? static_cast<int64_t>(a.size()) / cols : 0;
  std::vector<int64_t> off(rows);
  if (a.flags().row_contiguous) {
    for (int64_t r = 0; r < rows; ++r) off[r] = r * cols;
    return off;
  }
  std::vector<int64_t> idx(std::max(nd - 1, 0), 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t o = 0;
    for (int d = 0; d < nd - 1; ++d) o += idx[d] * a.strides()[d];
    off[r] = o;
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < a.shape(d)) break;
      idx[d] = 0;
    }
  }
  return off;
}

float silu_times(float g, float u) { return g / (1.0f + std::exp(-g)) * u; }

// Rows of an operand: row i's values at data + off[i] + c·col_stride; `off` empty: row-contiguous.
struct Rows {
  const float* data = nullptr;
  std::vector<int64_t> off;
  int64_t col_stride = 1;

  int64_t at(int64_t i, int64_t cols) const { return off.empty() ? i * cols : off[i]; }
};

Rows rows_of(const mx::array& a) {
  if (a.flags().row_contiguous) return {a.data<float>(), {}, 1};
  return {a.data<float>(), row_offsets(a), a.ndim() ? a.strides().back() : 1};
}

// x (m rows of s.k) @ Wᵀ, with the spec's fusions; the result's column blocks go to dst[i]
// (rows of widths[i] values, row-contiguous).
void matmul_rows(const MatmulSpec& s, const uint8_t* w, const float* norm, const Rows& x,
                 int64_t m, const Rows* res, const std::vector<float*>& dst,
                 const std::vector<int64_t>& widths) {
  const int64_t k = s.k, nb = k / kBlock;
  if (m == 0) return;

  const int levels = s.precise ? 2 : 1;
  std::vector<int8_t> q(levels * m * k);
  std::vector<float> d(levels * m * nb), sum(m * nb);
  std::vector<int32_t> qsum(levels * m * nb);
  QuantRows xq{q.data(), d.data(), qsum.data(), sum.data(), k};
  if (s.precise) {
    xq.q2 = q.data() + m * k;
    xq.d2 = d.data() + m * nb;
    xq.qsum2 = qsum.data() + m * nb;
  }
  if (x.off.empty()) {
    quantize_rows(x.data, m, k, k, 1, norm, s.eps, xq);
  } else {
    for (int64_t i = 0; i < m; ++i) {
      // One row at a time, into row i of the buffers.
      QuantRows row{xq.q + i * k, xq.d + i * nb, xq.qsum + i * nb, xq.sum + i * nb, k};
      if (s.precise) {
        row.q2 = xq.q2 + i * k;
        row.d2 = xq.d2 + i * nb;
        row.qsum2 = xq.qsum2 + i * nb;
      }
      quantize_rows(x.data + x.off[i], 1, k, 0, x.col_stride, norm, s.eps, row);
    }
  }

  // Where each output column goes: splits → (array, column).
  std::vector<int64_t> starts{0};
  for (int64_t width : widths) starts.push_back(starts.back() + width);

  const int64_t units = s.glu ? s.n / kTileRows : n_tiles(s.n);
  const int64_t groups = (m + 3) / 4;
  const int64_t items = units * groups;
  const int64_t chunks = std::min<int64_t>(items, num_threads() * 8);
  const int64_t per_chunk = (items + chunks - 1) / chunks;

  parallel_for(chunks, [&](int64_t c) {
    float acc[4 * kTileRows], up[4 * kTileRows];
    const int64_t end = std::min(items, (c + 1) * per_chunk);
    for (int64_t item = c * per_chunk; item < end; ++item) {
      const int64_t unit = item / groups, m0 = (item % groups) * 4;
      const int mr = static_cast<int>(std::min<int64_t>(4, m - m0));
      if (s.glu) {
        tile_dot(w, 2 * unit, k, s.bits, xq, m0, mr, acc);
        tile_dot(w, 2 * unit + 1, k, s.bits, xq, m0, mr, up);
        for (int i = 0; i < mr; ++i) {
          float* o = dst[0] + (m0 + i) * widths[0] + unit * kTileRows;
          for (int r = 0; r < kTileRows; ++r) {
            o[r] = silu_times(acc[i * kTileRows + r], up[i * kTileRows + r]);
          }
        }
        continue;
      }
      tile_dot(w, unit, k, s.bits, xq, m0, mr, acc);
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t col = unit * kTileRows + r;
        if (col >= s.n) break;
        size_t seg = 0;
        while (col >= starts[seg + 1]) ++seg;
        for (int i = 0; i < mr; ++i) {
          float v = acc[i * kTileRows + r];
          if (res) v += res->data[res->at(m0 + i, s.n) + col * res->col_stride];
          dst[seg][(m0 + i) * widths[seg] + col - starts[seg]] = v;
        }
      }
    }
  });
}

void run_matmul(const MatmulSpec& s, const std::vector<mx::array>& in,
                std::vector<mx::array>& out) {
  const mx::array& x = in[0];
  size_t next = 2;
  const float* norm = s.norm ? in[next++].data<float>() : nullptr;
  std::optional<Rows> res;
  if (s.residual) res = rows_of(in[next++]);
  std::vector<float*> dst;
  std::vector<int64_t> widths;
  for (auto& o : out) {
    dst.push_back(o.data<float>());
    widths.push_back(o.shape(-1));
  }
  matmul_rows(s, in[1].data<uint8_t>(), norm, rows_of(x), static_cast<int64_t>(x.size()) / s.k,
              res ? &*res : nullptr, dst, widths);
}

// A CPU primitive whose whole state is a `Spec`: eval_cpu runs `Run(spec, inputs, outputs)` on the
// CPU stream; two are equivalent when their specs are equal. Subclasses give the output shapes.
template <class Spec,
          void (*Run)(const Spec&, const std::vector<mx::array>&, std::vector<mx::array>&)>
class SpecPrimitive : public mx::Primitive {
 public:
  SpecPrimitive(mx::Stream stream, Spec spec, const char* name)
      : mx::Primitive(stream), spec_(std::move(spec)), name_(name) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch(stream(), inputs, outputs,
             [spec = spec_](std::vector<mx::array>& in, std::vector<mx::array>& out) {
               Run(spec, in, out);
             });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error(std::string("[") + name_ + "] CPU only");
  }

  const char* name() const override { return name_; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const SpecPrimitive*>(&other);
    return o && o->spec_ == spec_;
  }

 protected:
  Spec spec_;
  const char* name_;
};

class QuantMatmul : public SpecPrimitive<MatmulSpec, run_matmul> {
 public:
  QuantMatmul(mx::Stream stream, MatmulSpec spec)
      : SpecPrimitive(stream, std::move(spec), "EntropixQuantMatmul") {}

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return shapes(inputs[0].shape(), spec_);
  }

  static std::vector<mx::Shape> shapes(mx::Shape x_shape, const MatmulSpec& s) {
    std::vector<mx::Shape> out;
    if (s.splits.empty()) {
      x_shape.back() = static_cast<int>(s.n);
      out.push_back(x_shape);
    }
    for (int width : s.splits) {
      x_shape.back() = width;
      out.push_back(x_shape);
    }
    return out;
  }
};

template <class T>
void embed_rows(const mx::array& ids, const uint8_t* w, int64_t n, int64_t k, int bits,
                float* out) {
  const T* data = ids.data<T>();
  // ids as a (…, 1) view gives one offset per element.
  const auto rows = static_cast<int64_t>(ids.size());
  std::vector<int64_t> off(rows);
  if (ids.flags().row_contiguous) {
    for (int64_t i = 0; i < rows; ++i) off[i] = i;
  } else {
    const int nd = static_cast<int>(ids.ndim());
    std::vector<int64_t> idx(nd, 0);
    for (int64_t i = 0; i < rows; ++i) {
      int64_t o = 0;
      for (int a = 0; a < nd; ++a) o += idx[a] * ids.strides()[a];
      off[i] = o;
      for (int a = nd - 1; a >= 0; --a) {
        if (++idx[a] < ids.shape(a)) break;
        idx[a] = 0;
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    const auto id = static_cast<int64_t>(data[off[i]]);
    if (id < 0 || id >= n) {
      std::fill(out + i * k, out + (i + 1) * k, 0.0f);  // like a gather past the end: no crash
    } else {
      dequantize_row(w, id, k, bits, out + i * k);
    }
  }
}

class QuantEmbed : public mx::UnaryPrimitive {
 public:
  QuantEmbed(mx::Stream stream, int64_t n, int64_t k, int bits)
      : mx::UnaryPrimitive(stream), n_(n), k_(k), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(inputs[0]);
    encoder.set_input_array(inputs[1]);
    encoder.set_output_array(out);
    encoder.dispatch([ids = mx::array::unsafe_weak_copy(inputs[0]),
                      w = mx::array::unsafe_weak_copy(inputs[1]),
                      o = mx::array::unsafe_weak_copy(out), n = n_, k = k_, bits = bits_]() mutable {
      const uint8_t* wd = w.data<uint8_t>();
      float* od = o.data<float>();
      switch (ids.dtype()) {
        case mx::int32: return embed_rows<int32_t>(ids, wd, n, k, bits, od);
        case mx::uint32: return embed_rows<uint32_t>(ids, wd, n, k, bits, od);
        case mx::int64: return embed_rows<int64_t>(ids, wd, n, k, bits, od);
        case mx::uint64: return embed_rows<uint64_t>(ids, wd, n, k, bits, od);
        default: return;  // refused when the op is built
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[entropix qembed] CPU only");
  }

  const char* name() const override { return "EntropixQuantEmbed"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const QuantEmbed*>(&other);
    return o && o->n_ == n_ && o->k_ == k_ && o->bits_ == bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape s = inputs[0].shape();
    s.push_back(static_cast<int>(k_));
    return {s};
  }

 private:
  int64_t n_, k_;
  int bits_;
};

// The whole matrix in float32 (N, K): prompts of many rows multiply it with BLAS.
class QuantDequant : public mx::UnaryPrimitive {
 public:
  QuantDequant(mx::Stream stream, int64_t n, int64_t k, int bits)
      : mx::UnaryPrimitive(stream), n_(n), k_(k), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(inputs[0]);
    encoder.set_output_array(out);
    encoder.dispatch([w = mx::array::unsafe_weak_copy(inputs[0]),
                      o = mx::array::unsafe_weak_copy(out), n = n_, k = k_, bits = bits_]() mutable {
      const uint8_t* wd = w.data<uint8_t>();
      float* od = o.data<float>();
      const int64_t chunk = 64;
      parallel_for((n + chunk - 1) / chunk, [&](int64_t c) {
        for (int64_t r = c * chunk; r < std::min(n, (c + 1) * chunk); ++r) {
          dequantize_row(wd, r, k, bits, od + r * k);
        }
      });
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[entropix qdequant] CPU only");
  }

  const char* name() const override { return "EntropixQuantDequant"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const QuantDequant*>(&other);
    return o && o->n_ == n_ && o->k_ == k_ && o->bits_ == bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {{static_cast<int>(n_), static_cast<int>(k_)}};
  }

 private:
  int64_t n_, k_;
  int bits_;
};

void check_packed(const mx::array& packed, int64_t rows, int64_t k, int bits) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("bits must be 4 or 8");
  if (k <= 0 || k % kBlock != 0) throw std::invalid_argument("k must be a positive multiple of 32");
  if (packed.dtype() != mx::uint8) throw std::invalid_argument("packed weights must be uint8");
  if (static_cast<int64_t>(packed.size()) != packed_bytes(rows, k, bits)) {
    throw std::invalid_argument("packed weights have " + std::to_string(packed.size()) +
                                " bytes, expected " + std::to_string(packed_bytes(rows, k, bits)));
  }
}

mx::array f32(const mx::array& a) {
  return a.dtype() == mx::float32 ? a : mx::astype(a, mx::float32);
}

// `a`'s rows (any strides) copied into `copy`, row-major.
const float* copy_rows(const mx::array& a, std::vector<float>& copy) {
  const float* data = a.data<float>();
  const int64_t cols = a.ndim() ? a.shape(-1) : 1, stride = a.ndim() ? a.strides().back() : 1;
  const auto off = row_offsets(a);
  copy.resize(off.size() * cols);
  for (size_t r = 0; r < off.size(); ++r) {
    for (int64_t c = 0; c < cols; ++c) copy[r * cols + c] = data[off[r] + c * stride];
  }
  return copy.data();
}

// `a` with its last axis contiguous: views of the KV cache are used in place, anything else is
// copied.
const float* last_axis_contiguous(const mx::array& a, std::vector<float>& copy) {
  if (a.ndim() == 0 || a.strides().back() == 1) return a.data<float>();
  return copy_rows(a, copy);
}

// All of `a` in row-major order: its own data where it is row-contiguous, else a copy.
const float* row_major(const mx::array& a, std::vector<float>& copy) {
  return a.flags().row_contiguous ? a.data<float>() : copy_rows(a, copy);
}

// A copied array is row-contiguous; a view keeps its strides.
std::vector<int64_t> strides_of(const mx::array& a, const std::vector<float>& copy) {
  std::vector<int64_t> s(a.strides().begin(), a.strides().end());
  if (!copy.empty()) {
    int64_t acc = 1;
    for (int i = static_cast<int>(a.ndim()) - 1; i >= 0; --i) {
      s[i] = acc;
      acc *= a.shape(i);
    }
  }
  return s;
}

// Non-traditional RoPE of one head's d values (halves rotated by cos/sin of d/2 angles), times
// `scale`: the arithmetic of the rotation matrices in ops.py.
void rope(const float* x, const float* cos, const float* sin, int64_t d, float scale, float* out) {
  const int64_t n = d / 2;
  for (int64_t i = 0; i < n; ++i) {
    const float c = cos[i] * scale, s = sin[i] * scale;
    out[i] = x[i] * c - x[i + n] * s;
    out[i + n] = x[i + n] * c + x[i] * s;
  }
}

// The cos and sin inputs `in[at]`, `in[at + 1]` of RoPE's angles, (1 or B, D/2): one row for
// every batch row or one each (off: no rotation, only the scale).
struct Trig {
  Trig(const std::vector<mx::array>& in, size_t at, bool on) {
    if (!on) return;
    cos = last_axis_contiguous(in[at], cos_copy);
    sin = last_axis_contiguous(in[at + 1], sin_copy);
    rows = in[at].shape(0);
    half = in[at].shape(1);
  }
  Trig(const Trig&) = delete;  // the pointers may point into the copies

  // Batch row b's d = 2·half values x, rotated (or copied) and times `scale`, into out.
  void apply(const float* x, int64_t b, int64_t d, float scale, float* out) const {
    if (!cos) {
      for (int64_t c = 0; c < d; ++c) out[c] = x[c] * scale;
      return;
    }
    const int64_t r = rows == 1 ? 0 : b;
    rope(x, cos + r * half, sin + r * half, d, scale, out);
  }

  std::vector<float> cos_copy, sin_copy;
  const float *cos = nullptr, *sin = nullptr;
  int64_t rows = 0, half = 0;
};

struct AttentionSpec {
  int64_t length;  // keys attended: the first `length` of k and v
  float scale;     // q's factor (with RoPE, folded into the rotation)
  bool mask, rope;

  bool operator==(const AttentionSpec&) const = default;
};

// A (B, T) bool mask input (any layout) as B·T row-contiguous flags.
std::vector<uint8_t> mask_flags(const mx::array& m, int64_t B, int64_t T) {
  const bool* md = m.data<bool>();
  const auto off = row_offsets(m);  // one row of T flags per batch row
  const int64_t ms = m.strides().back();
  std::vector<uint8_t> flags(B * T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < T; ++j) flags[b * T + j] = md[off[b] + j * ms];
  }
  return flags;
}

// One decode step's attention: q (B, Hkv, G, D) at element strides qs (last axis contiguous),
// k and v (B, Hkv, ≥T, D) arrays read in place (copied only where their last axis is strided),
// `mask` a (B, T) bool array or null; q rotated by `trig` and times `scale`. out (B, Hkv, G, D)
// and scores (B, Hkv, G, T), row-contiguous.
void attend(const float* qd, const int64_t* qs, const mx::array& k, const mx::array& v,
            const mx::array* mask, int64_t G, int64_t T, const Trig& trig, float scale, float* od,
            float* sd) {
  const int64_t B = k.shape(0), H = k.shape(1), D = k.shape(3);
  std::vector<float> kc, vc;
  const float* kd = last_axis_contiguous(k, kc);
  const float* vd = last_axis_contiguous(v, vc);
  const auto ks = strides_of(k, kc), vs = strides_of(v, vc);
  const auto mask_rows = mask ? mask_flags(*mask, B, T) : std::vector<uint8_t>{};
  // The queries, rotated and scaled: (B, H, G, D) row-contiguous.
  std::vector<float> qr(B * H * G * D);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t g = 0; g < G; ++g) {
        trig.apply(qd + b * qs[0] + h * qs[1] + g * qs[2], b, D, scale,
                   qr.data() + ((b * H + h) * G + g) * D);
      }
    }
  }
  std::vector<AttendRow> rows;
  rows.reserve(B * H * G);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t row = (b * H + h) * G + g;
        const auto* flags =
            mask_rows.empty() ? nullptr : reinterpret_cast<const bool*>(&mask_rows[b * T]);
        rows.push_back({qr.data() + row * D, kd + b * ks[0] + h * ks[1], vd + b * vs[0] + h * vs[1],
                        flags, sd + row * T, od + row * D, D, T, ks[2], vs[2]});
      }
    }
  }
  attend_rows(rows.data(), static_cast<int64_t>(rows.size()));
}


// inputs: q (B, Hkv, G, D), k, v (B, Hkv, ≥length, D), [mask (B, length)], [cos, sin (R, D/2)]
void run_attention(const AttentionSpec& spec, const std::vector<mx::array>& in,
                   std::vector<mx::array>& out) {
  const mx::array& q = in[0];
  std::vector<float> qc;
  const float* qd = last_axis_contiguous(q, qc);
  const auto qs = strides_of(q, qc);
  const Trig trig(in, spec.mask ? 4 : 3, spec.rope);
  attend(qd, qs.data(), in[1], in[2], spec.mask ? &in[3] : nullptr, q.shape(2), spec.length, trig,
         spec.scale, out[0].data<float>(), out[1].data<float>());
}

class DecodeAttention : public SpecPrimitive<AttentionSpec, run_attention> {
 public:
  DecodeAttention(mx::Stream stream, AttentionSpec spec)
      : SpecPrimitive(stream, spec, "EntropixDecodeAttention") {}

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const auto& q = inputs[0];
    return {q.shape(), {q.shape(0), q.shape(1), q.shape(2), static_cast<int>(spec_.length)}};
  }
};

// A decode step's attention mask, B x length flags in any shape, as a (B, length) bool input.
void push_mask(std::vector<mx::array>& inputs, const std::optional<mx::array>& mask, int B,
               int length) {
  if (!mask) return;
  if (mask->size() != static_cast<size_t>(B) * length || mask->shape(-1) != length) {
    throw std::invalid_argument("mask must hold B x length flags, e.g. (B, 1, 1, length)");
  }
  inputs.push_back(mx::astype(mx::reshape(*mask, {B, length}), mx::bool_));
}

void check_trig(const std::optional<mx::array>& cos, const std::optional<mx::array>& sin, int B,
                int D) {
  if (cos.has_value() != sin.has_value()) throw std::invalid_argument("give both cos and sin");
  if (!cos) return;
  for (const auto* t : {&*cos, &*sin}) {
    if (t->ndim() != 2 || (t->shape(0) != 1 && t->shape(0) != B) || 2 * t->shape(1) != D) {
      throw std::invalid_argument("cos and sin must be (1 or B, D/2)");
    }
  }
}

std::vector<mx::array> decode_attention(const mx::array& q, const mx::array& k,
                                        const mx::array& v, const std::optional<mx::array>& mask,
                                        int length, const std::optional<mx::array>& cos,
                                        const std::optional<mx::array>& sin, float scale) {
  if (q.ndim() != 4 || k.ndim() != 4 || v.shape() != k.shape()) {
    throw std::invalid_argument("q must be (B, Hkv, G, D) and k, v both (B, Hkv, T, D)");
  }
  if (k.shape(0) != q.shape(0) || k.shape(1) != q.shape(1) || k.shape(3) != q.shape(3)) {
    throw std::invalid_argument("q and k disagree on B, Hkv or D");
  }
  const int B = q.shape(0), T = length < 0 ? k.shape(2) : length;
  if (T < 1 || T > k.shape(2)) throw std::invalid_argument("length must be in 1..k.shape[2]");
  check_trig(cos, sin, B, q.shape(3));
  std::vector<mx::array> inputs{f32(q), f32(k), f32(v)};
  push_mask(inputs, mask, B, T);
  if (cos) {
    inputs.push_back(f32(*cos));
    inputs.push_back(f32(*sin));
  }
  AttentionSpec spec{T, scale, mask.has_value(), cos.has_value()};
  mx::Shape scores{q.shape(0), q.shape(1), q.shape(2), T};
  return mx::array::make_arrays({q.shape(), scores}, {mx::float32, mx::float32},
                                std::make_shared<DecodeAttention>(cpu_stream(), spec), inputs);
}

// `out` takes over the cache buffer `buf` when nothing else holds it (the KV cache rebinds to the
// result, so a step writes one row, not the buffer); false: `copy_buffer` into a fresh one.
bool donate_buffer(const mx::array& buf, mx::array& out) {
  const bool donate = buf.is_donatable() && buf.flags().row_contiguous;
  if (donate) out.copy_shared_buffer(buf);
  return donate;
}

// The (B, H, S, D) buffer `b`, any layout, into dst row-contiguous.
void copy_buffer(const mx::array& b, float* dst) {
  const int64_t B = b.shape(0), H = b.shape(1), S = b.shape(2), D = b.shape(3);
  std::vector<float> copy;
  const float* src = last_axis_contiguous(b, copy);
  const auto st = strides_of(b, copy);
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t s = 0; s < S; ++s) {
        std::memcpy(dst + ((i * H + h) * S + s) * D, src + i * st[0] + h * st[1] + s * st[2],
                    D * sizeof(float));
      }
    }
  }
}

// x (B·H·D head-major values), rotated by `trig`, into position `slot` of every head of the
// row-contiguous (B, H, S, D) buffer dst.
void write_slot(float* dst, const mx::Shape& shape, int64_t slot, const float* x,
                const Trig& trig) {
  const int64_t B = shape[0], H = shape[1], S = shape[2], D = shape[3];
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t h = 0; h < H; ++h) {
      trig.apply(x + (i * H + h) * D, i, D, 1.0f, dst + ((i * H + h) * S + slot) * D);
    }
  }
}

// The cache buffer (B, Hkv, S, D) with `new` (B·Hkv·D values, head-major) written at position
// `slot` of every head, RoPE'd when cos/sin are given. The buffer is donated when nothing else
// holds it (the KV cache rebinds to the result), so a step writes one row, not the buffer.
class CacheWrite : public mx::UnaryPrimitive {
 public:
  CacheWrite(mx::Stream stream, int64_t slot, bool rope)
      : mx::UnaryPrimitive(stream), slot_(slot), rope_(rope) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const bool donate = donate_buffer(inputs[0], out);
    std::vector<mx::array> outputs{out};
    dispatch(stream(), inputs, outputs,
             [slot = slot_, rope_on = rope_, donate](std::vector<mx::array>& in,
                                                     std::vector<mx::array>& o) {
               float* dst = o[0].data<float>();
               if (!donate) copy_buffer(in[0], dst);
               std::vector<float> nc;
               const float* x = row_major(in[1], nc);  // B·H·D head-major values
               const Trig trig(in, 2, rope_on);
               write_slot(dst, in[0].shape(), slot, x, trig);
             });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[entropix cache_write] CPU only");
  }

  const char* name() const override { return "EntropixCacheWrite"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const CacheWrite*>(&other);
    return o && o->slot_ == slot_ && o->rope_ == rope_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  int64_t slot_;
  bool rope_;
};

mx::array cache_write(const mx::array& buf, const mx::array& values, int slot,
                      const std::optional<mx::array>& cos, const std::optional<mx::array>& sin) {
  if (buf.ndim() != 4 || buf.dtype() != mx::float32) {
    throw std::invalid_argument("the cache buffer must be float32 (B, Hkv, S, D)");
  }
  const int B = buf.shape(0), H = buf.shape(1), S = buf.shape(2), D = buf.shape(3);
  if (slot < 0 || slot >= S) throw std::invalid_argument("slot must be in 0..S-1");
  if (values.size() != static_cast<size_t>(B) * H * D) {
    throw std::invalid_argument("values must hold B x Hkv x D numbers");
  }
  check_trig(cos, sin, B, D);
  // Any layout: the kernel reads the values in row-major order (B, then H·D head-major).
  std::vector<mx::array> inputs{buf, f32(values)};
  if (cos) {
    inputs.push_back(f32(*cos));
    inputs.push_back(f32(*sin));
  }
  return mx::array(buf.shape(), mx::float32,
                   std::make_shared<CacheWrite>(cpu_stream(), slot, cos.has_value()), inputs);
}

struct BlockSpec {
  MatmulSpec o, gate_up, down;
  int64_t length, heads;
  bool mask;

  bool operator==(const BlockSpec&) const = default;
};

// The rest of a decoder block after its cache writes, for a decode step: attention (as
// run_attention), o with the residual x, gate/up with the second norm, down with its residual.
// inputs x (B, 1, dim), q (B, 1, H·D), k, v (B, Hkv, ≥length, D), w_o, w_gate_up, norm, w_down,
// cos_q, sin_q (the scale folded in), [mask (B, length)]; outputs x' (B, 1, dim), scores
// (B, 1, H, length): the model concatenates the layers' along axis 1. The same arithmetic in the
// same order as those operations one by one.
void run_block(const BlockSpec& s, const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const mx::array &x = in[0], &q = in[1];
  const int64_t B = x.shape(0), dim = s.o.n, H = s.heads, D = in[2].shape(3);
  const int64_t G = H / in[2].shape(1);
  std::vector<float> qc;
  const float* qd = last_axis_contiguous(q, qc);
  const int64_t qs[3] = {strides_of(q, qc)[0], G * D, D};
  const Trig trig(in, 8, true);
  std::vector<float> att(B * H * D), h(B * dim), act(B * s.gate_up.n);
  attend(qd, qs, in[2], in[3], s.mask ? &in[10] : nullptr, G, s.length, trig, 1.0f, att.data(),
         out[1].data<float>());
  const Rows hr{h.data(), {}, 1}, xr = rows_of(x);
  matmul_rows(s.o, in[4].data<uint8_t>(), nullptr, Rows{att.data(), {}, 1}, B, &xr, {h.data()},
              {dim});
  matmul_rows(s.gate_up, in[5].data<uint8_t>(), in[6].data<float>(), hr, B, nullptr,
              {act.data()}, {s.gate_up.n});
  matmul_rows(s.down, in[7].data<uint8_t>(), nullptr, Rows{act.data(), {}, 1}, B, &hr,
              {out[0].data<float>()}, {dim});
}

class DecodeBlock : public SpecPrimitive<BlockSpec, run_block> {
 public:
  DecodeBlock(mx::Stream stream, BlockSpec spec)
      : SpecPrimitive(stream, std::move(spec), "EntropixDecodeBlock") {}

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const int B = inputs[0].shape(0);
    return {inputs[0].shape(),
            {B, 1, static_cast<int>(spec_.heads), static_cast<int>(spec_.length)}};
  }
};

std::vector<mx::array> decode_block(const mx::array& x, const mx::array& q, const mx::array& k,
                                    const mx::array& v, const std::vector<mx::array>& weights,
                                    const std::vector<int64_t>& dims, const mx::array& norm,
                                    float eps, int length, int heads, const mx::array& cos,
                                    const mx::array& sin, const std::optional<mx::array>& mask) {
  if (weights.size() != 3 || dims.size() != 9) {
    throw std::invalid_argument(
        "give 3 packed weights (o, gate_up, down) and their (n, k, bits) as 9 ints");
  }
  if (k.ndim() != 4 || v.shape() != k.shape()) {
    throw std::invalid_argument("k and v must both be (B, Hkv, T, D)");
  }
  const int B = k.shape(0), Hkv = k.shape(1), D = k.shape(3);
  if (length < 1 || length > k.shape(2)) throw std::invalid_argument("length must be in 1..T");
  if (heads <= 0 || heads % Hkv != 0) throw std::invalid_argument("heads must be a multiple of Hkv");
  MatmulSpec specs[3];
  for (int i = 0; i < 3; ++i) {
    const int64_t n = dims[3 * i], kk = dims[3 * i + 1];
    const int bits = static_cast<int>(dims[3 * i + 2]);
    const bool glu = i == 1;
    if (glu && n % kTileRows != 0) throw std::invalid_argument("gate_up needs n a multiple of 8");
    check_packed(weights[i], glu ? 2 * n : n, kk, bits);
    specs[i] = {n, kk, bits, eps, glu, !glu, glu, true, {}};
  }
  const int64_t dim = specs[0].n;
  if (specs[0].k != heads * D || specs[1].k != dim || specs[2].n != dim ||
      specs[2].k != specs[1].n) {
    throw std::invalid_argument("the weights' shapes do not make a block of these heads");
  }
  if (x.ndim() != 3 || x.shape(0) != B || x.shape(1) != 1 || x.shape(2) != dim) {
    throw std::invalid_argument("x must be (B, 1, dim) with k's B and o's n");
  }
  if (q.shape() != mx::Shape{B, 1, heads * D}) throw std::invalid_argument("q must be (B, 1, H·D)");
  if (norm.ndim() != 1 || norm.shape(0) != dim) throw std::invalid_argument("norm must be (dim,)");
  check_trig(cos, sin, B, D);
  std::vector<mx::array> inputs{f32(x), f32(q), f32(k), f32(v), weights[0], weights[1],
                                f32(norm), weights[2], f32(cos), f32(sin)};
  push_mask(inputs, mask, B, length);
  BlockSpec spec{specs[0], specs[1], specs[2], length, heads, mask.has_value()};
  return mx::array::make_arrays({x.shape(), {B, 1, heads, length}}, {mx::float32, mx::float32},
                                std::make_shared<DecodeBlock>(cpu_stream(), spec), inputs);
}

std::vector<mx::array> build_matmul(const mx::array& x, const mx::array& packed, int64_t n,
                                    int64_t k, int bits, const std::optional<mx::array>& norm,
                                    float eps, const std::optional<mx::array>& residual, bool glu,
                                    bool precise, const std::vector<int>& splits) {
  if (glu && n % kTileRows != 0) throw std::invalid_argument("glu needs n a multiple of 8");
  check_packed(packed, glu ? 2 * n : n, k, bits);
  if (x.ndim() == 0 || x.shape(-1) != k) {
    throw std::invalid_argument("x's last axis must have k = " + std::to_string(k) + " values");
  }
  if (!splits.empty()) {
    int64_t total = 0;
    for (int w : splits) total += w;
    if (total != n || glu || residual) {
      throw std::invalid_argument("splits must add up to n, without glu or residual");
    }
  }
  MatmulSpec spec{n, k, bits, eps, norm.has_value(), residual.has_value(), glu, precise, splits};
  std::vector<mx::array> inputs{f32(x), packed};
  if (norm) {
    if (norm->ndim() != 1 || norm->shape(0) != k) {
      throw std::invalid_argument("norm weight must have shape (k,)");
    }
    inputs.push_back(f32(*norm));
  }
  auto shapes = QuantMatmul::shapes(x.shape(), spec);
  if (residual) {
    if (residual->shape() != shapes[0]) {
      throw std::invalid_argument("residual must have the result's shape");
    }
    inputs.push_back(f32(*residual));
  }
  auto prim = std::make_shared<QuantMatmul>(cpu_stream(), spec);
  std::vector<mx::Dtype> dtypes(shapes.size(), mx::float32);
  return mx::array::make_arrays(std::move(shapes), dtypes, prim, inputs);
}

mx::array qmatmul(const mx::array& x, const mx::array& packed, int64_t n, int64_t k, int bits,
                  const std::optional<mx::array>& norm, float eps,
                  const std::optional<mx::array>& residual, bool glu, bool precise) {
  return build_matmul(x, packed, n, k, bits, norm, eps, residual, glu, precise, {})[0];
}

std::vector<mx::array> qmatmul_split(const mx::array& x, const mx::array& packed,
                                     const std::vector<int>& splits, int64_t k, int bits,
                                     const std::optional<mx::array>& norm, float eps,
                                     bool precise) {
  int64_t n = 0;
  for (int w : splits) n += w;
  if (splits.empty()) throw std::invalid_argument("splits must not be empty");
  return build_matmul(x, packed, n, k, bits, norm, eps, std::nullopt, false, precise, splits);
}

mx::array qdequant(const mx::array& packed, int64_t n, int64_t k, int bits) {
  check_packed(packed, n, k, bits);
  return mx::array({static_cast<int>(n), static_cast<int>(k)}, mx::float32,
                   std::make_shared<QuantDequant>(cpu_stream(), n, k, bits), {packed});
}

mx::array qembed(const mx::array& ids, const mx::array& packed, int64_t n, int64_t k, int bits) {
  check_packed(packed, n, k, bits);
  const auto t = ids.dtype();
  if (t != mx::int32 && t != mx::uint32 && t != mx::int64 && t != mx::uint64) {
    throw std::invalid_argument("ids must be an integer array (int32, uint32, int64, uint64)");
  }
  mx::Shape shape = ids.shape();
  shape.push_back(static_cast<int>(k));
  return mx::array(shape, mx::float32, std::make_shared<QuantEmbed>(cpu_stream(), n, k, bits),
                   {ids, packed});
}

}  // namespace
}  // namespace entropix

NB_MODULE(_qmv, m) {
  using namespace entropix;
  m.doc() = "Quantized matrix products on the CPU for entropix-mlx (see qmv.cpp).";
  m.def("qmatmul", &qmatmul, "x"_a, "packed"_a, "n"_a, "k"_a, "bits"_a, nb::kw_only(),
        "norm"_a = nb::none(), "eps"_a = 1e-5f, "residual"_a = nb::none(), "glu"_a = false,
        "precise"_a = true,
        "x @ W.T with W packed; optional RMSNorm of x, residual add, SwiGLU (see qmv.cpp).");
  m.def("qmatmul_split", &qmatmul_split, "x"_a, "packed"_a, "splits"_a, "k"_a, "bits"_a,
        nb::kw_only(), "norm"_a = nb::none(), "eps"_a = 1e-5f, "precise"_a = true,
        "x @ W.T returned as column blocks of the given widths.");
  m.def("qdequant", &qdequant, "packed"_a, "n"_a, "k"_a, "bits"_a,
        "The packed matrix's rows (all of them, glu pairs interleaved by tile) in float32.");
  m.def("qembed", &qembed, "ids"_a, "packed"_a, "n"_a, "k"_a, "bits"_a,
        "Rows `ids` of the packed matrix, in float32.");
  m.def("decode_attention", &decode_attention, "q"_a, "k"_a, "v"_a, "mask"_a = nb::none(),
        nb::kw_only(), "length"_a = -1, "cos"_a = nb::none(), "sin"_a = nb::none(),
        "scale"_a = 1.0f,
        "(softmax(q'·kᵀ)·v, q'·kᵀ) over the first `length` keys, q' = RoPE(q)·scale (see qmv.cpp).");
  m.def("cache_write", &cache_write, "buf"_a, "values"_a, "slot"_a, nb::kw_only(),
        "cos"_a = nb::none(), "sin"_a = nb::none(),
        "The cache buffer with `values` written (RoPE'd) at `slot`, donated when possible.");
  m.def("decode_block", &decode_block, "x"_a, "q"_a, "k"_a, "v"_a, "weights"_a, "dims"_a,
        "norm"_a, "eps"_a, nb::kw_only(), "length"_a, "heads"_a, "cos"_a, "sin"_a,
        "mask"_a = nb::none(),
        "A decode step's block after its cache writes: (x', scores) (see run_block).");
  m.def("packed_bytes", &packed_bytes, "n"_a, "k"_a, "bits"_a);
  m.def("kernel_name", &kernel_name);
  m.def("num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, "n"_a);
  m.def("set_force_scalar", &set_force_scalar, "on"_a);
  m.def("pool_check", &pool_check, "jobs"_a,
        "Indices the thread pool ran other than once over `jobs` small jobs (0 when right).");
}
