// CUDA kernel of the random projection op: out[B, dim] = x[B, D] @ P[row_offset:row_offset+D, :dim]
// with P (scaled by 1/sqrt(dim)) regenerated from Philox4x32-10 counters
// (thresher/philox.h), never stored.
//
// Algorithm: a block of 256 threads owns an output tile of 64 batch rows x 128
// columns and a contiguous range of D (split-K, `splits` ranges). Per step of
// 32 rows of D it stages the x tile (converted to fp32) and the [32, 128] P
// tile in shared memory: for Rademacher one Philox call per tile row gives
// its 128 sign bits (threads 0..31), for Gaussian one call per 4 entries with
// Box-Muller; each thread then accumulates a 4 x 8 register tile with fp32
// FMAs. Partial sums go to a workspace [splits, B, dim]; a second kernel sums
// them in a fixed order and scales, so results are deterministic (no atomics).
// Work O(B * D * dim) FMAs + O(D * dim / 128) Philox calls per batch tile;
// 64-bit indexing throughout. Tensor cores are the Triton backend's job.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <thresher/abi.h>
#include <thresher/cuda_check.cuh>
#include <thresher/philox.h>
#include <thresher/registry.h>

#include <cstdint>
#include <string>

namespace {
namespace ph = thresher::philox;
using thresher::abi::DType;
using thresher::abi::ProjectionKind;

constexpr int TB = 64;                    // batch rows per block
constexpr int TN = ph::kRademacherBlock;  // columns per block: one Philox call per tile row
constexpr int TK = 32;                    // rows of D per step
constexpr int THREADS = 256;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void projection_kernel(const T* __restrict__ x,  // [B, D], strides (sb, sd)
                                  float* __restrict__ ws,   // [splits, B, dim]
                                  int64_t B, int64_t D, int64_t sb, int64_t sd, int64_t dim, uint64_t seed,
                                  int64_t row_offset, ProjectionKind kind, int64_t k_per_split) {
  __shared__ float xs[TK][TB + 1];
  __shared__ float ps[TK][TN];
  __shared__ uint32_t words[TK][4];
  const int tid = threadIdx.x;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * TN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * TB;
  const int64_t k_start = static_cast<int64_t>(blockIdx.z) * k_per_split;
  const int64_t k_end = min(D, k_start + k_per_split);
  // thread tile: rows ty*4 .. +4 (16 groups), columns tx*8 .. +8 (16 groups)
  const int ty = tid / 16, tx = tid % 16;
  float acc[4][8];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  for (int64_t k0 = k_start; k0 < k_end; k0 += TK) {
    // stage x tile (transposed: xs[k][b])
    for (int e = tid; e < TB * TK; e += THREADS) {
      const int bb = e / TK, kk = e % TK;
      const int64_t b = b0 + bb, k = k0 + kk;
      xs[kk][bb] = (b < B && k < k_end) ? to_f(x[b * sb + k * sd]) : 0.f;
    }
    if (kind == ProjectionKind::kRademacher) {
      if (tid < TK) {
        const ph::Words w =
            ph::rademacher_words(seed, static_cast<uint64_t>(row_offset + k0 + tid), static_cast<uint32_t>(n0 / TN));
#pragma unroll
        for (int q = 0; q < 4; ++q) words[tid][q] = w.w[q];
      }
      __syncthreads();
      for (int e = tid; e < TK * TN; e += THREADS) {
        const int kk = e / TN, c = e % TN;
        const uint32_t bit = (words[kk][c / 32] >> (c % 32)) & 1u;
        ps[kk][c] = (k0 + kk < k_end) ? (bit ? -1.f : 1.f) : 0.f;
      }
    } else {
      for (int e = tid; e < TK * (TN / 4); e += THREADS) {
        const int kk = e / (TN / 4), g = e % (TN / 4);
        const ph::Words w =
            ph::gaussian_words(seed, static_cast<uint64_t>(row_offset + k0 + kk), static_cast<uint32_t>(n0 / 4 + g));
        float z[4];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float u1 = static_cast<float>((w.w[2 * h] >> 8) + 1u) * 5.9604644775390625e-08f;
          const float u2 = static_cast<float>(w.w[2 * h + 1] >> 8) * 5.9604644775390625e-08f;
          const float r = sqrtf(-2.0f * logf(u1));
          float s, c;
          sincosf(6.28318530717958647692f * u2, &s, &c);
          z[2 * h] = r * c;
          z[2 * h + 1] = r * s;
        }
        const bool ok = k0 + kk < k_end;
#pragma unroll
        for (int q = 0; q < 4; ++q) ps[kk][4 * g + q] = ok ? z[q] : 0.f;
      }
    }
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < TK; ++kk) {
      float xv[4], pv[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = xs[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 8; ++j) pv[j] = ps[kk][tx * 8 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(xv[i], pv[j], acc[i][j]);
    }
    __syncthreads();
  }
  float* w = ws + static_cast<int64_t>(blockIdx.z) * B * dim;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t b = b0 + ty * 4 + i;
    if (b >= B) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + tx * 8 + j;
      if (n < dim) w[b * dim + n] = acc[i][j];
    }
  }
}

// out[i] = scale * sum_s ws[s, i], summed in a fixed order.
__global__ void reduce_kernel(const float* __restrict__ ws, float* __restrict__ out, int64_t n, int splits,
                              float scale) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float s = 0.f;
  for (int k = 0; k < splits; ++k) s += ws[static_cast<int64_t>(k) * n + i];
  out[i] = s * scale;
}

// x: device pointer [B, D] with strides (sb, sd) (dtype: thresher::abi::DType, float64 excluded);
// ws: [splits, B, dim] fp32 scratch; out: [B, dim] fp32; kind: thresher::abi::ProjectionKind.
void projection(uintptr_t x, int dtype_code, int64_t B, int64_t D, int64_t sb, int64_t sd, uintptr_t ws, uintptr_t out,
                int64_t dim, uint64_t seed, int64_t row_offset, int kind_code, double scale, int splits,
                uintptr_t stream_handle) {
  namespace tc = thresher::cuda;
  const DType dtype = thresher::abi::to_enum<DType>(dtype_code, "x: dtype");
  const ProjectionKind kind = thresher::abi::to_enum<ProjectionKind>(kind_code, "kind");
  tc::check_arg(B >= 0 && D >= 0 && dim > 0 && dim % 8 == 0, "projection: bad shape");
  tc::check_arg(splits >= 1 && splits <= 65535, "splits: out of range");
  if (B == 0) return;
  cudaStream_t stream = tc::stream(stream_handle);
  int64_t kps = (D + splits - 1) / splits;
  kps = (kps + TK - 1) / TK * TK;
  if (kps == 0) kps = TK;
  const int64_t nb = (B + TB - 1) / TB;
  tc::check_arg(nb <= 65535, "x: batch too large for the CUDA backend (> 4M rows)");
  dim3 grid(static_cast<unsigned>((dim + TN - 1) / TN), static_cast<unsigned>(nb), static_cast<unsigned>(splits));
  float* wsp = tc::device_ptr<float>(ws);
  switch (dtype) {
    case DType::kFloat32:
      projection_kernel<float><<<grid, THREADS, 0, stream>>>(tc::device_ptr<const float>(x), wsp, B, D, sb, sd, dim,
                                                             seed, row_offset, kind, kps);
      break;
    case DType::kFloat16:
      projection_kernel<__half><<<grid, THREADS, 0, stream>>>(tc::device_ptr<const __half>(x), wsp, B, D, sb, sd, dim,
                                                              seed, row_offset, kind, kps);
      break;
    case DType::kBFloat16:
      projection_kernel<__nv_bfloat16><<<grid, THREADS, 0, stream>>>(tc::device_ptr<const __nv_bfloat16>(x), wsp, B, D,
                                                                     sb, sd, dim, seed, row_offset, kind, kps);
      break;
    case DType::kFloat64:
      throw std::invalid_argument("x: float64 is not supported by the CUDA projection (float32, float16, bfloat16)");
  }
  const int64_t n = B * dim;
  reduce_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(wsp, tc::device_ptr<float>(out), n, splits,
                                                                            static_cast<float>(scale));
  tc::check_launch("projection");
}

}  // namespace

THRESHER_REGISTER(projection) {
  m.def("projection", &projection, "x@P with P from Philox counters (raw device pointers)");
}
