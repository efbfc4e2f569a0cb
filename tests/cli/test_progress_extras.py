"""thresher.progress (bars that move by rows inside a shard) and thresher.extras (one line naming the extra)."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from thresher import extras, progress
from thresher.cli.main import main
from thresher.errors import MissingExtraError


def test_share_scales_reported_rows_and_fills_the_rest():
    with progress.task("t", total=10, quiet=False) as bar:
        with bar.share(10, 40):  # 40 rows of work stand for 10 units of the bar
            progress.advance(20)
            assert bar.n == pytest.approx(5.0)
            progress.advance(100)  # over-reporting is clamped to the share
            assert bar.n == pytest.approx(10.0)
        assert bar.n == pytest.approx(10.0)
        progress.advance(5)  # outside a share: nothing moves
        assert bar.n == pytest.approx(10.0)


def test_share_completes_on_error_and_nests():
    with progress.task("t", total=6, quiet=False) as bar:
        with pytest.raises(RuntimeError), bar.share(2):
            progress.advance(1)
            raise RuntimeError("boom")
        assert bar.n == pytest.approx(2.0)
        with bar.share(4, 4):
            inner = progress.task("inner", total=3, quiet=False)
            with inner.share(3):
                progress.advance(1)  # only the innermost share moves
            assert inner.n == pytest.approx(3.0) and bar.n == pytest.approx(2.0)
            inner.close()
            progress.advance(2)
        assert bar.n == pytest.approx(6.0)


def test_quiet_context_silences_bars():
    with progress.quiet():
        assert progress.is_quiet()
        bar = progress.task("t", total=3)
        bar.update(2)
        assert bar.n == 0.0  # no bar at all
    assert not progress.is_quiet()


def test_require_names_the_extra(tmp_path, monkeypatch):
    assert extras.require("json").dumps([]) == "[]"
    with pytest.raises(MissingExtraError) as ei:
        extras.require("thresher_no_such_module_xyz", "lm", what="the IFD criterion")
    msg = str(ei.value)
    assert "the IFD criterion needs the 'lm' extra" in msg and "pip install 'thresher[lm]'" in msg
    assert "\n" not in msg and isinstance(ei.value, ImportError)
    # an installed module whose OWN dependency is missing keeps its error (not an extra problem)
    (tmp_path / "zz_half_installed.py").write_text("import zz_missing_dependency_abc\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e2:
        extras.require("zz_half_installed", "lm")
    assert not isinstance(e2.value, MissingExtraError)
    sys.modules.pop("zz_half_installed", None)
    assert extras.extra_of("transformers.generation") == "lm" and extras.extra_of("numpy") is None


def test_status_and_doctor_report_extras(capsys):
    st = extras.status()
    assert set(st) == {"lm", "embed", "train", "faiss", "faiss-gpu", "ray", "hf", "report", "triton"}
    for e in st.values():
        assert e["installed"] == (not e["missing"]) or e is st["faiss-gpu"]
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["extras"]) == set(st) and {"lm", "embedder"} <= set(info["models"])
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "extras (pip install 'thresher[NAME]'):" in out and "default models" in out


def test_missing_extra_is_one_cli_line(monkeypatch, capsys):
    import thresher.cli.cmd_catalog as cat

    def boom(names):
        extras.require("thresher_no_such_module_xyz", "ray", what="the ray engine")

    monkeypatch.setattr(cat, "load_plugins", boom)
    assert main(["criteria"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["thresher: error: the ray engine needs the 'ray' extra (No module named "
                   "'thresher_no_such_module_xyz'): pip install 'thresher[ray]'"]  # fmt: skip


# ------------------------------------------------------------------ rows within a shard
def test_scaled_converts_inner_units_to_rows_of_the_share():
    with progress.task("t", total=10, quiet=False) as bar, bar.share(10, 10), progress.scaled(10, 40):
        progress.advance(8)  # 40 model units stand for the 10 rows
        assert bar.n == pytest.approx(2.0)
        progress.advance(100)  # clamped
        assert bar.n == pytest.approx(10.0)
    with progress.task("t", total=4, quiet=False) as bar:
        with bar.share(4), progress.scaled(4, 0):  # no units (every row skipped): the rows count at the end
            assert bar.n == 0.0
        assert bar.n == pytest.approx(4.0)
    with progress.scaled(5, 5):  # outside any share: nothing to move, nothing raised
        progress.advance(3)


@pytest.fixture(scope="module")
def tiny_lm():
    from thresher.models import tiny_causal_lm

    return tiny_causal_lm(0, tokenizer="bytes", hidden=32, layers=1)


def test_scoring_bar_moves_by_rows_within_a_shard(tiny_lm, bigbench_path, tmp_path, monkeypatch):
    """One 60-row shard scored by a causal-LM criterion in many token-budget batches: the run's bar
    (counted by a hook on the share) moves in steps smaller than the shard, and ends at the shard."""
    from conftest import write_bigbench_head
    from thresher.pipeline import PipelineConfig, run_pipeline

    steps: list[float] = []
    real = progress._Share.advance

    def counting(self, rows):
        before = self.done
        real(self, rows)
        if self.done > before:
            steps.append(self.done - before)

    monkeypatch.setattr(progress._Share, "advance", counting)
    pool = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 60)
    crit = [{"name": "perplexity", "options": {"model": tiny_lm, "batch_tokens": 2048}}]
    res = run_pipeline(
        PipelineConfig(
            data=str(pool), out=str(tmp_path / "o"), criteria=crit, score_only=True, quiet=True, report=False
        )
    )
    # the LM really ran (long rows are truncated away)
    assert pd.read_parquet(res.scores_path)["perplexity"].notna().sum() >= 25
    # the shard's share is 60 rows x (1 criterion) of work; the LM reports every batch of units
    assert sum(steps) == pytest.approx(60.0)
    assert len(steps) > 3 and max(steps) < 60.0


def test_quiet_runs_print_no_bar(tiny_lm, bigbench_path, tmp_path, monkeypatch, capsys):
    from conftest import write_bigbench_head
    from thresher.pipeline import PipelineConfig, run_pipeline

    monkeypatch.setattr(progress, "DELAY", 0.0)  # every bar would show at once
    pool = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 20)
    crit = [{"name": "perplexity", "options": {"model": tiny_lm}}]
    cfg = dict(data=str(pool), criteria=crit, score_only=True, report=False)
    run_pipeline(PipelineConfig(out=str(tmp_path / "loud"), quiet=False, **cfg))
    assert "scoring" in capsys.readouterr().err
    run_pipeline(PipelineConfig(out=str(tmp_path / "quiet"), quiet=True, **cfg))
    assert capsys.readouterr().err == ""


def test_quiet_silences_the_model_loading_bar_of_transformers(tmp_path, capsys):
    from transformers.utils import logging as tf_logging

    from conftest import save_tiny_lm
    from thresher.models.loader import load_causal_lm

    path = str(save_tiny_lm(tmp_path / "lm"))
    capsys.readouterr()
    load_causal_lm(path, device="cpu")
    loud = capsys.readouterr().err
    assert "Loading weights" in loud  # the library's bar shows outside a quiet context
    with progress.quiet():
        load_causal_lm(path, device="cpu")
    assert capsys.readouterr().err == ""
    assert tf_logging.is_progress_bar_enabled()  # restored after the load


def test_quiet_select_on_a_saved_hf_dataset_prints_nothing(tmp_path, capsys):
    """datasets' own bars (loading and saving the dataset) follow --quiet too."""
    datasets = pytest.importorskip("datasets")
    from datasets.utils import logging as ds_logging

    rows = [{"instruction": f"task {i}", "output": "word " * (i + 1)} for i in range(8)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    capsys.readouterr()
    argv = ["select", str(tmp_path / "ds"), "--criteria", "length", "--k", "3", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "o" / "selected").is_dir() and ds_logging.is_progress_bar_enabled()  # restored


# ------------------------------------------------------------------ every optional import names its extra
def _missing(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # `import m` now fails as if it were not installed


def _names_extra(exc_info, extra):
    msg = str(exc_info.value)
    assert f"pip install 'thresher[{extra}]'" in msg and "\n" not in msg, msg


def test_missing_transformers_names_the_lm_extra(monkeypatch):
    from thresher.models import load_causal_lm, load_tokenizer, tiny_causal_lm

    _missing(monkeypatch, "transformers")
    for call in (lambda: load_causal_lm("default"), lambda: load_tokenizer("default"), lambda: tiny_causal_lm(0)):
        with pytest.raises(MissingExtraError) as ei:
            call()
        _names_extra(ei, "lm")


def test_missing_gguf_names_the_lm_extra(monkeypatch, tmp_path):
    from thresher.models import loader

    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path))  # no converted copy of the default model here
    _missing(monkeypatch, "gguf")
    with pytest.raises(MissingExtraError) as ei:
        loader.load_causal_lm("default")
    _names_extra(ei, "lm")


def test_missing_sentence_transformers_names_the_embed_extra(monkeypatch):
    from thresher.embed.encoders import SentenceEncoder

    _missing(monkeypatch, "sentence_transformers")
    with pytest.raises(MissingExtraError) as ei:
        SentenceEncoder("default")
    _names_extra(ei, "embed")


def test_missing_faiss_names_the_faiss_extra_only_without_a_fallback(monkeypatch):
    import numpy as np

    from thresher.cluster import kmeans
    from thresher.index import KNNIndex, faiss_module

    _missing(monkeypatch, "faiss")
    assert faiss_module() is None
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    _, lab = kmeans(x, 3, seed=0)  # k-means falls back to torch: no error
    assert lab.shape == (50,)
    v, _ = KNNIndex(4, "ip", "exact").build(x).search(x[:5], 3)  # exact search: thresher's own kernel
    assert v.shape == (5, 3)
    for kind in ("flat", "ivf_flat", "hnsw"):
        with pytest.raises(MissingExtraError) as ei:
            KNNIndex(4, "ip", kind, nlist=2).build(x)
        _names_extra(ei, "faiss")


def test_missing_ray_names_the_ray_extra(monkeypatch):
    from thresher.engines import get_engine

    _missing(monkeypatch, "ray")
    with pytest.raises(MissingExtraError) as ei:
        get_engine("ray")
    _names_extra(ei, "ray")


def test_missing_peft_and_safetensors_name_their_extras(monkeypatch, tmp_path):
    import torch

    from thresher.features import gradients

    _missing(monkeypatch, "peft")
    with pytest.raises(MissingExtraError) as ei:
        gradients.add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), targets=["0"])
    _names_extra(ei, "train")
    _missing(monkeypatch, "safetensors", "safetensors.torch")
    for call in (
        lambda: gradients.load_lora(None, tmp_path / "a.safetensors"),
        lambda: gradients.AdamState.load(tmp_path / "o.safetensors"),
    ):
        with pytest.raises(MissingExtraError) as ei:
            call()
        _names_extra(ei, "lm")


def test_missing_triton_is_recorded_with_the_extra(monkeypatch):
    from thresher import _native

    _missing(monkeypatch, "triton")
    _native.triton_module.cache_clear()
    try:
        assert _native.triton_module() is None
        assert "pip install 'thresher[triton]'" in _native.why_unavailable("triton")
    finally:
        monkeypatch.undo()
        _native.triton_module.cache_clear()
