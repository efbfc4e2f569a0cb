"""What every selector shares: the budget policy, registration with validated options, the score
columns a selector reads, and the helpers for score columns and embeddings.

A selector is ``fn(scores: DataFrame, k: int, *, embeddings=None, groups=None, seed=0, **options)
-> np.ndarray[int64]``: row positions into ``scores`` in selection order (best first), at most
``k`` of them. Rows whose score is NaN are never selected.

A selector registered with :func:`selector` is called through one wrapper that

* validates the options against the selector's typed :class:`~thresher.registry.Option` list
  (:class:`~thresher.errors.OptionError` naming the option, before any work), and
* passes ``k`` through :func:`check_k`, the one budget policy: a ``k`` larger than the rows given
  is clamped to them with a logged notice; a negative or non-integer ``k`` is refused.

:func:`columns_read` names the score columns a selector reads (its ``reads`` declaration), so the
pipeline keeps exactly those columns in memory.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from ..errors import OptionError
from ..ops.rows import nonfinite_rows, row_norms
from ..registry import CRITERIA, SELECTORS, Entry, Option

log = logging.getLogger("thresher.selectors")

ReadsFn = Callable[[dict], list]


# ------------------------------------------------------------------ budget
def check_k(k: Any, n: int, who: str) -> int:
    """The budget every selector uses: ``min(k, n)``, with a notice when ``k > n``.

    ``k`` must be a non-negative integer (an integral float such as ``6.0`` is taken);
    anything else raises :class:`OptionError`. ``n`` is the number of rows the selector was given."""
    if isinstance(k, (float, np.floating)) and float(k).is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise OptionError(f"selector {who}: k: expected a non-negative integer, got {k!r}")
    if k > n:
        log.warning("selector %s: budget k=%d is larger than the %d eligible rows; selecting %d", who, k, n, n)
        return int(n)
    return int(k)


# ------------------------------------------------------------ column reads
def reads_criterion(options: dict) -> list:
    """Default ``reads``: the ``criterion`` option's column when it is set."""
    crit = options.get("criterion")
    return [crit] if crit else []


def reads_objectives(options: dict) -> list:
    """``reads`` of the multi-objective selectors: the objectives' columns (none given, or one that
    cannot be parsed: an :class:`OptionError` when the plan is checked, before any scoring)."""
    try:
        return [name for name, _ in parse_objectives(options.get("objectives"))]
    except OptionError:
        raise
    except ValueError as exc:
        raise OptionError(f"selector: {exc}") from None


def columns_read(entry: Entry, options: dict) -> list[str]:
    """The score columns the selector ``entry`` reads with ``options`` (defaults filled in).

    From the registration's ``reads`` (a callable ``options -> list[str]``); without one, the
    ``criterion`` option's column when set. Columns a selector picks itself from the scores
    (the only criterion column when ``criterion`` is unset) are not listed. Unknown or invalid
    options raise :class:`OptionError`."""
    opts = entry.resolve_options(dict(options or {}))
    reads = entry.meta.get("reads") or reads_criterion
    out: list[str] = []
    for c in reads(opts):
        if c not in out:
            out.append(c)
    return out


def token_budget_refusal(entry: Entry, options: dict) -> Optional[str]:
    """Why the selector ``entry`` with ``options`` takes no token budget (``--tokens``), or None.

    A token budget keeps the longest prefix of the selector's order of every eligible row whose tokens
    fit, which is that selector's selection only when its rows for a budget ``k`` are the first ``k`` of
    one order; a selector whose rows for ``k`` are not (quotas shared out of ``k``) registers ``no_tokens``
    (``options -> reason or None``)."""
    refuse = entry.meta.get("no_tokens")
    return refuse(entry.resolve_options(dict(options or {}))) if refuse is not None else None


def default_budget(entry: Entry) -> dict:
    """The budget of a run that gives none: every row the selector passes (``{"ratio": 1.0}``) for one
    that sizes its selection itself (a threshold), else none (the run asks for one)."""
    return {"ratio": 1.0} if entry.meta.get("sizes_itself") else {}


# ------------------------------------------------------------ registration
def selector(
    name: str,
    *,
    doc: str,
    options: Iterable[Option] = (),
    needs: tuple = (),
    reads: Optional[ReadsFn] = None,
    no_tokens: Optional[Callable[[dict], Optional[str]]] = None,
    sizes_itself: bool = False,
    check: Optional[Callable[[dict], None]] = None,
) -> Callable:
    """Register ``fn`` in :data:`SELECTORS` behind the wrapper that validates options and ``k``.

    ``fn`` receives every option (defaults filled in, values converted to their types) and a
    ``k`` within ``[0, len(scores)]``. ``needs``: ``("embeddings",)`` when it needs embeddings;
    ``reads``: the score columns it reads (see :func:`columns_read`; default ``criterion``);
    ``no_tokens``: see :func:`token_budget_refusal`; ``sizes_itself``: its own rule decides how many rows
    pass (a threshold), so a run given no budget keeps every row it passes (:func:`default_budget`);
    ``check``: raises :class:`OptionError` for options that are valid one by one but not together, called
    on the resolved options before the selector runs and when a run's plan is made (:func:`check_options`)."""
    opts = list(options)
    checker = Entry(name, None, doc, {o.name: o for o in opts})

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(
            scores: Any, k: Any, *, embeddings: Any = None, groups: Any = None, seed: int = 0, **given: Any
        ) -> np.ndarray:
            resolved = checker.resolve_options(given)
            if check is not None:
                run_check(name, check, resolved)
            kk = check_k(k, len(scores), name)
            return fn(scores, kk, embeddings=embeddings, groups=groups, seed=seed, **resolved)

        SELECTORS.register(
            name,
            doc=doc,
            options=opts,
            needs=tuple(needs),
            reads=reads or reads_criterion,
            no_tokens=no_tokens,
            sizes_itself=sizes_itself,
            check=check,
        )(run)
        return run

    return deco


def check_options(entry: Entry, resolved: dict) -> None:
    """The selector's own check of its resolved options together (``check=`` of :func:`selector`)."""
    check = entry.meta.get("check")
    if check is not None:
        run_check(entry.name, check, resolved)


def run_check(name: str, check: Callable, resolved: dict) -> None:
    """``check(resolved)``, its error naming the selector (``selector NAME: option ...: ...``)."""
    try:
        check(resolved)
    except OptionError as exc:
        if str(exc).startswith("selector "):
            raise
        raise OptionError(f"selector {name}: {exc}") from None


# ------------------------------------------------------------------ options
CRITERION = Option("criterion", None, "score column to select on (default: the only criterion column)", type=str)
DIRECTION = Option(
    "direction", None, "max or min (default: the criterion's registered direction)", (None, "max", "min"), type=str
)
DEVICE = Option("device", "auto", "auto, cpu or cuda", ("auto", "cpu", "cuda"), type=str)
N_CLUSTERS = Option("n_clusters", None, "default floor(sqrt(N/2))", type=int, min=1)


# ------------------------------------------------------------ score columns
def criterion_direction(name: str) -> str:
    """The direction a criterion registered (``max`` or ``min``); ``max`` for plain columns."""
    base = name.split(".")[0]
    if name == base and base in CRITERIA:
        return CRITERIA.get(base).meta.get("direction", "max")
    return "max"


def _objective(o: Any) -> tuple[Any, Any]:
    if isinstance(o, dict):
        return o.get("name"), o.get("direction")
    if isinstance(o, (list, tuple)):
        return o[0], (o[1] if len(o) > 1 else None)
    if isinstance(o, str):
        name, _, d = o.partition(":")
        return name, d or None
    raise ValueError(f"objectives: cannot read {o!r}; write 'name:max' or 'name:min'")


def parse_objectives(objectives: Any) -> list[tuple[str, bool]]:
    """``["ifd:max", ("knn_distance", "min"), {"name": .., "direction": ..}]`` -> [(column, maximize)]."""
    if objectives is None or (isinstance(objectives, (list, tuple)) and len(objectives) == 0):
        raise ValueError("objectives: give at least one objective, e.g. ['ifd:max', 'knn_distance:max']")
    if isinstance(objectives, str):
        objectives = [o for o in objectives.split(",") if o]
    out = []
    for o in objectives:
        name, d = _objective(o)
        if not name:
            raise ValueError(f"objectives: empty name in {o!r}")
        d = d or criterion_direction(name)
        if d not in ("max", "min"):
            raise ValueError(f"objectives: direction of {name!r} must be 'max' or 'min', got {d!r}")
        out.append((name, d == "max"))
    return out


def column(scores: Any, name: str) -> np.ndarray:
    """A score column as float64 (NaN for missing values)."""
    if name not in scores.columns:
        raise ValueError(f"criterion: no column {name!r} in the scores; columns: {list(scores.columns)}")
    try:
        return scores[name].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise ValueError(f"criterion: column {name!r} is not numeric") from None


def default_criterion(scores: Any) -> str:
    """The only numeric criterion column of ``scores`` (no ``.component`` columns)."""
    cands = [
        c
        for c in scores.columns
        if c != "id"
        and "." not in c
        and c not in ("group", "selected", "rank")
        and np.issubdtype(scores[c].dtype, np.number)
    ]
    if len(cands) != 1:
        raise ValueError(f"criterion: name the score column to select on (numeric columns: {cands})")
    return cands[0]


def maximizing(criterion: str, direction: Optional[str]) -> bool:
    """Whether larger values of ``criterion`` are better (``direction`` or the registered one)."""
    return (direction or criterion_direction(criterion)) == "max"


def score_values(
    scores: Any, criterion: Optional[str], direction: Optional[str], required: bool = True
) -> tuple[Optional[np.ndarray], bool]:
    """(values, maximize) of the ranking column; (None, True) when optional and absent."""
    if criterion is None:
        try:
            criterion = default_criterion(scores)
        except ValueError:
            if required:
                raise
            return None, True
    return column(scores, criterion), maximizing(criterion, direction)


def order_by(values: np.ndarray, maximize: bool) -> np.ndarray:
    """Positions of the finite values, best first, ties by lower position (NaN dropped)."""
    finite = np.flatnonzero(~np.isnan(values))
    key = -values[finite] if maximize else values[finite]
    return finite[np.lexsort((finite, key))]


# --------------------------------------------------------------- embeddings
def as_embeddings(embeddings: Any, n: int, who: str, *, normalize: bool = True) -> np.ndarray:
    """[n, d] float32 embeddings checked (shape, finite values), L2-normalised unless told otherwise
    (normalised: a new array; see ``embedding_rows`` and ``unit_norms`` for selectors that divide as
    they read)."""
    e = embedding_rows(embeddings, n, who)
    return e / unit_norms(e) if normalize else e


def embedding_rows(embeddings: Any, n: int, who: str) -> np.ndarray:
    """[n, d] float32 embeddings checked (shape, finite values), not normalised: a float32 C-ordered
    input (the run's memory map of its embeddings) comes back as it is, not copied."""
    if embeddings is None:
        raise ValueError(f"embeddings: selector {who!r} needs embeddings (one row per score row)")
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    e = np.asarray(embeddings)
    if e.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-d [rows, dim] array, got shape {e.shape}")
    if e.shape[0] != n:
        raise ValueError(f"embeddings: {e.shape[0]} rows for {n} score rows (mismatched ids and embeddings?)")
    if not np.issubdtype(e.dtype, np.floating):
        raise ValueError(f"embeddings: expected floating point values, got dtype {e.dtype}")
    e = np.ascontiguousarray(e, dtype=np.float32)
    bad = nonfinite_rows(e)
    if bad.any():
        raise ValueError(f"embeddings: {int(bad.sum())} row(s) contain NaN or inf (first: row {int(np.argmax(bad))})")
    return e


def unit_norms(e: np.ndarray) -> np.ndarray:
    """[n, 1] float32 L2 norms of ``e``'s rows (``e / unit_norms(e)``: the normalised rows, bit for
    bit as ``e / np.linalg.norm(e, axis=1, keepdims=True)``); an all-zero row has no direction: error."""
    nrm = row_norms(e)
    if (nrm == 0).any():
        raise ValueError(f"embeddings: row {int(np.argmax(nrm[:, 0] == 0))} is all zeros (no direction)")
    return nrm
