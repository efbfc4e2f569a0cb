// CPU kernel of the random projection op: generation of tiles of the implicit
// projection matrix P[D_total, dim] (thresher/philox.h gives the layout).
//
// Algorithm: tile[i, j] = scale * P[row0 + i, col0 + j] for a [K, N] tile.
// Rademacher entries cost one Philox4x32-10 call per 128 entries, then a
// branch-free sign-bit expansion (XOR of the sign bit into the bits of +scale)
// that the compiler vectorises (AVX2/AVX-512 clones chosen at run time);
// Gaussian entries cost one Philox call and two Box-Muller transforms per 4
// entries. Rows are split across `threads` OpenMP threads (default 1). O(K * N) time, no extra
// memory. The caller (python/thresher/ops/projection.py, cpu backend)
// generates each tile once and multiplies the whole batch with it through a
// BLAS GEMM (torch.addmm on numpy-shared buffers), so generation is amortised
// over the batch: total O(D * dim) generation + O(B * D * dim) GEMM flops.
#include <thresher/abi_bind.h>
#include <thresher/common.h>
#include <thresher/philox.h>
#include <thresher/registry.h>

#include <cmath>
#include <cstring>

namespace {
namespace ph = thresher::philox;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define THRESHER_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define THRESHER_CLONES
#endif

// out[0..127] = +-scale from the 128 sign bits in w (bit set -> negative).
THRESHER_CLONES
void expand_signs(const ph::Words& w, uint32_t scale_bits, float* out) {
  uint32_t tmp[128];
  for (int q = 0; q < 4; ++q) {
    const uint32_t word = w.w[q];
    for (int j = 0; j < 32; ++j) tmp[q * 32 + j] = scale_bits ^ ((word << (31 - j)) & 0x80000000u);
  }
  std::memcpy(out, tmp, sizeof(tmp));
}

inline void box_muller(uint32_t a, uint32_t b, float& z0, float& z1) {
  const float u1 = static_cast<float>((a >> 8) + 1u) * 5.9604644775390625e-08f;  // (0, 1]
  const float u2 = static_cast<float>(b >> 8) * 5.9604644775390625e-08f;         // [0, 1)
  const float r = std::sqrt(-2.0f * std::log(u1));
  const float t = 6.28318530717958647692f * u2;
  z0 = r * std::cos(t);
  z1 = r * std::sin(t);
}

// tile: float32 [K, N] C-contiguous, written in place.
void projection_tile(pybind11::array tile, uint64_t seed, int64_t row0, int64_t col0, int kind_code, double scale,
                     int threads) {
  using thresher::abi::ProjectionKind;
  const ProjectionKind kind = thresher::abi::to_enum<ProjectionKind>(kind_code, "kind");
  thresher::check(tile.ndim() == 2, "tile: expected a 2-d float32 array");
  float* out = static_cast<float*>(const_cast<void*>(static_cast<const void*>(thresher::cptr<float>(tile, "tile", 2))));
  thresher::check(tile.writeable(), "tile: must be writeable");
  thresher::check(row0 >= 0, "row0: must be >= 0");
  thresher::check(col0 >= 0, "col0: must be >= 0");
  const int64_t K = tile.shape(0), N = tile.shape(1);
  thresher::check(col0 + N <= (int64_t(1) << 32) * 4, "col0: column index out of range");
  const float s = static_cast<float>(scale);
  uint32_t sbits;
  std::memcpy(&sbits, &s, 4);
  sbits &= 0x7fffffffu;
  // threads <= 0: all OpenMP threads. The Python caller passes 1 by default: one
  // core generates ~4e9 signs/s, and waking a second OpenMP pool (torch has its
  // own) per tile costs milliseconds on a loaded machine.
  const int nthreads = threads > 0 ? threads : thresher::max_threads();
  (void)nthreads;
  {
    pybind11::gil_scoped_release nogil;
#ifdef THRESHER_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthreads) if (nthreads > 1 && K * N > 65536)
#endif
    for (int64_t i = 0; i < K; ++i) {
      const uint64_t row = static_cast<uint64_t>(row0 + i);
      float* o = out + i * N;
      if (kind == ProjectionKind::kRademacher) {
        alignas(64) float buf[128];
        int64_t j = 0;
        while (j < N) {
          const int64_t c = col0 + j;
          const uint32_t blk = static_cast<uint32_t>(c / 128);
          const int64_t off = c % 128;
          const int64_t take = std::min<int64_t>(128 - off, N - j);
          const ph::Words w = ph::rademacher_words(seed, row, blk);
          if (off == 0 && take == 128) {
            expand_signs(w, sbits, o + j);
          } else {
            expand_signs(w, sbits, buf);
            std::memcpy(o + j, buf + off, sizeof(float) * take);
          }
          j += take;
        }
      } else {
        float buf[4];
        int64_t j = 0;
        while (j < N) {
          const int64_t c = col0 + j;
          const uint32_t g = static_cast<uint32_t>(c / 4);
          const int64_t off = c % 4;
          const int64_t take = std::min<int64_t>(4 - off, N - j);
          const ph::Words w = ph::gaussian_words(seed, row, g);
          box_muller(w.w[0], w.w[1], buf[0], buf[1]);
          box_muller(w.w[2], w.w[3], buf[2], buf[3]);
          for (int64_t t = 0; t < take; ++t) o[j + t] = s * buf[off + t];
          j += take;
        }
      }
    }
  }
}

// Raw Philox words, for the tests: counters [n, 4] uint32, key (k0, k1) -> [n, 4].
pybind11::array_t<uint32_t> philox_words(pybind11::array counters, uint32_t k0, uint32_t k1) {
  const uint32_t* c = thresher::cptr<uint32_t>(counters, "counters", 2);
  thresher::check(counters.shape(1) == 4, "counters: expected shape [n, 4]");
  const int64_t n = counters.shape(0);
  pybind11::array_t<uint32_t> out({n, int64_t(4)});
  uint32_t* o = out.mutable_data();
  for (int64_t i = 0; i < n; ++i) {
    ph::Words w = ph::philox4x32_10(c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3], k0, k1);
    for (int q = 0; q < 4; ++q) o[4 * i + q] = w.w[q];
  }
  return out;
}

}  // namespace

THRESHER_REGISTER(projection) {
  m.def("projection_tile", &projection_tile, pybind11::arg("tile"), pybind11::arg("seed"), pybind11::arg("row0"),
        pybind11::arg("col0"), pybind11::arg("kind"), pybind11::arg("scale"), pybind11::arg("threads") = 1,
        "Fill tile[K, N] (float32) with scale * P[row0:row0+K, col0:col0+N] (kind: a ProjectionKind code)");
  m.def("philox4x32_10", &philox_words, pybind11::arg("counters"), pybind11::arg("k0"), pybind11::arg("k1"),
        "Philox4x32-10 of counters[n, 4] under key (k0, k1) -> [n, 4]");
}
