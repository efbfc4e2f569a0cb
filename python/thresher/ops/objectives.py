"""Validation of objective / score matrices shared by :mod:`.pareto` and :mod:`.ranking`.

``as_objectives`` turns a tensor or array into a float64 ``[N, M]`` tensor (device
kept) and ``maximize_flags`` one bool or one per column into a list of bools;
both raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch

__all__ = ["MaximizeArg", "as_objectives", "maximize_flags"]

MaximizeArg = Union[bool, Sequence[bool]]


# ----------------------------------------------------------------- validation
def as_objectives(x: Any, arg: str = "objectives", allow_1d: bool = False) -> torch.Tensor:
    """``x`` as a float64 tensor [N, M] (device kept); ValueError naming ``arg``.

    With ``allow_1d`` a [N] input becomes [N, 1].
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:
            raise ValueError(f"{arg}: expected a numeric [N, M] tensor or array ({exc})") from None
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{arg}: expected a real (float, int or bool) dtype, got {arr.dtype}")
        t = torch.as_tensor(arr)
    if t.dtype.is_complex:
        raise ValueError(f"{arg}: expected a real (float, int or bool) dtype, got {t.dtype}")
    if allow_1d and t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise ValueError(
            f"{arg}: expected a 2-d [N, M] tensor (one row per point, one column per objective), "
            f"got shape {tuple(t.shape)}" + ("; use x[:, None] for one objective" if t.dim() == 1 else "")
        )
    if t.shape[1] == 0:
        raise ValueError(f"{arg}: expected at least one column (objective), got shape {tuple(t.shape)}")
    try:
        return t.detach().to(torch.float64)
    except Exception as exc:
        raise ValueError(f"{arg}: cannot be cast to float64 ({exc})") from None


def maximize_flags(maximize: Any, m: int, arg: str = "maximize") -> list[bool]:
    """One bool per objective from a bool or a length-``m`` sequence of bools (or 0/1)."""

    def one(v: Any) -> bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)) and int(v) in (0, 1):
            return bool(v)
        raise ValueError(f"{arg}: expected booleans, got {v!r}")

    if isinstance(maximize, (bool, np.bool_)):
        return [bool(maximize)] * m
    if isinstance(maximize, torch.Tensor):
        maximize = maximize.detach().cpu().tolist()
    if isinstance(maximize, (str, bytes)) or not hasattr(maximize, "__len__"):
        raise ValueError(f"{arg}: expected a bool or a sequence of {m} bools, got {maximize!r}")
    flags = [one(v) for v in maximize]
    if len(flags) != m:
        raise ValueError(f"{arg}: expected {m} values (one per objective), got {len(flags)}")
    return flags
