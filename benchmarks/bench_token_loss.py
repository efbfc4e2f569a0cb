"""Benchmark of thresher.ops.token_loss against the naive full-logits path.

CPU (default): on SmolLM2 shapes (4096 scored tokens, hidden 576, vocab 49152),
side by side in one run, interleaved repeats:

* ``matmul``        - the plain logits matmul ``hidden @ W.T`` on the scored tokens (the floor)
* ``naive``         - ``F.cross_entropy(hidden @ W.T, targets, reduction="none")``
* ``naive_all``     - the reference backend with entropy + EL2N + rank (full logits)
* ``chunked``       - ``token_loss(..., backend="cpu")`` (NLL)
* ``chunked_all``   - the same with entropy + EL2N + rank

Peak memory: each method runs once in a fresh subprocess after a small warm-up,
with glibc told to serve blocks >= 64 KiB from mmap and to trim on free (so
RSS follows live allocations); the peak-RSS mark is reset after the inputs are
made, and the figure is peak RSS (VmHWM) minus RSS before the call: the extra
memory the method needed at its peak.

GPU (``--gpu``): the Triton backend against ``cut-cross-entropy``
(``linear_cross_entropy(reduction="none")``) and ``liger-kernel``
(``liger_fused_linear_cross_entropy(reduction="none")``) where installed, and
the naive torch path, on (16384 tokens, H 4096, V 128256, bf16) and SmolLM2
shapes; CUDA-event timings and ``torch.cuda.max_memory_allocated`` over the
inputs. Writes ``benchmarks/results/token_loss-gpu.json`` with the device name.

The CPU machine is shared and noisy: compare the ratios of one run, not
absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_METHODS = ("matmul", "naive", "naive_all", "chunked", "chunked_all")


def make_inputs(n, h, v, dtype, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).mul_(2.0).to(dtype).to(device)
    weight = torch.randn(v, h, generator=g).mul_(h**-0.5).to(dtype).to(device)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden, weight, targets


def cpu_method(name):
    from thresher.ops import token_loss

    if name == "matmul":
        return lambda h, w, t: h @ w.T
    if name == "naive":
        return lambda h, w, t: F.cross_entropy((h @ w.T).float(), t, reduction="none")
    if name == "naive_all":
        return lambda h, w, t: token_loss(h, w, t, entropy=True, el2n=True, rank=True, backend="reference")
    if name == "chunked":
        return lambda h, w, t: token_loss(h, w, t, backend="cpu")
    if name == "chunked_all":
        return lambda h, w, t: token_loss(h, w, t, entropy=True, el2n=True, rank=True, backend="cpu")
    raise ValueError(name)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child_peak(args) -> None:
    """Runs in a subprocess: print the peak-RSS growth of one method."""
    n, h, v, dtype, name = args.n, args.h, args.v, DTYPES[args.dtype], args.child
    fn = cpu_method(name)
    hs, ws, ts = make_inputs(8, h, 64, dtype)
    with torch.no_grad():
        fn(hs, ws, ts)  # load code paths, thread pools
        hidden, weight, targets = make_inputs(n, h, v, dtype)
        if not _reset_peak_rss():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs)")
        base = _status_bytes("VmRSS")
        fn(hidden, weight, targets)
        peak = _status_bytes("VmHWM")
    print(json.dumps({"peak_extra_bytes": peak - base}))


def peak_memory(name, args) -> int:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--n",
        str(args.n),
        "--h",
        str(args.h),
        "--v",
        str(args.v),
        "--dtype",
        args.dtype,
    ]
    # glibc: large blocks straight from mmap and trimmed on free, so that RSS
    # follows the live allocations instead of reusing freed, resident heap
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def run_cpu(args) -> dict:
    dtype = DTYPES[args.dtype]
    hidden, weight, targets = make_inputs(args.n, args.h, args.v, dtype)
    fns = {m: cpu_method(m) for m in CPU_METHODS}
    times = {m: [] for m in CPU_METHODS}
    with torch.no_grad():
        for f in fns.values():  # warm-up
            f(hidden[:64], weight, targets[:64])
        for _ in range(args.repeats):  # interleaved: every method sees the same noise
            for m, f in fns.items():
                t0 = time.perf_counter()
                f(hidden, weight, targets)
                times[m].append(time.perf_counter() - t0)
    logits_bytes = args.n * args.v * 4
    res = {}
    for m in CPU_METHODS:
        peak = peak_memory(m, args)
        res[m] = {
            "time_s_median": statistics.median(times[m]),
            "time_s_min": min(times[m]),
            "times_s": times[m],
            "peak_extra_bytes": peak,
            "peak_over_fp32_logits": peak / logits_bytes,
        }
        print(
            f"{m:12s} median {res[m]['time_s_median']:.3f}s  min {res[m]['time_s_min']:.3f}s  "
            f"peak +{peak / 2**20:.1f} MiB ({100 * peak / logits_bytes:.1f}% of logits)",
            flush=True,
        )
    ratios = {
        "chunked_time_over_matmul": res["chunked"]["time_s_median"] / res["matmul"]["time_s_median"],
        "chunked_time_over_naive": res["chunked"]["time_s_median"] / res["naive"]["time_s_median"],
        "chunked_all_time_over_naive_all": res["chunked_all"]["time_s_median"] / res["naive_all"]["time_s_median"],
        "chunked_all_time_over_matmul": res["chunked_all"]["time_s_median"] / res["matmul"]["time_s_median"],
        "chunked_peak_over_naive_peak": res["chunked"]["peak_extra_bytes"] / max(1, res["naive"]["peak_extra_bytes"]),
        "chunked_all_peak_over_naive_all_peak": res["chunked_all"]["peak_extra_bytes"]
        / max(1, res["naive_all"]["peak_extra_bytes"]),
        "chunked_peak_over_fp32_logits": res["chunked"]["peak_over_fp32_logits"],
        "chunked_all_peak_over_fp32_logits": res["chunked_all"]["peak_over_fp32_logits"],
    }
    for k, x in ratios.items():
        print(f"{k:40s} {x:.3f}")
    return {
        "shape": {"tokens": args.n, "hidden": args.h, "vocab": args.v, "dtype": args.dtype},
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "methods": res,
        "ratios": ratios,
    }


# --------------------------------------------------------------------- GPU
def gpu_methods():
    from thresher.ops import token_loss

    out = {
        "thresher_triton": lambda h, w, t: token_loss(h, w, t, backend="triton").nll,
        "naive_torch": lambda h, w, t: F.cross_entropy((h @ w.T).float(), t, reduction="none"),
    }
    try:
        from cut_cross_entropy import linear_cross_entropy

        out["cut_cross_entropy"] = lambda h, w, t: linear_cross_entropy(h, w, t, reduction="none")
    except Exception as exc:  # not installed
        print(f"cut-cross-entropy not available: {exc}")
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        def liger(h, w, t):
            r = liger_fused_linear_cross_entropy(h, w, t, reduction="none")
            return r[0] if isinstance(r, tuple) else r

        out["liger_kernel"] = liger
    except Exception as exc:
        print(f"liger-kernel not available: {exc}")
    return out


def run_gpu(args) -> dict:
    dev = torch.device("cuda")
    shapes = [
        (16384, 4096, 128256, "bfloat16"),
        (4096, 576, 49152, "bfloat16"),
        (16384, 576, 49152, "bfloat16"),
        (4096, 576, 49152, "float32"),
    ]
    results = []
    for n, h, v, dt in shapes:
        hidden, weight, targets = make_inputs(n, h, v, DTYPES[dt], device=dev)
        ref = None
        row = {"shape": {"tokens": n, "hidden": h, "vocab": v, "dtype": dt}, "methods": {}}
        for name, fn in gpu_methods().items():
            try:
                with torch.no_grad():
                    out = fn(hidden, weight, targets)  # warm-up / compile
                    torch.cuda.synchronize()
                    if name == "naive_torch":
                        ref = out.float()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn(hidden, weight, targets)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - base
                    ts = []
                    for _ in range(args.repeats):
                        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        e0.record()
                        out = fn(hidden, weight, targets)
                        e1.record()
                        torch.cuda.synchronize()
                        ts.append(e0.elapsed_time(e1) / 1e3)
                err = None if ref is None else (out.float() - ref).abs().max().item()
                row["methods"][name] = {
                    "time_s_median": statistics.median(ts),
                    "time_s_min": min(ts),
                    "peak_extra_bytes": peak,
                    "max_abs_diff_vs_naive": err,
                }
                print(
                    f"{n}x{h}x{v} {dt} {name:18s} {statistics.median(ts) * 1e3:8.2f} ms  "
                    f"peak +{peak / 2**20:8.1f} MiB  maxdiff {err}",
                    flush=True,
                )
            except Exception as exc:
                row["methods"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{name} failed: {exc}", flush=True)
            torch.cuda.empty_cache()
        m = row["methods"]
        others = [
            m[k]["time_s_median"] for k in ("cut_cross_entropy", "liger_kernel") if k in m and "time_s_median" in m[k]
        ]
        if others and "time_s_median" in m.get("thresher_triton", {}):
            row["thresher_time_over_fastest_baseline"] = m["thresher_triton"]["time_s_median"] / min(others)
        results.append(row)
        del hidden, weight, targets
        torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(0), "results": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="scored tokens")
    ap.add_argument("--h", type=int, default=576, help="hidden size")
    ap.add_argument("--v", type=int, default=49152, help="vocabulary size")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="GPU comparison (Triton vs CCE / Liger)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child_peak(args)
        return 0
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "shared, noisy machine: compare ratios within this run",
    }
    if args.gpu:
        if not torch.cuda.is_available():
            print("--gpu: no CUDA device visible", file=sys.stderr)
            return 2
        payload = {**meta, **run_gpu(args)}
        out = Path(args.out or ROOT / "benchmarks" / "results" / "token_loss-gpu.json")
    else:
        payload = {**meta, **run_cpu(args)}
        out = Path(args.out or ROOT / "benchmarks" / "results" / "token_loss-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
