"""`thresher grads DATA --warmup DIR --out STORE`: projected per-sample LoRA gradient features."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..device import DTYPE_CHOICES
from ..features.gradients import AdamState, GradientFeaturizer, load_lora
from ..features.store import FeatureStore
from ..io import read_samples
from ..models import load_causal_lm
from ..train.warmup import load_warmup, lora_for_checkpoint
from ._common import deprecated


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grads",
        help="per-sample projected LoRA gradient features into a feature store",
        description="For each warm-up checkpoint, compute each sample's projected LoRA gradient "
        "(Adam-transformed by default, as LESS does for training data) and append it to "
        "the feature store STORE/checkpoint-<k>/ (resumable: stored ids are skipped).",
    )
    p.add_argument("data", type=Path)
    p.add_argument("--warmup", type=Path, required=True, help="folder written by `thresher warmup`")
    p.add_argument("--out", type=Path, required=True, help="feature store folder (one sub-store per checkpoint)")
    p.add_argument("--dim", type=int, default=8192, help="projection dimension (multiple of 8)")
    p.add_argument("--seed", type=int, default=0, help="projection seed")
    p.add_argument("--kind", default="rademacher", choices=["rademacher", "gaussian"])
    p.add_argument(
        "--adam",
        default="less",
        choices=["less", "bias_corrected", "none"],
        help="gradient transform: less (Adam, no bias correction), bias_corrected, none (plain; use "
        "it for target/validation sets)",
    )
    p.add_argument(
        "--mode",
        default="dense",
        choices=["dense", "structured"],
        help="dense: per-sample gradient then projection; structured: LoGra-style (plain only)",
    )
    p.add_argument("--store-dtype", default="float16", choices=["float16", "int8", "bit"])
    p.add_argument("--checkpoints", default="all", help="'all' or comma-separated epoch numbers")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=256, help="rows per write (resumption granularity; 256)")
    deprecated(p, "--chunk", "shard_size", "--shard-size", type=int)
    p.add_argument("--model", default=None, help="override the warm-up's model spec")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto: bf16 on a GPU with bf16, else fp32")
    p.add_argument("--device", default="auto", help="auto (cuda when visible) | cpu | cuda[:N]")
    p.add_argument("--backend", default=None, help="force a random_project backend")
    p.add_argument("--format", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    w = load_warmup(args.warmup)
    df = read_samples(args.data, format=args.format, limit=args.limit)
    lm = load_causal_lm(args.model or w.meta["model_spec"], dtype=args.dtype, device=args.device)
    pm = lora_for_checkpoint(lm, w)
    cks = w.checkpoints
    if args.checkpoints != "all":
        want = {f"checkpoint-{int(x)}" for x in args.checkpoints.split(",")}
        cks = [c for c in cks if c.name in want]
        if not cks:
            raise ValueError(f"--checkpoints: none of {sorted(want)} in {args.warmup}")
    ids_all = [str(i) for i in df["id"].tolist()]
    for ck in cks:
        load_lora(pm, ck / "adapter.safetensors")
        st = AdamState.load(ck / "optimizer.safetensors") if args.adam != "none" else None
        fz = GradientFeaturizer(
            pm,
            lm.tokenizer,
            dim=args.dim,
            seed=args.seed,
            kind=args.kind,
            mode=args.mode,
            adam=args.adam,
            adam_state=st,
            batch_size=args.batch_size,
            template=w.meta.get("template", "alpaca"),
            max_length=int(w.meta.get("max_length", 512)),
            backend=args.backend,
            on_nonfinite="nan",
            fingerprint=lm.fingerprint,
        )
        import hashlib

        meta = dict(
            fz.describe(), checkpoint=hashlib.sha256((ck / "adapter.safetensors").read_bytes()).hexdigest()[:16]
        )
        store = FeatureStore(args.out / ck.name, meta, dtype=args.store_dtype)
        todo = [i for i, s in enumerate(ids_all) if s not in store]
        t0, done, skipped = time.time(), 0, 0
        for a in range(0, len(todo), args.shard_size):
            part = df.iloc[todo[a : a + args.shard_size]]
            ids, f, reasons = fz(part)
            ok = [j for j, r in enumerate(reasons) if not r]
            skipped += len(ids) - len(ok)
            done += store.write([ids[j] for j in ok], f[ok])
        dt = time.time() - t0
        print(
            f"grads: {ck.name}: {done} new rows ({len(ids_all) - len(todo)} already stored, {skipped} not "
            f"scorable) -> {store.path} [{dt:.1f}s, {done / dt if dt > 0 and done else 0:.2f} samples/s]"
        )
    return 0
