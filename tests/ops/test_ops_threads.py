"""BLAS rounding that does not follow the thread count: ``import thresher`` asks MKL for strict conditional
numerical reproducibility (MKL_CBWR=AUTO,STRICT) unless the user chose a mode, and says so when the process
made a matrix product before (MKL then ignores it). Each case runs in a fresh interpreter: MKL reads the
setting once, at a process's first product."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

PROBE = r"""
import json, logging, sys
import torch
if sys.argv[1] == "product-first":
    torch.ones(2, 2) @ torch.ones(2, 2)
import thresher
from thresher.ops.threads import warn_unless_strict
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("thresher.ops").addHandler(Keep())
mode = warn_unless_strict()
g = torch.Generator().manual_seed(0)
w = torch.randn(576, 576, generator=g)
differ = []
for m in range(1, 17):  # products of 1-16 rows (a short row's forward)
    x = torch.randn(m, 576, generator=g)
    torch.set_num_threads(1)
    one = x @ w
    torch.set_num_threads(2)
    differ += [] if torch.equal(one, x @ w) else [m]
print(json.dumps({"mode": mode, "differ": differ, "warnings": records}))
"""

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch built without MKL")


def probe(case: str, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE, case], env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sets_strict_mode_and_short_products_do_not_follow_threads():
    got = probe("import-first")
    assert got["mode"] == {"blas": "mkl", "MKL_CBWR": "AUTO,STRICT", "strict": True}
    assert got["differ"] == [] and got["warnings"] == []


def test_a_users_mode_is_kept_and_a_late_import_is_named():
    mine = probe("import-first", MKL_CBWR="COMPATIBLE")
    assert mine["mode"]["MKL_CBWR"] == "COMPATIBLE" and mine["mode"]["strict"] is False and mine["warnings"] == []
    late = probe("product-first")
    assert late["mode"] == {"blas": "mkl", "MKL_CBWR": "AUTO,STRICT", "strict": False}
    assert len(late["warnings"]) == 1 and "came after this process's first matrix product" in late["warnings"][0]
