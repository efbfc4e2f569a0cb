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

GPU (``--gpu``): thresher's Triton backend (autotuned; the first call tunes and
is not timed) against the naive torch path (materialised logits +
``F.cross_entropy``), ``cut-cross-entropy`` (``linear_cross_entropy``,
reduction "none") and ``liger-kernel`` (``liger_fused_linear_cross_entropy``,
reduction "none") where importable, all forward only under ``torch.no_grad``,
on the shapes of ``--gpu-shapes`` (default SmolLM2: H 576, V 49152 and
Llama-3-8B: H 4096, V 128256, 8192 tokens each, bf16; ``--tf32`` adds SmolLM2
in fp32 with IEEE and with TF32 dots). Per method: CUDA-event times, the peak
of ``torch.cuda.max_memory_allocated`` over the inputs and its ratio to the
logits tensor, the largest |NLL - fp32 reference| on 256 tokens; per shape the
ratios of thresher's time to each baseline. JSON into ``--out`` (default
``benchmarks/results/token_loss-gpu.json``) with the device name. Without a
CUDA device ``--gpu`` exits with status 2 and a message.

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
GPU_PRESETS = {"smollm2": (576, 49152), "llama3-8b": (4096, 128256)}


def parse_gpu_shapes(text: str) -> list[tuple[str, int, int, int]]:
    """ "smollm2:8192,llama3-8b:8192" -> [(name, tokens, hidden, vocab)]."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, n = item.partition(":")
        if name not in GPU_PRESETS:
            raise SystemExit(f"--gpu-shapes: unknown shape {name!r} (known: {', '.join(GPU_PRESETS)})")
        out.append((name, int(n or 8192), *GPU_PRESETS[name]))
    return out


def gpu_methods(dtype: torch.dtype) -> dict:
    """{name: fn(hidden, weight, targets) -> per-token NLL [N]} of every method importable here."""
    from thresher.ops import token_loss

    out = {"thresher_triton": lambda h, w, t: token_loss(h, w, t, backend="triton").nll}
    if dtype == torch.float32:
        out["thresher_triton_tf32"] = lambda h, w, t: token_loss(h, w, t, backend="triton", allow_tf32=True).nll
    out["naive_torch"] = lambda h, w, t: F.cross_entropy((h @ w.T).float(), t, reduction="none")
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


def _time_gpu(fn, inputs, repeats: int) -> tuple[list[float], int, torch.Tensor]:
    """(times in s, peak extra bytes, output) of fn(*inputs) after one untimed warm-up call."""
    with torch.no_grad():
        fn(*inputs)  # warm-up: compile, autotune
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(*inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        ts = []
        for _ in range(repeats):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn(*inputs)
            e1.record()
            torch.cuda.synchronize()
            ts.append(e0.elapsed_time(e1) / 1e3)
    return ts, peak, out


def _tuned_configs() -> dict:
    """The autotuner's choice per precision (for the record), where it ran."""
    from thresher import _native

    k = _native.kernel("token_loss")
    tuned = getattr(k, "_TUNED", {}) if k is not None else {}
    return {p: str(t.best_config) for p, t in tuned.items() if getattr(t, "best_config", None) is not None}


def gpu_shape(name: str, n: int, h: int, v: int, dtype: torch.dtype, repeats: int) -> dict:
    hidden, weight, targets = make_inputs(n, h, v, dtype, device=torch.device("cuda"))
    m = min(n, 256)  # fp32 reference on a few tokens
    with torch.no_grad():
        ref = F.cross_entropy(hidden[:m].float() @ weight.float().T, targets[:m], reduction="none")
    logits_bytes = n * v * hidden.element_size()
    row = {"shape": {"name": name, "tokens": n, "hidden": h, "vocab": v, "dtype": str(dtype).split(".")[-1]}}
    row["logits_bytes"] = logits_bytes
    row["methods"] = {}
    for meth, fn in gpu_methods(dtype).items():
        try:
            ts, peak, out = _time_gpu(fn, (hidden, weight, targets), repeats)
            err = (out[:m].float() - ref).abs().max().item()
            row["methods"][meth] = {
                "time_s_median": statistics.median(ts),
                "time_s_min": min(ts),
                "times_s": ts,
                "peak_extra_bytes": peak,
                "peak_over_logits": peak / logits_bytes,
                "max_abs_err_vs_fp32": err,
            }
            print(
                f"{name} N={n} {row['shape']['dtype']} {meth:22s} {statistics.median(ts) * 1e3:8.2f} ms  "
                f"peak +{peak / 2**20:9.1f} MiB ({100 * peak / logits_bytes:6.2f}% of logits)  err {err:.2e}",
                flush=True,
            )
        except Exception as exc:  # one failing method must not lose the others' figures
            row["methods"][meth] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{meth} failed: {type(exc).__name__}: {exc}", flush=True)
        torch.cuda.empty_cache()
    mine = row["methods"].get("thresher_triton", {}).get("time_s_median")
    row["thresher_time_over"] = {
        k: mine / r["time_s_median"]
        for k, r in row["methods"].items()
        if mine and k != "thresher_triton" and "time_s_median" in r
    }
    del hidden, weight, targets
    torch.cuda.empty_cache()
    return row


def run_gpu(args) -> dict:
    shapes = [(*s, torch.bfloat16) for s in parse_gpu_shapes(args.gpu_shapes)]
    if args.tf32:
        shapes.append(("smollm2", 8192, *GPU_PRESETS["smollm2"], torch.float32))
    results = [gpu_shape(name, n, h, v, dt, args.repeats) for name, n, h, v, dt in shapes]
    return {
        "device": torch.cuda.get_device_name(0),
        "triton": _triton_version(),
        "tuned_configs": _tuned_configs(),
        "results": results,
    }


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as exc:  # pragma: no cover
        return f"unavailable: {exc}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="scored tokens")
    ap.add_argument("--h", type=int, default=576, help="hidden size")
    ap.add_argument("--v", type=int, default=49152, help="vocabulary size")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="GPU comparison (Triton vs naive torch, CCE, Liger)")
    ap.add_argument(
        "--gpu-shapes",
        default="smollm2:8192,llama3-8b:8192",
        help="--gpu: comma list of NAME[:TOKENS], NAME in smollm2 (H 576, V 49152), llama3-8b (H 4096, V 128256); "
        "bf16 (--n/--h/--v/--dtype are the CPU mode's)",
    )
    ap.add_argument("--tf32", action="store_true", help="--gpu: also SmolLM2 in fp32, IEEE and TF32 dots")
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
            print("bench_token_loss --gpu: no CUDA device visible to torch; nothing measured", file=sys.stderr)
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
