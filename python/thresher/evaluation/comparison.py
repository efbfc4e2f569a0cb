"""The survey's unified comparison of data selectors: efficiency and feasibility.

Formulas from Liu, Ke, Jiang, Li, "Take the Essence and Discard the Dross: A
Rethinking on Data Selection for Fine-Tuning Large Language Models" (arXiv
2406.14115, NAACL 2025), implemented from the paper's definitions (see
``docs/comparison.md``):

* **Efficiency** (ratio-based): a method is a point (SDF, PIR), where SDF is the
  selected dataset fraction and PIR the performance improvement ratio of the
  model tuned on the selection (SEM) over its counterpart (BLM). PIR depends on
  the experimental *setting*: ``same_win`` (pairwise judge win counts, ties
  ignored), ``same_bench`` and ``other_bench`` (benchmark scores, mapped
  linearly through two published anchor points). Efficiency is the signed
  distance from the point to the baseline line l_base through
  Instruction-Mining and InstructionGPT-4, positive above the line.
* **Feasibility** (ranking-based): a simplicity penalty (trained LLMs, steps,
  public code) and a flexibility penalty (model-free, dataset-free, proprietary
  judge), each dense-ranked ascending; the feasibility rank is the dense rank
  of the sum of both ranks.

Every constant of the paper is a named parameter with the paper's value as
default, and the linear maps and l_base are computed from their anchor points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "SETTINGS",
    "SUPPORTED_SETTINGS",
    "LinearMap",
    "SAME_BENCH_MAP",
    "OTHER_BENCH_MAP",
    "BaselineLine",
    "L_BASE",
    "sdf",
    "mean_ratio",
    "pir",
    "residual",
    "perpendicular_distance",
    "dense_rank",
    "Feasibility",
    "SimplicityWeights",
    "FlexibilityWeights",
    "simplicity_penalty",
    "flexibility_penalty",
    "feasibility_ranks",
    "efficiency_ranks",
    "Method",
    "compare_methods",
    "FEASIBILITY_FIELDS",
]

SETTINGS = ("same_win", "same_bench", "other_bench", "other_win")
SUPPORTED_SETTINGS = ("same_win", "same_bench", "other_bench")


# --------------------------------------------------------------------------- maps
@dataclass(frozen=True)
class LinearMap:
    """y = slope * x + intercept, defined by two anchor points (x0, y0), (x1, y1)."""

    p0: tuple[float, float]
    p1: tuple[float, float]

    def __post_init__(self) -> None:
        if self.p0[0] == self.p1[0]:
            raise ValueError(f"LinearMap: anchor points need distinct x, got {self.p0} and {self.p1}")

    @property
    def slope(self) -> float:
        return (self.p1[1] - self.p0[1]) / (self.p1[0] - self.p0[0])

    @property
    def intercept(self) -> float:
        return self.p0[1] - self.slope * self.p0[0]

    def __call__(self, x: float) -> float:
        # Evaluate relative to the nearer anchor so the anchors map exactly.
        return self.p0[1] + self.slope * (x - self.p0[0])


# Published anchors (docs/comparison.md): r -> PIR.
SAME_BENCH_MAP = LinearMap((0.949, 1.284), (1.010, 1.475))
OTHER_BENCH_MAP = LinearMap((0.985, 1.344), (1.000, 1.426))


@dataclass(frozen=True)
class BaselineLine(LinearMap):
    """l_base: PIR as a linear function of SDF through two reference methods."""

    names: tuple[str, str] = ("Instruction-Mining", "InstructionGPT-4")

    def residual(self, sdf_value: float, pir_value: float) -> float:
        """Vertical residual PIR - l_base(SDF); positive above the line."""
        return float(pir_value) - self(float(sdf_value))

    def distance(self, sdf_value: float, pir_value: float) -> float:
        """Signed perpendicular distance in data units; positive above the line."""
        return self.residual(sdf_value, pir_value) / math.sqrt(1.0 + self.slope**2)


L_BASE = BaselineLine((0.025, 1.400), (0.058, 1.443))


# --------------------------------------------------------------------------- efficiency
def _finite(name: str, x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {x!r}")
    return v


def check_sdf(value: Any, name: str = "sdf") -> float:
    v = _finite(name, value)
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{name}: the selected dataset fraction must be in (0, 1], got {v!r}")
    return v


def sdf(selected: int, pool: int) -> float:
    """Selected dataset fraction |selected| / |pool|, in (0, 1]."""
    s = _finite("selected", selected)
    p = _finite("pool", pool)
    if p <= 0:
        raise ValueError(f"pool: the candidate pool size must be > 0, got {pool!r}")
    if s <= 0:
        raise ValueError(f"selected: the selected subset size must be > 0, got {selected!r}")
    if s > p:
        raise ValueError(f"selected: {selected!r} is larger than pool {pool!r} (SDF must be in (0, 1])")
    return check_sdf(s / p)


def _as_list(name: str, values: Any) -> list[float]:
    if isinstance(values, (int, float, np.floating, np.integer)):
        values = [values]
    try:
        out = [_finite(f"{name}[{i}]", v) for i, v in enumerate(values)]
    except TypeError:
        raise ValueError(f"{name}: expected a number or a list of numbers, got {values!r}") from None
    if not out:
        raise ValueError(f"{name}: empty list (one value per evaluation set expected)")
    return out


def mean_ratio(sem: Any, blm: Any, *, setting: str = "same_bench") -> float:
    """r = mean_i SEM_i / BLM_i over evaluation sets; a single BLM value is broadcast.

    For ``same_win`` the values are win counts (SEM wins, BLM wins; ties are not
    passed in, they are ignored) and must be >= 0 with BLM wins > 0.
    """
    s = _as_list("sem", sem)
    b = _as_list("blm", blm)
    if len(b) == 1 and len(s) > 1:
        b = b * len(s)
    if len(b) != len(s):
        raise ValueError(
            f"blm: {len(b)} values for {len(s)} sem values (give one BLM value per evaluation set, or one for all)"
        )
    if setting == "same_win":
        for i, (x, y) in enumerate(zip(s, b)):
            if x < 0:
                raise ValueError(f"sem[{i}]: win counts must be >= 0, got {x!r}")
            if y < 0:
                raise ValueError(f"blm[{i}]: win counts must be >= 0, got {y!r}")
    for i, y in enumerate(b):
        if y == 0:
            what = "zero wins for the BLM" if setting == "same_win" else "a BLM score of 0"
            raise ValueError(f"blm[{i}]: {what} on evaluation set {i}: the ratio SEM/BLM is undefined")
    return float(np.mean([x / y for x, y in zip(s, b)]))


def _check_setting(setting: Any) -> str:
    if setting == "other_win":
        raise ValueError(
            "setting: 'other_win' (another model as counterpart, judged by wins) is not supported "
            "by the paper's PIR; use same_win, same_bench or other_bench"
        )
    if setting not in SUPPORTED_SETTINGS:
        raise ValueError(f"setting: unknown setting {setting!r}; known: {', '.join(SUPPORTED_SETTINGS)}")
    return setting


def pir(
    setting: str,
    sem: Any,
    blm: Any,
    *,
    same_bench_map: LinearMap = SAME_BENCH_MAP,
    other_bench_map: LinearMap = OTHER_BENCH_MAP,
) -> float:
    """Performance improvement ratio in one of the paper's settings.

    * ``same_win``: PIR = r, with SEM_i/BLM_i the win counts on test set i.
    * ``same_bench``: PIR = linear map of r through (0.949 -> 1.284), (1.010 -> 1.475).
    * ``other_bench``: PIR = linear map of r through (0.985 -> 1.344), (1.000 -> 1.426).
    * ``other_win``: not supported by the paper (ValueError).
    """
    setting = _check_setting(setting)
    r = mean_ratio(sem, blm, setting=setting)
    if setting == "same_win":
        return r
    if setting == "same_bench":
        return float(same_bench_map(r))
    return float(other_bench_map(r))


def pir_from_wtl(wins: Sequence[int], losses: Sequence[int]) -> float:
    """``same_win`` PIR from (SEM wins, BLM wins) per test set; ties are not used."""
    return pir("same_win", wins, losses)


def residual(sdf_value: float, pir_value: float, line: BaselineLine = L_BASE) -> float:
    return line.residual(check_sdf(sdf_value), _finite("pir", pir_value))


def perpendicular_distance(sdf_value: float, pir_value: float, line: BaselineLine = L_BASE) -> float:
    return line.distance(check_sdf(sdf_value), _finite("pir", pir_value))


# --------------------------------------------------------------------------- ranks
def dense_rank(values: Iterable[float], *, descending: bool = False, decimals: Optional[int] = 9) -> np.ndarray:
    """Dense ranks starting at 1; equal values share a rank, the next rank is +1.

    ``decimals`` rounds before comparing, so values equal up to floating-point
    noise (e.g. the two points that define l_base, both at residual 0) tie.
    NaN is rejected.
    """
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.isnan(v).any():
        raise ValueError(f"values: NaN at position {int(np.flatnonzero(np.isnan(v))[0])} cannot be ranked")
    if decimals is not None:
        v = np.round(v, decimals) + 0.0  # +0.0 turns -0.0 into 0.0
    if descending:
        v = -v
    uniq = np.unique(v)
    return (np.searchsorted(uniq, v) + 1).astype(np.int64)


# --------------------------------------------------------------------------- feasibility
FEASIBILITY_FIELDS = ("trained_llms", "steps", "model_free", "dataset_free", "proprietary_judge")


@dataclass(frozen=True)
class Feasibility:
    """The inputs of the paper's simplicity and flexibility penalties for one method.

    trained_llms: number of LLMs trained to build the selector (0 if none).
    steps: number of algorithm steps of the method.
    model_free: changing the selector model does not change the result.
    dataset_free: a new candidate pool needs no retraining of the selector.
    proprietary_judge: needs a proprietary judge (ChatGPT, GPT-4, ...).
    public_code: the method's code is public (thresher's recipes are).
    small_proxy: the trained LLMs are small proxy LMs (Superfiltering's GPT-2),
        weighted ``SimplicityWeights.small_proxy_llm`` instead of ``llm``.
    """

    trained_llms: int
    steps: int
    model_free: bool
    dataset_free: bool
    proprietary_judge: bool
    public_code: bool = True
    small_proxy: bool = False

    def __post_init__(self) -> None:
        for name in ("trained_llms", "steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
        for name in ("model_free", "dataset_free", "proprietary_judge", "public_code", "small_proxy"):
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{name}: expected true or false, got {v!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "feasibility") -> "Feasibility":
        """Build from a dict (YAML / recipe meta); names the missing or unknown field."""
        if isinstance(data, Feasibility):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping of {', '.join(FEASIBILITY_FIELDS)}, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [f for f in FEASIBILITY_FIELDS if f not in data]
        if missing:
            raise ValueError(
                f"{where}: missing feasibility input(s) {missing} (required: {', '.join(FEASIBILITY_FIELDS)})"
            )
        try:
            return cls(**dict(data))
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SimplicityWeights:
    """Simplicity penalty = llm * trained LLMs + step * steps + no_public_code * (no public code).

    Special cases of the paper, explicit: a small proxy LM weighs ``small_proxy_llm``
    (1.5) instead of ``llm`` (2); more than ``cap_llms`` (100) trained LLMs fix the
    penalty at ``cap_penalty`` (200).
    """

    llm: float = 2.0
    small_proxy_llm: float = 1.5
    step: float = 1.0
    no_public_code: float = 1.0
    cap_llms: int = 100
    cap_penalty: float = 200.0


@dataclass(frozen=True)
class FlexibilityWeights:
    """Flexibility penalty = 3 (not model-free) + 2 (not dataset-free) + 1 (proprietary judge)."""

    not_model_free: float = 3.0
    not_dataset_free: float = 2.0
    proprietary_judge: float = 1.0


def simplicity_penalty(f: Feasibility, weights: SimplicityWeights = SimplicityWeights()) -> float:
    if f.trained_llms > weights.cap_llms:
        return float(weights.cap_penalty)
    w = weights.small_proxy_llm if f.small_proxy else weights.llm
    return float(w * f.trained_llms + weights.step * f.steps + weights.no_public_code * (not f.public_code))


def flexibility_penalty(f: Feasibility, weights: FlexibilityWeights = FlexibilityWeights()) -> float:
    return float(
        weights.not_model_free * (not f.model_free)
        + weights.not_dataset_free * (not f.dataset_free)
        + weights.proprietary_judge * bool(f.proprietary_judge)
    )


def feasibility_ranks(
    items: Sequence[Feasibility],
    *,
    simplicity: SimplicityWeights = SimplicityWeights(),
    flexibility: FlexibilityWeights = FlexibilityWeights(),
) -> dict[str, np.ndarray]:
    """Penalties and dense ranks (ascending) for a set of methods compared together."""
    sp = np.array([simplicity_penalty(f, simplicity) for f in items], dtype=np.float64)
    fp = np.array([flexibility_penalty(f, flexibility) for f in items], dtype=np.float64)
    sr = dense_rank(sp)
    fr = dense_rank(fp)
    return {
        "simplicity_penalty": sp,
        "simplicity_rank": sr,
        "flexibility_penalty": fp,
        "flexibility_rank": fr,
        "feasibility_rank": dense_rank(sr + fr),
    }


def efficiency_ranks(
    points: Sequence[tuple[float, float]], line: BaselineLine = L_BASE, *, decimals: Optional[int] = 9
) -> dict[str, np.ndarray]:
    """Residuals, perpendicular distances and dense efficiency ranks (descending)."""
    res = np.array([residual(s, p, line) for s, p in points], dtype=np.float64)
    dist = np.array([perpendicular_distance(s, p, line) for s, p in points], dtype=np.float64)
    return {"residual": res, "distance": dist, "efficiency_rank": dense_rank(res, descending=True, decimals=decimals)}


# --------------------------------------------------------------------------- table
@dataclass
class Method:
    """One method placed in the comparison: its efficiency point and feasibility inputs."""

    name: str
    sdf: float
    pir: float
    feasibility: Optional[Feasibility]  # None: not published (left out of the feasibility ranks)
    source: str = ""
    notes: str = ""
    user: bool = False  # a user's run (vs. a published method)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sdf = check_sdf(self.sdf, f"{self.name}: sdf")
        self.pir = _finite(f"{self.name}: pir", self.pir)
        if self.feasibility is not None and not isinstance(self.feasibility, Feasibility):
            self.feasibility = Feasibility.from_mapping(self.feasibility, where=f"{self.name}: feasibility")


def compare_methods(
    methods: Sequence[Method],
    *,
    line: BaselineLine = L_BASE,
    simplicity: SimplicityWeights = SimplicityWeights(),
    flexibility: FlexibilityWeights = FlexibilityWeights(),
):
    """One row per method with every column of both published tables.

    Returns a ``pandas.DataFrame`` with name, sdf, pir, residual, distance,
    efficiency_rank, the feasibility inputs, both penalties and ranks and the
    feasibility rank, in input order. All ranks are computed over the given set.
    """
    names = [m.name for m in methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"methods: duplicate method name(s) {dup}")
    eff = efficiency_ranks([(m.sdf, m.pir) for m in methods], line)
    with_f = [i for i, m in enumerate(methods) if m.feasibility is not None]
    feas = feasibility_ranks([methods[i].feasibility for i in with_f], simplicity=simplicity, flexibility=flexibility)
    pos = {i: j for j, i in enumerate(with_f)}
    rows = []
    for i, m in enumerate(methods):
        row = {
            "name": m.name,
            "user": m.user,
            "sdf": m.sdf,
            "pir": m.pir,
            "residual": float(eff["residual"][i]),
            "distance": float(eff["distance"][i]),
            "efficiency_rank": int(eff["efficiency_rank"][i]),
        }
        j = pos.get(i)
        for f in fields(Feasibility):
            row[f.name] = getattr(m.feasibility, f.name) if j is not None else None
        for k in ("simplicity_penalty", "flexibility_penalty"):
            row[k] = float(feas[k][j]) if j is not None else float("nan")
        for k in ("simplicity_rank", "flexibility_rank", "feasibility_rank"):
            row[k] = int(feas[k][j]) if j is not None else None
        row["source"] = m.source
        row["notes"] = m.notes
        rows.append(row)
    df = pd.DataFrame(rows)
    for k in ("simplicity_rank", "flexibility_rank", "feasibility_rank"):
        if k in df:
            df[k] = df[k].astype("Int64")
    return df
