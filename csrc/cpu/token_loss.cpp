// token_loss (CPU): fused online-softmax reduction of one [rows x cols] fp32
// logits tile into per-token running states, used by the cpu backend of
// thresher.ops.token_loss between its BLAS tile matmuls.
// Algorithm, per row i (target logit y = zy[i], local target column tc = tcol[i]
// or -1): the target's entry is read as y; pass 1 takes the row max mc (NaN
// propagates) and counts entries > y (the rank); pass 2 sums, over the
// non-target entries, e = exp(z - mc), e (z - mc) and e^2 with a vectorisable
// range-reduced polynomial exp (Cephes coefficients, < 1e-7 relative error).
// The target's entry is written into the tile (z_y for the max, then a value
// that exps to exactly 0), so the loops carry no per-element select. The tile's state
// (mc, s, t, q) is then merged into the running state (m, s, t, q) with the
// online-softmax rescaling (or written, when `first`). Two passes over a
// cache-resident row; O(rows x cols) work, no allocation. Compiled for
// AVX-512 / AVX2+FMA / baseline with target_clones (chosen at load time).
// The GIL is released during the work, so the Python worker threads of the
// cpu backend run their tiles concurrently. Arguments are validated in Python
// (thresher/ops/token_loss.py); this file re-checks shapes and raises ValueError.
#include <thresher/common.h>
#include <thresher/registry.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace thresher {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TL_CLONES
#endif

// exp(x) for x <= 0 (x < -87.3 -> 0); vectorisable (no calls, no branches).
inline float exp_neg(float x) {
  const float xc = x < -87.3f ? -87.3f : x;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float v = p * scale;
  return x < -87.3f ? 0.0f : v;
}

struct RowState {
  float m, s, t, q;
  int64_t r;
};

// z (one row, writable scratch: the target's entry is overwritten) -> state.
TL_CLONES
RowState reduce_row(float* z, int64_t nc, float y, int64_t tc, bool need_t, bool need_q, bool need_r) {
  if (tc >= 0) z[tc] = y;  // the target enters the max as the row-wise z_y
  float mx = -std::numeric_limits<float>::infinity();
  int nan = 0;
  int cnt = 0;
#pragma omp simd reduction(max : mx) reduction(| : nan) reduction(+ : cnt)
  for (int64_t j = 0; j < nc; ++j) {
    const float x = z[j];
    mx = x > mx ? x : mx;
    nan |= (x != x);
    cnt += (x > y);
  }
  RowState st{mx, 0.f, 0.f, 0.f, need_r ? int64_t(cnt) : 0};
  if (nan || !std::isfinite(mx)) {
    st.m = std::numeric_limits<float>::quiet_NaN();
    return st;
  }
  // exclude the target from the sums: exp_neg(<= -1000) is exactly 0 and e*d = 0
  if (tc >= 0) z[tc] = mx - 1000.0f;
  float s = 0.f, t = 0.f, q = 0.f;
  if (need_t || need_q) {
#pragma omp simd reduction(+ : s, t, q)
    for (int64_t j = 0; j < nc; ++j) {
      const float d = z[j] - mx;
      const float e = exp_neg(d);
      s += e;
      t += e * d;
      q += e * e;
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < nc; ++j) s += exp_neg(z[j] - mx);
  }
  st.s = s;
  st.t = t;
  st.q = q;
  return st;
}

template <class T>
T* mptr(py::array& a, const char* name, int64_t n) {
  if (!py::isinstance<py::array_t<T>>(a)) value_error(std::string(name) + ": wrong dtype");
  if (a.ndim() != 1 || a.shape(0) != n)
    value_error(std::string(name) + ": expected shape (" + std::to_string(n) + ",)");
  if (!(a.flags() & py::array::c_style)) value_error(std::string(name) + ": must be C-contiguous");
  if (!a.writeable()) value_error(std::string(name) + ": must be writeable");
  return static_cast<T*>(a.mutable_data());
}

// z: [nb, nc] fp32, scratch (target entries are overwritten); zy: [nb] fp32; tcol: [nb] int64 (-1: target not in tile).
// m, s, t, q: [nb] fp32 running states (t/q only read when needed); r: [nb] int64 (+= counts).
void tile_reduce(py::array z_in, py::array zy, py::array tcol, py::array m, py::array s, py::array t, py::array q,
                 py::array r, bool first, bool need_t, bool need_q, bool need_r) {
  if (z_in.ndim() != 2) value_error("z: expected a 2-d array");
  const int64_t nb = z_in.shape(0), nc = z_in.shape(1);
  float* zp = static_cast<float*>(const_cast<void*>(static_cast<const void*>(cptr<float>(z_in, "z", 2))));
  if (!z_in.writeable()) value_error("z: must be writeable (it is used as scratch)");
  const float* yp = cptr<float>(zy, "zy", 1);
  const int64_t* tp = cptr<int64_t>(tcol, "tcol", 1);
  if (zy.shape(0) != nb || tcol.shape(0) != nb) value_error("zy/tcol: expected one entry per row of z");
  float* mp = mptr<float>(m, "m", nb);
  float* sp = mptr<float>(s, "s", nb);
  float* tq = need_t ? mptr<float>(t, "t", nb) : nullptr;
  float* qp = need_q ? mptr<float>(q, "q", nb) : nullptr;
  int64_t* rp = need_r ? mptr<int64_t>(r, "r", nb) : nullptr;
  for (int64_t i = 0; i < nb; ++i) {
    if (tp[i] >= nc) value_error("tcol: column out of range");
  }
  py::gil_scoped_release nogil;
  for (int64_t i = 0; i < nb; ++i) {
    const RowState c = reduce_row(zp + i * nc, nc, yp[i], tp[i], need_t, need_q, need_r);
    if (need_r) rp[i] += c.r;
    if (first) {
      mp[i] = c.m;
      sp[i] = c.s;
      if (need_t) tq[i] = c.t;
      if (need_q) qp[i] = c.q;
      continue;
    }
    // merge (m1, s1, t1, q1) with (m2, s2, t2, q2); NaN propagates through m
    const float m1 = mp[i], m2 = c.m;
    if (std::isnan(m1) || std::isnan(m2)) {
      mp[i] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float mn = m1 > m2 ? m1 : m2;
    const float d1 = m1 - mn, d2 = m2 - mn;
    const float a1 = std::exp(d1), a2 = std::exp(d2);
    if (need_t) tq[i] = a1 * (tq[i] + d1 * sp[i]) + a2 * (c.t + d2 * c.s);
    if (need_q) qp[i] = qp[i] * (a1 * a1) + c.q * (a2 * a2);
    sp[i] = sp[i] * a1 + c.s * a2;
    mp[i] = mn;
  }
}

}  // namespace
}  // namespace thresher

THRESHER_REGISTER(token_loss) {
  m.def("token_loss_tile_reduce", &thresher::tile_reduce, pybind11::arg("z"), pybind11::arg("zy"),
        pybind11::arg("tcol"), pybind11::arg("m"), pybind11::arg("s"), pybind11::arg("t"), pybind11::arg("q"),
        pybind11::arg("r"), pybind11::arg("first"), pybind11::arg("need_t"), pybind11::arg("need_q"),
        pybind11::arg("need_r"),
        "Fold a [rows x cols] fp32 logits tile into running online-softmax states (see token_loss.cpp).");
}
