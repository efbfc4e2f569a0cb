// Shared helpers of the CUDA kernels (csrc/cuda/*.cu): argument checks that
// raise Python ValueError, CUDA error checks that raise RuntimeError (never
// abort), and the conversion of the raw device pointers and stream handles
// that Python passes as ints (nothing links libtorch).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace thresher {
namespace cuda {

// pybind11 translates std::invalid_argument into ValueError.
inline void check_arg(bool cond, const std::string& msg) {
  if (!cond) throw std::invalid_argument(msg);
}

// RuntimeError "<what>: <CUDA error>" unless err is cudaSuccess.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// After a sequence of launches: RuntimeError "<what>: CUDA launch failed: ..." if one failed.
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

// A device address received from Python as an int.
template <class T>
inline T* device_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// A cudaStream_t received from Python (torch.cuda.current_stream().cuda_stream).
inline cudaStream_t stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

}  // namespace cuda
}  // namespace thresher
