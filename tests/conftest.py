"""Shared test setup.

* Triton kernels run under the interpreter on machines without a GPU: set
  TRITON_INTERPRET=1 before anything imports triton.
* ``shared_dir`` / ``bigbench_path``: the real data beside the checkout
  (``../shared``), overridable with THRESHER_SHARED.
* ``backend_available``: the one answer to "can this backend of this op run
  here"; op tests skip exactly the cases whose backend cannot, with the
  dispatcher's reasons.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from typing import Any, Optional  # noqa: E402

import pytest  # noqa: E402


def backend_device(backend: str) -> str:
    """Where a backend's test tensors live: cuda for the cuda backend, and for triton when a GPU
    is visible (else CPU tensors under the Triton interpreter); CPU for the others."""
    return "cuda" if backend == "cuda" or (backend == "triton" and _has_cuda()) else "cpu"


class BackendProbe:
    """``probe(op, backend, device=None, **ctx)`` -> the device to run ``backend`` of ``op`` on,
    or a skip of the calling test naming the dispatcher's reasons; ``probe.reasons(...)`` the
    reasons themselves ([] = it can run). ``ctx`` is the per-call context of the op (dtype, n, k...)."""

    def reasons(self, op: str, backend: str, device: Optional[str] = None, **ctx: Any) -> list[str]:
        from thresher.ops import OPS

        if backend not in OPS[op].backends:
            return [f"op {op!r} has no {backend!r} backend"]
        dev = device or backend_device(backend)
        return OPS[op].backends[backend].not_supported_reasons(device=dev, **ctx)

    def __call__(self, op: str, backend: str, device: Optional[str] = None, **ctx: Any) -> str:
        dev = device or backend_device(backend)
        why = self.reasons(op, backend, dev, **ctx)
        if why:
            pytest.skip(f"{op}: backend {backend!r} cannot run on {dev} here: {'; '.join(why)}")
        return dev


@pytest.fixture(scope="session")
def backend_available() -> BackendProbe:
    return BackendProbe()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    p = Path(os.environ.get("THRESHER_SHARED", ROOT.parent / "shared"))
    if not p.is_dir():
        pytest.fail(f"shared data folder not found at {p} (set THRESHER_SHARED)")
    return p


@pytest.fixture(scope="session")
def bigbench_path(shared_dir: Path) -> Path:
    p = shared_dir / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"
    if not p.is_file():
        pytest.fail(f"missing {p}")
    return p


def write_bigbench_head(bigbench_path: Path, dst: Path, n: int) -> Path:
    """The first ``n`` rows of the real BIG-bench pool as a plain JSONL file."""
    import gzip

    with gzip.open(bigbench_path, "rt", encoding="utf-8") as src, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(src):
            if i == n:
                break
            out.write(line)
    return dst


def save_tiny_lm(dst: Path) -> Path:
    """A tiny random causal LM (byte tokenizer, one layer) saved as a model folder at ``dst``."""
    from thresher.models import byte_tokenizer, tiny_causal_lm

    lm = tiny_causal_lm(0, tokenizer=byte_tokenizer(), hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    lm.model.save_pretrained(dst)
    lm.tokenizer.save_pretrained(dst)
    return dst


def run_with_selection(pool: Path, out: Path, cache: str, *, in_memory: bool = False, **kw: Any) -> tuple:
    """A pipeline run over ``pool`` with the test plugin, recording the selection object the run made
    (``in_memory``: forced to InMemorySelection). Returns (result, scores table, selection, info with
    ``kind`` and ``st``, the run's state)."""
    import pandas as pd

    import thresher.pipeline.run as run_mod
    from thresher.pipeline import PipelineConfig, run_pipeline
    from thresher.pipeline.selection import InMemorySelection, needed_columns

    got: dict = {}
    make = run_mod.make_selection

    def wrapped(st: Any) -> Any:
        if in_memory:
            sel = InMemorySelection(needed_columns(st.plan))
            st.selection_kind = "in-memory"
        else:
            sel = make(st)
        got["sel"], got["kind"], got["st"] = sel, st.selection_kind, st
        return sel

    plugin = str(Path(__file__).resolve().parent / "fixtures" / "pipeline_plugin.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "make_selection", wrapped)
        cfg = PipelineConfig(data=str(pool), out=str(out), cache_dir=cache, plugins=[plugin], quiet=True,
                             report=False, **kw)  # fmt: skip
        res = run_pipeline(cfg)
    return res, pd.read_parquet(Path(out) / "scores.parquet"), got["sel"], got


def pytest_report_header(config):
    try:
        from thresher import _native

        c = _native.cpu_ext()
        return [
            f"thresher._C: {'built' if c is not None else _native.why_unavailable('cpu')}",
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}",
        ]
    except Exception as exc:  # pragma: no cover
        return [f"thresher import failed: {exc}"]


# ------------------------------------------------------------------ Ray: one local cluster for the tests
_RAY_CPUS = 2


@pytest.fixture(scope="session")
def _ray_session():
    ray = pytest.importorskip("ray", reason="the Ray engine needs `pip install 'thresher[ray]'`")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_cluster(_ray_session):
    """The tests' shared local Ray cluster (started once, reused; restarted if a test left it)."""
    ray = _ray_session
    if not ray.is_initialized():
        # address="local": always a new local cluster, never one a `ray start` left on this machine
        ray.init(address="local", num_cpus=_RAY_CPUS, include_dashboard=False, log_to_driver=False)
    return ray
