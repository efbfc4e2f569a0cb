"""Backend dispatch: keyword and environment forcing, reasons, doctor output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thresher.ops import OPS, last_backend, segment_reduce, topk
from thresher.ops._dispatch import BACKEND_NAMES

ROOT = Path(__file__).resolve().parents[2]
X = torch.tensor([3.0, 1.0, 2.0, 5.0])
OFF = torch.tensor([0, 1, 4])


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_ops_registered_with_all_backends():
    for name in ("segment_reduce", "topk"):
        assert name in OPS
        assert set(OPS[name].backends) == set(BACKEND_NAMES)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_backend_keyword_forces(backend, backend_available):
    backend_available("topk", backend, device="cpu")
    backend_available("segment_reduce", backend, device="cpu")
    topk(X, 2, backend=backend)
    assert last_backend() == ("topk", backend)
    segment_reduce(X, OFF, "sum", backend=backend)
    assert last_backend() == ("segment_reduce", backend)


def test_default_on_cpu_is_native(backend_available):
    backend_available("topk", "cpu")
    backend_available("segment_reduce", "cpu")
    topk(X, 2)
    assert last_backend() == ("topk", "cpu")
    segment_reduce(X, OFF, "mean")
    assert last_backend() == ("segment_reduce", "cpu")


def test_env_forces_per_op(monkeypatch):
    monkeypatch.setenv("THRESHER_BACKEND_TOPK", "reference")
    monkeypatch.setenv("THRESHER_BACKEND_SEGMENT_REDUCE", "reference")
    topk(X, 2)
    assert last_backend() == ("topk", "reference")
    segment_reduce(X, OFF, "max")
    assert last_backend() == ("segment_reduce", "reference")


def test_keyword_beats_env(monkeypatch):
    monkeypatch.setenv("THRESHER_BACKEND_TOPK", "cuda")
    topk(X, 2, backend="reference")
    assert last_backend() == ("topk", "reference")


def test_env_forced_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("THRESHER_BACKEND_TOPK", "cuda")
    with pytest.raises(RuntimeError, match=r"topk: backend 'cuda' cannot run here: .*cpu tensors"):
        topk(X, 2)


def test_forced_cuda_on_cpu_tensors_raises_with_reasons():
    with pytest.raises(RuntimeError, match=r"segment_reduce: backend 'cuda' cannot run here: .*does not run on cpu"):
        segment_reduce(X, OFF, "sum", backend="cuda")


def test_forced_triton_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("with a GPU, CPU tensors are the only case left")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        topk(X, 2, backend="triton")


def test_per_call_reason_float64_triton(backend_available):
    reasons = backend_available.reasons("segment_reduce", "triton", device="cpu", dtype=torch.float64)
    assert any("float64" in r for r in reasons)
    with pytest.raises(RuntimeError, match="float64"):
        segment_reduce(X.double(), OFF, "sum", backend="triton")


def test_unknown_backend_is_value_error():
    with pytest.raises(ValueError, match="backend='gpu'"):
        topk(X, 1, backend="gpu")


def test_global_preference_ignored_when_it_cannot_run(monkeypatch):
    monkeypatch.setenv("THRESHER_BACKEND", "cuda")
    topk(X, 1)
    assert last_backend()[1] in ("cpu", "reference")
    monkeypatch.setenv("THRESHER_BACKEND", "reference")
    topk(X, 1)
    assert last_backend() == ("topk", "reference")


def test_not_supported_reasons_content():
    for name in ("segment_reduce", "topk"):
        op = OPS[name]
        assert op.backends["reference"].not_supported_reasons(device="cpu") == []
        cuda_r = op.backends["cuda"].not_supported_reasons(device="cpu")
        assert any("does not run on cpu tensors" in r for r in cuda_r)
        if not torch.cuda.is_available():
            # on cuda tensors: either the extension is missing, or there is no device
            r = op.backends["cuda"].not_supported_reasons(device="cuda")
            assert r and all(isinstance(s, str) and s for s in r)


def test_disable_native_falls_back_to_reference():
    code = (
        "import torch, thresher.ops as o;"
        "v,i=o.topk(torch.tensor([1.,3.,2.]),2); print(o.last_backend(), i.tolist());"
        "print(o.OPS['topk'].backends['cpu'].not_supported_reasons(device='cpu'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env(THRESHER_DISABLE_NATIVE="1")
    )
    assert out.returncode == 0, out.stderr
    assert "('topk', 'reference') [1, 2]" in out.stdout
    assert "THRESHER_DISABLE_NATIVE" in out.stdout


def test_doctor_json_lists_ops():
    out = subprocess.run(
        [sys.executable, "-m", "thresher", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    for name in ("segment_reduce", "topk"):
        table = info["ops"][name]
        assert set(table) == set(BACKEND_NAMES)
        assert table["reference"]["cpu"] == []
        assert isinstance(table["cuda"]["cuda"], list)
        if info["extensions"]["thresher._C"]["built"]:
            assert table["cpu"]["cpu"] == []
            assert name in info["extensions"]["thresher._C"]["ops"]
        if not info["devices"]["cuda"]["available"]:
            assert table["cuda"]["cuda"], "no device must come with a reason"


# ----------------------------------------------------------- order as data
def test_cuda_order_comes_from_the_order_file():
    from thresher.ops._dispatch import ORDER_FILE, backend_order, order_data

    data = json.loads(ORDER_FILE.read_text())
    assert order_data()["source"] == data["source"] and data["source"]
    order, why = backend_order("topk", "cuda")
    assert order == ("cuda", "reference") and "round-trips" in why  # Triton topk left out of the auto order
    assert backend_order("segment_reduce", "cuda")[0][0] == "cuda"
    assert backend_order("normalize", "cuda") == (tuple(data["default"]["cuda"]), "default order for cuda tensors")
    assert backend_order("topk", "cpu")[0] == ("cpu", "reference")


def test_order_file_override_and_bad_file(tmp_path, monkeypatch):
    from thresher.ops._dispatch import backend_order, order_data

    f = tmp_path / "order.json"
    f.write_text(json.dumps({"source": "bench.json", "default": {"cpu": ["reference"]}, "ops": {}}))
    monkeypatch.setenv("THRESHER_BACKEND_ORDER", str(f))
    assert backend_order("topk", "cpu") == (("reference",), "default order for cpu tensors")
    topk(X, 2)
    assert last_backend() == ("topk", "reference")  # the file decides, not the code
    g = tmp_path / "bad.json"
    g.write_text(json.dumps({"default": {"cpu": ["gpu9"]}}))
    monkeypatch.setenv("THRESHER_BACKEND_ORDER", str(g))
    assert "unknown backend" in order_data()["source"]
    assert backend_order("topk", "cpu")[0] == ("cpu", "reference")  # built-in fallback, said in source


def test_doctor_shows_backend_order():
    from thresher.cli.cmd_doctor import collect, render

    info = collect()
    assert info["backend_order"]["ops"]["topk"]["cuda"]["order"] == ["cuda", "reference"]
    text = render(info)
    assert "backend order" in text and "pending a GPU benchmark" in text
