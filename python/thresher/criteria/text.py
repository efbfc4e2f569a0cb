"""Cheap model-free text criteria: ``length`` and ``mtld``.

``length``: approximate token count (word pieces and punctuation marks, see
:func:`thresher.io.textstats.approx_tokens`) or characters, of the instruction+input,
the output, and their sum (main column). ``mtld``: Measure of Textual Lexical Diversity
(McCarthy & Jarvis 2010), the mean of a forward and a backward pass, factor threshold
0.72 by default; an Instruction-Mining indicator. Both run in O(characters) per sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..frames import as_pandas
from ..io.textstats import TEXT_FIELDS, approx_tokens, mtld, sample_text_fields
from ..registry import CRITERIA, Option
from .base import Criterion, sample_ids


@CRITERIA.register(
    "length",
    doc="approximate token count (regex word pieces): instruction+input, output, total",
    options=[Option("unit", "tokens", "tokens (regex pieces) or chars", ("tokens", "chars"))],
    direction="max",
    needs=(),
)
class Length(Criterion):
    def __init__(self, unit: str = "tokens", **options: Any) -> None:
        super().__init__(unit=unit, **options)
        self.unit = self.options["unit"]

    def _count(self, s: pd.Series) -> np.ndarray:
        if self.unit == "chars":
            return s.str.len().to_numpy(dtype=np.float64)
        return np.fromiter((approx_tokens(t) for t in s), dtype=np.float64, count=len(s))

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch)
        a = self._count(sample_text_fields(df, "instruction"))
        b = self._count(df["output"].astype(str))
        return pd.DataFrame(
            {
                "id": sample_ids(df),
                "length": a + b,
                "length.instruction": a,
                "length.output": b,
                "length.reason": [""] * len(df),
            }
        )


@CRITERIA.register(
    "mtld",
    doc="lexical diversity (MTLD, McCarthy & Jarvis 2010) of the chosen text",
    options=[
        Option("field", "output", "which text", TEXT_FIELDS),
        Option("threshold", 0.72, "TTR factor threshold", min=0, max=1, min_exclusive=True, max_exclusive=True),
    ],
    direction="max",
    needs=(),
)
class MTLD(Criterion):
    def __init__(self, field: str = "output", threshold: float = 0.72, **options: Any) -> None:
        super().__init__(field=field, threshold=threshold, **options)
        self.field, self.threshold = self.options["field"], self.options["threshold"]

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch)
        vals = np.array([mtld(t, self.threshold) for t in sample_text_fields(df, self.field)], dtype=np.float64)
        reason = np.where(np.isnan(vals), "fewer than 2 words", "")
        return pd.DataFrame({"id": sample_ids(df), "mtld": vals, "mtld.reason": reason})
