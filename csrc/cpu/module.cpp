// thresher._C: the CPU extension module. Kernels register themselves (see
// thresher/registry.h); this file only creates the module, exports the ABI codes
// (thresher/abi.h) and reports build info.
#include <thresher/abi_bind.h>
#include <thresher/common.h>
#include <thresher/registry.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "thresher CPU kernels (C++17, OpenMP when available)";
#ifdef THRESHER_HAVE_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  m.attr("compiler") = THRESHER_VERSION_INFO;
  m.def("max_threads", &thresher::max_threads, "OpenMP max threads (1 without OpenMP)");
  thresher::abi::bind_abi(m);  // enums and constants shared with Python (thresher/abi.h)
  thresher::register_all(m);
  pybind11::list names;
  for (auto& kv : thresher::registry()) names.append(kv.first);
  m.attr("registered") = names;
}
