// Counter-based random numbers for thresher's random projections.
//
// Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers: as easy as
// 1, 2, 3"): a keyed bijection of a 128-bit counter, 10 rounds of two 32x32->64
// multiplications, key bumped by the Weyl constants between rounds. Every
// random projection matrix entry P[row, col] is a pure function of
// (seed, row, col), so the matrix is bit-identical on the CPU, on every GPU and
// for every tiling, batch size or chunking. The same function is implemented in
// python/thresher/ops/projection.py (torch, int64 emulation: the reference),
// kernels/projection.py (Triton) and here (C++ and CUDA, via THRESHER_HD).
//
// Layout of the projection matrix P[D_total, dim] (scaled by 1/sqrt(dim)):
//   key     = (seed & 0xffffffff, seed >> 32)
//   * rademacher: counter = (row & 0xffffffff, row >> 32, col / 128, 0x52414430 "RAD0")
//     gives 4 words w[0..3] = 128 sign bits for columns 128*(col/128) + 0..127;
//     column c uses bit (c % 32) of word (c % 128) / 32; bit 1 means -1.
//   * gaussian:   counter = (row & 0xffffffff, row >> 32, col / 4, 0x47415530 "GAU0")
//     gives 4 words; Box-Muller on (w0, w1) -> columns 4g, 4g+1 and on (w2, w3)
//     -> columns 4g+2, 4g+3 (u1 = ((w >> 8) + 1) * 2^-24 in (0, 1],
//     u2 = (w >> 8) * 2^-24; z0 = r cos(2 pi u2), z1 = r sin(2 pi u2),
//     r = sqrt(-2 ln u1)). Signs are bitwise identical everywhere; Gaussian
//     values agree to libm precision (a few ulp), not bitwise.
// Cost: one Philox call per 128 Rademacher entries (per 4 Gaussian entries).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define THRESHER_HD __host__ __device__ __forceinline__
#else
#define THRESHER_HD inline
#endif

namespace thresher {
namespace philox {

constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr uint32_t kStreamRademacher = 0x52414430u;  // "RAD0"
constexpr uint32_t kStreamGaussian = 0x47415530u;    // "GAU0"
constexpr int kRademacherBlock = 128;                // columns per Philox call
constexpr int kGaussianBlock = 4;

struct Words {
  uint32_t w[4];
};

THRESHER_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
THRESHER_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kRoundA, c0, hi0, lo0);
    mulhilo(kRoundB, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0;
    uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return Words{{c0, c1, c2, c3}};
}

// The 128 sign bits of row `row`, columns [128*block, 128*block + 128).
THRESHER_HD Words rademacher_words(uint64_t seed, uint64_t row, uint32_t block) {
  return philox4x32_10(static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32), block, kStreamRademacher,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The 4 raw words for Gaussian columns [4*group, 4*group + 4) of row `row`.
THRESHER_HD Words gaussian_words(uint64_t seed, uint64_t row, uint32_t group) {
  return philox4x32_10(static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32), group, kStreamGaussian,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

}  // namespace philox
}  // namespace thresher
