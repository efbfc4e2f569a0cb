"""Random projection benchmark: thresher.ops.random_project against TRAK and the matmul floor.

CPU (default): project a (64 x 4,194,304) fp32 block to 2,048 dims with
  * thresher's ``cpu`` backend (Philox tiles generated in C++, BLAS GEMM per tile; the
    projection matrix is never stored),
  * the floor: a plain torch matmul with the matrix already materialised (generation costs
    nothing). The full P would be 34 GB, more than this machine's memory, so one
    materialised block of ``--floor-rows`` rows is multiplied against every row block of x:
    exactly the GEMM work of the full problem,
  * TRAK's ``BasicProjector`` (PyPI ``traker``, installed with ``--no-deps``), on a
    proportional slice of the rows (``--traker-fraction``; its cost is linear in D) and
    extrapolated; the floor and thresher are also timed on the same slice, so the slice
    ratios are measured side by side.
Writes benchmarks/results/projection-cpu.json.

GPU (``--gpu``): (128 x 16,777,216) bf16 to 8,192: Triton backend against traker's
``CudaProjector`` (``fast_jl``, fp16 input, 32 rows per launch) if importable, and the
torch bf16 matmul floor; determinism check (two runs bitwise equal) and TFLOP/s as a
fraction of the card's peak. Writes benchmarks/results/projection-gpu.json.

The machine is shared and noisy: numbers are single runs (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from thresher.ops import random_project  # noqa: E402


def best_of(fn, repeat: int, sync=lambda: None) -> float:
    best = math.inf
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def floor_matmul(x: torch.Tensor, dim: int, rows: int, dtype=torch.float32) -> float:
    """Time x @ P with P already materialised: one [rows, dim] block reused for every row block."""
    B, D = x.shape
    rows = min(rows, D)
    P = torch.randn(rows, dim, dtype=dtype, device=x.device)  # untimed generation
    out = torch.zeros(B, dim, dtype=torch.float32 if dtype == torch.float32 else dtype, device=x.device)

    def run():
        out.zero_()
        for a in range(0, D, rows):
            b = min(D, a + rows)
            out.addmm_(x[:, a:b], P[: b - a])

    return run


def floor_matmul_split(x: torch.Tensor, dim: int, rows: int):
    """The floor with thresher's threading: T single-threaded GEMMs on column ranges of a
    materialised P block (separates the cost of generation from the threading strategy)."""
    from concurrent.futures import ThreadPoolExecutor

    B, D = x.shape
    rows = min(rows, D)
    T = max(1, min(torch.get_num_threads(), dim // 128))
    cuts = [dim * i // T for i in range(T + 1)]
    Ps = [torch.randn(rows, cuts[i + 1] - cuts[i]) for i in range(T)]

    def worker(i):
        acc = torch.zeros(B, cuts[i + 1] - cuts[i])
        for a in range(0, D, rows):
            b = min(D, a + rows)
            acc.addmm_(x[:, a:b], Ps[i][: b - a])
        return acc

    def run():
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(T) as pool:
                return torch.cat(list(pool.map(worker, range(T))), 1)
        finally:
            torch.set_num_threads(prev)

    return run


def cpu_main(args) -> dict:
    torch.manual_seed(0)
    B, D, dim = args.batch, args.rows, args.dim
    x = torch.randn(B, D)
    res: dict = {
        "device": "cpu",
        "shape": [B, D],
        "dim": dim,
        "dtype": "float32",
        "kind": "rademacher",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_avg_before": os.getloadavg(),
    }
    # full size: thresher vs floor
    t_floor = best_of(floor_matmul(x, dim, args.floor_rows), args.repeat)
    t_ours = best_of(lambda: random_project(x, dim, 0, backend="cpu", check_finite=False), args.repeat)
    t_ours_checked = best_of(lambda: random_project(x, dim, 0, backend="cpu"), 1)
    t_floor_split = best_of(floor_matmul_split(x, dim, args.floor_rows // 2), args.repeat)
    res["full"] = {
        "floor_matmul_s": t_floor,
        "thresher_cpu_s": t_ours,
        "thresher_cpu_with_finite_check_s": t_ours_checked,
        "thresher_over_floor": t_ours / t_floor,
        "floor_matmul_column_split_threads_s": t_floor_split,
        "thresher_over_floor_column_split": t_ours / t_floor_split,
    }
    print(json.dumps(res["full"], indent=1), flush=True)
    # slice: traker BasicProjector side by side with the floor and thresher
    Ds = max(1, int(D * args.traker_fraction))
    xs = x[:, :Ds].contiguous()
    sl = {"rows": Ds, "fraction": Ds / D}
    sl["floor_matmul_s"] = best_of(floor_matmul(xs, dim, args.floor_rows), args.repeat)
    sl["thresher_cpu_s"] = best_of(lambda: random_project(xs, dim, 0, backend="cpu", check_finite=False), args.repeat)
    try:
        from trak.projectors import BasicProjector, ProjectionType

        proj = BasicProjector(
            grad_dim=Ds,
            proj_dim=dim,
            seed=0,
            proj_type=ProjectionType.rademacher,
            device=torch.device("cpu"),
            block_size=args.traker_block,
        )
        sl["traker_basic_s"] = best_of(lambda p=proj: p.project(xs, model_id=0), 1)
        sl["traker_version"] = __import__("importlib.metadata").metadata.version("traker")
        sl["traker_block_size"] = args.traker_block
        sl["traker_over_thresher"] = sl["traker_basic_s"] / sl["thresher_cpu_s"]
        res["full"]["traker_basic_s_extrapolated"] = sl["traker_basic_s"] * D / Ds
        res["full"]["traker_over_thresher_extrapolated"] = res["full"]["traker_basic_s_extrapolated"] / t_ours
        del proj
    except Exception as exc:  # traker not installed
        sl["traker_error"] = f"{type(exc).__name__}: {exc}"
    sl["thresher_over_floor"] = sl["thresher_cpu_s"] / sl["floor_matmul_s"]
    res["slice"] = sl
    res["load_avg_after"] = os.getloadavg()
    res["notes"] = (
        "single shared 2-core machine, other jobs running; best of "
        f"{args.repeat}. Floor: one materialised [{args.floor_rows}, {dim}] block "
        "reused for every row block (the full P is 34 GB). traker timed on the slice "
        "only, extrapolated linearly in D."
    )
    return res


def gpu_main(args) -> dict:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    B, D, dim = args.batch, args.rows, args.dim
    torch.manual_seed(0)
    x = torch.randn(B, D, device=dev, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize
    flops = 2.0 * B * D * dim
    res: dict = {
        "device": props.name,
        "shape": [B, D],
        "dim": dim,
        "dtype": "bfloat16",
        "kind": "rademacher",
        "torch": torch.__version__,
    }
    # warm-up / compile on a small slice
    random_project(x[:, :4096], dim, 0, backend="triton", check_finite=False)
    sync()
    r1 = random_project(x, dim, 0, backend="triton", check_finite=False)
    r2 = random_project(x, dim, 0, backend="triton", check_finite=False)
    sync()
    res["triton_deterministic"] = bool(torch.equal(r1, r2))
    t = best_of(lambda: random_project(x, dim, 0, backend="triton", check_finite=False), args.repeat, sync)
    res["triton_s"] = t
    res["triton_tflops"] = flops / t / 1e12
    peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
    pk = next((v for k, v in peak.items() if k in props.name), None)
    if pk:
        res["triton_fraction_of_bf16_dense_peak"] = flops / t / pk
        res["peak_assumed_tflops"] = pk / 1e12
    # check against the reference on a slice (fp32 tolerance)
    xs = x[:8, :65536]
    ref = random_project(xs, dim, 0, backend="reference", check_finite=False)
    got = random_project(xs, dim, 0, backend="triton", check_finite=False)
    res["triton_max_abs_err_vs_reference_slice"] = float((ref - got).abs().max())
    try:
        res["cuda_backend_s"] = best_of(lambda: random_project(x, dim, 0, backend="cuda", check_finite=False), 1, sync)
    except Exception as exc:
        res["cuda_backend_error"] = f"{type(exc).__name__}: {exc}"
    # floor: bf16 matmul with the matrix materialised
    res["floor_matmul_s"] = best_of(floor_matmul(x, dim, args.floor_rows, dtype=torch.bfloat16), args.repeat, sync)
    res["triton_over_floor"] = t / res["floor_matmul_s"]
    try:
        from trak.projectors import CudaProjector, ProjectionType

        proj = CudaProjector(
            grad_dim=D, proj_dim=dim, seed=0, proj_type=ProjectionType.rademacher, device=dev, max_batch_size=32
        )
        xh = x.half()
        proj.project(xh[:, :], model_id=0)
        sync()
        res["traker_cuda_s"] = best_of(lambda: proj.project(xh, model_id=0), args.repeat, sync)
        res["triton_speedup_vs_traker"] = res["traker_cuda_s"] / t
    except Exception as exc:
        res["traker_error"] = f"{type(exc).__name__}: {exc}"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--rows", type=int)
    ap.add_argument("--dim", type=int)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--floor-rows", type=int, default=131072)
    ap.add_argument("--traker-fraction", type=float, default=1 / 16)
    ap.add_argument("--traker-block", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.gpu:
        args.batch = args.batch or 128
        args.rows = args.rows or 16_777_216
        args.dim = args.dim or 8192
        res = gpu_main(args)
        out = args.out or ROOT / "benchmarks/results/projection-gpu.json"
    else:
        args.batch = args.batch or 64
        args.rows = args.rows or 4_194_304
        args.dim = args.dim or 2048
        res = cpu_main(args)
        out = args.out or ROOT / "benchmarks/results/projection-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
