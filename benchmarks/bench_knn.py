"""Benchmark of exact and approximate kNN (thresher.ops.knn / thresher.index).

CPU (default), side by side in one run:

* ``exact``: k = 10, every point a query, on N x 384 float32 (default N = 50,000;
  clustered synthetic, L2-normalised). thresher's tiled kernel (``knn``, metric l2 and
  ip) against ``sklearn.neighbors.NearestNeighbors(algorithm="brute")`` (euclidean),
  FAISS ``IndexFlatL2`` / ``IndexFlatIP``, and the floor: the time of the distance
  matrix product X @ X^T alone (torch.mm in 4,096-row blocks, results discarded).
  Checked: identical neighbours to sklearn and FAISS (share of rows whose index lists
  are equal, and set overlap), max value difference.
* ``approx``: IVF-Flat (thresher.index kind ivf_flat, nlist = 2 sqrt(N) rounded to a
  power of two) on 1,000,000 x 384 clustered synthetic data (float32, 1.5 GB):
  build time, search time of 1,000 sampled queries, recall@10 against exact search
  for those queries (thresher kernel), for a few nprobe values.

GPU (``--gpu``): on 1,000,000 x 768 float32 base and 10,000 queries, k = 10: the
Triton tiled kernel against torch brute force (chunked mm + topk on the GPU) and
faiss-cpu IndexFlatIP on the same machine; plus repr_filter selecting 10,000 from the
1,000,000 rows (tau = 0.9) blocked on the GPU against DEITA's sequential loop on the
GPU (run for a fixed time budget and extrapolated: noted in the JSON).

Writes ``benchmarks/results/knn-cpu.json`` (or ``knn-gpu.json``). The CPU machine is
shared by several users and noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def clustered(n, d, centers, noise, seed, chunk=100_000):
    """Gaussian blobs around random unit centres, L2-normalised, float32, built in chunks."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        lab = rng.integers(0, centers, e - s)
        spread = rng.uniform(0.3, 1.5, (e - s, 1)).astype(np.float32) * noise
        x = c[lab] + spread * rng.standard_normal((e - s, d), dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return time.perf_counter() - t, r


def agreement(a, b):
    a, b = np.asarray(a), np.asarray(b)
    same_rows = float((a == b).all(1).mean())
    overlap = float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))
    return same_rows, overlap


def tie_gap(x, a, b, metric):
    """Rows whose neighbour lists differ: the largest float64 gap between the two lists'
    sorted distances (a gap at float32 rounding level means the lists differ by ties)."""
    rows = np.nonzero((np.asarray(a) != np.asarray(b)).any(1))[0]
    gap = 0.0
    for r in rows:
        q = x[r].astype(np.float64)
        da = x[a[r]].astype(np.float64) @ q
        db = x[b[r]].astype(np.float64) @ q
        if metric == "l2":
            da, db = 2 - 2 * da, 2 - 2 * db
        gap = max(gap, float(np.abs(np.sort(da) - np.sort(db)).max()))
    return {"rows": int(len(rows)), "max_sorted_distance_gap": gap}


def floor_time(x, block=4096):
    xt = torch.from_numpy(x)
    t = time.perf_counter()
    for s in range(0, len(x), block):
        _ = xt[s : s + block] @ xt.T
    return time.perf_counter() - t


def bench_exact(n, d, k, skip_sklearn=False):
    from thresher.ops import knn

    x = clustered(n, d, max(n // 50, 1), 0.05, seed=0)
    res = {"n": n, "d": d, "k": k, "data": "clustered synthetic, L2-normalised"}
    res["floor_mm_s"] = floor_time(x)
    t, (v_l2, i_l2) = timed(knn, x, x, k, "l2")
    res["thresher_l2_s"] = t
    t, (v_ip, i_ip) = timed(knn, x, x, k, "ip")
    res["thresher_ip_s"] = t
    i_l2, i_ip = i_l2.numpy(), i_ip.numpy()
    import faiss

    fx = faiss.IndexFlatL2(d)
    fx.add(x)
    t, (fv, fi) = timed(fx.search, x, k)
    res["faiss_flat_l2_s"] = t
    fxi = faiss.IndexFlatIP(d)
    fxi.add(x)
    t, (fvi, fii) = timed(fxi.search, x, k)
    res["faiss_flat_ip_s"] = t
    res["same_rows_vs_faiss_l2"], res["overlap_vs_faiss_l2"] = agreement(i_l2, fi)
    res["same_rows_vs_faiss_ip"], res["overlap_vs_faiss_ip"] = agreement(i_ip, fii)
    res["max_abs_value_diff_vs_faiss_ip"] = float(np.abs(v_ip.numpy() - fvi).max())
    if not skip_sklearn:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(x)
        t, (sd, si) = timed(nn.kneighbors, x, k)
        res["sklearn_brute_s"] = t
        res["same_rows_vs_sklearn"], res["overlap_vs_sklearn"] = agreement(i_l2, si)
        res["max_abs_dist_diff_vs_sklearn"] = float(np.abs(np.sqrt(v_l2.numpy()) - sd).max())
        res["ratio_sklearn_over_thresher"] = res["sklearn_brute_s"] / res["thresher_l2_s"]
        res["differing_rows_vs_sklearn_max_gap"] = tie_gap(x, i_l2, si, "l2")
    res["differing_rows_vs_faiss_ip_max_gap"] = tie_gap(x, i_ip, fii, "ip")
    res["ratio_thresher_l2_over_floor"] = res["thresher_l2_s"] / res["floor_mm_s"]
    res["ratio_thresher_ip_over_floor"] = res["thresher_ip_s"] / res["floor_mm_s"]
    res["ratio_faiss_ip_over_thresher_ip"] = res["faiss_flat_ip_s"] / res["thresher_ip_s"]
    res["ratio_faiss_l2_over_thresher_l2"] = res["faiss_flat_l2_s"] / res["thresher_l2_s"]
    return res


def bench_approx(n, d, k, nq, nprobes):
    from thresher.index import KNNIndex
    from thresher.ops import knn

    t, x = timed(clustered, n, d, n // 50, 0.05, 1)
    res = {
        "n": n,
        "d": d,
        "k": k,
        "queries": nq,
        "data": f"clustered synthetic ({n // 50} blobs, noise 0.05), L2-normalised",
        "generate_s": t,
    }
    rng = np.random.default_rng(5)
    qi = np.sort(rng.choice(n, nq, replace=False))
    t, (ev, exact) = timed(knn, x[qi], x, k, "ip", exclude_self=False)
    res["exact_thresher_s"] = t
    exact = exact.numpy()
    res["mean_cos_of_10th_neighbour"] = float(ev[:, -1].mean())
    idx = KNNIndex(d, "ip", "ivf_flat")
    t, _ = timed(idx.build, x)
    res["ivf_flat_build_s"] = t
    res["nlist"] = int(idx._faiss_index.nlist)
    rows = []
    for npb in nprobes:
        t, (v, p) = timed(idx.search, x[qi], k, nprobe=npb)
        rows.append({"nprobe": npb, "search_s": t, "recall_at_10": agreement(p, exact)[1]})
    res["ivf_flat"] = rows
    ok = [r for r in rows if r["recall_at_10"] >= 0.95]
    res["target_recall_0.95_met"] = bool(ok)
    return res


def bench_gpu(n, d, k, nq, deita_budget_s, dev="cuda"):
    try:
        import faiss
    except ImportError:  # the GPU image may lack it: the FAISS comparison is then skipped
        faiss = None

    from thresher.ops import knn, last_backend

    x = torch.from_numpy(clustered(n, d, 20_000, 0.06, seed=2)).to(dev)
    q = x[:nq].contiguous()
    res = {
        "n": n,
        "d": d,
        "k": k,
        "queries": nq,
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)",
    }

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def cuda_time(fn):
        sync()
        t = time.perf_counter()
        r = fn()
        sync()
        return time.perf_counter() - t, r

    cuda_time(lambda: knn(q[:256], x[:4096], k))  # compile
    t, (tv, ti) = cuda_time(lambda: knn(q, x, k))
    res["thresher_triton_s"] = t
    res["thresher_backend"] = last_backend()[1]

    def torch_brute():
        vals, idx = [], []
        for s in range(0, nq, 1024):
            sc = q[s : s + 1024] @ x.T
            v, i = torch.topk(sc, k, dim=1)
            vals.append(v)
            idx.append(i)
        return torch.cat(vals), torch.cat(idx)

    def bare_gemm():  # the floor: the same score tiles, no selection
        for s in range(0, nq, 1024):
            q[s : s + 1024] @ x.T

    cuda_time(bare_gemm)
    res["bare_gemm_s"] = cuda_time(bare_gemm)[0]
    cuda_time(torch_brute)
    t, (bv, bi) = cuda_time(torch_brute)
    res["ratio_thresher_over_bare_gemm"] = res["thresher_triton_s"] / max(res["bare_gemm_s"], 1e-12)
    res["torch_brute_s"] = t
    res["same_rows_vs_torch"], res["overlap_vs_torch"] = agreement(ti.cpu().numpy(), bi.cpu().numpy())
    xc = x.cpu().numpy()
    res["ratio_torch_over_thresher"] = res["torch_brute_s"] / res["thresher_triton_s"]
    if faiss is None:
        res["faiss"] = "not importable here: skipped"
        return _bench_gpu_repr(res, xc, n, dev, deita_budget_s, cuda_time)
    fx = faiss.IndexFlatIP(d)
    fx.add(xc)
    t, (fv, fi) = timed(fx.search, xc[:nq], k)
    res["faiss_cpu_flat_ip_s"] = t
    res["faiss_cpu_threads"] = faiss.omp_get_max_threads()
    res["same_rows_vs_faiss_cpu"], res["overlap_vs_faiss_cpu"] = agreement(ti.cpu().numpy(), fi)
    res["ratio_faiss_cpu_over_thresher"] = res["faiss_cpu_flat_ip_s"] / res["thresher_triton_s"]
    return _bench_gpu_repr(res, xc, n, dev, deita_budget_s, cuda_time)


def _bench_gpu_repr(res, xc, n, dev, deita_budget_s, cuda_time):
    # repr_filter on the GPU: blocked vs DEITA's loop (time-boxed, extrapolated)
    sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))
    from thresher.selectors.diversity import repr_filter_order

    scores = np.random.default_rng(3).random(n)
    order = np.lexsort((np.arange(n), -scores))
    t, kept = cuda_time(lambda: repr_filter_order(xc, order, 10_000, 0.9, device=dev))
    res["repr_filter_gpu_s"] = t
    res["repr_filter_kept"] = int(len(kept))
    pos_last = int(np.argsort(order)[kept[-1]]) + 1 if len(kept) else 0
    res["repr_filter_walked"] = pos_last
    # DEITA loop: candidates processed within the time budget, same semantics
    emb = xc[order].astype(np.float64)
    filtered = [0]
    t0 = time.perf_counter()
    i = 1
    while time.perf_counter() - t0 < deita_budget_s and i < n and len(filtered) < 10_000:
        cur = torch.tensor(emb[i : i + 1], dtype=torch.float32, device=dev)
        ex = torch.tensor(emb[filtered], dtype=torch.float32, device=dev)
        cur = cur / cur.norm(dim=1)[:, None]
        ex = ex / ex.norm(dim=1)[:, None]
        if not bool(torch.any(cur @ ex.T > 0.9)):
            filtered.append(i)
        i += 1
    el = time.perf_counter() - t0
    res["deita_loop_gpu_candidates_in_budget"] = i - 1
    res["deita_loop_gpu_budget_s"] = el
    mine_prefix = [p for p in np.argsort(order)[kept] if p < i]
    res["deita_loop_prefix_identical"] = bool(list(mine_prefix) == filtered)
    # cost grows with the kept set; linear extrapolation per candidate is a lower bound
    res["deita_loop_gpu_extrapolated_s_lower_bound"] = el / max(i - 1, 1) * pos_last
    res["ratio_deita_over_thresher_lower_bound"] = res["deita_loop_gpu_extrapolated_s_lower_bound"] / t
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--n-exact", type=int, default=50_000)
    ap.add_argument("--n-approx", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nprobes", default="8,32,64,128,256", help="IVF nprobe values to measure")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: exact,approx,sklearn")
    ap.add_argument("--gpu-queries", type=int, default=10_000, help="--gpu: queries against the base")
    ap.add_argument("--deita-budget", type=float, default=60.0, help="--gpu: seconds for DEITA's loop")
    ap.add_argument("--out", default=None)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "note": "shared, noisy machine: compare ratios within one run",
    }
    if a.gpu:
        n = a.n_approx
        if a.dry_run:
            res = {"meta": meta, "gpu": bench_gpu(20_000, 64, 10, 500, 2.0, dev="cpu")}
        else:
            nq = a.gpu_queries
            res = {"meta": meta, "gpu": bench_gpu(n, a.dim, 10, nq, a.deita_budget)}
        out = Path(a.out or ROOT / "benchmarks/results/knn-gpu.json")
    else:
        res = {"meta": meta}
        if "exact" not in skip:
            res["exact"] = bench_exact(a.n_exact, a.dim, 10, skip_sklearn="sklearn" in skip)
            print(json.dumps(res["exact"], indent=1), flush=True)
        if "approx" not in skip:
            res["approx"] = bench_approx(a.n_approx, a.dim, 10, a.queries, tuple(int(v) for v in a.nprobes.split(",")))
            print(json.dumps(res["approx"], indent=1), flush=True)
        out = Path(a.out or ROOT / "benchmarks/results/knn-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
