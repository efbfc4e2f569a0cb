"""The one check of a scorer's output (used by the driver and by pool workers): one row per input
row, keyed by id, the criterion's main column present, columns renamed for an ``as:`` alias."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ..frames import as_pandas


def check_scores(df: Any, table: Any, name: str, alias: Optional[str] = None) -> pd.DataFrame:
    """A scorer's output: one row per input row, keyed by id, main column present."""
    if not isinstance(df, pd.DataFrame):
        df = as_pandas(df)
    if "id" not in df.columns or name not in df.columns:
        raise ValueError(f"criterion {name!r}: scorer returned columns {list(df.columns)}; expected 'id' and {name!r}")
    if len(df) != len(table):
        raise ValueError(f"criterion {name!r}: scorer returned {len(df)} rows for {len(table)} samples")
    ids = table["id"].astype(str).to_numpy()
    got = df["id"].astype(str).to_numpy()
    if not np.array_equal(ids, got):
        df = df.set_index(df["id"].astype(str)).reindex(ids).reset_index(drop=True)
        if df[name].isna().all() and len(ids):
            raise ValueError(f"criterion {name!r}: scorer returned ids that do not match the batch")
        df["id"] = ids
    keep = ["id"] + [c for c in df.columns if c == name or c.startswith(name + ".")]
    df = df[keep].copy()
    if alias and alias != name:
        df.columns = ["id"] + [alias + c[len(name) :] for c in df.columns[1:]]
    for c in df.columns:
        if c.endswith(".reason"):
            df[c] = df[c].fillna("").astype(str)
        elif c != "id" and df[c].dtype == object:
            try:
                df[c] = df[c].astype(np.float64)
            except (TypeError, ValueError):
                df[c] = df[c].astype(str)
    return df
