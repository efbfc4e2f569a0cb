// segment_reduce (CUDA): ragged per-segment reduction of [N, D] values given
// offsets [S+1] (validated in Python: non-decreasing, 0..N).
// Algorithm: for D == 1, one warp per segment: lanes stride through the
// segment (coalesced 128-byte reads), then a shuffle-xor butterfly combines
// the 32 partial results; for D > 1, one block of 32 x 8 threads per
// (segment, 32-column tile): threadIdx.x walks a column, threadIdx.y a row
// phase, and the 8 partials are combined in shared memory. logmeanexp makes a
// second pass summing exp(x - max). NaN is tracked with an explicit flag;
// empty segments give 0 (sum) or NaN. Accumulation in float32 (float64 for
// float64 input). Work O(N * D), one read of the data (two for logmeanexp),
// no atomics, deterministic for a given launch configuration.
// Pointers are raw device addresses (ints) and the stream comes from Python
// (torch.cuda.current_stream().cuda_stream); nothing links libtorch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <thresher/abi.h>
#include <thresher/cuda_check.cuh>
#include <thresher/registry.h>

#include <cstdint>
#include <string>

namespace {

using thresher::abi::DType;
using thresher::abi::SegmentOp;
// Kernel template arguments: the reduction codes of thresher/abi.h as ints.
constexpr int kSum = thresher::abi::code(SegmentOp::kSum);
constexpr int kMean = thresher::abi::code(SegmentOp::kMean);
constexpr int kMax = thresher::abi::code(SegmentOp::kMax);
constexpr int kMin = thresher::abi::code(SegmentOp::kMin);
constexpr int kLogMeanExp = thresher::abi::code(SegmentOp::kLogMeanExp);

struct LF32 {
  using In = float;
  using Acc = float;
  static __device__ __forceinline__ Acc get(const In* p, int64_t i) { return p[i]; }
};
struct LF64 {
  using In = double;
  using Acc = double;
  static __device__ __forceinline__ Acc get(const In* p, int64_t i) { return p[i]; }
};
struct LF16 {
  using In = __half;
  using Acc = float;
  static __device__ __forceinline__ Acc get(const In* p, int64_t i) { return __half2float(p[i]); }
};
struct LBF16 {
  using In = __nv_bfloat16;
  using Acc = float;
  static __device__ __forceinline__ Acc get(const In* p, int64_t i) { return __bfloat162float(p[i]); }
};

template <class Acc>
__device__ __forceinline__ Acc acc_inf();
template <>
__device__ __forceinline__ float acc_inf<float>() {
  return __int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double acc_inf<double>() {
  return __longlong_as_double(0x7ff0000000000000ll);
}

template <class Acc>
__device__ __forceinline__ Acc acc_nan();
template <>
__device__ __forceinline__ float acc_nan<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ __forceinline__ double acc_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000ll);
}

template <int OP, class Acc>
__device__ __forceinline__ Acc init_value() {
  if (OP == kMin) return acc_inf<Acc>();
  if (OP == kSum || OP == kMean) return Acc(0);
  return -acc_inf<Acc>();  // max, logmeanexp
}

template <int OP, class Acc>
__device__ __forceinline__ Acc combine(Acc a, Acc v) {
  if (OP == kSum || OP == kMean) return a + v;
  if (OP == kMin) return v < a ? v : a;
  return v > a ? v : a;
}

__device__ __forceinline__ bool is_finite(float x) { return isfinite(x); }
__device__ __forceinline__ bool is_finite(double x) { return isfinite(x); }

template <class Acc>
__device__ __forceinline__ Acc finish(int op, Acc r, Acc ssum, int64_t n, bool has_nan) {
  if (has_nan) return acc_nan<Acc>();
  if (op == kSum) return r;
  if (n == 0) return acc_nan<Acc>();
  if (op == kMean) return r / Acc(n);
  if (op == kLogMeanExp) return is_finite(r) ? r + log(ssum) - log(Acc(n)) : r;
  return r;
}

// ---------------------------------------------------------------- D == 1
// x [N], off [S+1], out [S]; one warp per segment.
template <class L, int OP>
__global__ void seg_reduce_1d(const typename L::In* __restrict__ x, const int64_t* __restrict__ off, int64_t S,
                              typename L::Acc* __restrict__ out) {
  using Acc = typename L::Acc;
  const int64_t seg = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (seg >= S) return;  // uniform per warp
  const int64_t b = off[seg], e = off[seg + 1];
  Acc a = init_value<OP, Acc>();
  int nan = 0;
  for (int64_t i = b + lane; i < e; i += 32) {
    const Acc v = L::get(x, i);
    nan |= (v != v);
    a = combine<OP, Acc>(a, v);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a = combine<OP, Acc>(a, __shfl_xor_sync(0xffffffffu, a, o));
  const bool has_nan = __any_sync(0xffffffffu, nan) != 0;
  Acc ssum = 0;
  if (OP == kLogMeanExp && !has_nan && is_finite(a)) {
    for (int64_t i = b + lane; i < e; i += 32) ssum += exp(L::get(x, i) - a);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ssum += __shfl_xor_sync(0xffffffffu, ssum, o);
  }
  if (lane == 0) out[seg] = finish<Acc>(OP, a, ssum, e - b, has_nan);
}

// ---------------------------------------------------------------- D > 1
// x [N, D], off [S+1], out [S, D]; block (32, 8) per (segment, 32-column tile).
template <class L, int OP>
__global__ void seg_reduce_2d(const typename L::In* __restrict__ x, const int64_t* __restrict__ off, int64_t D,
                              typename L::Acc* __restrict__ out) {
  using Acc = typename L::Acc;
  __shared__ Acc part[8][33];
  __shared__ int nanp[8][32];
  const int64_t seg = blockIdx.x;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * 32 + tx;
  const int64_t b = off[seg], e = off[seg + 1];
  Acc a = init_value<OP, Acc>();
  int nan = 0;
  if (col < D)
    for (int64_t r = b + ty; r < e; r += 8) {
      const Acc v = L::get(x, r * D + col);
      nan |= (v != v);
      a = combine<OP, Acc>(a, v);
    }
  part[ty][tx] = a;
  nanp[ty][tx] = nan;
  __syncthreads();
  if (ty == 0) {
    for (int j = 1; j < 8; ++j) {
      a = combine<OP, Acc>(a, part[j][tx]);
      nan |= nanp[j][tx];
    }
    part[0][tx] = a;
    nanp[0][tx] = nan;
  }
  __syncthreads();
  a = part[0][tx];
  nan = nanp[0][tx];
  Acc ssum = 0;
  if (OP == kLogMeanExp) {
    __syncthreads();  // everyone has read row 0 before it is reused
    if (col < D && !nan && is_finite(a))
      for (int64_t r = b + ty; r < e; r += 8) ssum += exp(L::get(x, r * D + col) - a);
    part[ty][tx] = ssum;
    __syncthreads();
    if (ty == 0)
      for (int j = 1; j < 8; ++j) ssum += part[j][tx];
  }
  if (ty == 0 && col < D) out[seg * D + col] = finish<Acc>(OP, a, ssum, e - b, nan != 0);
}

__global__ void seg_count(const int64_t* __restrict__ off, int64_t S, int64_t D, int64_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= S * D) return;
  const int64_t s = i / D;
  out[i] = off[s + 1] - off[s];
}

template <class L, int OP>
void launch_op(const void* x, const int64_t* off, int64_t D, int64_t S, void* out, cudaStream_t st) {
  using In = typename L::In;
  using Acc = typename L::Acc;
  if (D == 1) {
    const int64_t threads = S * 32;
    const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
    seg_reduce_1d<L, OP><<<blocks, 256, 0, st>>>(static_cast<const In*>(x), off, S, static_cast<Acc*>(out));
  } else {
    dim3 grid(static_cast<unsigned>(S), static_cast<unsigned>((D + 31) / 32));
    seg_reduce_2d<L, OP><<<grid, dim3(32, 8), 0, st>>>(static_cast<const In*>(x), off, D, static_cast<Acc*>(out));
  }
}

template <class L>
void launch(SegmentOp op, const void* x, const int64_t* off, int64_t D, int64_t S, void* out, cudaStream_t st) {
  switch (op) {
    case SegmentOp::kSum: launch_op<L, kSum>(x, off, D, S, out, st); break;
    case SegmentOp::kMean: launch_op<L, kMean>(x, off, D, S, out, st); break;
    case SegmentOp::kMax: launch_op<L, kMax>(x, off, D, S, out, st); break;
    case SegmentOp::kMin: launch_op<L, kMin>(x, off, D, S, out, st); break;
    case SegmentOp::kLogMeanExp: launch_op<L, kLogMeanExp>(x, off, D, S, out, st); break;
    case SegmentOp::kCount: break;  // computed from the offsets by seg_count
  }
}

// values: device pointer to [N, D] (dtype: thresher::abi::DType); offsets: [S+1] int64;
// op: thresher::abi::SegmentOp; out: [S, D] float32 (float64 for f64, int64 for count);
// stream: cudaStream_t as an int.
void segment_reduce(uintptr_t values, int dtype_code, uintptr_t offsets, int64_t n, int64_t d, int64_t s, int op_code,
                    uintptr_t out, uintptr_t stream) {
  namespace tc = thresher::cuda;
  const SegmentOp op = thresher::abi::to_enum<SegmentOp>(op_code, "op");
  const DType dtype = thresher::abi::to_enum<DType>(dtype_code, "values: dtype");
  tc::check_arg(n >= 0 && d >= 0 && s >= 0, "values: negative shape");
  if (s == 0 || d == 0) return;
  tc::check_arg(s <= 0x7fffffffLL, "offsets: more than 2**31 - 1 segments");
  tc::check_arg((d + 31) / 32 <= 65535, "values: D too large for the CUDA kernel (> 2097120)");
  cudaStream_t st = tc::stream(stream);
  const int64_t* off = tc::device_ptr<const int64_t>(offsets);
  const void* x = tc::device_ptr<const void>(values);
  void* o = tc::device_ptr<void>(out);
  if (op == SegmentOp::kCount) {
    const int64_t tot = s * d;
    seg_count<<<static_cast<unsigned>((tot + 255) / 256), 256, 0, st>>>(off, s, d, static_cast<int64_t*>(o));
  } else {
    switch (dtype) {
      case DType::kFloat32: launch<LF32>(op, x, off, d, s, o, st); break;
      case DType::kFloat64: launch<LF64>(op, x, off, d, s, o, st); break;
      case DType::kFloat16: launch<LF16>(op, x, off, d, s, o, st); break;
      case DType::kBFloat16: launch<LBF16>(op, x, off, d, s, o, st); break;
    }
  }
  tc::check_launch("segment_reduce");
}

}  // namespace

THRESHER_REGISTER(segment_reduce) {
  m.def("segment_reduce", &segment_reduce, pybind11::arg("values"), pybind11::arg("dtype"), pybind11::arg("offsets"),
        pybind11::arg("n"), pybind11::arg("d"), pybind11::arg("s"), pybind11::arg("op"), pybind11::arg("out"),
        pybind11::arg("stream"), "Ragged per-segment reduction on device pointers (see thresher/ops/segment.py).");
}
