"""Light fake criteria for the pipeline tests (loaded as a thresher plugin).

``fake_len``: output length x scale; logs every call (rows) to ``log`` and sleeps
``sleep`` seconds per call so a test can kill a run mid-way. ``fake_pool``: a
pool-scoped criterion (the rank of the output length within the whole pool).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from thresher.frames import as_pandas
from thresher.registry import CRITERIA, Option


def _log(path, line):
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


@CRITERIA.register(
    "fake_len",
    doc="output length x scale (test criterion)",
    options=[
        Option("scale", 1.0, "multiplier"),
        Option("sleep", 0.0, "seconds per call"),
        Option("log", None, "append one line per call to this file"),
    ],
    direction="max",
    needs=(),
)
class FakeLen:
    def __init__(self, scale=1.0, sleep=0.0, log=None):
        self.scale, self.sleep, self.log = float(scale), float(sleep), log

    def __call__(self, batch):
        df = as_pandas(batch)
        _log(self.log, f"fake_len {len(df)} {df['id'].iloc[0] if len(df) else ''}")
        time.sleep(self.sleep)
        v = df["output"].str.len().to_numpy(np.float64) * self.scale
        v[df["output"].str.len().to_numpy() == 0] = np.nan
        return pd.DataFrame(
            {
                "id": df["id"],
                "fake_len": v,
                "fake_len.instruction": df["instruction"].str.len().to_numpy(np.float64),
                "fake_len.reason": np.where(np.isnan(v), "empty output", ""),
            }
        )

    def cache_key(self):
        return f"fake_len/v1/scale={self.scale}"


@CRITERIA.register(
    "fake_pool",
    doc="rank of the output length within the pool (test, pool-scoped)",
    options=[Option("log", None, "call log")],
    direction="max",
    needs=(),
    scope="pool",
)
class FakePool:
    def __init__(self, log=None):
        self.log = log

    def __call__(self, batch):
        df = as_pandas(batch)
        _log(self.log, f"fake_pool {len(df)}")
        L = df["output"].str.len().to_numpy()
        r = np.argsort(np.argsort(L, kind="stable"), kind="stable").astype(np.float64) / max(len(L) - 1, 1)
        return pd.DataFrame({"id": df["id"], "fake_pool": r, "fake_pool.reason": [""] * len(df)})

    def cache_key(self):
        return "fake_pool/v1"
