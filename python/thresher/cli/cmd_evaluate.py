"""`thresher evaluate DATA --selected DIR --target TARGET_DATA`: proxy fine-tuning of a selection.

Fine-tunes a small causal LM (LoRA, fixed budget of steps and seed) on the
selected subset, on a random subset of the same size and on the full pool;
measures the answer loss and greedy exact-match accuracy on the target set;
reports the benchmark ratio and PIR (same_bench setting) and writes
evaluation.json and run.yaml (accepted by `thresher compare`) into --out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from thresher.evaluation.comparison import FEASIBILITY_FIELDS, Feasibility

from ..evaluation.proxy import ProxyConfig, evaluate_selection, run_entries, write_outputs
from ..evaluation.runs import feasibility_from_recipe
from ..io import open_dataset, read_samples
from ..models import byte_tokenizer, tiny_causal_lm


def _selected_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--selected: {path} does not exist")
    cands = sorted(p for p in path.iterdir() if p.name.startswith("selected") and not p.name.endswith(".tmp"))
    if not cands:
        raise ValueError(f"--selected: {path} holds no selected.* file (the output folder of `thresher select`)")
    if len(cands) > 1:
        raise ValueError(f"--selected: {path} holds several selected files {[p.name for p in cands]}; name one")
    return cands[0]


def _manifest_recipe(sel_dir: Path) -> Optional[str]:
    man = sel_dir / "manifest.json"
    if not man.is_file():
        return None
    try:
        data = json.loads(man.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{man}: malformed JSON ({exc})") from None
    rec = data.get("recipe") if isinstance(data, dict) else None
    if isinstance(rec, dict):
        rec = rec.get("name")
    return rec if isinstance(rec, str) and rec else None


def _parse_kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        for part in it.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"--feasibility: expected KEY=VALUE, got {part!r}")
            k, v = (x.strip() for x in part.split("=", 1))
            low = v.lower()
            if low in ("true", "yes", "1") and k not in ("trained_llms", "steps"):
                out[k] = True
            elif low in ("false", "no", "0") and k not in ("trained_llms", "steps"):
                out[k] = False
            else:
                try:
                    out[k] = int(v)
                except ValueError:
                    raise ValueError(f"--feasibility: {k}: expected an integer or true/false, got {v!r}") from None
    return out


def resolve_feasibility(args: Any, sel_dir: Path) -> tuple[Optional[str], Optional[Feasibility]]:
    """(recipe name, explicit feasibility) for the run entry; raises when neither gives all inputs."""

    recipe = args.recipe or _manifest_recipe(sel_dir)
    given = _parse_kv(args.feasibility or [])
    base: dict[str, Any] = {}
    if recipe is not None:
        base = feasibility_from_recipe(recipe, where="--recipe").to_dict()
    merged = {**base, **given}
    if not merged:
        raise ValueError(
            "feasibility: missing feasibility inputs for the run entry: pass --recipe NAME (a thresher recipe), "
            f"or --feasibility {'=..,'.join(FEASIBILITY_FIELDS)}=.. (or select with `thresher select --recipe`, "
            "whose manifest names the recipe)"
        )
    feas = Feasibility.from_mapping(merged, where="--feasibility")
    return recipe, (feas if given else None)


def _loader(spec: str):
    if spec == "tiny" or spec.startswith("tiny:"):
        seed = 0
        if ":" in spec:
            try:
                seed = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"--model: expected tiny or tiny:SEED, got {spec!r}") from None

        def load():

            tok = byte_tokenizer()
            tok.eos_token = "<|im_end|>"  # EOS distinct from pad (pad's embedding row is zero-initialised)
            return tiny_causal_lm(seed, tokenizer=tok)

        return load
    return None


def run(args: Any) -> int:

    sel_path = _selected_file(Path(args.selected))
    sel_dir = sel_path.parent if Path(args.selected).is_file() else Path(args.selected)
    out = Path(args.out) if args.out else sel_dir / "evaluation"
    if (out / "evaluation.json").exists() and not args.force:
        raise FileExistsError(f"{out}: already holds evaluation.json; pass --force to overwrite it")
    cfg = ProxyConfig(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        eval_batch_size=args.eval_batch_size,
        template=args.template,
        metric=args.metric,
        decode=args.decode,
        lora_layers=args.lora_layers or None,
        threads=args.threads,
        device=args.device,
    ).validate()
    recipe, feas = resolve_feasibility(args, sel_dir)  # before any expensive work
    name = args.name or recipe or sel_dir.resolve().name
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))

    pool = read_samples(args.data)
    selected = read_samples(sel_path)
    src = open_dataset(args.target, group_field=args.group)
    target = src.read_all()
    if args.group is not None and args.group not in (src.columns or []):
        raise ValueError(f"--group: {args.target} has no field {args.group!r} (fields: {src.columns})")
    if args.max_target is not None and len(target) > args.max_target:
        target = target.sample(n=args.max_target, random_state=args.seed).sort_index()
    log(
        f"pool {len(pool)}, selected {len(selected)} (SDF {len(selected) / max(1, len(pool)):.4g}), "
        f"target {len(target)}"
    )
    result = evaluate_selection(
        pool, selected, target, cfg, group="group" if "group" in target else None, loader=_loader(args.model), log=log
    )
    entries = run_entries(result, name, recipe=recipe, feasibility=feas)
    paths = write_outputs(result, out, entries)

    print(
        f"SDF {result.sdf:.4g} ({result.selected_size} of {result.pool_size}); target {len(target)} examples; "
        f"{cfg.steps} steps x {cfg.batch_size}, seed {cfg.seed}, model {cfg.model}"
    )
    print(f"{'arm':10s} {'loss':>8s} {'accuracy':>9s}")
    for arm, m in result.arms.items():
        print(f"{arm:10s} {m['loss']:8.4f} {m['accuracy']:9.4f}")
    for k, rt in result.ratio.items():
        if rt.get("pir") is None:
            print(f"{k}: {rt['error']}")
        else:
            print(f"{k}: r = {rt['r']:.4f} ({rt['metric']}), PIR (same_bench) = {rt['pir']:.4f}")
    print(f"wrote {paths['json']} and {paths['runs']} ({len(entries)} run entr{'y' if len(entries) == 1 else 'ies'})")
    if not entries:
        print("no run entry: the ratio against the full pool is undefined (see above)", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a selection by proxy LoRA fine-tuning (vs random and full pool)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("data", metavar="DATA", help="the candidate pool the selection was made from")
    p.add_argument(
        "--selected", required=True, metavar="DIR", help="output folder of `thresher select` (or a selected data file)"
    )
    p.add_argument("--target", required=True, metavar="TARGET_DATA", help="target set (answers scored by exact match)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: DIR/evaluation)")
    p.add_argument(
        "--model",
        default="default",
        help="default | local folder | HF id | tiny[:SEED] (a tiny random model, for tests)",
    )
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per arm (default 200)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=96, help="tokens per example (prompt + answer)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--template", choices=["plain", "chat"], default="plain")
    p.add_argument(
        "--decode",
        choices=["teacher", "generate"],
        default="teacher",
        help="exact match from one teacher-forced pass (token-exact greedy decode; default) "
        "or from model.generate with string comparison",
    )
    p.add_argument(
        "--lora-layers",
        type=int,
        default=8,
        metavar="N",
        help="LoRA on the top N decoder layers only (default 8; 0 = all layers)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    p.add_argument(
        "--metric",
        choices=["accuracy", "likelihood"],
        default="accuracy",
        help="benchmark score behind the ratio (likelihood = exp(-answer loss))",
    )
    p.add_argument(
        "--group",
        default=None,
        metavar="FIELD",
        help="target field splitting it into evaluation sets (default: task/source/... when present)",
    )
    p.add_argument("--max-target", type=int, default=None, help="evaluate on a seeded sample of N target examples")
    p.add_argument("--name", default=None, help="run name in run.yaml (default: recipe or folder name)")
    p.add_argument("--recipe", default=None, help="recipe whose feasibility inputs the run declares")
    p.add_argument(
        "--feasibility",
        action="append",
        metavar="KEY=VALUE,...",
        help=f"feasibility inputs ({', '.join(FEASIBILITY_FIELDS)}, public_code, small_proxy)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing evaluation in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
