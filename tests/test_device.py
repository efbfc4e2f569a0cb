"""Device policy (thresher.device): auto resolves to the CPU here and to CUDA under a mocked device check;
criteria, configs and the manifest go through it; the CPU path keeps the cache keys it had."""

from __future__ import annotations

import pytest
import torch

from thresher import device as dv
from thresher.criteria.base import make_key, model_fingerprint
from thresher.errors import OptionError, ResourceError
from thresher.models import tiny_causal_lm
from thresher.pipeline.outputs import run_devices
from thresher.plan import PipelineConfig, make_plan
from thresher.registry import CRITERIA


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible CUDA device with bf16, as far as the device check can tell (nothing is moved to it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    lm = tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)
    d = tmp_path_factory.mktemp("model")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert dv.resolve_device() == dv.resolve_device("auto") == dv.resolve_device(None) == "cpu"
    assert dv.resolve_device("cpu") == "cpu" and dv.resolve_device(" CPU ") == "cpu"
    assert dv.resolve_dtype() is torch.float32
    assert dv.resolve_dtype("auto", "cpu") is torch.float32
    assert dv.resolve_dtype("auto", "auto") is torch.float32
    assert dv.resolve_dtype(None, "cpu") is torch.float32
    # a cuda device named where none is visible: auto never picks bf16 for it (keys stay computable)
    assert dv.resolve_dtype("auto", "cuda") is torch.float32


def test_auto_is_cuda_in_bf16_under_a_mocked_gpu(fake_gpu):
    assert dv.resolve_device("auto") == "cuda"
    assert dv.resolve_device("cuda") == "cuda" and dv.resolve_device("cuda:1") == "cuda:1"
    assert dv.resolve_dtype("auto", "cuda") is torch.bfloat16
    assert dv.resolve_dtype("auto", "cuda:1") is torch.bfloat16
    assert dv.resolve_dtype("auto", "auto") is torch.bfloat16
    assert dv.resolve_dtype("auto", "cpu") is torch.float32  # the CPU stays fp32 even with a GPU around
    assert dv.resolved("auto", "auto") == ("cuda", torch.bfloat16)
    assert dv.resolved("cpu", "auto") == ("cpu", torch.float32)


def test_gpu_without_bf16_gets_fp32(fake_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dv.resolve_device("auto") == "cuda"
    assert dv.resolve_dtype("auto", "cuda") is torch.float32


def test_explicit_cuda_without_a_gpu_is_a_one_line_resource_error(no_gpu):
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ResourceError, match=r"no CUDA device is visible") as ei:
            dv.resolve_device(spec)
        assert "\n" not in str(ei.value) and repr(spec) in str(ei.value)


def test_cuda_index_beyond_the_visible_devices(fake_gpu):
    with pytest.raises(ResourceError, match=r"'cuda:2': only 2 CUDA device"):
        dv.resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "cuda:", "cuda:x", "mps", ""])
def test_malformed_devices(spec):
    with pytest.raises(OptionError, match="device: expected auto, cpu, cuda or cuda:N"):
        dv.check_device(spec)


def test_explicit_dtypes_and_aliases():
    want = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "BF16": torch.bfloat16,
    }
    for spec, dt in want.items():
        assert dv.resolve_dtype(spec, "cpu") is dt
        assert dv.resolve_dtype(spec, "cuda") is dt  # explicit: the device does not matter
    assert dv.resolve_dtype(torch.float16) is torch.float16
    assert [dv.dtype_name(x) for x in (torch.bfloat16, "bf16", "fp32", torch.float16)] == [
        "bfloat16",
        "bfloat16",
        "float32",
        "float16",
    ]
    with pytest.raises(OptionError, match="dtype: expected auto or one of"):
        dv.resolve_dtype("int8", "cpu")


def test_cpu_keys_are_the_keys_of_the_former_float32_default(no_gpu):
    ifd = CRITERIA.get("ifd").obj
    opts = CRITERIA.get("ifd").resolve_options({})
    assert opts["device"] == "auto" and opts["dtype"] == "auto"
    # the key of the options as they were before the policy (dtype float32, device out of the key)
    old = {k: v for k, v in opts.items() if k not in ifd.RUNTIME}
    old.update(dtype="float32", model=model_fingerprint(opts["model"]))
    assert ifd.cache_key_for() == make_key("ifd", ifd.VERSION, old)
    assert ifd.cache_key_for() == ifd.cache_key_for(dtype="float32") == ifd.cache_key_for(dtype="fp32")
    assert ifd.cache_key_for(dtype="bf16") == ifd.cache_key_for(dtype="bfloat16") != ifd.cache_key_for()
    assert ifd.cache_key_for(device="cpu") == ifd.cache_key_for(device="cuda")  # the device is not in the key


def test_auto_on_a_gpu_keys_as_bf16(fake_gpu):
    ifd = CRITERIA.get("ifd").obj
    assert ifd.cache_key_for() == ifd.cache_key_for(dtype="bfloat16") != ifd.cache_key_for(dtype="float32")
    assert ifd.cache_key_for(device="cpu") == ifd.cache_key_for(dtype="float32")


def test_a_criterion_with_defaults_loads_on_the_cpu_in_fp32(model_dir, no_gpu):
    scorer = CRITERIA.get("perplexity").obj(model=str(model_dir))
    p = next(scorer.lm.model.parameters())
    assert p.device.type == "cpu" and p.dtype is torch.float32
    # explicit bf16 on the CPU is honoured (and is another model in the process-wide memo)
    scorer16 = CRITERIA.get("perplexity").obj(model=str(model_dir), dtype="bf16", device="cpu")
    assert next(scorer16.lm.model.parameters()).dtype is torch.bfloat16
    assert scorer16.lm is not scorer.lm


def test_config_device_and_dtype_reach_the_criteria(tmp_path, no_gpu):
    cfg = PipelineConfig.from_dict(
        {
            "data": "pool.jsonl",
            "device": "cpu",
            "dtype": "bf16",
            "criteria": ["ifd", {"name": "perplexity", "options": {"device": "cuda:0"}}, "length"],
            "selector": {"name": "random"},
            "k": 5,
        },
        base=tmp_path,
    )
    plan = make_plan(cfg)
    by = {c.col: c.options for c in plan.criteria}
    assert by["ifd"]["device"] == "cpu" and by["ifd"]["dtype"] == "bf16"
    assert by["perplexity"]["device"] == "cuda:0" and by["perplexity"]["dtype"] == "bf16"  # explicit wins
    assert "device" not in by["length"]
    # a recipe's criteria get them too
    plan = make_plan(PipelineConfig(data="pool.jsonl", recipe="ifd", device="cpu", k=5))
    assert [c.options["device"] for c in plan.criteria] == ["cpu"]
    assert [c.options["dtype"] for c in plan.criteria] == ["auto"]


def test_config_device_errors_before_any_data(tmp_path):
    with pytest.raises(OptionError, match="device: expected auto, cpu, cuda or cuda:N, got 'gpu'"):
        make_plan(PipelineConfig(data="nowhere.jsonl", criteria=["ifd"], device="gpu", k=5))
    with pytest.raises(OptionError, match=r"ifd: option dtype='int8' not in \['auto', 'float32'"):
        make_plan(PipelineConfig(data="nowhere.jsonl", criteria=["ifd"], dtype="int8", k=5))
    with pytest.raises(OptionError, match="dtype: expected one of"):  # checked even where no criterion takes it
        make_plan(PipelineConfig(data="nowhere.jsonl", criteria=["length"], dtype="int8", k=5))
    with pytest.raises(OptionError, match="criterion ifd: device: expected"):
        make_plan(PipelineConfig(data="nowhere.jsonl", criteria=[{"name": "ifd", "options": {"device": "tpu"}}], k=5))


def test_manifest_records_the_resolved_device_and_dtype(no_gpu):
    cfg = PipelineConfig(data="pool.jsonl", criteria=["ifd", "knn_distance", "length"], selector="random", k=5)
    plan = make_plan(cfg)
    devices, dtypes = run_devices(plan)
    assert devices == {"ifd": "cpu", "knn_distance": "cpu"}
    assert dtypes == {"ifd": "float32"}
