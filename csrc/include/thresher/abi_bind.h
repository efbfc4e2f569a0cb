// Export of the ABI codes (abi.h) and shared constants (philox.h) to Python.
//
// thresher._C and thresher._cuda both call bind_abi() from their `abi`
// registration (csrc/cpu/abi.cpp, csrc/cuda/abi.cu), so each extension states
// the codes it was compiled with; tests/test_ops_abi.py compares them with the
// Python mirror thresher.ops.abi. The enums are module_local: both extensions bind the same
// C++ types, and pybind11 allows one global registration per type.
#pragma once
#include <pybind11/pybind11.h>
#include <thresher/abi.h>
#include <thresher/philox.h>

#include <stdexcept>
#include <string>

namespace thresher {
namespace abi {

template <class E>
inline void check_count(const pybind11::enum_<E>& e, const char* name) {
  const auto n = pybind11::len(e.attr("__members__"));
  if (static_cast<int64_t>(n) != EnumCount<E>::value)
    throw std::logic_error(std::string("abi_bind.h: ") + name + " exports " + std::to_string(n) +
                           " values but EnumCount says " + std::to_string(EnumCount<E>::value));
}

inline void bind_abi(pybind11::module_& m) {
  namespace py = pybind11;
  py::enum_<DType> dtype(m, "DType", py::module_local(), "Element type codes (thresher/abi.h)");
  dtype.value("FLOAT32", DType::kFloat32)
      .value("FLOAT64", DType::kFloat64)
      .value("FLOAT16", DType::kFloat16)
      .value("BFLOAT16", DType::kBFloat16);
  check_count(dtype, "DType");
  py::enum_<SegmentOp> seg(m, "SegmentOp", py::module_local(), "segment_reduce reduction codes (thresher/abi.h)");
  seg.value("SUM", SegmentOp::kSum)
      .value("MEAN", SegmentOp::kMean)
      .value("MAX", SegmentOp::kMax)
      .value("MIN", SegmentOp::kMin)
      .value("COUNT", SegmentOp::kCount)
      .value("LOGMEANEXP", SegmentOp::kLogMeanExp);
  check_count(seg, "SegmentOp");
  py::enum_<ProjectionKind> kind(m, "ProjectionKind", py::module_local(),
                                 "random projection distributions (thresher/abi.h)");
  kind.value("RADEMACHER", ProjectionKind::kRademacher).value("GAUSSIAN", ProjectionKind::kGaussian);
  check_count(kind, "ProjectionKind");
  py::enum_<KnnMetric> metric(m, "KnnMetric", py::module_local(), "knn metrics (thresher/abi.h)");
  metric.value("IP", KnnMetric::kInnerProduct).value("L2", KnnMetric::kL2);
  check_count(metric, "KnnMetric");

  py::dict c;
  c["TOPK_COMPACT_BLOCK"] = kTopkCompactBlock;
  c["TOPK_RADIX_BINS"] = kTopkRadixBins;
  c["TOPK_STATE_WORDS"] = kTopkStateWords;
  c["PHILOX_ROUND_A"] = philox::kRoundA;
  c["PHILOX_ROUND_B"] = philox::kRoundB;
  c["PHILOX_KEY_A"] = philox::kKeyA;
  c["PHILOX_KEY_B"] = philox::kKeyB;
  c["PHILOX_STREAM_RADEMACHER"] = philox::kStreamRademacher;
  c["PHILOX_STREAM_GAUSSIAN"] = philox::kStreamGaussian;
  c["PHILOX_RADEMACHER_BLOCK"] = philox::kRademacherBlock;
  c["PHILOX_GAUSSIAN_BLOCK"] = philox::kGaussianBlock;
  m.attr("ABI_CONSTANTS") = c;
}

}  // namespace abi
}  // namespace thresher
