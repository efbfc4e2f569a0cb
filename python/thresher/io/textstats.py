"""Plain text statistics (no registry, no models): approximate token counts and MTLD.

``approx_tokens``: word pieces and punctuation marks (the regex ``\\w+|[^\\w\\s]``).
``mtld``: Measure of Textual Lexical Diversity (McCarthy & Jarvis 2010), the mean of a
forward and a backward pass. ``sample_text_fields`` joins a sample table's fields. The
criteria built on them (``length``, ``mtld``) live in :mod:`thresher.criteria.text`.
"""

from __future__ import annotations

import re

import numpy as np

_TOK = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")

TEXT_FIELDS = ("output", "instruction", "all")


def approx_tokens(text: str) -> int:
    return len(_TOK.findall(text)) if text else 0


def sample_text_fields(df, field: str):
    """``output``, ``instruction`` (instruction + newline + input when there is one) or ``all`` (both)."""
    inp = df["input"].astype(str)
    ins = df["instruction"].astype(str) + np.where(inp != "", "\n" + inp, "")
    if field == "output":
        return df["output"].astype(str)
    if field == "instruction":
        return ins
    return ins + "\n" + df["output"].astype(str)


def mtld(text: str, threshold: float = 0.72) -> float:
    """MTLD of ``text`` (NaN for fewer than 2 words)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 2:
        return float("nan")
    return 0.5 * (_mtld_pass(words, threshold) + _mtld_pass(words[::-1], threshold))


def _mtld_pass(ws: list[str], threshold: float) -> float:
    factors, types, count = 0.0, set(), 0
    for w in ws:
        count += 1
        types.add(w)
        if len(types) / count <= threshold:
            factors += 1.0
            types, count = set(), 0
    if count > 0:
        ttr = len(types) / count
        factors += (1.0 - ttr) / (1.0 - threshold) if ttr < 1.0 else 0.0
    return len(ws) / factors if factors > 0 else float(len(ws))
