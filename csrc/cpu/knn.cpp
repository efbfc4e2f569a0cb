// Exact k-nearest-neighbour search on the CPU: blocked GEMM tiles of
// queries x base fused with a running per-query top-k.
//
// Algorithm. The base (N x d) is packed once into panels of NR=32 rows stored
// dimension-major (panel[p][j] = base[j0 + j][p]); queries are packed in strips
// of MR=8 rows, also dimension-major. Queries are processed in blocks of QB
// rows at most (L3-resident) handed to OpenMP threads dynamically; for each
// block the base is walked in tiles of TN rows (L2-resident) and every strip of
// the block is run against the tile. With fewer query strips than 4 x threads,
// each thread instead takes a slice of the base for all queries (private top-k
// arrays, merged at the end). The computation has no barrier inside.
// A register micro-kernel computes an 8 x 32 block of inner products
// (16 vector accumulators, one rank-1 update per dimension: 2 vector loads and
// 8 broadcasts), turns it into a score (ip: q.b; l2: 2 q.b - |b|^2, larger is
// nearer) and merges it into each query's running top-k: a block-wide count of
// scores above the current k-th best skips almost every block without a
// branch per element; survivors are inserted into a sorted array (score
// descending, index ascending on ties). Because the base is scanned in
// increasing index order and a candidate must be strictly better than the k-th
// best, ties resolve to the lower index deterministically. Self matches
// (query_offset + i == j) are skipped when exclude_self is set.
// Complexity: O(Q N d) multiply-adds (the GEMM floor) + O(Q N) comparisons
// + O(Q k log(N/k) k) insertions in expectation; memory O(N d + Q d) for the
// packed copies + O(Q k) for the results; nothing of size Q x N exists.
// The micro-kernel is compiled for AVX-512, AVX2 and a portable default, chosen
// at load time (GCC target_clones).
#include <thresher/abi_bind.h>
#include <thresher/common.h>
#include <thresher/registry.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {
namespace py = pybind11;

constexpr int MR = 8;   // queries per strip (broadcast operand)
constexpr int NR = 32;  // base rows per panel (two 16-float vectors)

typedef float v16 __attribute__((vector_size(64)));

// Inserts (s, j) into vals/idx (length k, sorted by score descending, ties by
// index ascending). Precondition: s > vals[k-1] and j is larger than every
// index already present, so equal scores stay in front of it.
inline void topk_insert(float* vals, int64_t* idx, int k, float s, int64_t j) {
  int pos = k - 1;
  while (pos > 0 && vals[pos - 1] < s) {
    vals[pos] = vals[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  vals[pos] = s;
  idx[pos] = j;
}

// Merges one row of n scores (columns col0 .. col0+n-1) into a running top-k.
inline void merge_row(const float* s, int n, int64_t col0, int64_t self, float* vals, int64_t* idx, int k) {
  float thr = vals[k - 1];
  int above = 0;
  for (int j = 0; j < n; ++j) above += s[j] > thr;  // vectorises: no branch
  if (!above) return;
  for (int j = 0; j < n; ++j) {
    if (s[j] > thr) {
      if (col0 + j == self) continue;
      topk_insert(vals, idx, k, s[j], col0 + j);
      thr = vals[k - 1];
    }
  }
}

// One strip of MR packed queries (ap: d x MR) against np packed base panels
// (bp: np x d x NR); writes MR x (np*NR) inner products into c (row stride ldc).
__attribute__((target_clones("avx512f", "avx2", "default"))) void strip_kernel(const float* __restrict ap,
                                                                               const float* __restrict bp, int d,
                                                                               int np, float* __restrict c, int ldc) {
  for (int q = 0; q < np; ++q) {
    const float* b = bp + (size_t)q * d * NR;
    v16 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
    v16 c40 = {}, c41 = {}, c50 = {}, c51 = {}, c60 = {}, c61 = {}, c70 = {}, c71 = {};
    // clang-format off: one line per query row of the 8 x 32 register block
    for (int p = 0; p < d; ++p) {
      v16 b0, b1;
      std::memcpy(&b0, b + (size_t)p * NR, 64);
      std::memcpy(&b1, b + (size_t)p * NR + 16, 64);
      const float* a = ap + (size_t)p * MR;
      c00 += a[0] * b0; c01 += a[0] * b1;
      c10 += a[1] * b0; c11 += a[1] * b1;
      c20 += a[2] * b0; c21 += a[2] * b1;
      c30 += a[3] * b0; c31 += a[3] * b1;
      c40 += a[4] * b0; c41 += a[4] * b1;
      c50 += a[5] * b0; c51 += a[5] * b1;
      c60 += a[6] * b0; c61 += a[6] * b1;
      c70 += a[7] * b0; c71 += a[7] * b1;
    }
    float* o = c + (size_t)q * NR;
#define THRESHER_KNN_ST(i)                                   \
  std::memcpy(o + (size_t)(i)*ldc, &c##i##0, 64);            \
  std::memcpy(o + (size_t)(i)*ldc + 16, &c##i##1, 64);
    THRESHER_KNN_ST(0) THRESHER_KNN_ST(1) THRESHER_KNN_ST(2) THRESHER_KNN_ST(3)
    THRESHER_KNN_ST(4) THRESHER_KNN_ST(5) THRESHER_KNN_ST(6) THRESHER_KNN_ST(7)
#undef THRESHER_KNN_ST
    // clang-format on
  }
}

// queries: float32 [Q, d]; base: float32 [N, d]; returns (scores [Q, k] float32,
// idx [Q, k] int64). metric: a thresher::abi::KnnMetric code. For l2 the
// returned value is the squared distance (ascending); for ip the inner
// product (descending).
py::tuple knn_exact(py::array queries_a, py::array base_a, int64_t k, int metric_code, bool exclude_self,
                    int64_t query_offset, int64_t tile_n, int64_t block_q) {
  using thresher::check;
  using thresher::abi::KnnMetric;
  const bool l2 = thresher::abi::to_enum<KnnMetric>(metric_code, "metric") == KnnMetric::kL2;
  const float* Qp = thresher::cptr<float>(queries_a, "queries", 2);
  const float* Bp = thresher::cptr<float>(base_a, "base", 2);
  const int64_t Q = queries_a.shape(0), d = queries_a.shape(1);
  const int64_t N = base_a.shape(0);
  check(base_a.shape(1) == d,
        "base: dimension " + std::to_string(base_a.shape(1)) + " != queries dimension " + std::to_string(d));
  check(k >= 0, "k: must be >= 0");
  const int64_t avail = N - (exclude_self ? 1 : 0);
  check(k <= std::max<int64_t>(avail, 0),
        "k: " + std::to_string(k) + " > number of candidates " + std::to_string(std::max<int64_t>(avail, 0)));
  check(d <= (1 << 30), "queries: dimension too large");
  check(tile_n >= NR && tile_n % NR == 0, "tile_n: must be a positive multiple of 32");
  check(block_q >= MR && block_q % MR == 0, "block_q: must be a positive multiple of 8");
  if (exclude_self) check(query_offset >= 0, "query_offset: must be >= 0");

  py::array_t<float> out_v({Q, k});
  py::array_t<int64_t> out_i({Q, k});
  float* ov = out_v.mutable_data();
  int64_t* oi = out_i.mutable_data();
  if (Q == 0 || k == 0) return py::make_tuple(out_v, out_i);

  {
    py::gil_scoped_release nogil;
    const float NEG = -std::numeric_limits<float>::infinity();
    std::fill(ov, ov + Q * k, NEG);
    std::fill(oi, oi + Q * k, (int64_t)-1);

    // Pack the base into panels of NR rows, dimension-major, zero padded.
    const int64_t npan = (N + NR - 1) / NR;
    std::vector<float> bpack((size_t)npan * d * NR, 0.0f);
    std::vector<float> bnorm((size_t)npan * NR, 0.0f);
#pragma omp parallel for schedule(static)
    for (int64_t pn = 0; pn < npan; ++pn) {
      float* dst = bpack.data() + (size_t)pn * d * NR;
      for (int j = 0; j < NR; ++j) {
        int64_t r = pn * NR + j;
        if (r >= N) break;
        const float* src = Bp + (size_t)r * d;
        double nn = 0;
        for (int64_t p = 0; p < d; ++p) {
          dst[(size_t)p * NR + j] = src[p];
          nn += (double)src[p] * src[p];
        }
        bnorm[(size_t)r] = (float)nn;
      }
    }
    // Pack the queries into strips of MR rows, dimension-major, zero padded.
    const int64_t nstrip = (Q + MR - 1) / MR;
    std::vector<float> qpack((size_t)nstrip * d * MR, 0.0f);
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < nstrip; ++s) {
      float* dst = qpack.data() + (size_t)s * d * MR;
      for (int i = 0; i < MR; ++i) {
        int64_t r = s * MR + i;
        if (r >= Q) break;
        const float* src = Qp + (size_t)r * d;
        for (int64_t p = 0; p < d; ++p) dst[(size_t)p * MR + i] = src[p];
      }
    }

    const int64_t pan_per_tile = tile_n / NR;
    const int ldc = (int)(pan_per_tile * NR);
    const int nt = thresher::max_threads();
    // One strip (MR queries) against panels [pa, pb): tiles of pan_per_tile panels,
    // merged into the running top-k arrays V/I (row stride k, row r at r*k).
    auto run_strip_range = [&](int64_t s, int64_t pa, int64_t pb, float* cbuf, float* V, int64_t* I) {
      for (int64_t p0 = pa; p0 < pb; p0 += pan_per_tile) {
        const int64_t np = std::min(pb, p0 + pan_per_tile) - p0;
        const int64_t col0 = p0 * NR;
        const int64_t ncols = std::min<int64_t>(N - col0, np * NR);
        strip_kernel(qpack.data() + (size_t)s * d * MR, bpack.data() + (size_t)p0 * d * NR, (int)d, (int)np, cbuf, ldc);
        for (int i = 0; i < MR; ++i) {
          const int64_t r = s * MR + i;
          if (r >= Q) break;
          float* row = cbuf + (size_t)i * ldc;
          if (l2) {
            const float* bn = bnorm.data() + col0;
            for (int64_t j = 0; j < ncols; ++j) row[j] = 2.0f * row[j] - bn[j];
          }
          merge_row(row, (int)ncols, col0, exclude_self ? query_offset + r : -1, V + r * k, I + r * k, (int)k);
        }
      }
    };
    // No barrier inside the computation (barriers cost milliseconds each on an
    // oversubscribed machine). Many queries: threads take blocks of query strips and
    // walk the whole base for them. Few queries: each thread takes a slice of the
    // base for all queries into private top-k arrays, merged at the end.
    const int64_t want_blocks = (int64_t)nt * 4;
    if (nt == 1 || nstrip >= want_blocks) {
      const int64_t spb =
          std::max<int64_t>(1, std::min<int64_t>(block_q / MR, (nstrip + want_blocks - 1) / want_blocks));
      const int64_t nblk = (nstrip + spb - 1) / spb;
      const int64_t tile_cols = pan_per_tile;
#pragma omp parallel
      {
        std::vector<float> cbuf((size_t)MR * ldc);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nblk; ++b) {
          const int64_t sb = b * spb, se = std::min(nstrip, sb + spb);
          for (int64_t p0 = 0; p0 < npan; p0 += tile_cols)  // base tile: L2-resident
            for (int64_t s = sb; s < se; ++s)               // every strip of the block
              run_strip_range(s, p0, std::min(npan, p0 + tile_cols), cbuf.data(), ov, oi);
        }
      }
    } else {
      std::vector<std::vector<float>> tv(nt);
      std::vector<std::vector<int64_t>> ti(nt);
#pragma omp parallel num_threads(nt)
      {
        int t = 0;
#ifdef THRESHER_HAVE_OPENMP
        t = omp_get_thread_num();
#endif
        const int64_t pa = npan * t / nt, pb = npan * (t + 1) / nt;
        tv[t].assign((size_t)Q * k, NEG);
        ti[t].assign((size_t)Q * k, (int64_t)-1);
        std::vector<float> cbuf((size_t)MR * ldc);
        for (int64_t p0 = pa; p0 < pb; p0 += pan_per_tile)
          for (int64_t s = 0; s < nstrip; ++s)
            run_strip_range(s, p0, std::min(pb, p0 + pan_per_tile), cbuf.data(), tv[t].data(), ti[t].data());
      }
      // merge the per-thread lists: order (score desc, index asc)
      std::vector<std::pair<float, int64_t>> cand((size_t)nt * k);
      for (int64_t r = 0; r < Q; ++r) {
        size_t c = 0;
        for (int t = 0; t < nt; ++t)
          for (int64_t j = 0; j < k; ++j)
            if (ti[t][r * k + j] >= 0) cand[c++] = {tv[t][r * k + j], ti[t][r * k + j]};
        const size_t m = std::min<size_t>(c, (size_t)k);
        std::partial_sort(cand.begin(), cand.begin() + m, cand.begin() + c,
                          [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
                            return a.first > b.first || (a.first == b.first && a.second < b.second);
                          });
        for (size_t j = 0; j < m; ++j) {
          ov[r * k + j] = cand[j].first;
          oi[r * k + j] = cand[j].second;
        }
      }
    }
    if (l2) {
      // squared distance = |q|^2 - (2 q.b - |b|^2), clamped at 0
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < Q; ++r) {
        double qn = 0;
        const float* src = Qp + (size_t)r * d;
        for (int64_t p = 0; p < d; ++p) qn += (double)src[p] * src[p];
        for (int64_t j = 0; j < k; ++j) ov[r * k + j] = std::max(0.0f, (float)qn - ov[r * k + j]);
      }
    }
  }
  return py::make_tuple(out_v, out_i);
}

// Merges a precomputed score tile (scores [T, n], larger is nearer) into running
// top-k arrays vals/idx ([T, k], sorted, updated in place). Columns are base
// indices col0 .. col0+n-1 and must come in increasing order across calls; row
// i is query row0 + i (for exclude_self). Used with an external GEMM (torch/BLAS).
void knn_merge_tile(py::array scores_a, int64_t col0, int64_t row0, bool exclude_self, py::array vals_a,
                    py::array idx_a) {
  using thresher::check;
  const float* S = thresher::cptr<float>(scores_a, "scores", 2);
  float* V = const_cast<float*>(thresher::cptr<float>(vals_a, "vals", 2));
  int64_t* I = const_cast<int64_t*>(thresher::cptr<int64_t>(idx_a, "idx", 2));
  check(vals_a.writeable() && idx_a.writeable(), "vals/idx: must be writeable");
  const int64_t T = scores_a.shape(0), n = scores_a.shape(1), k = vals_a.shape(1);
  check(vals_a.shape(0) == T && idx_a.shape(0) == T && idx_a.shape(1) == k,
        "vals/idx: shape must be [rows of scores, k]");
  check(n < (int64_t(1) << 31), "scores: too many columns in one tile");
  if (T == 0 || k == 0 || n == 0) return;
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < T; ++i)
    merge_row(S + i * n, (int)n, col0, exclude_self ? row0 + i : -1, V + i * k, I + i * k, (int)k);
}

}  // namespace

THRESHER_REGISTER(knn) {
  m.def("knn_exact", &knn_exact, py::arg("queries"), py::arg("base"), py::arg("k"), py::arg("metric"),
        py::arg("exclude_self"), py::arg("query_offset"), py::arg("tile_n") = 512, py::arg("block_q") = 2048,
        "Exact kNN: blocked GEMM + running top-k. Returns (values [Q,k], idx [Q,k]).");
  m.def("knn_merge_tile", &knn_merge_tile, py::arg("scores"), py::arg("col0"), py::arg("row0"), py::arg("exclude_self"),
        py::arg("vals"), py::arg("idx"), "Merge a score tile [T,n] into running top-k arrays (in place).");
}
