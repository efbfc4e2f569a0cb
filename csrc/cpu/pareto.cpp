// pareto_ranks (CPU): non-dominated sorting, i.e. the Pareto rank (0 = first
// front) of every point of objectives[N, M] (minimisation; the Python wrapper
// negates maximised columns and removes NaN rows). Duplicated points share a
// rank; a point equal in some objectives and better in one dominates.
// Algorithm: the points are sorted lexicographically and exact duplicates are
// merged into one representative, so that "q dominates p" becomes "q precedes
// p in lexicographic order and q <= p in every objective".
//   M = 1: the rank is the dense rank of the value: O(N log N).
//   M = 2: one sweep in lexicographic order keeping, for every front found so
//          far, the smallest second objective among its points (a
//          non-decreasing array, patience-sorting style); a point's rank is the
//          number of fronts whose smallest value is <= its own (binary search):
//          O(N log N) in all, O(N log F) after the sort (F fronts).
//   M = 3: a sweep in lexicographic order keeping, for every front, the
//          staircase of its points' (y, z) projections; "front f dominates p"
//          is monotone in f, so p's rank is a binary search over the fronts,
//          each test a binary search in one staircase: O(N log F log N) plus
//          the staircase insertions (a list of sorted chunks of <= 512
//          entries: at most 512 moves per insertion, plus the chunk list on a
//          split). A work budget of 1024 N moved entries guards the worst case:
//          past it the divide and conquer below takes over, so the worst case
//          stays O(N log^2 N).
//   M >= 3: the divide-and-conquer algorithm of Jensen (2003) in the version of
//          Fortin, Grenier and Parizeau (2013) and Buzdalov and Shalyto (2014)
//          that is exact with ties: HelperA splits a set at the median of
//          objective k into <, = and > parts, HelperB propagates ranks from a
//          set L whose points are known to be <= a set H in objectives > k,
//          splitting both at a common median; in two dimensions both become a
//          sweep with a Fenwick tree of prefix maxima over the dense rank of
//          objective 1. O(N log^(M-1) N) time, O(M N) memory. Small subproblems
//          fall back to direct pairwise comparison.
// Values are compared through order-preserving integer keys (sweeps) or dense
// integer ranks per objective (divide and conquer), so the result is identical to a
// pairwise comparison of the doubles (-0.0 == 0.0, +-inf allowed, NaN refused).
#include <thresher/common.h>
#include <thresher/registry.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

namespace thresher {
namespace {

// Order-preserving map double -> uint64 (no NaN; -0.0 maps like +0.0).
inline uint64_t dkey(double d) {
  d += 0.0;  // -0.0 -> +0.0
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return (u & 0x8000000000000000ULL) ? ~u : (u | 0x8000000000000000ULL);
}

// ------------------------------------------------------------ LSD radix sort
// Sorts `a` (n records) by the 64-bit key returned by `key(rec)`, stable,
// 16-bit digits; digits that are equal in every record are skipped.
template <typename Rec, typename KeyFn>
void radix_sort64(std::vector<Rec>& a, std::vector<Rec>& tmp, KeyFn key) {
  const size_t n = a.size();
  if (n < 2) return;
  tmp.resize(n);
  constexpr int kBits = 16, kBuckets = 1 << kBits, kPasses = 64 / kBits;
  std::vector<uint32_t> hist(static_cast<size_t>(kPasses) * kBuckets, 0);
  for (size_t i = 0; i < n; ++i) {
    uint64_t k = key(a[i]);
    for (int p = 0; p < kPasses; ++p) ++hist[p * kBuckets + ((k >> (p * kBits)) & (kBuckets - 1))];
  }
  Rec* src = a.data();
  Rec* dst = tmp.data();
  for (int p = 0; p < kPasses; ++p) {
    uint32_t* h = &hist[static_cast<size_t>(p) * kBuckets];
    const uint64_t first = (key(src[0]) >> (p * kBits)) & (kBuckets - 1);
    if (h[first] == n) continue;  // this digit is the same everywhere
    uint32_t sum = 0;
    for (int b = 0; b < kBuckets; ++b) {
      uint32_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint64_t d = (key(src[i]) >> (p * kBits)) & (kBuckets - 1);
      dst[h[d]++] = src[i];
    }
    std::swap(src, dst);
  }
  if (src != a.data()) std::memcpy(a.data(), src, n * sizeof(Rec));
}

// ------------------------------------------------------------------ M = 1, 2
void ranks1(const double* x, int64_t n, int64_t* out) {
  struct R {
    uint64_t k;
    uint32_t i;
  };
  std::vector<R> r(n), tmp;
  for (int64_t i = 0; i < n; ++i) r[i] = {dkey(x[i]), static_cast<uint32_t>(i)};
  radix_sort64(r, tmp, [](const R& v) { return v.k; });
  int64_t rank = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 || r[i].k != r[i - 1].k) ++rank;
    out[r[i].i] = rank;
  }
}

// Records sorted lexicographically: radix sort on the first key, then the
// (usually short) runs of equal first keys by the remaining keys.
template <typename R, typename Less>
void lex_sort(std::vector<R>& r, Less rest_less) {
  std::vector<R> tmp;
  radix_sort64(r, tmp, [](const R& v) { return v.k[0]; });
  const size_t n = r.size();
  size_t i = 0;
  while (i < n) {
    size_t j = i + 1;
    while (j < n && r[j].k[0] == r[i].k[0]) ++j;
    if (j - i > 1) std::sort(r.begin() + i, r.begin() + j, rest_less);
    i = j;
  }
}

void ranks2(const double* a, int64_t n, int64_t* out) {
  struct R {
    uint64_t k[2];
    uint32_t i;
  };
  std::vector<R> r(n);
  for (int64_t i = 0; i < n; ++i) r[i] = {{dkey(a[2 * i]), dkey(a[2 * i + 1])}, static_cast<uint32_t>(i)};
  lex_sort(r, [](const R& u, const R& v) { return u.k[1] < v.k[1]; });
  // fy[f] = smallest y among the points of front f so far (non-decreasing in f).
  std::vector<uint64_t> fy;
  int64_t i = 0;
  while (i < n) {
    int64_t j = i + 1;
    while (j < n && r[j].k[0] == r[i].k[0] && r[j].k[1] == r[i].k[1]) ++j;  // duplicates share a rank
    const uint64_t y = r[i].k[1];
    const size_t f = std::upper_bound(fy.begin(), fy.end(), y) - fy.begin();
    if (f == fy.size())
      fy.push_back(y);
    else
      fy[f] = y;
    for (int64_t t = i; t < j; ++t) out[r[t].i] = static_cast<int64_t>(f);
    i = j;
  }
}

// Staircase of one front for the M = 3 sweep: the (y, z) projections of its
// points that no later point of the front weakly dominates in (y, z), sorted by
// y ascending (z then strictly descending). Stored as a list of sorted chunks
// of at most 2 * kChunk entries (a flat B-tree), so an insertion moves at most
// 2 * kChunk entries plus, on a split, the list of chunks.
class Staircase {
 public:
  static constexpr size_t kChunk = 256;
  struct S {
    uint64_t y, z;
  };

  // Does some entry weakly dominate (y, z)? The last entry with entry.y <= y
  // has the smallest z among those.
  bool dominates(uint64_t y, uint64_t z) const {
    size_t c = std::upper_bound(first_.begin(), first_.end(), y) - first_.begin();
    if (c == 0) return false;
    const std::vector<S>& ch = chunks_[c - 1];
    auto it = std::upper_bound(ch.begin(), ch.end(), y, [](uint64_t v, const S& e) { return v < e.y; });
    return (it - 1)->z <= z;  // ch[0].y <= y, so it > begin
  }

  // Insert (y, z), which no entry dominates, and drop the entries it
  // dominates. Returns the number of entries moved (work).
  int64_t insert(uint64_t y, uint64_t z) {
    if (chunks_.empty()) {
      chunks_.push_back({{y, z}});
      first_.push_back(y);
      return 1;
    }
    int64_t moved = 0;
    size_t c = std::upper_bound(first_.begin(), first_.end(), y) - first_.begin();
    c = c == 0 ? 0 : c - 1;
    std::vector<S>& ch = chunks_[c];
    const size_t pos =
        std::upper_bound(ch.begin(), ch.end(), y, [](uint64_t v, const S& e) { return v < e.y; }) - ch.begin();
    size_t start = pos;
    if (start > 0 && ch[start - 1].y == y) --start;  // same y, larger z: dropped
    size_t end = pos;
    while (end < ch.size() && ch[end].z >= z) ++end;  // larger y, z >= p's: dropped
    const bool spill = end == ch.size();              // may continue into the next chunks
    if (start != end) {
      ch[start] = {y, z};
      moved += ch.size() - end;
      ch.erase(ch.begin() + start + 1, ch.begin() + end);
    } else {
      moved += ch.size() - start;
      ch.insert(ch.begin() + start, {y, z});
    }
    first_[c] = ch[0].y;
    if (spill) {
      while (c + 1 < chunks_.size()) {
        std::vector<S>& nx = chunks_[c + 1];
        size_t k = 0;
        while (k < nx.size() && nx[k].z >= z) ++k;
        if (k == 0) break;
        if (k == nx.size()) {
          chunks_.erase(chunks_.begin() + c + 1);
          first_.erase(first_.begin() + c + 1);
          moved += chunks_.size() - c;
          continue;
        }
        moved += nx.size() - k;
        nx.erase(nx.begin(), nx.begin() + k);
        first_[c + 1] = nx[0].y;
        break;
      }
    }
    if (chunks_[c].size() > 2 * kChunk) {  // split
      std::vector<S>& full = chunks_[c];
      std::vector<S> upper(full.begin() + kChunk, full.end());
      full.resize(kChunk);
      const uint64_t fy = upper[0].y;
      chunks_.insert(chunks_.begin() + c + 1, std::move(upper));
      first_.insert(first_.begin() + c + 1, fy);
      moved += 2 * (chunks_.size() - c) + kChunk;
    }
    return moved;
  }

 private:
  std::vector<std::vector<S>> chunks_;  // non-empty, sorted, concatenation sorted
  std::vector<uint64_t> first_;         // first_[c] = chunks_[c][0].y
};

// M = 3 fast path: sweep in lexicographic order keeping the Staircase of every
// front (points whose projection is weakly dominated by a later point of the
// same front are dropped: the later point also precedes every future point).
// "Front f dominates p" is monotone in f, so p's rank is found by binary search
// over the fronts, each test a binary search in a staircase: O(N log F log N)
// plus the staircase moves. Returns false (giving up) if the moves exceed
// `budget` elements, so that no input can make it quadratic; the caller then
// runs the divide and conquer.
bool ranks3_staircase(const double* a, int64_t n, int64_t* out, int64_t budget) {
  struct R {
    uint64_t k[3];
    uint32_t i;
  };
  std::vector<R> r(n);
  for (int64_t i = 0; i < n; ++i)
    r[i] = {{dkey(a[3 * i]), dkey(a[3 * i + 1]), dkey(a[3 * i + 2])}, static_cast<uint32_t>(i)};
  lex_sort(r, [](const R& u, const R& v) { return u.k[1] < v.k[1] || (u.k[1] == v.k[1] && u.k[2] < v.k[2]); });
  std::vector<Staircase> fronts;
  int64_t moved = 0;
  int64_t i = 0;
  while (i < n) {
    int64_t j = i + 1;
    while (j < n && r[j].k[0] == r[i].k[0] && r[j].k[1] == r[i].k[1] && r[j].k[2] == r[i].k[2]) ++j;
    const uint64_t y = r[i].k[1], z = r[i].k[2];
    size_t lo = 0, hi = fronts.size();  // first front that does not dominate p
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (fronts[mid].dominates(y, z))
        lo = mid + 1;
      else
        hi = mid;
    }
    if (lo == fronts.size()) fronts.emplace_back();
    moved += fronts[lo].insert(y, z);
    if (moved > budget) return false;
    for (int64_t t = i; t < j; ++t) out[r[t].i] = static_cast<int64_t>(lo);
    i = j;
  }
  return true;
}

// ------------------------------------------------------------------- M >= 3
// Points are the U distinct points in lexicographic order (index = position);
// o[j][u] is the dense rank of objective j of point u.
class DivideConquer {
 public:
  DivideConquer(std::vector<std::vector<int32_t>>&& o, int32_t u, int32_t range1)
      : o_(std::move(o)),
        m_(static_cast<int>(o_.size())),
        u_(u),
        rank_(u, 0),
        fen_(static_cast<size_t>(range1) + 1, -1),
        fn_(range1),
        pool_(static_cast<size_t>(u) * (6 * m_ + 4) + 4096) {}

  const std::vector<int32_t>& run() {
    std::vector<int32_t> all(u_);
    std::iota(all.begin(), all.end(), 0);
    helper_a(all.data(), u_, m_ - 1);
    return rank_;
  }

 private:
  static constexpr int kSmallA = 24;       // direct comparison below this size
  static constexpr int64_t kSmallB = 256;  // ... and below this |L| * |H|

  std::vector<std::vector<int32_t>> o_;
  int m_;
  int32_t u_;
  std::vector<int32_t> rank_;
  std::vector<int32_t> fen_;  // Fenwick tree of prefix maxima, 1-based, -1 = empty
  int32_t fn_;
  std::vector<int32_t> pool_;  // LIFO scratch
  size_t top_ = 0;

  // Scratch frame: LIFO allocations from pool_, heap when it runs out.
  class Frame {
   public:
    explicit Frame(DivideConquer& d) : d_(d), saved_(d.top_) {}
    ~Frame() { d_.top_ = saved_; }
    int32_t* get(size_t n) {
      if (d_.top_ + n <= d_.pool_.size()) {
        int32_t* p = d_.pool_.data() + d_.top_;
        d_.top_ += n;
        return p;
      }
      heap_.emplace_back(new int32_t[n]);
      return heap_.back().get();
    }

   private:
    DivideConquer& d_;
    size_t saved_;
    std::vector<std::unique_ptr<int32_t[]>> heap_;
  };

  inline void raise(int32_t to, int32_t from) {
    if (rank_[from] + 1 > rank_[to]) rank_[to] = rank_[from] + 1;
  }
  // a precedes b; a <= b in objectives 1..k?
  inline bool weakly_le(int32_t a, int32_t b, int k) const {
    for (int j = 1; j <= k; ++j)
      if (o_[j][a] > o_[j][b]) return false;
    return true;
  }

  void fen_update(int32_t pos, int32_t val) {
    for (int32_t i = pos + 1; i <= fn_; i += i & -i)
      if (fen_[i] < val)
        fen_[i] = val;
      else
        break;  // ancestors cover this node: already >= val
  }
  int32_t fen_query(int32_t pos) const {
    int32_t r = -1;
    for (int32_t i = pos + 1; i > 0; i -= i & -i) r = std::max(r, fen_[i]);
    return r;
  }
  void fen_clear(int32_t pos) {
    for (int32_t i = pos + 1; i <= fn_ && fen_[i] != -1; i += i & -i) fen_[i] = -1;
  }

  // Two objectives left (0 and 1), S in index order: sweep.
  void sweep_a(const int32_t* s, int32_t n) {
    const int32_t* y = o_[1].data();
    for (int32_t i = 0; i < n; ++i) {
      const int32_t p = s[i];
      const int32_t q = fen_query(y[p]);
      if (q + 1 > rank_[p]) rank_[p] = q + 1;
      fen_update(y[p], rank_[p]);
    }
    for (int32_t i = 0; i < n; ++i) fen_clear(y[s[i]]);
  }

  void sweep_b(const int32_t* l, int32_t nl, const int32_t* h, int32_t nh) {
    const int32_t* y = o_[1].data();
    int32_t i = 0, j = 0;
    while (j < nh) {
      if (i < nl && l[i] < h[j]) {
        fen_update(y[l[i]], rank_[l[i]]);
        ++i;
      } else {
        const int32_t p = h[j++];
        const int32_t q = fen_query(y[p]);
        if (q + 1 > rank_[p]) rank_[p] = q + 1;
      }
    }
    for (int32_t t = 0; t < i; ++t) fen_clear(y[l[t]]);
  }

  int32_t median(const int32_t* s, int32_t n, const int32_t* ok, const int32_t* s2 = nullptr, int32_t n2 = 0) {
    Frame f(*this);
    int32_t* v = f.get(static_cast<size_t>(n) + n2);
    for (int32_t i = 0; i < n; ++i) v[i] = ok[s[i]];
    for (int32_t i = 0; i < n2; ++i) v[n + i] = ok[s2[i]];
    const int32_t tot = n + n2;
    std::nth_element(v, v + tot / 2, v + tot);
    return v[tot / 2];
  }

  // Split s (index order) by ok[.] vs m into lt | eq | gt (each in index order) at dst.
  static void split3(const int32_t* s, int32_t n, const int32_t* ok, int32_t m, int32_t* dst, int32_t& nlt,
                     int32_t& neq) {
    nlt = neq = 0;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t v = ok[s[i]];
      nlt += v < m;
      neq += v == m;
    }
    int32_t a = 0, b = nlt, c = nlt + neq;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t v = ok[s[i]];
      if (v < m)
        dst[a++] = s[i];
      else if (v == m)
        dst[b++] = s[i];
      else
        dst[c++] = s[i];
    }
  }

  // Final ranks of S (index order) in objectives 0..k; objectives > k are
  // equal within S; dominators outside S have already been applied.
  void helper_a(const int32_t* s, int32_t n, int k) {
    if (n < 2) return;
    if (n <= kSmallA) {
      for (int32_t j = 1; j < n; ++j)
        for (int32_t i = 0; i < j; ++i)
          if (weakly_le(s[i], s[j], k)) raise(s[j], s[i]);
      return;
    }
    if (k == 1) {
      sweep_a(s, n);
      return;
    }
    const int32_t* ok = o_[k].data();
    int32_t lo = ok[s[0]], hi = lo;
    for (int32_t i = 1; i < n; ++i) {
      lo = std::min(lo, ok[s[i]]);
      hi = std::max(hi, ok[s[i]]);
    }
    if (lo == hi) {
      helper_a(s, n, k - 1);
      return;
    }
    const int32_t m = median(s, n, ok);
    Frame f(*this);
    int32_t* t = f.get(n);
    int32_t nlt, neq;
    split3(s, n, ok, m, t, nlt, neq);
    const int32_t ngt = n - nlt - neq;
    int32_t *lt = t, *eq = t + nlt, *gt = t + nlt + neq;
    helper_a(lt, nlt, k);
    helper_b(lt, nlt, eq, neq, k - 1);
    helper_a(eq, neq, k - 1);
    int32_t* le = f.get(static_cast<size_t>(nlt) + neq);
    std::merge(lt, lt + nlt, eq, eq + neq, le);
    helper_b(le, nlt + neq, gt, ngt, k - 1);
    helper_a(gt, ngt, k);
  }

  // Raise ranks of H from L (both index order, ranks of L final), where every
  // l in L is <= every h in H in objectives > k.
  void helper_b(const int32_t* l, int32_t nl, const int32_t* h, int32_t nh, int k) {
    // Only l preceding some h, and h following some l, can matter.
    while (nl > 0 && nh > 0 && l[nl - 1] > h[nh - 1]) --nl;
    while (nh > 0 && nl > 0 && h[0] < l[0]) {
      ++h;
      --nh;
    }
    if (nl == 0 || nh == 0) return;
    if (static_cast<int64_t>(nl) * nh <= kSmallB || nl == 1 || nh == 1) {
      for (int32_t j = 0; j < nh; ++j) {
        const int32_t p = h[j];
        for (int32_t i = 0; i < nl && l[i] < p; ++i)
          if (weakly_le(l[i], p, k)) raise(p, l[i]);
      }
      return;
    }
    if (k == 1) {
      sweep_b(l, nl, h, nh);
      return;
    }
    const int32_t* ok = o_[k].data();
    int32_t lmin = ok[l[0]], lmax = lmin, hmin = ok[h[0]], hmax = hmin;
    for (int32_t i = 1; i < nl; ++i) {
      lmin = std::min(lmin, ok[l[i]]);
      lmax = std::max(lmax, ok[l[i]]);
    }
    for (int32_t i = 1; i < nh; ++i) {
      hmin = std::min(hmin, ok[h[i]]);
      hmax = std::max(hmax, ok[h[i]]);
    }
    if (lmax <= hmin) {
      helper_b(l, nl, h, nh, k - 1);
      return;
    }
    if (lmin > hmax) return;
    const int32_t m = median(l, nl, ok, h, nh);
    Frame f(*this);
    int32_t* ls = f.get(nl);
    int32_t* hs = f.get(nh);
    int32_t llt, leq, hlt, heq;
    split3(l, nl, ok, m, ls, llt, leq);
    split3(h, nh, ok, m, hs, hlt, heq);
    const int32_t lgt = nl - llt - leq, hgt = nh - hlt - heq;
    helper_b(ls, llt, hs, hlt, k);
    helper_b(ls + llt + leq, lgt, hs + hlt + heq, hgt, k);
    int32_t* lle = f.get(static_cast<size_t>(llt) + leq);
    std::merge(ls, ls + llt, ls + llt, ls + llt + leq, lle);
    // H= and H> are contiguous at hs + hlt but each is sorted separately.
    int32_t* hge = f.get(static_cast<size_t>(heq) + hgt);
    std::merge(hs + hlt, hs + hlt + heq, hs + hlt + heq, hs + nh, hge);
    helper_b(lle, llt + leq, hge, heq + hgt, k - 1);
  }
};

// Dense rank (0-based, ties equal) of column j of a[n, m]; returns the number of distinct values.
int32_t dense_rank(const double* a, int64_t n, int m, int j, int32_t* out) {
  struct R {
    uint64_t k;
    uint32_t i;
  };
  std::vector<R> r(n), tmp;
  for (int64_t i = 0; i < n; ++i) r[i] = {dkey(a[i * m + j]), static_cast<uint32_t>(i)};
  radix_sort64(r, tmp, [](const R& v) { return v.k; });
  int32_t rank = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 || r[i].k != r[i - 1].k) ++rank;
    out[r[i].i] = rank;
  }
  return rank + 1;
}

void ranks_general(const double* a, int64_t n, int m, int64_t* out) {
  // Dense ranks per objective, then a lexicographic order by stable counting
  // sorts from the last objective to the first.
  std::vector<std::vector<int32_t>> dr(m, std::vector<int32_t>(n));
  std::vector<int32_t> nd(m);
  for (int j = 0; j < m; ++j) nd[j] = dense_rank(a, n, m, j, dr[j].data());
  std::vector<int32_t> order(n), tmp(n);
  std::iota(order.begin(), order.end(), 0);
  for (int j = m - 1; j >= 0; --j) {
    std::vector<int32_t> cnt(static_cast<size_t>(nd[j]) + 1, 0);
    const int32_t* d = dr[j].data();
    for (int64_t i = 0; i < n; ++i) ++cnt[d[order[i]] + 1];
    for (int32_t b = 0; b < nd[j]; ++b) cnt[b + 1] += cnt[b];
    for (int64_t i = 0; i < n; ++i) tmp[cnt[d[order[i]]]++] = order[i];
    order.swap(tmp);
  }
  // Merge duplicates: unique point u for every row.
  std::vector<int32_t> uid(n);
  int32_t u = -1;
  for (int64_t i = 0; i < n; ++i) {
    bool same = i > 0;
    for (int j = 0; same && j < m; ++j) same = dr[j][order[i]] == dr[j][order[i - 1]];
    if (!same) ++u;
    uid[order[i]] = u;
  }
  const int32_t nu = u + 1;
  std::vector<std::vector<int32_t>> o(m, std::vector<int32_t>(nu));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t r = order[i], q = uid[r];
    for (int j = 0; j < m; ++j) o[j][q] = dr[j][r];
  }
  dr.clear();
  dr.shrink_to_fit();
  DivideConquer dc(std::move(o), nu, nd[1]);
  const std::vector<int32_t>& rk = dc.run();
  for (int64_t i = 0; i < n; ++i) out[i] = rk[uid[i]];
}

// algorithm: "auto" (above), or "dc" to force the divide and conquer for any
// M >= 2 (tests use it to check every path), or "staircase" for M == 3
// without the work budget. staircase_budget >= 0 overrides the budget of the
// M = 3 staircase (elements moved before it gives up; default 1024 N + 65536).
py::array_t<int64_t> pareto_ranks_py(const py::array& objectives, const std::string& algorithm,
                                     int64_t staircase_budget) {
  check(algorithm == "auto" || algorithm == "dc" || algorithm == "staircase",
        "algorithm: expected 'auto', 'dc' or 'staircase', got '" + algorithm + "'");
  const double* a = cptr<double>(objectives, "objectives", 2);
  const int64_t n = objectives.shape(0);
  const int64_t m = objectives.shape(1);
  check(m >= 1, "objectives: expected at least one column (objective), got 0");
  check(algorithm != "dc" || m >= 2, "algorithm: 'dc' needs at least 2 objectives");
  check(algorithm != "staircase" || m == 3, "algorithm: 'staircase' needs exactly 3 objectives");
  const bool dc = algorithm == "dc";
  const int64_t budget = algorithm == "staircase" ? INT64_MAX
                         : staircase_budget >= 0  ? staircase_budget
                                                  : 1024 * n + 65536;
  check(n < (int64_t(1) << 31) - 1, "objectives: at most 2^31 - 2 rows are supported");
  py::array_t<int64_t> out(n);
  int64_t* o = out.mutable_data();
  bool has_nan = false;
  {
    py::gil_scoped_release nogil;
    for (int64_t i = 0; i < n * m && !has_nan; ++i) has_nan = std::isnan(a[i]);
    if (!has_nan && n > 0) {
      if (m == 1)
        ranks1(a, n, o);
      else if (m == 2 && !dc)
        ranks2(a, n, o);
      else if (m == 3 && !dc && ranks3_staircase(a, n, o, budget)) {
      } else
        ranks_general(a, n, static_cast<int>(m), o);
    }
  }
  check(!has_nan, "objectives: contains NaN (the Python wrapper ranks NaN rows last)");
  return out;
}

}  // namespace

THRESHER_REGISTER(pareto) {
  m.def("pareto_ranks", &pareto_ranks_py, py::arg("objectives"), py::arg("algorithm") = "auto",
        py::arg("staircase_budget") = -1,
        "Pareto rank (0 = non-dominated) of every row of a C-contiguous float64 [N, M] array, "
        "all objectives minimised, no NaN. Returns int64 [N].");
}

}  // namespace thresher
