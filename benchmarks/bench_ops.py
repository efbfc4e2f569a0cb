"""Benchmark of thresher.ops.segment_reduce and thresher.ops.topk against torch.

CPU (default), side by side in one run, interleaved repeats, median times:

* ``segment_reduce`` mean over N = 10,000,000 float32 values in S = 100,000 ragged
  segments (lengths from sorted uniform cut points) against
  ``torch.zeros(S).index_add_(0, seg_ids, x) / torch.bincount(seg_ids)``; the segment ids
  are precomputed for the baseline (not timed), thresher gets the offsets. Also the
  PyTorch reference backend. Target: thresher >= 2x faster than the baseline.
* ``topk`` of N float32, k = 1% of N, against ``torch.topk`` (sorted, largest) on
  normal data and on heavily tied data (1,000 distinct values). Target: within 1.2x of
  torch.topk. Checked: identical values to torch.topk, identical indices to the
  reference backend (ties by lower index), and identical indices on a second call.

GPU (``--gpu``): the same on CUDA tensors: the ``triton`` and ``cuda`` backends against
the same torch baselines, CUDA-event timings, and segment_reduce effective bandwidth in
GB/s (values + offsets read, results written) with the share of the card's theoretical
peak when torch reports the memory clock and bus width. Writes ``ops-gpu.json``.

Writes ``benchmarks/results/ops-cpu.json`` (or ``ops-gpu.json``). The CPU machine is
shared and noisy: compare the ratios of one run, not absolute times across runs.
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

import torch  # noqa: E402


def ragged(n: int, s: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    cuts = torch.sort(torch.randint(0, n + 1, (s - 1,), generator=g))[0]
    off = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).to(torch.int64)
    seg = torch.repeat_interleave(torch.arange(s), off[1:] - off[:-1])
    return x.to(device), off.to(device), seg.to(device)


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    if device == "cuda":

        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:

        def run(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    return run


def side_by_side(methods: dict[str, Callable[[], object]], repeat: int, device: str) -> dict[str, dict]:
    """Warm up each method once, then interleave `repeat` rounds; median and min seconds."""
    run = timer(device)
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeat):
        for k, fn in methods.items():
            times[k].append(run(fn))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "runs": len(v)} for k, v in times.items()}


def bench_segment(n: int, s: int, repeat: int, device: str) -> dict:
    from thresher.ops import segment_reduce

    x, off, seg = ragged(n, s, device)

    def baseline():
        return torch.zeros(s, device=device).index_add_(0, seg, x) / torch.bincount(seg, minlength=s)

    methods = {"torch_index_add_bincount": baseline}
    backends = ["triton", "cuda"] if device == "cuda" else ["cpu", "reference"]
    from thresher.ops.segment import segment_reduce_op

    skipped = {}
    for b in backends:
        r = segment_reduce_op.backends[b].not_supported_reasons(device=device, dtype=torch.float32)
        if r:
            skipped[b] = r
            continue
        methods[f"thresher_{b}"] = lambda b=b: segment_reduce(x, off, "mean", backend=b)
    base_out = baseline()
    check = {}
    for k in methods:
        if k.startswith("thresher_"):
            out = methods[k]()
            check[k] = bool(torch.allclose(out, base_out, rtol=1e-4, atol=1e-5, equal_nan=True))
    res = side_by_side(methods, repeat, device)
    b0 = res["torch_index_add_bincount"]["median_s"]
    out = {
        "n": n,
        "segments": s,
        "op": "mean",
        "dtype": "float32",
        "times": res,
        "speedup_vs_baseline": {k: b0 / v["median_s"] for k, v in res.items() if k.startswith("thresher_")},
        "target": "thresher >= 2x faster than index_add_ + bincount",
        "matches_baseline": check,
        "skipped": skipped,
    }
    if device == "cuda":
        nbytes = n * 4 + (s + 1) * 8 + s * 4
        gbs = {k: nbytes / v["median_s"] / 1e9 for k, v in res.items()}
        out["bytes_moved"] = nbytes
        out["gb_per_s"] = gbs
        peak = peak_bandwidth()
        if peak:
            out["peak_gb_per_s"] = peak
            out["fraction_of_peak"] = {k: v / peak for k, v in gbs.items()}
    return out


def peak_bandwidth() -> float | None:
    p = torch.cuda.get_device_properties(0)
    clock = getattr(p, "memory_clock_rate", None)  # kHz
    width = getattr(p, "memory_bus_width", None)  # bits
    if not clock or not width:
        return None
    return 2 * clock * 1e3 * width / 8 / 1e9  # double data rate


def bench_topk(n: int, frac: float, repeat: int, device: str, ties: bool) -> dict:
    from thresher.ops import topk
    from thresher.ops.topk import topk_op

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 1000, (n,), generator=g).float() if ties else torch.randn(n, generator=g)
    x = x.to(device)
    k = max(1, int(n * frac))
    methods = {"torch_topk": lambda: torch.topk(x, k)}
    backends = ["triton", "cuda"] if device == "cuda" else ["cpu"]
    skipped = {}
    for b in backends:
        r = topk_op.backends[b].not_supported_reasons(device=device, dtype=torch.float32, n=n)
        if r:
            skipped[b] = r
            continue
        methods[f"thresher_{b}"] = lambda b=b: topk(x, k, backend=b)
    tv, _ = torch.topk(x, k)
    _, ref_i = topk(x, k, backend="reference")
    check = {}
    for name, fn in methods.items():
        if not name.startswith("thresher_"):
            continue
        v1, i1 = fn()
        v2, i2 = fn()
        check[name] = {
            "values_equal_torch": bool(torch.equal(v1, tv)),
            "indices_equal_reference": bool(torch.equal(i1, ref_i)),
            "deterministic": bool(torch.equal(i1, i2)),
        }
    res = side_by_side(methods, repeat, device)
    t0 = res["torch_topk"]["median_s"]
    return {
        "n": n,
        "k": k,
        "data": "1000 distinct values (heavy ties)" if ties else "normal",
        "times": res,
        "time_ratio_vs_torch": {kk: v["median_s"] / t0 for kk, v in res.items() if kk.startswith("thresher_")},
        "target": "thresher time <= 1.2x torch.topk",
        "checks": check,
        "skipped": skipped,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--segments", type=int, default=100_000)
    ap.add_argument("--k-frac", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--gpu", action="store_true", help="run on CUDA tensors (triton and cuda backends)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device visible to torch", file=sys.stderr)
        return 2
    out = args.out or ROOT / "benchmarks" / "results" / f"ops-{'gpu' if args.gpu else 'cpu'}.json"
    from thresher import _native

    info = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "openmp_threads": (_native.cpu_ext().max_threads() if _native.cpu_ext() else None),
            "device": torch.cuda.get_device_name(0) if args.gpu else "cpu",
        },
        "note": "side by side in one run, interleaved repeats, median seconds; "
        + ("CUDA-event timings" if args.gpu else "shared, noisy 2-core machine: read the ratios"),
    }
    info["segment_reduce"] = bench_segment(args.n, args.segments, args.repeat, device)
    print(json.dumps(info["segment_reduce"], indent=1))
    info["topk"] = bench_topk(args.n, args.k_frac, args.repeat, device, ties=False)
    print(json.dumps(info["topk"], indent=1))
    info["topk_ties"] = bench_topk(args.n, args.k_frac, max(3, args.repeat // 2), device, ties=True)
    print(json.dumps(info["topk_ties"], indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
