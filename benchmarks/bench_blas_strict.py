"""What MKL's strict reproducibility (``MKL_CBWR=AUTO,STRICT``, set by the user before starting Python) costs,
and what it buys: model scores whose bits do not follow the thread count (thresher does not set it: under it,
products 64 columns wide or narrower round with the row count, see docs/methods.md#loss-based-criteria).

Contenders, each in its own process (MKL reads the setting once, at a process's first matrix product):
``strict`` (``MKL_CBWR=AUTO,STRICT`` in the process's environment) and ``off`` (MKL_CBWR unset: MKL's default
dispatch). Both score the same BIG-bench rows with
SmolLM2-135M-Instruct (fp32, ``--threads`` torch threads): IFD with the default length buckets and with
``batching="row"`` (one row per forward: short rows make products of 5-11 rows), and a LoRA warm-up
(``warmup_lora`` on the first ``--train-n`` of those rows, rank 8, one epoch, batches of ``--train-batch``:
SHED's and LESS's training step; a step whose batch holds 5-7 or 9-11 answer tokens makes such products).
The processes are interleaved (off strict off strict ...), ``--reps`` of each; min and median seconds per
workload, ratios strict / off.

The thread check (first repetition of each contender): the same IFD scores and warm-up on 1 thread, and the
rows whose IFD (or the warm-up's final loss and adapter weights) differ by even one bit from the
``--threads`` run.

    PYTHONPATH=python python benchmarks/bench_blas_strict.py --n 80 --train-n 48 --reps 3

Writes benchmarks/results/blas-strict-cpu.json.
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
WORKLOADS = ("ifd-bucket", "ifd-row", "lora-warmup")


def child(a: argparse.Namespace) -> dict:
    """One contender's run in this process: seconds per workload, and the thread check when asked."""
    import torch

    torch.ones(2, 2) @ torch.ones(2, 2)  # MKL reads MKL_CBWR (set for this process or not) at its first product
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_row_batching import load_rows, score
    from thresher.models.loader import load_causal_lm

    lm = load_causal_lm("default", device="cpu")
    df = load_rows(Path(a.data), a.n, a.every, a.max_chars)
    torch.set_num_threads(a.threads)
    score(lm, df.head(4), {"batching": "bucket"})  # warm-up
    train = df.head(a.train_n)
    only = a.only.split(",")
    secs, main = run_workloads(lm, df, train, Path(a.work) / "main", only, a.train_batch)
    from thresher.ops import BLAS_ROW_TILE

    out = {"blas": {"MKL_CBWR": os.environ.get("MKL_CBWR"), "row_tile": BLAS_ROW_TILE}, "seconds": secs}
    if a.check:
        torch.set_num_threads(1)
        _, one = run_workloads(lm, df, train, Path(a.work) / "one", only, a.train_batch)
        out["thread_check"] = differ(main, one)
    return out


def run_workloads(lm, df, train, work: Path, only: list, batch: int) -> tuple[dict, dict]:
    """({workload: seconds}, {workload: results}) of the three workloads, in this process's thread count."""
    import shutil

    import numpy as np

    from benchmarks.bench_row_batching import score
    from thresher.train.warmup import warmup_lora

    secs, res = {}, {}
    for name, opts in (("ifd-bucket", {"batching": "bucket"}), ("ifd-row", {"batching": "row"})):
        if name not in only:
            continue
        t = time.perf_counter()
        res[name] = score(lm, df, opts)["ifd"].to_numpy()
        secs[name] = time.perf_counter() - t
    if "lora-warmup" not in only:
        return secs, res
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    w = warmup_lora(train, lm, work, fraction=1.0, epochs=1, lr=1e-4, r=8, alpha=16, batch_size=batch,
                    checkpoint_s=0, log=lambda _m: None)  # fmt: skip
    secs["lora-warmup"] = time.perf_counter() - t
    from safetensors.numpy import load_file

    adapter = load_file(str(w.checkpoints[-1] / "adapter.safetensors"))
    res["lora-warmup"] = np.concatenate([adapter[k].ravel() for k in sorted(adapter)])
    return secs, res


def differ(a: dict, b: dict) -> dict:
    import numpy as np

    out = {}
    for k in ("ifd-bucket", "ifd-row"):
        if k not in a:
            continue
        x, y = a[k], b[k]
        out[k] = {"rows": len(x), "rows_differ": int(((x != y) & ~(np.isnan(x) & np.isnan(y))).sum())}
    if "lora-warmup" in a:
        values = a["lora-warmup"]
        out["lora-warmup"] = {
            "adapter_values": len(values),
            "adapter_values_differ": int((values != b["lora-warmup"]).sum()),
        }
    return out


#: contender -> the environment it runs with (MKL_CBWR and THRESHER_BLAS_ROW_TILE unset unless named).
CONTENDERS = {"off": {}, "strict": {"MKL_CBWR": "AUTO,STRICT"}}
CLEARED = ("MKL_CBWR", "THRESHER_BLAS_ROW_TILE")


def run_child(a: argparse.Namespace, contender: str, check: bool, contenders: dict = CONTENDERS) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(contenders[contender])
    env["PYTHONPATH"] = f"{ROOT / 'python'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, a.script, "--child", "--contender", contender, "--n", str(a.n), "--every", str(a.every),
           "--max-chars", str(a.max_chars), "--train-n", str(a.train_n), "--train-batch", str(a.train_batch),
           "--only", a.only, "--threads", str(a.threads),
           "--data", a.data, "--work", f"{a.work}/{contender}"] + (["--check"] if check else [])  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs: dict, only: list, top: str, base: str) -> dict:
    per = {c: {w: [r["seconds"][w] for r in rs] for w in only} for c, rs in runs.items()}
    stats = {c: {w: {"min_s": min(v), "median_s": statistics.median(v), "runs_s": v} for w, v in d.items()}
             for c, d in per.items()}  # fmt: skip
    ratio = {w: {q: stats[top][w][q] / stats[base][w][q] for q in ("min_s", "median_s")} for w in only}
    return {"seconds": stats, f"ratio_{top}_to_{base}": ratio}


def parse(doc: str, script: str, out: str, contenders: dict) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--every", type=int, default=97, help="take every N-th pool row")
    ap.add_argument("--max-chars", type=int, default=1200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train-n", type=int, default=48, help="the warm-up's rows (the first scored ones)")
    ap.add_argument("--train-batch", type=int, default=4, help="the warm-up's batch size")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="workloads run; the others' results in --out are kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"))
    ap.add_argument("--work", default=f"/tmp/thresher-{Path(script).stem}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / out))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--contender", choices=tuple(contenders), help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.script = script
    return a


def main(doc: str = __doc__, script: str = __file__, out: str = "blas-strict-cpu.json",
         contenders: dict = CONTENDERS, name: str = "blas-strict") -> None:  # fmt: skip
    """Interleaved child processes, one per contender and repetition (the last contender over the first: the
    ratios), results merged into ``--out``."""
    a = parse(doc, script, out, contenders)
    if a.child:
        print(json.dumps(child(a)))
        return
    runs: dict = {c: [] for c in contenders}
    for rep in range(a.reps):
        for c in contenders:
            runs[c].append(run_child(a, c, rep == 0, contenders))
            print(c, rep, json.dumps(runs[c][-1]["seconds"]), flush=True)
    write(a, runs, name, list(contenders))


def write(a: argparse.Namespace, runs: dict, name: str, names: list) -> None:
    only = a.only.split(",")
    out = Path(a.out)
    result = json.loads(out.read_text()) if out.is_file() else {"benchmark": name}
    result.update(model="SmolLM2-135M-Instruct fp32", blas={c: rs[0]["blas"] for c, rs in runs.items()})
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": a.threads}
    skip = ("out", "child", "contender", "check", "work", "only", "script")
    result.setdefault("settings", {}).update({k: v for k, v in vars(a).items() if k not in skip})
    new = summary(runs, only, names[-1], names[0])
    ratio = f"ratio_{names[-1]}_to_{names[0]}"
    for c in runs:
        result.setdefault("seconds", {}).setdefault(c, {}).update(new["seconds"][c])
    result.setdefault(ratio, {}).update(new[ratio])
    for c, rs in runs.items():
        result.setdefault("thread_check_1_vs_threads", {}).setdefault(c, {}).update(rs[0]["thread_check"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in (ratio, "thread_check_1_vs_threads")}, indent=1))


if __name__ == "__main__":
    main()
