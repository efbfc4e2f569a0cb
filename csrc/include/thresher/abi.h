// The codes that cross the Python/native boundary, in one place.
//
// Every integer that Python passes to thresher._C or thresher._cuda to select
// a dtype, a reduction, a generator or a metric is one of these enums; Python
// mirrors them in python/thresher/ops/abi.py (IntEnum classes, used by the op
// modules and the Triton kernels), and tests/test_ops_abi.py checks that the
// mirror equals what both extensions export (abi_bind.h binds them with
// py::enum_). The bindings keep taking plain ints (the Python mirror passes
// IntEnum values, which are ints) and convert them with the checked
// `to_enum` helpers below, so a bad code raises ValueError instead of reaching
// a switch's default. Adding a code: add it here (and bump the count), in
// abi_bind.h, and in abi.py; the test fails until all three agree.
//
// This header has no pybind11 or CUDA runtime dependency: kernels include it
// from host and device code alike (to_enum is host-only).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace thresher {
namespace abi {

// Element type of a buffer. Half types travel as their 16-bit patterns.
enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// segment_reduce reductions (thresher/ops/segment.py).
enum class SegmentOp : int32_t { kSum = 0, kMean = 1, kMax = 2, kMin = 3, kCount = 4, kLogMeanExp = 5 };

// Entries of the implicit random projection matrix (thresher/ops/projection.py, philox.h).
enum class ProjectionKind : int32_t { kRademacher = 0, kGaussian = 1 };

// knn similarity: inner product (larger is nearer) or squared Euclidean distance.
enum class KnnMetric : int32_t { kInnerProduct = 0, kL2 = 1 };

// Number of codes of each enum (codes are 0 .. count - 1).
template <class E>
struct EnumCount;
template <>
struct EnumCount<DType> {
  static constexpr int32_t value = 4;
};
template <>
struct EnumCount<SegmentOp> {
  static constexpr int32_t value = 6;
};
template <>
struct EnumCount<ProjectionKind> {
  static constexpr int32_t value = 2;
};
template <>
struct EnumCount<KnnMetric> {
  static constexpr int32_t value = 2;
};

template <class E>
constexpr bool is_valid(int64_t code) {
  return code >= 0 && code < EnumCount<E>::value;
}

template <class E>
constexpr int32_t code(E e) {
  return static_cast<int32_t>(e);
}

// `code` as an E; std::invalid_argument (Python ValueError) naming `arg` when it is not one.
template <class E>
inline E to_enum(int64_t code, const char* arg) {
  if (!is_valid<E>(code))
    throw std::invalid_argument(std::string(arg) + ": unknown code " + std::to_string(code) + " (expected 0.." +
                                std::to_string(EnumCount<E>::value - 1) + ", see thresher/abi.h)");
  return static_cast<E>(code);
}

// Constants of the CUDA topk kernel that its Python caller sizes workspaces with.
constexpr int32_t kTopkCompactBlock = 1024;  // scores per block of the count/compaction kernels
constexpr int32_t kTopkRadixBins = 256;      // bins of one 8-bit radix pass (int64 histogram)
constexpr int32_t kTopkStateWords = 4;       // int64 words of the device select state

}  // namespace abi
}  // namespace thresher
