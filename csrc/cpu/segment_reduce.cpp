// segment_reduce (CPU): ragged per-segment reduction of [N, D] values given
// offsets [S+1] (non-decreasing, 0..N). Algorithm: OpenMP parallel loop over
// segments (dynamic chunks, so ragged lengths balance); each segment is read
// once front to back (twice for logmeanexp: max, then sum of exp(x - max)),
// rows of a segment accumulate into the output row, so the inner loop runs
// over D contiguous columns. For D == 1 the loop keeps 4 independent
// accumulators so that the adds pipeline. Accumulation is float32 for
// float16/bfloat16/float32 input and float64 for float64. NaN inputs are
// tracked with an explicit flag and propagate; empty segments give 0 (sum,
// count) or NaN. Work O(N * D), extra memory O(D) per thread.
// Arguments are validated in Python (thresher/ops/segment.py); this file
// re-checks shapes and dtypes and raises ValueError, never crashes.
#include <thresher/abi_bind.h>
#include <thresher/common.h>
#include <thresher/registry.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace thresher {
namespace {

using abi::DType;
using abi::SegmentOp;
constexpr SegmentOp kSum = SegmentOp::kSum, kMean = SegmentOp::kMean, kMin = SegmentOp::kMin, kMax = SegmentOp::kMax,
                    kCount = SegmentOp::kCount, kLogMeanExp = SegmentOp::kLogMeanExp;

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    float f = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (mant << 13)) : (sign | ((exp + 112u) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Loaders: In is the storage type, Acc the accumulation type.
struct LoadF32 {
  using In = float;
  using Acc = float;
  static inline Acc get(const In* p, int64_t i) { return p[i]; }
};
struct LoadF64 {
  using In = double;
  using Acc = double;
  static inline Acc get(const In* p, int64_t i) { return p[i]; }
};
struct LoadF16 {
  using In = uint16_t;
  using Acc = float;
  static inline Acc get(const In* p, int64_t i) { return half_to_float(p[i]); }
};
struct LoadBF16 {
  using In = uint16_t;
  using Acc = float;
  static inline Acc get(const In* p, int64_t i) { return bf16_to_float(p[i]); }
};

// --------------------------------------------------------------- D == 1 path
template <class L>
inline typename L::Acc reduce_1d(const typename L::In* x, int64_t b, int64_t e, SegmentOp op) {
  using Acc = typename L::Acc;
  const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
  const Acc inf = std::numeric_limits<Acc>::infinity();
  const int64_t n = e - b;
  if (op == kSum || op == kMean) {
    if (n == 0) return op == kSum ? Acc(0) : nan;
    Acc a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = b;
    for (; i + 4 <= e; i += 4) {
      a0 += L::get(x, i);
      a1 += L::get(x, i + 1);
      a2 += L::get(x, i + 2);
      a3 += L::get(x, i + 3);
    }
    for (; i < e; ++i) a0 += L::get(x, i);
    const Acc s = (a0 + a1) + (a2 + a3);  // NaN and inf - inf propagate through the adds
    return op == kSum ? s : s / static_cast<Acc>(n);
  }
  if (n == 0) return nan;
  bool has_nan = false;
  if (op == kMin) {
    Acc m = inf;
    for (int64_t i = b; i < e; ++i) {
      const Acc v = L::get(x, i);
      has_nan |= (v != v);
      m = v < m ? v : m;
    }
    return has_nan ? nan : m;
  }
  Acc m = -inf;
  for (int64_t i = b; i < e; ++i) {
    const Acc v = L::get(x, i);
    has_nan |= (v != v);
    m = v > m ? v : m;
  }
  if (has_nan) return nan;
  if (op == kMax) return m;
  // logmeanexp
  if (!std::isfinite(m)) return m;  // +inf if any +inf, -inf if all -inf
  Acc s = 0;
  for (int64_t i = b; i < e; ++i) s += std::exp(L::get(x, i) - m);
  return m + std::log(s) - std::log(static_cast<Acc>(n));
}

// --------------------------------------------------------------- D > 1 path
template <class L>
void reduce_rows(const typename L::In* x, int64_t d, int64_t b, int64_t e, SegmentOp op, typename L::Acc* out,
                 std::vector<unsigned char>& nanflag) {
  using Acc = typename L::Acc;
  const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
  const Acc inf = std::numeric_limits<Acc>::infinity();
  const int64_t n = e - b;
  if (n == 0) {
    const Acc fill = op == kSum ? Acc(0) : nan;
    for (int64_t j = 0; j < d; ++j) out[j] = fill;
    return;
  }
  std::fill(nanflag.begin(), nanflag.begin() + d, 0);
  unsigned char* nf = nanflag.data();
  if (op == kSum || op == kMean) {
    for (int64_t j = 0; j < d; ++j) out[j] = 0;
    for (int64_t r = b; r < e; ++r) {
      const typename L::In* row = x + r * d;
      for (int64_t j = 0; j < d; ++j) out[j] += L::get(row, j);
    }
    if (op == kMean) {
      const Acc inv = Acc(1) / static_cast<Acc>(n);
      for (int64_t j = 0; j < d; ++j) out[j] = out[j] * inv;
    }
    return;  // NaN propagates through the adds
  }
  const bool is_min = op == kMin;
  for (int64_t j = 0; j < d; ++j) out[j] = is_min ? inf : -inf;
  for (int64_t r = b; r < e; ++r) {
    const typename L::In* row = x + r * d;
    for (int64_t j = 0; j < d; ++j) {
      const Acc v = L::get(row, j);
      nf[j] |= (v != v);
      if (is_min)
        out[j] = v < out[j] ? v : out[j];
      else
        out[j] = v > out[j] ? v : out[j];
    }
  }
  if (op == kLogMeanExp) {
    // out holds the max; second pass accumulates exp(x - max) into a scratch row.
    std::vector<Acc> ssum(static_cast<size_t>(d), Acc(0));
    for (int64_t r = b; r < e; ++r) {
      const typename L::In* row = x + r * d;
      for (int64_t j = 0; j < d; ++j) {
        const Acc m = out[j];
        if (std::isfinite(m)) ssum[j] += std::exp(L::get(row, j) - m);
      }
    }
    const Acc logn = std::log(static_cast<Acc>(n));
    for (int64_t j = 0; j < d; ++j)
      if (std::isfinite(out[j])) out[j] = out[j] + std::log(ssum[j]) - logn;
  }
  for (int64_t j = 0; j < d; ++j)
    if (nf[j]) out[j] = nan;
}

template <class L>
void run(const typename L::In* x, int64_t d, const int64_t* off, int64_t s, SegmentOp op, typename L::Acc* out) {
  const int64_t total = off[s] * d;
  const bool par = total >= (int64_t(1) << 18) && s > 1;
  if (d == 1) {
#pragma omp parallel for schedule(dynamic, 512) if (par)
    for (int64_t i = 0; i < s; ++i) out[i] = reduce_1d<L>(x, off[i], off[i + 1], op);
    return;
  }
#pragma omp parallel if (par)
  {
    std::vector<unsigned char> nanflag(static_cast<size_t>(d));
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < s; ++i) reduce_rows<L>(x, d, off[i], off[i + 1], op, out + i * d, nanflag);
  }
}

// values: [N, D] array (float32, float64, or int16 bit patterns for float16/bfloat16)
// dtype:  thresher::abi::DType code
// offsets: [S+1] int64; op: thresher::abi::SegmentOp code; out: [S, D] float32 (float64 for f64; int64 for count)
void segment_reduce(py::array values, int dtype_code, py::array offsets, int op_code, py::array out) {
  const SegmentOp op = abi::to_enum<SegmentOp>(op_code, "op");
  const DType dtype = abi::to_enum<DType>(dtype_code, "values: dtype");
  check(values.ndim() == 2, "values: expected a 2-d [N, D] array");
  const int64_t n = values.shape(0), d = values.shape(1);
  const int64_t* off = cptr<int64_t>(offsets, "offsets", 1);
  const int64_t s = offsets.shape(0) - 1;
  check(s >= 0, "offsets: must have at least one element");
  check(out.ndim() == 2 && out.shape(0) == s && out.shape(1) == d, "out: expected shape [S, D]");
  check(off[0] == 0 && off[s] == n, "offsets: must start at 0 and end at N");
  for (int64_t i = 0; i < s; ++i) check(off[i] <= off[i + 1], "offsets: must be non-decreasing");
  if (op == kCount) {
    int64_t* o = const_cast<int64_t*>(cptr<int64_t>(out, "out", 2));
    for (int64_t i = 0; i < s; ++i)
      for (int64_t j = 0; j < d; ++j) o[i * d + j] = off[i + 1] - off[i];
    return;
  }
  switch (dtype) {
    case DType::kFloat32: {
      const float* x = cptr<float>(values, "values", 2);
      float* o = const_cast<float*>(cptr<float>(out, "out", 2));
      py::gil_scoped_release nogil;
      run<LoadF32>(x, d, off, s, op, o);
      break;
    }
    case DType::kFloat64: {
      const double* x = cptr<double>(values, "values", 2);
      double* o = const_cast<double*>(cptr<double>(out, "out", 2));
      py::gil_scoped_release nogil;
      run<LoadF64>(x, d, off, s, op, o);
      break;
    }
    case DType::kFloat16:
    case DType::kBFloat16: {
      const uint16_t* x = reinterpret_cast<const uint16_t*>(cptr<int16_t>(values, "values", 2));
      float* o = const_cast<float*>(cptr<float>(out, "out", 2));
      py::gil_scoped_release nogil;
      if (dtype == DType::kFloat16)
        run<LoadF16>(x, d, off, s, op, o);
      else
        run<LoadBF16>(x, d, off, s, op, o);
      break;
    }
  }
}

}  // namespace
}  // namespace thresher

THRESHER_REGISTER(segment_reduce) {
  m.def("segment_reduce", &thresher::segment_reduce, pybind11::arg("values"), pybind11::arg("dtype"),
        pybind11::arg("offsets"), pybind11::arg("op"), pybind11::arg("out"),
        "Ragged per-segment reduction of [N, D] values into out [S, D] (see segment.py).");
}
