// topk (CUDA): indices of the k best scores (ties by lower index, NaN last),
// entirely on the device and stream, without host synchronisation.
// Algorithm: each score maps to an unsigned order key (IEEE bits made monotone:
// flip all bits of negatives, set the sign bit of positives; -0 -> +0; inverted
// for largest=False; NaN -> 0, the worst). An MSD radix select with 8-bit
// digits (4 passes for 32-bit keys, 8 for float64) finds the exact key T of the
// k-th best: each pass builds a 256-bin histogram of the keys that match the
// prefix found so far (shared-memory atomics per block, then one global atomic
// per bin) and a one-thread kernel picks the digit by a suffix scan, keeping
// prefix/need in a small device state buffer. A count kernel gives per-block
// numbers of keys > T and == T (__syncthreads_count), a one-block-per-array
// kernel turns them into exclusive prefix sums, and the compaction kernel
// writes (ballot/popc ranks inside a warp, scanned warp totals inside a block)
// all indices with key > T followed by the first `need` with key == T, in
// index order. Python then orders the k winners by a stable sort of their keys.
// Work O(N) per pass (passes + 2 reads of the input) + O(N / 1024) for the scan.
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
constexpr int kCompactBlock = thresher::abi::kTopkCompactBlock;  // 32 full warps: count and compaction kernels
constexpr int kRadixBins = thresher::abi::kTopkRadixBins;
static_assert(kCompactBlock == 1024, "count_kernel/compact_kernel/exclusive_scan assume 1024 threads");
static_assert(kRadixBins == 256, "8-bit digits");

template <class U>
__device__ __forceinline__ U order_key(U u, U inf, bool largest) {
  const U sign = U(U(1) << (sizeof(U) * 8 - 1));
  const U a = U(u & U(sign - 1));
  if (a > inf) return U(0);
  if (a == 0) u = U(0);
  const U k = (u & sign) ? U(~u) : U(u | sign);
  return largest ? k : U(~k);
}

// Key of element i for dtype DT (a thresher::abi::DType code); f16/bf16 widen exactly to f32.
constexpr int kF32 = thresher::abi::code(DType::kFloat32);
constexpr int kF64 = thresher::abi::code(DType::kFloat64);
constexpr int kF16 = thresher::abi::code(DType::kFloat16);
constexpr int kBF16 = thresher::abi::code(DType::kBFloat16);
template <int DT>
struct KeyOf {
  using U = uint32_t;
  static __device__ __forceinline__ U get(const void* x, int64_t i, bool largest) {
    float f;
    if (DT == kF16)
      f = __half2float(static_cast<const __half*>(x)[i]);
    else if (DT == kBF16)
      f = __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
    else
      f = static_cast<const float*>(x)[i];
    return order_key<uint32_t>(static_cast<uint32_t>(__float_as_uint(f)), 0x7f800000u, largest);
  }
};
template <>
struct KeyOf<kF64> {
  using U = uint64_t;
  static __device__ __forceinline__ U get(const void* x, int64_t i, bool largest) {
    const uint64_t u = static_cast<const uint64_t*>(x)[i];
    return order_key<uint64_t>(u, 0x7ff0000000000000ull, largest);
  }
};

// state: [0] prefix bits, [1] prefix mask, [2] need (remaining count at the threshold), [3] k
__global__ void init_state(long long* state, long long k) {
  state[0] = 0;
  state[1] = 0;
  state[2] = k;
  state[3] = k;
}

template <int DT>
__global__ void hist_kernel(const void* __restrict__ x, int64_t n, bool largest, const long long* __restrict__ state,
                            int shift, unsigned long long* __restrict__ hist) {
  using U = typename KeyOf<DT>::U;
  __shared__ unsigned int sh[kRadixBins];
  for (int t = threadIdx.x; t < kRadixBins; t += blockDim.x) sh[t] = 0;
  __syncthreads();
  const U prefix = static_cast<U>(state[0]);
  const U pmask = static_cast<U>(state[1]);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const U key = KeyOf<DT>::get(x, i, largest);
    if ((key & pmask) == prefix) atomicAdd(&sh[static_cast<unsigned>((key >> shift) & U(255))], 1u);
  }
  __syncthreads();
  for (int t = threadIdx.x; t < kRadixBins; t += blockDim.x)
    if (sh[t]) atomicAdd(&hist[t], static_cast<unsigned long long>(sh[t]));
}

__global__ void select_digit(const unsigned long long* __restrict__ hist, long long* state, int shift) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const long long need = state[2];
  long long cum = 0;
  int digit = 0;
  for (int d = 255; d >= 0; --d) {
    const long long h = static_cast<long long>(hist[d]);
    if (cum + h >= need) {
      digit = d;
      break;
    }
    cum += h;
  }
  state[2] = need - cum;
  state[0] = static_cast<long long>(static_cast<unsigned long long>(state[0]) |
                                    (static_cast<unsigned long long>(digit) << shift));
  state[1] = static_cast<long long>(static_cast<unsigned long long>(state[1]) | (0xFFull << shift));
}

template <int DT>
__global__ void count_kernel(const void* __restrict__ x, int64_t n, bool largest, const long long* __restrict__ state,
                             long long* __restrict__ counts, int64_t nblocks) {
  using U = typename KeyOf<DT>::U;
  const U thr = static_cast<U>(state[0]);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kCompactBlock + threadIdx.x;
  U key = 0;
  const bool valid = i < n;
  if (valid) key = KeyOf<DT>::get(x, i, largest);
  const int gt = __syncthreads_count(valid && key > thr);
  const int eq = __syncthreads_count(valid && key == thr);
  if (threadIdx.x == 0) {
    counts[blockIdx.x] = gt;
    counts[nblocks + blockIdx.x] = eq;
  }
}

// In-place exclusive prefix sum of a[blockIdx.x * len : (blockIdx.x + 1) * len]; 1024 threads.
__global__ void exclusive_scan(long long* a, int64_t len) {
  __shared__ long long sh[1024];
  long long* arr = a + static_cast<int64_t>(blockIdx.x) * len;
  const int t = threadIdx.x;
  const int64_t chunk = (len + 1023) / 1024;
  const int64_t lo = t * chunk;
  const int64_t hi = lo + chunk < len ? lo + chunk : len;
  long long s = 0;
  for (int64_t i = lo; i < hi; ++i) s += arr[i];
  sh[t] = s;
  __syncthreads();
  for (int off = 1; off < 1024; off <<= 1) {
    const long long v = t >= off ? sh[t - off] : 0;
    __syncthreads();
    sh[t] += v;
    __syncthreads();
  }
  long long run = sh[t] - s;
  for (int64_t i = lo; i < hi; ++i) {
    const long long v = arr[i];
    arr[i] = run;
    run += v;
  }
}

template <int DT>
__global__ void compact_kernel(const void* __restrict__ x, int64_t n, bool largest, const long long* __restrict__ state,
                               const long long* __restrict__ base, int64_t nblocks,
                               typename KeyOf<DT>::U* __restrict__ out_key, int64_t* __restrict__ out_idx) {
  using U = typename KeyOf<DT>::U;
  __shared__ int wg[32];
  __shared__ int we[32];
  const U thr = static_cast<U>(state[0]);
  const long long need = state[2];
  const long long n_gt = state[3] - need;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kCompactBlock + threadIdx.x;
  const bool valid = i < n;
  U key = 0;
  if (valid) key = KeyOf<DT>::get(x, i, largest);
  const bool gt = valid && key > thr;
  const bool eq = valid && key == thr;
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned bg = __ballot_sync(0xffffffffu, gt);
  const unsigned be = __ballot_sync(0xffffffffu, eq);
  const unsigned lt = (1u << lane) - 1u;
  const int rg = __popc(bg & lt), re = __popc(be & lt);
  if (lane == 0) {
    wg[warp] = __popc(bg);
    we[warp] = __popc(be);
  }
  __syncthreads();
  if (warp == 0) {
    int vg = wg[lane], ve = we[lane];
    int ig = vg, ie = ve;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int ug = __shfl_up_sync(0xffffffffu, ig, o);
      const int ue = __shfl_up_sync(0xffffffffu, ie, o);
      if (static_cast<int>(lane) >= o) {
        ig += ug;
        ie += ue;
      }
    }
    wg[lane] = ig - vg;  // exclusive
    we[lane] = ie - ve;
  }
  __syncthreads();
  if (gt) {
    const long long p = base[blockIdx.x] + wg[warp] + rg;
    out_idx[p] = i;
    out_key[p] = key;
  }
  if (eq) {
    const long long r = base[nblocks + blockIdx.x] + we[warp] + re;
    if (r < need) {
      out_idx[n_gt + r] = i;
      out_key[n_gt + r] = key;
    }
  }
}

template <int DT>
void run(const void* x, int64_t n, int64_t k, bool largest, void* keys, int64_t* idx, unsigned long long* hist,
         long long* state, long long* counts, int64_t nblocks, cudaStream_t st) {
  using U = typename KeyOf<DT>::U;
  constexpr int kBits = sizeof(U) * 8;
  init_state<<<1, 1, 0, st>>>(state, k);
  int hblocks = static_cast<int>((n + 1023) / 1024);
  if (hblocks > 4096) hblocks = 4096;
  if (hblocks < 1) hblocks = 1;
  for (int shift = kBits - 8; shift >= 0; shift -= 8) {
    thresher::cuda::check(cudaMemsetAsync(hist, 0, kRadixBins * sizeof(unsigned long long), st), "topk: memset");
    hist_kernel<DT><<<hblocks, 256, 0, st>>>(x, n, largest, state, shift, hist);
    select_digit<<<1, 1, 0, st>>>(hist, state, shift);
  }
  const unsigned g = static_cast<unsigned>(nblocks);
  count_kernel<DT><<<g, kCompactBlock, 0, st>>>(x, n, largest, state, counts, nblocks);
  exclusive_scan<<<2, 1024, 0, st>>>(counts, nblocks);
  compact_kernel<DT><<<g, kCompactBlock, 0, st>>>(x, n, largest, state, counts, nblocks, static_cast<U*>(keys), idx);
}

// scores: device pointer [N] (dtype: thresher::abi::DType); 1 <= k <= N.
// keys: [k] int32 (int64 for f64) order keys out; idx: [k] int64 out (unordered: the caller sorts by key);
// hist: [kTopkRadixBins] int64 scratch; state: [kTopkStateWords] int64 scratch; counts: [2 * nblocks] int64
// scratch; nblocks = ceil(N / kTopkCompactBlock); stream: cudaStream_t as an int.
void topk(uintptr_t scores, int dtype_code, int64_t n, int64_t k, bool largest, uintptr_t keys, uintptr_t idx,
          uintptr_t hist, uintptr_t state, uintptr_t counts, int64_t nblocks, uintptr_t stream) {
  namespace tc = thresher::cuda;
  const DType dtype = thresher::abi::to_enum<DType>(dtype_code, "scores: dtype");
  tc::check_arg(n >= 0, "scores: negative length");
  tc::check_arg(k >= 0 && k <= n, "k: must be in [0, N]");
  if (k == 0) return;
  tc::check_arg(nblocks == (n + kCompactBlock - 1) / kCompactBlock, "nblocks: must be ceil(N / 1024)");
  tc::check_arg(nblocks <= 0x7fffffffLL, "scores: too long for the CUDA kernel");
  cudaStream_t st = tc::stream(stream);
  const void* x = tc::device_ptr<const void>(scores);
  void* kp = tc::device_ptr<void>(keys);
  int64_t* ip = tc::device_ptr<int64_t>(idx);
  auto* hp = tc::device_ptr<unsigned long long>(hist);
  auto* sp = tc::device_ptr<long long>(state);
  auto* cp = tc::device_ptr<long long>(counts);
  switch (dtype) {
    case DType::kFloat32: run<kF32>(x, n, k, largest, kp, ip, hp, sp, cp, nblocks, st); break;
    case DType::kFloat64: run<kF64>(x, n, k, largest, kp, ip, hp, sp, cp, nblocks, st); break;
    case DType::kFloat16: run<kF16>(x, n, k, largest, kp, ip, hp, sp, cp, nblocks, st); break;
    case DType::kBFloat16: run<kBF16>(x, n, k, largest, kp, ip, hp, sp, cp, nblocks, st); break;
  }
  tc::check_launch("topk");
}

}  // namespace

THRESHER_REGISTER(topk) {
  m.def("topk", &topk, pybind11::arg("scores"), pybind11::arg("dtype"), pybind11::arg("n"), pybind11::arg("k"),
        pybind11::arg("largest"), pybind11::arg("keys"), pybind11::arg("idx"), pybind11::arg("hist"),
        pybind11::arg("state"), pybind11::arg("counts"), pybind11::arg("nblocks"), pybind11::arg("stream"),
        "Unordered top-k indices and order keys on device pointers (see thresher/ops/topk.py).");
}
