"""report.html: self-contained, renders in headless Chromium."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from thresher.pipeline import PipelineConfig, run_pipeline

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")


@pytest.fixture(scope="module")
def run_dir(bigbench_path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rep")
    p = d / "pool.jsonl"
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as src, open(p, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i == 600:
                break
            dst.write(line)
    from thresher import ops

    sel = (
        {"name": "pareto", "options": {"objectives": ["fake_len:max", "mtld:max"]}}
        if hasattr(ops, "pareto_ranks")
        else {"name": "topk", "options": {"criterion": "fake_len"}}
    )
    run_pipeline(
        PipelineConfig(
            data=str(p),
            out=str(d / "out"),
            criteria=["fake_len", "mtld"],
            selector=sel,
            ratio=0.05,
            plugins=[PLUGIN],
            quiet=True,
            shard_size=200,
        )
    )
    return d / "out"


def test_report_is_self_contained(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html.lower()
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)=['\"]https?://", html)
    for section in (
        "distribution and threshold",
        "Score vs length",
        "Pareto front",
        "per task/source",
        "Top selected",
        "Bottom rejected",
    ):
        assert section in html, section
    # the top example shown is the run's rank-0 row
    import pandas as pd

    s = pd.read_parquet(run_dir / "scores.parquet")
    top_id = s.loc[s["rank"] == 0, "id"].iloc[0]
    assert top_id in html


def test_report_renders_in_headless_chromium(run_dir):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    shot = run_dir / "report.png"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        "--virtual-time-budget=3000",
        (run_dir / "report.html").as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20000, r.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    assert img.std() > 20  # not a blank page
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 500  # the selected points/bars are drawn
    keep = os.environ.get("THRESHER_KEEP_SCREENSHOT")
    if keep:  # for a human look at the rendering
        shutil.copy(shot, keep)


def test_report_has_summary_and_correlation(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    for section in ("Summary per criterion", "Correlation between criteria (Spearman)"):
        assert section in html, section


def _synthetic_scores(n: int = 400, seed: int = 3):
    import pandas as pd

    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = np.round(a * 2 + rng.normal(size=n), 1)  # ties
    a[:7] = np.nan
    b[5:20] = np.nan
    ra = np.where(np.isnan(a), np.where(np.arange(n) % 2 == 0, "empty answer", "truncated away"), "")
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "tokens": rng.integers(5, 500, n).astype(np.float64),
            "a": a,
            "a.reason": ra,
            "b": b,
            "b.reason": np.where(np.isnan(b), "no answer", ""),
            "c": np.full(n, 2.0),  # constant: no correlation defined
        }
    )


def test_summary_numbers_against_numpy():
    from thresher.report.stats import summarize

    s = _synthetic_scores()
    got = summarize(s, "a")
    v = s["a"].to_numpy()
    fin = v[~np.isnan(v)]
    assert got["count"] == 393 and got["nan"] == 7 and got["rows"] == 400
    assert got["reasons"] == [("empty answer", 4), ("truncated away", 3)]
    want = np.percentile(fin, [0, 5, 25, 50, 75, 95, 100])
    np.testing.assert_allclose([got[q] for q in ("min", "p5", "p25", "median", "p75", "p95", "max")], want)
    assert got["mean"] == pytest.approx(fin.mean())
    empty = summarize(s.assign(a=np.nan, **{"a.reason": ""}), "a")
    assert empty["count"] == 0 and empty["median"] is None and empty["reasons"] == [("(no reason given)", 400)]


def test_spearman_against_scipy():
    from scipy.stats import spearmanr

    from thresher.report.stats import spearman

    s = _synthetic_scores()
    got = spearman(s, ["a", "b", "c"])
    ok = ~np.isnan(s["a"]) & ~np.isnan(s["b"])
    assert got.loc["a", "b"] == pytest.approx(spearmanr(s["a"][ok], s["b"][ok]).statistic, abs=1e-12)
    assert got.loc["b", "a"] == got.loc["a", "b"] and got.loc["a", "a"] == pytest.approx(1.0)
    assert np.isnan(got.loc["a", "c"]) and np.isnan(got.loc["c", "c"])
    tiny = spearman(s.iloc[5:7], ["a", "b"])  # fewer than 3 rows with both scores
    assert np.isnan(tiny.to_numpy()).all()


def test_pca_against_eigh():
    from thresher.report.stats import pca_2d

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    xy, idx = pca_2d(x)
    c = x - x.mean(0)
    w, v = np.linalg.eigh(c.T @ c)
    want = c @ v[:, ::-1][:, :2]
    assert idx.tolist() == list(range(300))
    np.testing.assert_allclose(np.abs(xy), np.abs(want), atol=1e-8)
    xy2, idx2 = pca_2d(x, max_rows=50)
    assert len(idx2) == 50 and xy2.shape == (50, 2)
    assert pca_2d(np.zeros((0, 4)))[0].shape == (0, 2)
    one, _ = pca_2d(x[:1])
    assert one.shape == (1, 2) and np.allclose(one, 0)


def test_pca_of_a_memory_map_reads_only_its_sampled_rows(tmp_path):
    """The run's embeddings are a float32 memory map: the map samples its rows before any float64 copy (the
    whole array in float64 is 8 bytes a value: 3 GB for 1,000,000 x 384), with the same sample and values."""
    import tracemalloc

    from thresher.report.stats import pca_2d

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40_000, 24)).astype(np.float32)
    path = tmp_path / "emb.bin"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    tracemalloc.start()
    xy, idx = pca_2d(mm, max_rows=500)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes // 4  # far below the map itself (and its float64 copy, twice that)
    want_idx = np.sort(np.random.default_rng(0).choice(len(x), 500, replace=False))
    assert idx.tolist() == want_idx.tolist()
    xy_heap, _ = pca_2d(x.astype(np.float64), max_rows=500)
    np.testing.assert_array_equal(xy, xy_heap)


def test_report_embedding_map_and_score_only_page():
    from thresher.report import render_report

    s = _synthetic_scores(120)
    manifest = {
        "criteria": [{"name": "a", "direction": "max"}, {"name": "b", "direction": "min"}],
        "selector": {"name": "random", "options": {}},
        "inputs": [{"path": "p", "format": "jsonl", "rows": 120}],
    }
    page = render_report(s, manifest, embeddings=np.random.default_rng(1).normal(size=(120, 8)))
    assert "thresher scoring report" in page and "Embedding map (PCA, all rows)" in page
    assert "Top selected" not in page and "selected vs rejected" not in page.lower()
    assert "empty answer: 4<br>truncated away: 3" in page  # a's NaNs: rows 0..6, even ones empty
    sel = s.assign(selected=np.arange(120) < 10, rank=np.where(np.arange(120) < 10, np.arange(120), -1))
    page2 = render_report(sel, manifest, {}, embeddings=np.random.default_rng(1).normal(size=(120, 8)))
    assert "thresher selection report" in page2 and "Embedding map (PCA, kept vs dropped)" in page2
    assert "Embedding map" not in render_report(sel, manifest, {})


def test_report_leaves_matplotlib_state_alone(tmp_path):
    """No pyplot, no backend switch: a caller's backend survives writing a report."""
    code = (
        "import sys, numpy as np, pandas as pd, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from thresher.report import render_report\n"
        "s = pd.DataFrame({'id': ['a', 'b', 'c', 'd'], 'tokens': [1.0, 2, 3, 4], 'x': [1.0, 2, np.nan, 4],"
        " 'selected': [True, False, False, True], 'rank': [0, -1, -1, 1]})\n"
        "m = {'criteria': [{'name': 'x'}], 'selector': {'name': 'topk', 'options': {'criterion': 'x'}}}\n"
        "page = render_report(s, m, {})\n"
        "assert 'data:image/png;base64,' in page\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    src = Path(__file__).resolve().parents[2] / "python" / "thresher"
    for f in src.rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, f


def test_score_only_run_writes_a_report(bigbench_path, tmp_path):
    from conftest import write_bigbench_head

    p = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 150)
    res = run_pipeline(
        PipelineConfig(
            data=str(p), out=str(tmp_path / "o"), criteria=["fake_len", "mtld"], score_only=True,
            plugins=[PLUGIN], quiet=True, shard_size=50,
        )
    )  # fmt: skip
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert res.report_path == tmp_path / "o" / "report.html"
    assert "thresher scoring report" in html and "Summary per criterion" in html and "Spearman" in html
    assert "<script" not in html.lower() and "Top selected" not in html


def test_report_from_a_manifest_dict_equals_the_one_from_its_file(run_dir, tmp_path):
    """write_report(manifest=dict) (the pipeline, before manifest.json exists) gives the same page as
    reading manifest.json back; the run's own report.html is that page."""
    import json

    from thresher.report import write_report

    d = tmp_path / "copy"
    d.mkdir()
    shutil.copy(run_dir / "scores.parquet", d / "scores.parquet")
    m = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    shuffled = dict(reversed(list(m.items())))  # key order must not matter (the file's keys are sorted)
    a = write_report(d, manifest=shuffled, path=d / "a.html").read_bytes()
    shutil.copy(run_dir / "manifest.json", d / "manifest.json")
    b = write_report(d, path=d / "b.html").read_bytes()
    assert a == b
    from thresher.io import Source

    src = Source(run_dir.parent / "pool.jsonl", shard_size=200)
    c = write_report(d, manifest=m, source=src, path=d / "c.html").read_bytes()
    assert c == (run_dir / "report.html").read_bytes() and b"Top selected" in c  # the pipeline's own page
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no staging folder left behind
