"""A LoRA warm-up killed part-way resumes from its last saved step (issue 10, resume and faults).

Workload: ``thresher.train.warmup.warmup_lora`` with the default model (SmolLM2-135M-Instruct) and LESS's
LoRA (r 128, alpha 512 on q/k/v/o; 59 MB of weights and 118 MB of Adam state a save) on the first
``--rows`` BIG-bench rows, ``--epochs`` epochs, batches of 4. Each run is a separate process with the same
threads (``OMP_NUM_THREADS`` etc. = ``--threads``, torch's intra-op threads too). Contenders, interleaved
per repetition:

* ``epoch-ends``: ``checkpoint_s=0`` (saves at the ends of epochs only, as every warm-up always did), unbroken;
* ``part-way``: ``checkpoint_s=--every`` (default 5 s: many saves, to bound their cost), unbroken;
* ``killed+resumed``: ``checkpoint_s=--every``; SIGKILL ``--after`` seconds after the first part-way save
  appears, then the same run again, which resumes.

Every run's checkpoints (LoRA weights, Adam state: every tensor's bytes and the metadata) and ``warmup.json`` must equal
``epoch-ends``'s of the same repetition (else the script exits 1). Reports per contender the seconds (min,
median), the part-way saves and their mean cost, ``part-way / epoch-ends``, and for the killed runs the
seconds until the kill, the step the rerun resumed at and its time as a fraction of an unbroken run.

    python benchmarks/bench_warmup_resume.py [--rows 64] [--epochs 2] [--reps 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_search_resume import env, run, stats  # noqa: E402

POOL = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"

CHILD = r"""
import json, sys, time
sys.path.insert(0, {py!r})
import torch
torch.set_num_threads({threads})
import pandas as pd
from thresher.models import load_causal_lm
from thresher.train import progress
from thresher.train.warmup import warmup_lora
costs = []
real = progress.Progress.save_part
def save_part(self, *a, **k):
    t = time.perf_counter(); real(self, *a, **k); costs.append(time.perf_counter() - t)
progress.Progress.save_part = save_part
lm = load_causal_lm("default", device="cpu", dtype="float32")
df = pd.read_json({data!r}, lines=True)
t = time.perf_counter()
res = warmup_lora(df, lm, {out!r}, fraction=1.0, epochs={epochs}, batch_size=4, checkpoint_s={every!r},
                  log=lambda m: None)
print(json.dumps({{"seconds": time.perf_counter() - t, "resumed_step": res.resumed_step, "saves": len(costs),
                  "save_s": sum(costs), "losses": res.losses}}))
"""


def run_killed(code: str, threads: int, out: Path, after: float) -> dict:
    """Start the run; SIGKILL it ``after`` seconds after its first part-way save folder appears."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env(threads))  # fmt: skip
    first = None
    while proc.poll() is None:
        if first is None and list(out.glob("progress-*")):
            first = time.perf_counter()
        if first is not None and time.perf_counter() - first >= after:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            saved = json.loads((out / "progress.json").read_text())["point"]["step"]
            return {"killed_after_s": time.perf_counter() - t, "saved_step_at_kill": saved}
        time.sleep(0.2)
    raise RuntimeError(f"the run ended before the kill (rc {proc.returncode}): {proc.stderr.read()[-2000:]!r}")


def fingerprint(out: Path) -> dict:
    """A digest of every checkpoint's tensors (weights, Adam state) and metadata, and warmup.json's contents.
    Not the files' bytes: safetensors writes its metadata in an order that changes from process to process."""
    from safetensors import safe_open

    fp = {"warmup.json": json.loads((out / "warmup.json").read_text())}
    for f in sorted(out.glob("checkpoint-*/*.safetensors")):
        h = hashlib.sha256()
        with safe_open(str(f), framework="pt") as fh:
            h.update(json.dumps(fh.metadata() or {}, sort_keys=True).encode())
            for k in sorted(fh.keys()):
                t = fh.get_tensor(k)
                h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        fp[f"{f.parent.name}/{f.name}"] = h.hexdigest()
    return fp


def one_rep(args: argparse.Namespace, data: Path, work: Path) -> dict:
    def code(every: float) -> str:
        return CHILD.format(py=str(ROOT / "python"), threads=args.threads, data=str(data), out=str(work / "w"),
                            epochs=args.epochs, every=every)  # fmt: skip

    rep, fps = {}, {}
    for name, every in (("epoch-ends", 0.0), ("part-way", args.every)):
        shutil.rmtree(work / "w", ignore_errors=True)
        rep[name] = run(code(every), args.threads)
        fps[name] = fingerprint(work / "w")
    shutil.rmtree(work / "w", ignore_errors=True)
    rep["killed"] = run_killed(code(args.every), args.threads, work / "w", args.after)
    rep["resumed"] = run(code(args.every), args.threads)
    fps["resumed"] = fingerprint(work / "w")
    rep["identical"] = fps["part-way"] == fps["epoch-ends"] == fps["resumed"]
    print(f"epoch-ends {rep['epoch-ends']['seconds']:.1f} s, part-way {rep['part-way']['seconds']:.1f} s "
          f"({rep['part-way']['saves']} saves, {rep['part-way']['save_s']:.1f} s), killed at "
          f"{rep['killed']['killed_after_s']:.1f} s, resumed at step {rep['resumed']['resumed_step']} in "
          f"{rep['resumed']['seconds']:.1f} s, identical {rep['identical']}", flush=True)  # fmt: skip
    return rep


def summarize(reps: list, steps: int) -> dict:
    t = {c: [r[c]["seconds"] for r in reps] for c in ("epoch-ends", "part-way", "resumed")}
    return {
        "seconds": {c: stats(v) for c, v in t.items()},
        "optimizer_steps": steps,
        "part_way_saves": stats([r["part-way"]["saves"] for r in reps]),
        "seconds_per_save": stats([r["part-way"]["save_s"] / max(1, r["part-way"]["saves"]) for r in reps]),
        "part_way_over_epoch_ends": stats([a / b for a, b in zip(t["part-way"], t["epoch-ends"])]),
        "killed_after_s": stats([r["killed"]["killed_after_s"] for r in reps]),
        "resumed_at_step": [r["resumed"]["resumed_step"] for r in reps],
        "resumed_over_unbroken": stats([a / b for a, b in zip(t["resumed"], t["epoch-ends"])]),
        "killed_plus_resumed_over_unbroken": stats(
            [(r["killed"]["killed_after_s"] + r["resumed"]["seconds"]) / r["epoch-ends"]["seconds"] for r in reps]
        ),
        "all_identical": all(r["identical"] for r in reps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--every", type=float, default=5.0, help="checkpoint_s of the part-way contenders")
    ap.add_argument("--after", type=float, default=30.0, help="seconds after the first part-way save to kill at")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/thresher-bench-warmup-resume")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "warmup-resume-cpu.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"pool-{args.rows}.jsonl"
    with gzip.open(POOL, "rt") as fh:
        data.write_text("".join(itertools.islice(fh, args.rows)))
    reps = [one_rep(args, data, work) for _ in range(args.reps)]
    trained = len(json.loads((work / "w" / "warmup.json").read_text())["train_ids"])
    steps = -(-trained // 4) * args.epochs
    settings = {k: v for k, v in vars(args).items() if k not in ("work", "out")}
    result = {"benchmark": "warmup_resume", "settings": {**settings, "model": "SmolLM2-135M-Instruct (float32)",
              "lora": "r 128, alpha 512, q/k/v/o", "trained_rows": trained},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "note": "shared 2-core machine: read the ratios, not the absolute times"},
              "summary": summarize(reps, steps), "reps": reps}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    sys.exit(0 if result["summary"]["all_identical"] else 1)


if __name__ == "__main__":
    main()
