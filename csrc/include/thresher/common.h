// Shared helpers for the CPU kernels: argument checks that raise ValueError
// (never abort), OpenMP shims and numpy buffer access.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef THRESHER_HAVE_OPENMP
#include <omp.h>
#endif

namespace thresher {
namespace py = pybind11;

// pybind11 translates std::invalid_argument into Python ValueError.
[[noreturn]] inline void value_error(const std::string& msg) { throw std::invalid_argument(msg); }

inline void check(bool cond, const std::string& msg) {
  if (!cond) value_error(msg);
}

inline int max_threads() {
#ifdef THRESHER_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// A C-contiguous numpy array of T; raises ValueError naming `arg` otherwise.
template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
inline const T* cptr(const py::array& a, const char* arg, int ndim = -1) {
  if (!py::isinstance<py::array_t<T>>(a)) value_error(std::string(arg) + ": wrong dtype");
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(std::string(arg) + ": expected " + std::to_string(ndim) + "-d array, got " + std::to_string(a.ndim()) +
                "-d");
  if (!(a.flags() & py::array::c_style)) value_error(std::string(arg) + ": must be C-contiguous");
  return static_cast<const T*>(a.data());
}

}  // namespace thresher
