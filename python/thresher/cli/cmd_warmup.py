"""`thresher warmup DATA --fraction 0.05 --epochs 4 --out DIR`: warm-up LoRA training (LESS step 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..device import DTYPE_CHOICES
from ..io import read_samples
from ..models import load_causal_lm
from ..train.progress import DEFAULT_CHECKPOINT_S
from ..train.warmup import warmup_lora
from ._common import deprecated


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warmup",
        help="warm-up LoRA training on a random fraction of a pool (LESS)",
        description="Train LoRA on a random fraction of DATA, one checkpoint (LoRA weights + "
        "Adam state + mean learning rate) per epoch under --out. A stopped run (killed, out of time) goes on "
        "from its last saved point when run again with the same --out, model, options and data.",
    )
    p.add_argument("data", type=Path, help="pool (jsonl/json/parquet/csv/HF folder)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (must not hold a finished warm-up run; a stopped one is resumed)",
    )
    p.add_argument("--fraction", type=float, default=0.05, help="random fraction of the pool to train on")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (linear schedule, 3%% warm-up)")
    p.add_argument("--lora-r", type=int, default=128, help="LoRA rank (LESS: 128)")
    p.add_argument("--lora-alpha", type=float, default=512, help="LoRA alpha (LESS: 512)")
    deprecated(p, "--r", "lora_r", "--lora-r", type=int)
    deprecated(p, "--alpha", "lora_alpha", "--lora-alpha", type=float)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="comma-separated LoRA target modules")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--template", default="alpaca", help="prompt template (chat|alpaca|wiz|plain)")
    p.add_argument("--model", default="default", help="causal LM: default | local folder | HF id")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto: bf16 on a GPU with bf16, else fp32")
    p.add_argument("--device", default="auto", help="auto (cuda when visible) | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rows", type=int, default=None, help="cap on the training subset size")
    p.add_argument("--format", default=None, help="input format (default: from the extension)")
    p.add_argument("--limit", type=int, default=None, help="read only the first N rows of DATA")
    p.add_argument(
        "--checkpoint-every",
        dest="checkpoint_s",
        type=float,
        default=DEFAULT_CHECKPOINT_S,
        metavar="SECONDS",
        help=f"save the LoRA and Adam state part-way through an epoch every SECONDS (default {DEFAULT_CHECKPOINT_S:g}; "
        "never sooner than 20x the last save's own time; 0: at the ends of epochs only); a killed run resumes there",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    df = read_samples(args.data, format=args.format, limit=args.limit)
    lm = load_causal_lm(args.model, dtype=args.dtype, device=args.device)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    res = warmup_lora(
        df,
        lm,
        args.out,
        fraction=args.fraction,
        epochs=args.epochs,
        lr=args.lr,
        r=args.lora_r,
        alpha=args.lora_alpha,
        targets=targets,
        batch_size=args.batch_size,
        max_length=args.max_length,
        template=args.template,
        seed=args.seed,
        max_rows=args.max_rows,
        checkpoint_s=args.checkpoint_s,
    )
    print(
        f"warmup: {len(res.checkpoints)} checkpoint(s) in {res.out} "
        f"(trained on {res.meta['n_train']} rows; checkpoint weights {[round(w, 4) for w in res.weights]})"
    )
    return 0
