// thresher._cuda: the CUDA extension module. Built only when a CUDA toolkit is
// found. It never needs a device to import: device_count() and
// device_error() report "no device" at call time. Kernels receive raw device
// pointers (ints) and a stream handle from Python, so nothing links libtorch.
#include <cuda_runtime.h>
#include <thresher/abi_bind.h>
#include <thresher/registry.h>

#include <string>

namespace {
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}
std::string device_error() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no device: ") + cudaGetErrorString(e);
  }
  if (n == 0) return "no device: cudaGetDeviceCount returned 0";
  return "";
}
}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "thresher CUDA kernels";
  m.def("device_count", &device_count);
  m.def("device_error", &device_error, "empty string when a device is usable, else why not");
  m.attr("cuda_runtime_version") = CUDART_VERSION;
  thresher::abi::bind_abi(m);  // enums and constants shared with Python (thresher/abi.h)
  thresher::register_all(m);
  pybind11::list names;
  for (auto& kv : thresher::registry()) names.append(kv.first);
  m.attr("registered") = names;
}
