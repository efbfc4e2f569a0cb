"""The Python mirror thresher.ops.abi equals the codes both native extensions export
(csrc/include/thresher/abi.h, bound with py::enum_ in abi_bind.h), value by value."""

from __future__ import annotations

import importlib
from enum import IntEnum
from types import ModuleType

import pytest
import torch

from thresher import _native
from thresher.ops import abi

ENUMS: list[type[IntEnum]] = [abi.DType, abi.SegmentOp, abi.ProjectionKind, abi.KnnMetric]


def _extensions() -> list[tuple[str, ModuleType]]:
    out = []
    if _native.cpu_ext() is not None:
        out.append(("thresher._C", _native.cpu_ext()))
    if _native.cuda_ext() is not None:  # importable without a GPU
        out.append(("thresher._cuda", _native.cuda_ext()))
    return out


EXTENSIONS = _extensions()


def _exported(ext: ModuleType, name: str) -> dict[str, int]:
    enum = getattr(ext, name, None)
    if enum is None:
        pytest.fail(f"{ext.__name__} exports no {name}: rebuild it (pip install -e .)")
    return {k: int(v) for k, v in enum.__members__.items()}


@pytest.mark.parametrize("enum", ENUMS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("ext_name", [n for n, _ in EXTENSIONS] or ["none"])
def test_mirror_equals_native_enum(ext_name: str, enum: type[IntEnum]) -> None:
    if ext_name == "none":
        pytest.skip("no native extension is built")
    ext = dict(EXTENSIONS)[ext_name]
    assert _exported(ext, enum.__name__) == {m.name: m.value for m in enum}


@pytest.mark.parametrize("ext_name", [n for n, _ in EXTENSIONS] or ["none"])
def test_mirror_equals_native_constants(ext_name: str) -> None:
    if ext_name == "none":
        pytest.skip("no native extension is built")
    ext = dict(EXTENSIONS)[ext_name]
    assert dict(ext.ABI_CONSTANTS) == abi.CONSTANTS


def test_codes_are_dense_and_names_parse() -> None:
    for enum in ENUMS:
        assert sorted(m.value for m in enum) == list(range(len(enum)))
    assert abi.SegmentOp.parse("logmeanexp") is abi.SegmentOp.LOGMEANEXP
    assert abi.ProjectionKind.parse("gaussian") is abi.ProjectionKind.GAUSSIAN
    assert abi.KnnMetric.parse("l2") is abi.KnnMetric.L2


def test_op_modules_use_the_mirror() -> None:
    # (thresher.ops.knn the attribute is the function: load the modules by name)
    segment, projection, knn = (importlib.import_module(f"thresher.ops.{m}") for m in ("segment", "projection", "knn"))
    assert segment.SEGMENT_OPS == ("sum", "mean", "max", "min", "count", "logmeanexp")
    assert projection.KINDS == ("rademacher", "gaussian")
    assert knn._METRICS == ("ip", "l2")
    assert abi.CONSTANTS["PHILOX_RADEMACHER_BLOCK"] == projection.RADEMACHER_BLOCK


def test_dtype_codes() -> None:
    assert abi.dtype_code(torch.float16) is abi.DType.FLOAT16
    assert abi.dtype_code(torch.bfloat16) is abi.DType.BFLOAT16
    with pytest.raises(ValueError, match="int32"):
        abi.dtype_code(torch.int32)


def test_native_rejects_unknown_codes() -> None:
    ext = _native.cpu_ext()
    if ext is None or not hasattr(ext, "DType"):
        pytest.skip("thresher._C not built (or built before the ABI header)")
    x = torch.zeros(4, 1)
    off = torch.tensor([0, 4])
    out = torch.empty(1, 1)
    with pytest.raises(ValueError, match="op: unknown code 6"):
        ext.segment_reduce(x.numpy(), abi.DType.FLOAT32, off.numpy(), 6, out.numpy())
    with pytest.raises(ValueError, match="dtype: unknown code 9"):
        ext.segment_reduce(x.numpy(), 9, off.numpy(), abi.SegmentOp.SUM, out.numpy())
    with pytest.raises(ValueError, match="metric: unknown code 2"):
        ext.knn_exact(x.numpy(), x.numpy(), 1, 2, False, 0)
