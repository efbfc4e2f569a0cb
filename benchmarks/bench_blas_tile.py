"""What padding every model product to a multiple of the BLAS row tile costs, and what it buys: model scores
and a warm-up whose bits do not follow the thread count (:mod:`thresher.ops.blas`: MKL's default dispatch rounds
a product whose row count is not a multiple of 4 with the thread count).

Contenders, each in its own process, ``MKL_CBWR`` unset: ``untiled`` (``THRESHER_BLAS_ROW_TILE=1``: no padding; the
activations still run in blocks) and ``tiled`` (thresher's default, the variable unset: 4). Both score the same
BIG-bench rows with SmolLM2-135M-Instruct (fp32, ``--threads`` torch threads): IFD with the default length buckets
and with ``batching="row"`` (one row per forward: short rows make products of 5-11 rows), and a LoRA warm-up
(``warmup_lora`` on the first ``--train-n`` of those rows, rank 8, one epoch, batches of ``--train-batch``: SHED's
and LESS's training step; its LM head runs on the batch's answer tokens). The harness is ``bench_blas_strict``'s:
processes interleaved (untiled tiled untiled ...), ``--reps`` of each, min and median seconds per workload, ratios
tiled / untiled; the thread check (first repetition of each contender) runs the same workloads on 1 thread and
counts the rows whose IFD (the warm-up's adapter values) differ by even one bit.

    PYTHONPATH=python python benchmarks/bench_blas_tile.py --n 80 --train-n 48 --reps 3

Writes benchmarks/results/blas-tile-cpu.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_blas_strict import main  # noqa: E402

CONTENDERS = {"untiled": {"THRESHER_BLAS_ROW_TILE": "1"}, "tiled": {}}

if __name__ == "__main__":
    main(__doc__, __file__, "blas-tile-cpu.json", CONTENDERS, "blas-tile")
