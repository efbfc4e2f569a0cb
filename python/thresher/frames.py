"""Batch conversion shared by every layer: the sample table as a pandas DataFrame."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa


def as_pandas(batch: Any):
    """Accept a pandas DataFrame, a pyarrow Table/RecordBatch or a mapping of columns."""
    if isinstance(batch, pd.DataFrame):
        return batch
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        return batch.to_pandas()
    if isinstance(batch, Mapping):  # a dict of columns, or a lazy batch (HF Dataset.map(batched=True))
        return pd.DataFrame({k: batch[k] for k in batch})
    raise ValueError(f"batch: expected a pandas DataFrame, pyarrow Table or dict, got {type(batch).__name__}")
