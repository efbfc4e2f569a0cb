"""Cheap model-free text criteria: ``length`` and ``mtld``.

``length``: approximate token count (word pieces and punctuation marks, the regex
``\\w+|[^\\w\\s]``), of the instruction+input, the output, and their sum (main
column). ``mtld``: Measure of Textual Lexical Diversity (McCarthy & Jarvis 2010),
the mean of a forward and a backward pass, factor threshold 0.72; an
Instruction-Mining indicator. Both run in O(characters) per sample.
"""
from __future__ import annotations

import re

import numpy as np

import thresher

from ..frames import as_pandas
from ..registry import CRITERIA, Option

_TOK = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")


def approx_tokens(text: str) -> int:
    return len(_TOK.findall(text)) if text else 0


def _fields(df, field):
    ins = (df["instruction"].astype(str) + np.where(df["input"].astype(str) != "", "\n" + df["input"].astype(str), ""))
    if field == "output":
        return df["output"].astype(str)
    if field == "instruction":
        return ins
    return ins + "\n" + df["output"].astype(str)


@CRITERIA.register("length", doc="approximate token count (regex word pieces): instruction+input, output, total",
                   options=[Option("unit", "tokens", "tokens (regex pieces) or chars", ("tokens", "chars"))],
                   direction="max", needs=())
class Length:
    name = "length"

    def __init__(self, unit: str = "tokens") -> None:
        if unit not in ("tokens", "chars"):
            raise ValueError(f"unit: expected tokens or chars, got {unit!r}")
        self.unit = unit

    def _count(self, s) -> np.ndarray:
        if self.unit == "chars":
            return s.str.len().to_numpy(dtype=np.float64)
        return np.fromiter((approx_tokens(t) for t in s), dtype=np.float64, count=len(s))

    def __call__(self, batch):
        import pandas as pd

        df = as_pandas(batch)
        a = self._count(_fields(df, "instruction"))
        b = self._count(df["output"].astype(str))
        return pd.DataFrame({"id": df["id"].astype(str).to_numpy(), "length": a + b,
                             "length.instruction": a, "length.output": b,
                             "length.reason": [""] * len(df)})

    def cache_key(self) -> str:
        return f"length/v1/unit={self.unit}/thresher={thresher.__version__}"


def mtld(text: str, threshold: float = 0.72) -> float:
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 2:
        return float("nan")

    def one_pass(ws):
        factors, types, count = 0.0, set(), 0
        for w in ws:
            count += 1
            types.add(w)
            ttr = len(types) / count
            if ttr <= threshold:
                factors += 1.0
                types, count = set(), 0
        if count > 0:
            ttr = len(types) / count
            factors += (1.0 - ttr) / (1.0 - threshold) if ttr < 1.0 else 0.0
        return len(ws) / factors if factors > 0 else float(len(ws))

    return 0.5 * (one_pass(words) + one_pass(words[::-1]))


@CRITERIA.register("mtld", doc="lexical diversity (MTLD, McCarthy & Jarvis 2010) of the chosen text",
                   options=[Option("field", "output", "which text", ("output", "instruction", "all")),
                            Option("threshold", 0.72, "TTR factor threshold")],
                   direction="max", needs=())
class MTLD:
    name = "mtld"

    def __init__(self, field: str = "output", threshold: float = 0.72) -> None:
        if field not in ("output", "instruction", "all"):
            raise ValueError(f"field: expected output, instruction or all, got {field!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold: expected a value in (0, 1), got {threshold!r}")
        self.field, self.threshold = field, float(threshold)

    def __call__(self, batch):
        import pandas as pd

        df = as_pandas(batch)
        vals = np.array([mtld(t, self.threshold) for t in _fields(df, self.field)], dtype=np.float64)
        reason = np.where(np.isnan(vals), "fewer than 2 words", "")
        return pd.DataFrame({"id": df["id"].astype(str).to_numpy(), "mtld": vals, "mtld.reason": reason})

    def cache_key(self) -> str:
        return f"mtld/v1/field={self.field}/threshold={self.threshold}/thresher={thresher.__version__}"
