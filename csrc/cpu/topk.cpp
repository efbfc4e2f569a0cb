// topk (CPU): the k best of N scores, deterministic and NaN-aware.
// Algorithm: every score maps to an unsigned "order key" (IEEE bits made
// monotone: flip all bits of negatives, set the sign bit of positives; -0 is
// canonicalised to +0; inverted for largest=False; NaN -> 0, the worst key), so
// "better" is "larger key" and ties are equal keys. A most-significant-digit
// radix select (16-bit digits) finds the k-th key: pass 1 builds per-thread
// histograms of the top digit in parallel (OpenMP, contiguous chunks taken
// dynamically), the threshold digit is found by a suffix scan, and pass 2 writes
// the indices above the threshold and the candidates equal to it (per chunk,
// concatenated in index order). Further digits refine
// the (usually small) candidate list; when all bits are used, the remaining
// candidates have equal keys and the lowest indices win. The k winners are
// finally sorted by (key desc, index asc). Work O(N + 65536 * T + k log k),
// extra memory O(k + candidates + 65536 * T); two reads of the input.
// Arguments are validated in Python (thresher/ops/topk.py); this file
// re-checks shapes and raises ValueError, never crashes.
#include <thresher/abi_bind.h>
#include <thresher/common.h>
#include <thresher/registry.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace thresher {
namespace {

constexpr int kDigitBits = 16;

inline int thread_id() {
#ifdef THRESHER_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
constexpr int64_t kRadix = int64_t(1) << kDigitBits;

// Order key of raw IEEE bits u (abs > inf means NaN). Non-NaN keys are never 0.
template <class U>
inline U order_key(U u, U inf, bool largest) {
  constexpr U sign = U(U(1) << (sizeof(U) * 8 - 1));
  const U a = U(u & U(sign - 1));
  if (a > inf) return U(0);
  if (a == 0) u = U(0);
  const U k = (u & sign) ? U(~u) : U(u | sign);
  return largest ? k : U(~k);
}

template <class U>
struct Selector {
  const U* x;
  int64_t n;
  U inf;
  bool largest;
  inline U key(int64_t i) const { return order_key<U>(x[i], inf, largest); }
};

// First digit value b (scanning from the top) where cum + hist[b] >= need; cum = count above it.
inline int64_t find_threshold(const int64_t* tot, int64_t need, int64_t* above) {
  int64_t cum = 0;
  for (int64_t b = kRadix - 1; b >= 0; --b) {
    if (cum + tot[b] >= need) {
      *above = cum;
      return b;
    }
    cum += tot[b];
  }
  *above = cum;
  return 0;  // unreachable when need <= total
}

template <class U>
void topk_impl(const Selector<U>& s, int64_t k, int64_t* out) {
  constexpr int kBits = sizeof(U) * 8;
  const int64_t n = s.n;
  int T = n >= (int64_t(1) << 20) ? max_threads() : 1;  // threads pay off from ~1M scores
  if (T < 1) T = 1;
  const int shift0 = kBits - kDigitBits;
  // Many more chunks than threads, taken dynamically: a thread that the OS
  // deschedules (busy machine) does not hold the others up at the barrier.
  const int64_t nchunks = T == 1 ? 1 : std::min<int64_t>(int64_t(T) * 16, (n + 65535) / 65536);
  auto chunk_lo = [&](int64_t c) { return n * c / nchunks; };

  // ---- pass 1: per-thread histograms of the top digit
  std::vector<int64_t> hist(static_cast<size_t>(T) * kRadix, 0);
#pragma omp parallel num_threads(T) if (T > 1)
  {
    int64_t* h = hist.data() + static_cast<size_t>(thread_id()) * kRadix;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t lo = chunk_lo(c), hi = chunk_lo(c + 1);
      for (int64_t i = lo; i < hi; ++i) ++h[static_cast<int64_t>(s.key(i) >> shift0)];
    }
  }
  std::vector<int64_t> tot(kRadix, 0);
  for (int t = 0; t < T; ++t) {
    const int64_t* h = hist.data() + static_cast<size_t>(t) * kRadix;
    for (int64_t b = 0; b < kRadix; ++b) tot[b] += h[b];
  }
  int64_t above = 0;
  const int64_t bsel = find_threshold(tot.data(), k, &above);
  int64_t need = k - above;

  // ---- pass 2: indices above the threshold digit, and candidates equal to it,
  // per chunk, then concatenated in chunk (= index) order.
  std::vector<int64_t> sel(static_cast<size_t>(k));
  std::vector<int64_t> cand(static_cast<size_t>(tot[bsel]));
  if (nchunks == 1) {
    int64_t pa = 0, pc = 0;
    const U b = static_cast<U>(bsel);
    for (int64_t i = 0; i < n; ++i) {
      const U dig = static_cast<U>(s.key(i) >> shift0);
      if (dig > b)
        sel[pa++] = i;
      else if (dig == b)
        cand[pc++] = i;
    }
  } else {
    std::vector<std::vector<int64_t>> ca(static_cast<size_t>(nchunks)), ce(static_cast<size_t>(nchunks));
#pragma omp parallel for schedule(dynamic, 1) num_threads(T)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t lo = chunk_lo(c), hi = chunk_lo(c + 1);
      const U b = static_cast<U>(bsel);
      std::vector<int64_t>& va = ca[c];
      std::vector<int64_t>& ve = ce[c];
      for (int64_t i = lo; i < hi; ++i) {
        const U dig = static_cast<U>(s.key(i) >> shift0);
        if (dig > b)
          va.push_back(i);
        else if (dig == b)
          ve.push_back(i);
      }
    }
    int64_t pa = 0, pc = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      std::copy(ca[c].begin(), ca[c].end(), sel.begin() + pa);
      pa += static_cast<int64_t>(ca[c].size());
      std::copy(ce[c].begin(), ce[c].end(), cand.begin() + pc);
      pc += static_cast<int64_t>(ce[c].size());
    }
  }
  int64_t nsel = above;

  // ---- refine the candidates on the lower digits (serial; candidates stay in index order)
  int shift = shift0;
  std::vector<int64_t> h2, next;
  while (need < static_cast<int64_t>(cand.size()) && shift > 0) {
    shift -= kDigitBits;
    h2.assign(kRadix, 0);
    for (int64_t c : cand) ++h2[static_cast<int64_t>((s.key(c) >> shift) & U(kRadix - 1))];
    int64_t above2 = 0;
    const int64_t b2 = find_threshold(h2.data(), need, &above2);
    next.clear();
    next.reserve(static_cast<size_t>(h2[b2]));
    for (int64_t c : cand) {
      const int64_t dig = static_cast<int64_t>((s.key(c) >> shift) & U(kRadix - 1));
      if (dig > b2)
        sel[nsel++] = c;
      else if (dig == b2)
        next.push_back(c);
    }
    need -= above2;
    cand.swap(next);
  }
  // Equal keys: the lowest indices (cand is in index order) win.
  for (int64_t i = 0; i < need; ++i) sel[nsel++] = cand[i];

  // ---- order the winners by (key desc, index asc)
  if (kBits <= 32 && n <= (int64_t(1) << 32)) {
    std::vector<uint64_t> packed(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i)
      packed[i] = (static_cast<uint64_t>(s.key(sel[i])) << 32) | (0xffffffffull - static_cast<uint64_t>(sel[i]));
    std::sort(packed.begin(), packed.end(), [](uint64_t a, uint64_t b) { return a > b; });
    for (int64_t i = 0; i < k; ++i) out[i] = static_cast<int64_t>(0xffffffffull - (packed[i] & 0xffffffffull));
  } else {
    std::vector<std::pair<U, int64_t>> kv(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) kv[i] = {s.key(sel[i]), sel[i]};
    std::sort(kv.begin(), kv.end(), [](const std::pair<U, int64_t>& a, const std::pair<U, int64_t>& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (int64_t i = 0; i < k; ++i) out[i] = kv[i].second;
  }
}

template <class U, class S>
void run(py::array scores, int64_t k, bool largest, U inf, int64_t* out) {
  const U* x = reinterpret_cast<const U*>(cptr<S>(scores, "scores", 1));
  Selector<U> s{x, static_cast<int64_t>(scores.shape(0)), inf, largest};
  py::gil_scoped_release nogil;
  topk_impl<U>(s, k, out);
}

// scores: [N] raw IEEE bits (int32 for float32, int64 for float64, int16 for float16/bfloat16)
// dtype: thresher::abi::DType code; k in [0, N]; out: [k] int64 indices, best first.
void topk(py::array scores, int dtype_code, int64_t k, bool largest, py::array out) {
  using abi::DType;
  const DType dtype = abi::to_enum<DType>(dtype_code, "scores: dtype");
  check(scores.ndim() == 1, "scores: expected a 1-d array");
  const int64_t n = scores.shape(0);
  check(k >= 0 && k <= n, "k: must be in [0, N] (got " + std::to_string(k) + ", N = " + std::to_string(n) + ")");
  int64_t* o = const_cast<int64_t*>(cptr<int64_t>(out, "out", 1));
  check(out.shape(0) == k, "out: expected shape [k]");
  if (k == 0) return;
  switch (dtype) {
    case DType::kFloat32: run<uint32_t, int32_t>(scores, k, largest, 0x7f800000u, o); break;
    case DType::kFloat64: run<uint64_t, int64_t>(scores, k, largest, 0x7ff0000000000000ull, o); break;
    case DType::kFloat16: run<uint16_t, int16_t>(scores, k, largest, uint16_t(0x7c00), o); break;
    case DType::kBFloat16: run<uint16_t, int16_t>(scores, k, largest, uint16_t(0x7f80), o); break;
  }
}

}  // namespace
}  // namespace thresher

THRESHER_REGISTER(topk) {
  m.def("topk", &thresher::topk, pybind11::arg("scores"), pybind11::arg("dtype"), pybind11::arg("k"),
        pybind11::arg("largest"), pybind11::arg("out"),
        "Indices [k] of the k best scores, best first, ties by lower index, NaN last (see topk.py).");
}
