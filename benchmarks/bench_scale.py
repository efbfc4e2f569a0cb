"""The Ray engine's overhead against the local engine, and driver/worker memory, at scale (issue 10).

Two workloads on a pool built by replicating ../shared/data/bigbench (ids suffixed with the copy):

* ``per-row``: ``--rows`` rows (default 1,000,000), ``length`` and ``mtld`` (lexical diversity, a
  per-row criterion the workers compute; ``length`` is the token count the driver keeps anyway), top
  ``--k`` by mtld;
* ``length+knn``: ``--knn-rows`` rows, ``length`` and ``knn_distance`` (exact kNN-6 over the whole
  pool) on PRECOMPUTED embeddings: the embeddings cache is filled beforehand with seeded random
  unit vectors under the default embedder's fingerprint (in a private, temporary cache), so the
  benchmark times the engines, not the encoder.

Contenders, each in its own process (peak RSS per run, ``ru_maxrss``; and, sampled every 50 ms, the peak
private memory ``RssAnon`` apart from the object-store pages the driver wrote, ``RssShmem``), the same threads for all
(``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``--threads``; a Ray worker runs with one CPU):
``local``, ``ray-1`` (one worker), ``ray-2`` (two workers). Ray's cluster start is timed apart
(``ray_init_s``): a user's cluster is already running. Each run's selection must equal local's.

``--knn-large ROWS`` runs only a third workload, ``length+knn-ROWS``, and adds it to the results file:
``length`` and ``knn_distance`` (exact) on ROWS precomputed embeddings of ``--knn-dim`` dimensions (an
``lm:`` embedder: a tiny random Llama of that hidden size, saved to a folder; its cache is filled
as above, so it never encodes). The exact search costs rows^2 x dim: 1,000,000 rows at the default
embedder's 384 dimensions take over two hours per contender on one core, so this workload runs at a
small dimension; the engines' own costs (reading, the embeddings lookup, shipping the pool, the
merge) are then a larger share of the time than at 384, not a smaller one.

``driver_memory_growth``: the per-row workload again at a quarter of the rows (``local`` and
``ray-1``); the growth of the driver's peak private memory between the two sizes, per row, is what
the driver holds per pool row (the rest is the interpreter, its libraries and O(shard) buffers). The
growth of its file-mapped pages (``RssFile``: the row store's and the id set's memory-mapped files,
page cache the OS can drop) is reported apart. ``driver_heap_growth``: the same two sizes once more with
the driver's Python heap traced (``tracemalloc`` peak), which RSS blurs with allocator arenas and Ray's
own threads.

    python benchmarks/bench_scale.py [--rows 1000000] [--knn-rows 50000] [--reps 2] [--out FILE]
    python benchmarks/bench_scale.py --knn-large 1000000 [--knn-dim 32] [--reps 1]
    python benchmarks/bench_scale.py --knn-only [--knn-rows 50000]     # the length+knn workload again, alone

Writes benchmarks/results/scale-cpu.json (ratios ray/local: min and median over reps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_pipeline import make_pool  # noqa: E402

CHILD = r"""
import json, resource, sys, time, shutil, threading
sys.path.insert(0, {py!r})
from thresher.pipeline import PipelineConfig, run_pipeline
peak = {{"RssAnon": 0, "RssShmem": 0, "RssFile": 0}}
def sample():  # the driver's own heap (RssAnon) apart from the object-store pages it wrote (RssShmem) and files
    # it maps (RssFile: libraries, and the row store's and id set's memory-mapped files, which the OS can drop)
    while True:
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in peak:
                peak[k] = max(peak[k], int(v.split()[0]))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
engine, opts = {engine!r}, {opts!r}
init = 0.0
if engine == "ray":
    import ray
    t = time.perf_counter()
    ray.init(address="local", num_cpus={cpus}, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t
shutil.rmtree({out!r}, ignore_errors=True)
if {trace!r}:  # the driver's Python heap (tracemalloc: slower, so only in the heap-growth runs)
    import tracemalloc
    tracemalloc.start()
t = time.perf_counter()
res = run_pipeline(PipelineConfig(data={data!r}, out={out!r}, cache_dir={cache!r}, criteria={criteria!r},
                                  selector={{"name": "topk", "options": {{"criterion": {sel!r}}}}}, k={k},
                                  shard_size={shard}, engine=engine, engine_options=opts, report=False, quiet=True))
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "ray_init_s": init,
                  "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "driver_peak_private_mb": peak["RssAnon"] / 1024, "driver_peak_shmem_mb": peak["RssShmem"] / 1024,
                  "driver_peak_file_mb": peak["RssFile"] / 1024,
                  "driver_heap_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20 if {trace!r} else None,
                  "engine_run": res.manifest.get("engine_run"), "rows": res.n_rows,
                  "selected": [int(x) for x in res.selected], "timings": res.timings}}))
"""

FILL = r"""
import sys, numpy as np
sys.path.insert(0, {py!r})
from thresher.io import Source
from thresher.embed import get_embedder, sample_texts
from thresher.embed.store import EmbeddingStore, sample_key
enc = get_embedder({embedder!r})
store = EmbeddingStore({emb!r}, enc.fingerprint)
rng = np.random.default_rng(0)
for shard in Source({data!r}, shard_size=50000).shards():
    t = shard.table
    keys = [sample_key(i, x) for i, x in zip(t["id"].astype(str), sample_texts(t))]
    v = rng.standard_normal((len(keys), enc.dim)).astype(np.float32)
    store.put(keys, v / np.linalg.norm(v, axis=1, keepdims=True))
# one cached row read through the cache records which store the embedder spec names, as a run that
# embeds does; else the first contender alone would load the model to find out
from thresher.embed import fill_embeddings
fill_embeddings(sample_texts(t)[:1], {embedder!r}, cache_dir={emb!r}, ids=t["id"].astype(str).tolist()[:1])
print(enc.dim)
"""


def run_child(code: str, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


CONTENDERS = {"local": ("local", {}), "ray-1": ("ray", {"workers": 1}), "ray-2": ("ray", {"workers": 2})}


def workload(name: str, data: Path, work: Path, criteria: list, args: argparse.Namespace,
             contenders: tuple = tuple(CONTENDERS), trace: bool = False, reps: int = 0) -> dict:  # fmt: skip
    """Every contender ``reps`` times on one workload; the score cache is emptied before each run
    (the embeddings cache, when there is one, is kept: those are the precomputed embeddings)."""
    contenders = {c: CONTENDERS[c] for c in contenders}
    runs: dict = {c: [] for c in contenders}
    for rep in range(reps or args.reps):
        for c, (engine, opts) in contenders.items():
            cache = work / f"cache-{name}"
            for sub in cache.glob("*"):
                if sub.name != "embeddings":
                    shutil.rmtree(sub, ignore_errors=True)
            code = CHILD.format(py=str(ROOT / "python"), engine=engine, opts=opts, cpus=args.threads + 1,
                                out=str(work / f"out-{name}-{c}"), cache=str(cache), data=str(data),
                                criteria=criteria, sel=_name(criteria[-1]), k=args.k, shard=args.shard_size,
                                trace=trace)  # fmt: skip
            r = run_child(code, args.threads)
            print(f"{name} {c} rep {rep}: {r['seconds']:.1f} s, driver {r['driver_peak_rss_mb']:.0f} MB "
                  f"(private {r['driver_peak_private_mb']:.0f} MB)", flush=True)  # fmt: skip
            runs[c].append(r)
    return summarize(runs)


def _name(criterion: "str | dict") -> str:
    return criterion if isinstance(criterion, str) else criterion["name"]


def tiny_embedder(work: Path, dim: int) -> str:
    """``lm:<folder>``: a tiny random Llama of hidden size ``dim`` (byte tokenizer), saved once."""
    folder = work / f"tiny-lm-{dim}"
    if not (folder / "config.json").exists():
        code = "\n".join([
            f"import sys; sys.path.insert(0, {str(ROOT / 'python')!r})",
            "from thresher.models.tiny import tiny_causal_lm",
            f"lm = tiny_causal_lm(0, tokenizer='bytes', hidden={dim}, layers=1, heads=4, kv_heads=2, "
            f"intermediate={2 * dim})",
            f"lm.model.save_pretrained({str(folder)!r})",
            f"lm.tokenizer.save_pretrained({str(folder)!r})",
        ])  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return f"lm:{folder}"


def fill_embeddings(work: Path, name: str, data: Path, embedder: str) -> None:
    """The precomputed embeddings of ``data`` in workload ``name``'s cache (seeded random unit vectors)."""
    emb = work / f"cache-{name}" / "embeddings"
    fill = FILL.format(py=str(ROOT / "python"), emb=str(emb), data=str(data), embedder=embedder)
    subprocess.run([sys.executable, "-c", fill], check=True, capture_output=True)


def knn_large(args: argparse.Namespace, work: Path) -> None:
    """The ``length+knn-ROWS`` workload alone, added to (or replacing its entry in) ``--out``."""
    rows = args.knn_large
    data = work / f"pool-{rows}.jsonl.gz"
    make_pool(data, rows)
    embedder = tiny_embedder(work, args.knn_dim)
    name = f"length+knn-{rows}"
    fill_embeddings(work, name, data, embedder)
    crit = {"name": "knn_distance", "options": {"embedder": embedder, "k": 6}}
    res = workload(name, data, work, ["length", crit], args)
    res["settings"] = {"rows": rows, "dim": args.knn_dim, "embedder": "tiny random Llama (lm: mean pooling), "
                       "cache filled with seeded random unit vectors", "knn_k": 6, "k": args.k,
                       "shard_size": args.shard_size, "reps": args.reps, "threads": args.threads}  # fmt: skip
    merge_result(Path(args.out), name, res)


def merge_result(out: Path, name: str, res: dict) -> None:
    """Workload ``name``'s result added to (or replacing its entry in) the results file ``out``."""
    result = json.loads(out.read_text()) if out.exists() else {"benchmark": "scale"}
    result[name] = res
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({name: res["ratios_over_local"]}, indent=1))


def summarize(runs: dict) -> dict:
    base = runs["local"]
    want = base[0]["selected"]
    out: dict = {"runs": {}, "ratios_over_local": {}, "same_selection_as_local": True}
    for c, rs in runs.items():
        out["same_selection_as_local"] &= all(r["selected"] == want for r in rs)
        for r in rs:
            r["selected"] = len(r["selected"])
        out["runs"][c] = rs
        if c != "local":
            ratios = [r["seconds"] / b["seconds"] for r, b in zip(rs, base)]
            out["ratios_over_local"][c] = {"min": min(ratios), "median": statistics.median(ratios)}
    return out


def driver_growth(small: dict, big: dict, rows_small: int, rows_big: int) -> dict:
    """The driver's private memory per pool row: the growth of its peak from ``rows_small`` to
    ``rows_big`` rows (medians over reps), per contender measured at both sizes."""
    out = {}
    for c, rs in small["runs"].items():
        lo = statistics.median(r["driver_peak_private_mb"] for r in rs)
        hi = statistics.median(r["driver_peak_private_mb"] for r in big["runs"][c])
        f_lo = statistics.median(r.get("driver_peak_file_mb", 0.0) for r in rs)
        f_hi = statistics.median(r.get("driver_peak_file_mb", 0.0) for r in big["runs"][c])
        out[c] = {f"private_mb_at_{rows_small}": lo, f"private_mb_at_{rows_big}": hi,
                  "bytes_per_row": (hi - lo) * 2**20 / (rows_big - rows_small),
                  "file_mapped_bytes_per_row": (f_hi - f_lo) * 2**20 / (rows_big - rows_small)}  # fmt: skip
    return out


def heap_growth(small: Path, big: Path, work: Path, args: argparse.Namespace) -> dict:
    """The driver's Python heap peak (tracemalloc, one run each) at ``rows // 4`` and ``rows`` rows, per
    contender, and its growth per row: exact where RSS is noisy (allocator arenas, Ray's own threads)."""
    runs = {}
    for name, data in (("small", small), ("big", big)):
        w = workload(f"heap-{name}", data, work, ["length", "mtld"], args, ("local", "ray-1"), trace=True, reps=1)
        runs[name] = {c: rs[0]["driver_heap_peak_mb"] for c, rs in w["runs"].items()}
    n_small, n_big = args.rows // 4, args.rows
    return {c: {f"heap_peak_mb_at_{n_small}": runs["small"][c], f"heap_peak_mb_at_{n_big}": runs["big"][c],
                "bytes_per_row": (runs["big"][c] - runs["small"][c]) * 2**20 / (n_big - n_small)}
            for c in runs["small"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--knn-rows", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--knn-large", type=int, default=0, help="rows of the large kNN workload, run alone")
    ap.add_argument("--knn-dim", type=int, default=32, help="embedding dimension of --knn-large")
    ap.add_argument("--knn-only", action="store_true", help="only the length+knn workload (--knn-rows), run alone")
    ap.add_argument("--work", default="/tmp/thresher-bench-scale")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale-cpu.json"))
    args = ap.parse_args()
    work = Path(args.work)
    if args.knn_large:
        return knn_large(args, work)
    big, small = work / f"pool-{args.rows}.jsonl.gz", work / f"pool-{args.knn_rows}.jsonl.gz"
    make_pool(small, args.knn_rows)
    fill_embeddings(work, "length+knn", small, "default")
    if args.knn_only:
        res = workload("length+knn", small, work, ["length", "knn_distance"], args)
        res["settings"] = {"rows": args.knn_rows, "k": args.k, "shard_size": args.shard_size, "reps": args.reps,
                           "threads": args.threads, "run": "alone (--knn-only)"}  # fmt: skip
        return merge_result(Path(args.out), "length+knn", res)
    make_pool(big, args.rows)
    result = {
        "benchmark": "scale",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "note": "shared 2-core machine: read the ratios, not the absolute times",
        },  # fmt: skip
        "per-row": workload("per-row", big, work, ["length", "mtld"], args),
        "length+knn": workload("length+knn", small, work, ["length", "knn_distance"], args),
    }
    quarter = work / f"pool-{args.rows // 4}.jsonl.gz"
    make_pool(quarter, args.rows // 4)
    growth = workload("per-row-quarter", quarter, work, ["length", "mtld"], args, ("local", "ray-1"))
    result["driver_memory_growth"] = driver_growth(growth, result["per-row"], args.rows // 4, args.rows)
    result["driver_heap_growth"] = heap_growth(quarter, big, work, args)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({w: result[w]["ratios_over_local"] for w in ("per-row", "length+knn")}, indent=1))


if __name__ == "__main__":
    main()
