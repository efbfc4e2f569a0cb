"""report.html: self-contained, renders in headless Chromium."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
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
