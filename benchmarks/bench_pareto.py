"""Benchmark of thresher.ops.pareto_ranks against moocore and pymoo (CPU).

Side by side in one run, interleaved repeats, median (and min) seconds, for
M = 2 and 3 objectives at N = 10^4, 10^5, 10^6 points on three kinds of data:

* ``uniform``: i.i.d. U(0, 1) objectives (tens to a few hundred fronts);
* ``corr``:    correlated objectives ``z + 0.02 * U(0, 1)`` with a shared ``z``
  (hundreds to thousands of fronts);
* ``ties``:    integer-valued objectives in 0..99 (many ties and duplicates);
* ``simplex``: points on the unit simplex (Dirichlet(1)): a single front, the
  case where per-front structures are largest.

Methods (all minimise, numpy float64 input):

* ``thresher``:        ``thresher.ops.pareto_ranks(a, maximize=False, backend="cpu")``
  (the public op, with its validation and NaN handling);
* ``thresher_kernel``: the bare ``thresher._C.pareto_ranks`` call;
* ``moocore``:         ``moocore.pareto_rank(a)`` (O(N log N) for M = 2, one front
  at a time for M >= 3);
* ``pymoo``:           ``NonDominatedSorting().do(a, return_rank=True)``; in pymoo
  0.6.2 this delegates to moocore.pareto_rank (plus building the fronts), so it
  runs only up to N = --pymoo-max-n3 for M = 3 (beyond, it is moocore's time plus);
* ``pymoo_ens``:       pymoo's own compiled efficient non-dominated sort
  (``efficient_non_dominated_sort``, O(M N^2) worst case), only for N <= --ens-max-n;
* ``numpy_lexsort``:   ``np.lexsort`` of the same data, for scale (not a ranking).

Each case: an untimed warm-up round, then up to --repeat interleaved timed
rounds (a method stops after ~3 s of timed runs; N = 10^6 gets --repeat-large
rounds for M = 2 and a single timed round for M = 3, where moocore needs minutes).
Every baseline's ranks must equal thresher's (``identical``). Ratios are
``baseline time / thresher time`` (> 1: thresher is faster). Writes
``benchmarks/results/pareto-cpu.json``. The machine is shared and noisy: read the
ratios of one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

# Idle OpenMP threads of one library (torch, pymoo, ...) must not spin on the
# 2 shared cores while the next method runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def make(kind: str, n: int, m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, m))
    if kind == "corr":
        z = rng.random(n)
        return np.ascontiguousarray(np.stack([z + 0.02 * rng.random(n) for _ in range(m)], 1))
    if kind == "ties":
        return rng.integers(0, 100, size=(n, m)).astype(np.float64)
    if kind == "simplex":
        return rng.dirichlet(np.ones(m), size=n)
    raise ValueError(kind)


def side_by_side(methods: dict[str, Callable[[], np.ndarray]], repeat: int, budget_s: float = 3.0) -> tuple[dict, dict]:
    """Interleaved rounds: an untimed warm-up (its results kept for the identity
    check; skipped when repeat == 1, where the single timed round is kept), then
    `repeat` timed rounds; a method stops being timed once its timed rounds
    exceed `budget_s` seconds (slow baselines), keeping at least one."""
    results: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {k: [] for k in methods}
    if repeat > 1:
        for k, fn in methods.items():
            results[k] = np.asarray(fn())
    for _ in range(repeat):
        for k, fn in methods.items():
            if times[k] and sum(times[k]) > budget_s:
                continue
            t0 = time.perf_counter()
            r = fn()
            times[k].append(time.perf_counter() - t0)
            results.setdefault(k, np.asarray(r))
    return ({k: {"median_s": statistics.median(v), "min_s": min(v), "runs": len(v)} for k, v in times.items()}, results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--objectives", default="2,3")
    ap.add_argument("--kinds", default="uniform,corr,ties,simplex")
    ap.add_argument(
        "--repeat",
        type=int,
        default=15,
        help="timed rounds for N < 10^6 (after a warm-up; slow baselines stop after ~3 s)",
    )
    ap.add_argument(
        "--repeat-large",
        type=int,
        default=3,
        help="timed rounds for N >= 10^6 (M = 3: 1, no warm-up: moocore takes minutes)",
    )
    ap.add_argument("--ens-max-n", type=int, default=10000, help="largest N for pymoo_ens")
    ap.add_argument(
        "--pymoo-max-n3",
        type=int,
        default=100000,
        help="largest N for pymoo with M >= 3 (it runs moocore, then builds the fronts)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pareto-cpu.json"))
    args = ap.parse_args()

    import moocore
    import torch
    from pymoo.functions import load_function
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    from thresher import _native
    from thresher.ops import pareto_ranks

    C = _native.cpu_ext()
    if C is None:
        sys.exit(f"thresher._C is not built: {_native.why_unavailable('cpu')}")
    ens = load_function("efficient_non_dominated_sort")
    nds = NonDominatedSorting()

    def ens_ranks(a: np.ndarray) -> np.ndarray:
        r = np.empty(len(a), dtype=np.int64)
        for i, f in enumerate(ens(a)):
            r[np.asarray(f, dtype=np.int64)] = i
        return r

    rows = []
    for m in [int(v) for v in args.objectives.split(",")]:
        for n in [int(v) for v in args.sizes.split(",")]:
            for kind in args.kinds.split(","):
                a = make(kind, n, m)
                methods: dict[str, Callable[[], np.ndarray]] = {
                    "thresher": lambda a=a: pareto_ranks(a, maximize=False, backend="cpu").numpy(),
                    "thresher_kernel": lambda a=a: C.pareto_ranks(a),
                    "moocore": lambda a=a: moocore.pareto_rank(a),
                    "numpy_lexsort": lambda a=a: np.lexsort(a.T[::-1]),
                }
                if m < 3 or n <= args.pymoo_max_n3:
                    methods["pymoo"] = lambda a=a: nds.do(a, return_rank=True)[1]
                if n <= args.ens_max_n:
                    methods["pymoo_ens"] = lambda a=a: ens_ranks(a)
                repeat = args.repeat if n < 1_000_000 else (args.repeat_large if m < 3 else 1)
                times, res = side_by_side(methods, repeat)
                ours = res["thresher"]
                identical = {
                    k: bool(np.array_equal(np.asarray(v, dtype=np.int64), ours))
                    for k, v in res.items()
                    if k not in ("thresher", "numpy_lexsort")
                }
                t0 = times["thresher"]["median_s"]
                row = {
                    "objectives": m,
                    "n": n,
                    "data": kind,
                    "fronts": int(ours.max()) + 1 if n else 0,
                    "times": times,
                    "ratio_vs_thresher": {k: v["median_s"] / t0 for k, v in times.items() if k != "thresher"},
                    "identical_ranks": identical,
                    "target_met": times["moocore"]["median_s"] >= t0,
                }
                rows.append(row)
                print(
                    f"M={m} N={n:>8} {kind:7s} fronts={row['fronts']:5d}  "
                    + "  ".join(f"{k}={v['median_s']:.4f}s" for k, v in times.items())
                    + f"  moocore/thresher={row['ratio_vs_thresher']['moocore']:.2f}"
                    + f"  identical={all(identical.values())}",
                    flush=True,
                )

    out = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "torch": torch.__version__,
            "moocore": getattr(moocore, "__version__", "?"),
            "pymoo": __import__("pymoo").__version__,
            "thresher_C_openmp": bool(getattr(C, "has_openmp", False)),
        },
        "note": (
            "side by side in one run, interleaved repeats, median seconds; ratios are baseline/thresher "
            "(> 1 = thresher faster); shared, noisy 2-core machine: read the ratios"
        ),
        "algorithm": "M=2 sort-and-sweep O(N log N); M=3 per-front staircase sweep, O(N log F log N) "
        "(divide-and-conquer fallback past a work budget); M>=4 Jensen/Fortin/Buzdalov divide "
        "and conquer O(N log^(M-1) N)",
        "results": rows,
        "all_identical": all(all(r["identical_ranks"].values()) for r in rows),
        "all_targets_met": all(r["target_met"] for r in rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}; identical={out['all_identical']} targets_met={out['all_targets_met']}")


if __name__ == "__main__":
    main()
