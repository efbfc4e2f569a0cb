"""What the driver holds per pool row to select, streaming against in memory (issue 10: "selection at
scale ... memory O(k + shard), not O(N)").

Selections that used to collect their score columns on the driver, now scans of the score cache:

* ``token-budget``: ``length`` + ``mtld``, top rows by mtld within ``--tokens`` tokens (``--tokens``),
  at ``--rows // 4`` and ``--rows`` rows (default 250,000 and 1,000,000);
* ``gumbel``: ``length`` + ``mtld``, ``gumbel_topk`` (DSIR's resampling) on mtld, a ratio of 0.05 (DSIR's
  default), at the same sizes;
* ``groups``: ``group_topk`` on mtld within each of the 957 BIG-bench tasks (round robin), ratio 0.05, at the
  same sizes;
* ``weighted-rank`` and ``weighted-zscore``: ``weighted`` over ``length:max`` and ``mtld:max`` with the
  ``rank`` normaliser (its default: the multi-objective recipe's ``weighted``) and with ``zscore``
  (instruction-mining's), ratio 0.05, at the same sizes: folds that read the whole pool (its sorted
  values, its exact mean and standard deviation);
* ``knee``: ``threshold`` at the knee of the sorted ``mtld`` curve, at most a ratio of 0.05, at the same sizes;
* ``embeddings``: ``length``, ``kcenter`` (a selector on embeddings, MoDS's seed step) over ``--emb-dim``
  (384: MiniLM's) precomputed embeddings, ``--emb-k`` rows, at ``--emb-rows // 4`` and ``--emb-rows`` rows
  (default 100,000 and 400,000); here the contenders are the run's embeddings on disk (``streaming``: the
  row store's memory map, handed to the selector whole when every row is eligible) and ``in-memory``: held
  on the heap as before (``HEAP_EMBEDDINGS``: each shard's vectors in a list, concatenated, then the
  eligible rows copied);
* ``pool-scoped``: ``length`` + ``knn_distance`` (exact kNN-6 on precomputed ``--knn-dim``-dimensional
  embeddings, as ``bench_scale.py --knn-large``), top ``--k`` by knn_distance, at ``--knn-rows // 4``
  and ``--knn-rows`` rows (default 50,000 and 200,000).

Contenders, each run in its own process under the Ray engine with one worker (the engine whose driver
holds nothing else per row: ``bench_scale.py``'s ``driver_heap_growth``), the same thread count for
all: ``streaming`` (the selection the run picks) and ``in-memory`` (the run's selection replaced by
the in-memory one, as before this change). Per run: the driver's Python heap (``tracemalloc``) when
the selection stage starts (``select_start_mb``: an in-memory selection already holds the columns it was
fed) and its peak during that stage (``select_peak_mb``), the heap peak of the whole run, the peak
private memory (``RssAnon``), the time, and the selection, which must be the same for both.
``bytes_per_row``: the growth of the selection stage's heap peak (and of the run's) between the two
sizes, per added row.

    python benchmarks/bench_selection_memory.py [--rows 1000000] [--knn-rows 200000] [--out FILE]
    python benchmarks/bench_selection_memory.py --only token-budget     # one workload again, merged into --out

Writes benchmarks/results/selection-memory-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_pipeline import make_pool  # noqa: E402
from benchmarks.bench_scale import fill_embeddings, run_child, tiny_embedder  # noqa: E402

CHILD = r"""
import json, sys, time, shutil, threading, tracemalloc
sys.path.insert(0, {py!r})
import ray
import thresher.pipeline.run as run_mod
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.pipeline.selection import InMemorySelection, needed_columns
peak = {{"RssAnon": 0}}
def sample():
    while True:
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in peak:
                peak[k] = max(peak[k], int(v.split()[0]))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
if {in_memory!r}:
    def in_memory(st):
        st.selection_kind = "in-memory"
        return InMemorySelection(needed_columns(st.plan))
    run_mod.make_selection = in_memory
{patch}
stage = {{}}
select = run_mod.select
def traced_select(st, selection):  # the selection stage's own peak: reset when it starts
    stage["start_mb"], stage["before_peak_mb"] = (x / 2**20 for x in tracemalloc.get_traced_memory())
    tracemalloc.reset_peak()
    select(st, selection)
    stage["peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
run_mod.select = traced_select
ray.init(address="local", num_cpus={cpus}, include_dashboard=False, log_to_driver=False)
shutil.rmtree({out!r}, ignore_errors=True)
tracemalloc.start()
t = time.perf_counter()
res = run_pipeline(PipelineConfig(data={data!r}, out={out!r}, cache_dir={cache!r}, criteria={criteria!r},
                                  selector={selector!r}, **{budget!r}, **{extra!r},
                                  shard_size={shard}, engine="ray", engine_options={{"workers": 1}}, report=False,
                                  quiet=True))
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "driver_heap_peak_mb": max(tracemalloc.get_traced_memory()[1] / 2**20,
                                                              stage["before_peak_mb"]),
                  "select_start_mb": stage["start_mb"], "select_peak_mb": stage["peak_mb"],
                  "driver_peak_private_mb": peak["RssAnon"] / 1024, "how": res.manifest["selector"]["how"],
                  "rows": res.n_rows, "timings": res.timings, "selected": [int(x) for x in res.selected]}}))
"""


def one(name: str, data: Path, work: Path, criteria: list, budget: dict, in_memory: bool, args,
        selector: Any = "topk", extra: Optional[dict] = None) -> dict:  # fmt: skip
    """One run (the score cache emptied first; precomputed embeddings kept); ``selector`` on the last criterion
    (or a whole selector spec); ``extra``: more of the run's settings. ``in_memory``: the in-memory selection,
    or for the ``embeddings`` workload the embeddings held on the heap (:data:`HEAP_EMBEDDINGS`)."""
    cache = work / f"cache-{name}"
    for sub in cache.glob("*"):
        if sub.name != "embeddings":
            shutil.rmtree(sub, ignore_errors=True)
    sel = criteria[-1] if isinstance(criteria[-1], str) else criteria[-1]["name"]
    spec = selector if isinstance(selector, dict) else {"name": selector, "options": {"criterion": sel}}
    heap = name.startswith("embeddings")
    code = CHILD.format(py=str(ROOT / "python"), in_memory=in_memory and not heap, cpus=args.threads + 1,
                        out=str(work / "out"), data=str(data), cache=str(cache), criteria=criteria, budget=budget,
                        shard=args.shard_size, selector=spec, extra=extra or {},
                        patch=HEAP_EMBEDDINGS if in_memory and heap else "")  # fmt: skip
    r = run_child(code, args.threads)
    print(f"{name} {'in-memory' if in_memory else 'streaming'} {r['rows']} rows: {r['seconds']:.1f} s, heap peak "
          f"{r['driver_heap_peak_mb']:.1f} MB, selection {r['select_start_mb']:.1f} -> {r['select_peak_mb']:.1f} MB, "
          f"{r['how']}", flush=True)  # fmt: skip
    return r


HEAP_EMBEDDINGS = r"""
import numpy as np
import thresher.pipeline.scoring as scoring_mod
import thresher.pipeline.selection as selection_mod
embed, finish = scoring_mod._Rows.embed, scoring_mod._Rows.finish
def heap_embed(self, shard, vectors=None):  # as before: each shard's vectors kept in a list
    embed(self, shard, vectors)
    if self.want_emb:
        if not hasattr(self, "heap"):
            self.heap = []
        if vectors is None:  # computed here: the rows just written
            col = self.st.rowstore.column("embeddings", np.float32)
            vectors = np.array(col[len(col) - len(shard):])
        self.heap.append(vectors)
def heap_finish(self):  # ... concatenated on the heap
    finish(self)
    if self.st.embeddings is not None:
        self.st.embeddings = np.concatenate(self.heap)
        self.heap = []
scoring_mod._Rows.embed, scoring_mod._Rows.finish = heap_embed, heap_finish
selection_mod.eligible_rows = lambda values, elig, n: None if values is None else values[elig]  # (a copy)
"""


def workload(name: str, sizes: list, work: Path, criteria: list, budget: dict, args, embedder: str = "",
             selector: Any = "topk", extra: Optional[dict] = None) -> dict:  # fmt: skip
    """Both contenders at both sizes; the heap growth per row of each; the selections compared."""
    runs: dict = {"streaming": [], "in-memory": []}
    for rows in sizes:
        data = work / f"pool-{rows}.jsonl.gz"
        make_pool(data, rows)
        if embedder:
            fill_embeddings(work, f"{name}-{rows}", data, embedder)
        for c in runs:
            runs[c].append(one(f"{name}-{rows}", data, work, criteria, budget, c == "in-memory", args, selector,
                               extra))  # fmt: skip
    same = all(a["selected"] == b["selected"] for a, b in zip(runs["streaming"], runs["in-memory"]))
    out: dict = {"sizes": sizes, "selector": selector, "budget": budget, "same_selection": same, "runs": runs,
                 "bytes_per_row": {}}  # fmt: skip
    for c, rs in runs.items():
        for r in rs:
            r["selected"] = len(r["selected"])
        out["bytes_per_row"][c] = {x: (rs[1][x] - rs[0][x]) * 2**20 / (sizes[1] - sizes[0])
                                   for x in ("select_peak_mb", "driver_heap_peak_mb")}  # fmt: skip
    return out


WORKLOADS = (
    "token-budget",
    "pool-scoped",
    "gumbel",
    "groups",
    "weighted-rank",
    "weighted-zscore",
    "knee",
    "embeddings",
)


def run_workload(name: str, work: Path, args: argparse.Namespace) -> dict:
    if name == "token-budget":
        return workload(name, [args.rows // 4, args.rows], work, ["length", "mtld"], {"tokens": args.tokens}, args)
    if name == "groups":  # the best rows of every BIG-bench task in turn (957 groups: the ``task`` field)
        return workload(name, [args.rows // 4, args.rows], work, ["length", "mtld"], {"ratio": 0.05}, args,
                        selector="group_topk")  # fmt: skip
    if name == "gumbel":  # DSIR's resampling at DSIR's default budget
        return workload(name, [args.rows // 4, args.rows], work, ["length", "mtld"], {"ratio": 0.05}, args,
                        selector="gumbel_topk")  # fmt: skip
    if name.startswith("weighted-"):  # a fold of normalised objectives: the pool's ranks or moments
        spec = {"name": "weighted", "options": {"objectives": ["length:max", "mtld:max"], "normalize": name[9:]}}
        return workload(name, [args.rows // 4, args.rows], work, ["length", "mtld"], {"ratio": 0.05}, args,
                        selector=spec)  # fmt: skip
    if name == "knee":  # the whole sorted curve
        spec = {"name": "threshold", "options": {"criterion": "mtld", "mode": "knee"}}
        return workload(name, [args.rows // 4, args.rows], work, ["length", "mtld"], {"ratio": 0.05}, args,
                        selector=spec)  # fmt: skip
    if name == "embeddings":  # a selector on embeddings (kcenter) over --emb-dim vectors: on disk vs on the heap
        embedder = tiny_embedder(work, args.emb_dim)
        spec = {"name": "kcenter", "options": {"criterion": "length"}}
        return workload(name, [args.emb_rows // 4, args.emb_rows], work, ["length"], {"k": args.emb_k}, args,
                        embedder, selector=spec, extra={"embedder": embedder})  # fmt: skip
    embedder = tiny_embedder(work, args.knn_dim)
    knn = {"name": "knn_distance", "options": {"embedder": embedder, "k": 6}}
    return workload(name, [args.knn_rows // 4, args.knn_rows], work, ["length", knn], {"k": args.k}, args, embedder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--knn-rows", type=int, default=200_000)
    ap.add_argument("--knn-dim", type=int, default=32)
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--emb-rows", type=int, default=400_000)
    ap.add_argument("--emb-dim", type=int, default=384)
    ap.add_argument("--emb-k", type=int, default=50)
    ap.add_argument("--shard-size", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/thresher-bench-selection")
    ap.add_argument("--only", choices=WORKLOADS, help="run one workload; its entry replaces the one in --out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "selection-memory-cpu.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    result = json.loads(out.read_text()) if args.only and out.exists() else {}
    result["benchmark"] = "selection-memory"
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "work", "only")}
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "engine": "ray, 1 worker"}
    for name in [args.only] if args.only else WORKLOADS:
        result[name] = run_workload(name, work, args)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({w: result[w]["bytes_per_row"] for w in WORKLOADS if w in result}, indent=1))


if __name__ == "__main__":
    main()
