"""`thresher evaluate DATA --selected DIR --target TARGET_DATA`: proxy fine-tuning of a selection.

Fine-tunes a small causal LM (LoRA, fixed budget of steps and seed) on the
selected subset, on a random subset of the same size and on the full pool;
measures the answer loss and greedy exact-match accuracy on the target set;
reports the benchmark ratio and PIR (same_bench setting) and writes
evaluation.json and run.yaml (accepted by `thresher compare`) into --out.

Several arms at one SDF (`--selected` repeated, `--recipes rds,dsir` run here at
`--k`/`--ratio`, plus `--baselines random,full`) over several seeds (`--seeds 0,1,2`):
mean and spread per arm, r and PIR against the full pool and against random, written as
pir.json, pir.md, run.yaml and efficiency.png. On evaluation sets with a small label
set the score is closed-set accuracy (label log-likelihood argmax), exact match elsewhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from thresher.evaluation.comparison import FEASIBILITY_FIELDS, Feasibility

from ..evaluation import arms as arms_mod
from ..evaluation.proxy import ProxyConfig, evaluate_selection, run_entries, write_outputs
from ..evaluation.runs import feasibility_from_recipe
from ..io import open_dataset, read_samples
from ..models import byte_tokenizer, tiny_causal_lm
from ._common import add_budget_args, add_output_args, add_overwrite_arg, deprecated, emit_json, parse_kv


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


def _proxy_config(args: Any) -> ProxyConfig:
    return ProxyConfig(
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
        max_labels=args.max_labels,
        closed_norm=args.closed_norm,
        closed_eos=not args.closed_no_eos,
    ).validate()


def _dry_run(args: Any, cfg: ProxyConfig, out: Path, name: str, recipe: Any, feas: Any) -> int:
    plan = {"data": args.data, "selected": args.selected, "target": args.target, "out": str(out), "name": name,
            "recipe": recipe, "feasibility": None if feas is None else feas.to_dict(), "proxy": vars(cfg)}  # fmt: skip
    if args.json:
        emit_json({"dry_run": True, **plan})
    else:
        print(f"plan (dry run): evaluate {args.selected} against {args.target} -> {out} (run name {name!r})")
        print(f"  proxy: {json.dumps(plan['proxy'], default=str)}")
        print(f"  recipe: {recipe}  feasibility: {plan['feasibility']}")
    return 0


def run(args: Any) -> int:
    if _multi_arm(args):
        return _run_arms(args)
    if args.k is not None or args.ratio is not None or args.tokens is not None:
        raise ValueError("--k/--ratio: the subset size of one --selected folder is its own; give --recipes to run arms")
    args.selected = args.selected[0]
    sel_path = _selected_file(Path(args.selected))
    sel_dir = sel_path.parent if Path(args.selected).is_file() else Path(args.selected)
    out = Path(args.out) if args.out else sel_dir / "evaluation"
    if (out / "evaluation.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already holds evaluation.json; pass --overwrite to replace it")
    cfg = _proxy_config(args)
    recipe, feas = resolve_feasibility(args, sel_dir)  # before any expensive work
    name = args.name or recipe or sel_dir.resolve().name
    if args.dry_run:
        return _dry_run(args, cfg, out, name, recipe, feas)
    log = (lambda s: None) if args.quiet or args.json else (lambda s: print(s, file=sys.stderr, flush=True))

    pool = read_samples(args.data)
    selected = read_samples(sel_path)
    src = open_dataset(args.target, group_field=args.group_field)
    target = src.read_all()
    if args.group_field is not None and args.group_field not in (src.columns or []):
        raise ValueError(f"--group-field: {args.target} has no field {args.group_field!r} (fields: {src.columns})")
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
    if args.json:
        emit_json({"sdf": result.sdf, "selected": result.selected_size, "pool": result.pool_size,
                   "arms": result.arms, "ratio": result.ratio, "outputs": {k: str(v) for k, v in paths.items()},
                   "run_entries": len(entries)})  # fmt: skip
        return 0 if entries else 1
    _print_result(result, cfg, target, paths, entries)
    return 0 if entries else 1


def _print_result(result: Any, cfg: ProxyConfig, target: Any, paths: dict, entries: list) -> None:

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


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a selection by proxy LoRA fine-tuning (vs random and full pool)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("data", metavar="DATA", help="the candidate pool the selection was made from")
    p.add_argument(
        "--selected",
        action="append",
        default=None,
        metavar="[NAME=]DIR",
        help="output folder of `thresher select` (or a selected data file); repeat for several arms",
    )
    p.add_argument(
        "--target",
        required=True,
        metavar="TARGET_DATA",
        help="target set (closed-set accuracy on tasks with a small label set, exact match elsewhere)",
    )
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
    p.add_argument("--device", default="auto", help="auto (cuda when visible) | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    p.add_argument(
        "--metric",
        choices=["accuracy", "exact", "likelihood"],
        default="accuracy",
        help="benchmark score behind the ratio: accuracy (closed-set accuracy where the task has <= --max-labels "
        "outputs, exact match elsewhere; default), exact (exact match everywhere), likelihood (exp(-answer loss))",
    )
    _add_closed_args(p)
    _add_arm_args(p)
    p.add_argument(
        "--group-field",
        default=None,
        metavar="FIELD",
        help="target field splitting it into evaluation sets (default: task/source/... when present)",
    )
    deprecated(p, "--group", "group_field", "--group-field")
    p.add_argument("--max-target", type=int, default=None, help="evaluate on a seeded sample of N target examples")
    p.add_argument("--name", default=None, help="run name in run.yaml (default: recipe or folder name)")
    p.add_argument("--recipe", default=None, help="recipe whose feasibility inputs the run declares")
    p.add_argument(
        "--feasibility",
        action="append",
        metavar="KEY=VALUE,...",
        help=f"feasibility inputs ({', '.join(FEASIBILITY_FIELDS)}, public_code, small_proxy)",
    )
    add_overwrite_arg(p, "replace an existing evaluation in --out")
    p.add_argument("--quiet", action="store_true")
    add_output_args(p)
    p.set_defaults(func=run)


def _add_closed_args(p: Any) -> None:
    g = p.add_argument_group("closed-set accuracy")
    g.add_argument(
        "--max-labels",
        type=int,
        default=20,
        metavar="N",
        help="a target task with 2..N distinct outputs (target rows + its rows in DATA) is scored by "
        "label log-likelihood argmax (default 20)",
    )
    g.add_argument(
        "--closed-norm",
        choices=["none", "tokens", "chars"],
        default="none",
        help="label log-likelihood: summed (none, lm-evaluation-harness acc; default), per token, or per "
        "character (acc_norm); all three are reported",
    )
    g.add_argument(
        "--closed-no-eos",
        action="store_true",
        help="score labels without the EOS token the proxy trains on (lm-evaluation-harness's scoring)",
    )


def _add_arm_args(p: Any) -> None:
    g = p.add_argument_group("arms (several selections at one SDF, several seeds)")
    g.add_argument("--recipes", default=None, metavar="R1,R2", help="recipes to select k rows with, one arm each")
    g.add_argument(
        "--recipe-option",
        action="append",
        default=None,
        metavar="RECIPE.KEY=VALUE",
        help="an option of one of --recipes, e.g. rds.target=ref.jsonl (repeatable)",
    )
    g.add_argument(
        "--baselines",
        default="random,full",
        metavar="LIST",
        help="baseline arms: random, full, both (default) or none",
    )
    g.add_argument("--seeds", default=None, metavar="0,1,2", help="fine-tuning seeds (default: --seed)")
    g.add_argument("--cache-dir", default=None, help="score cache of the --recipes selections (default OUT/cache)")
    g.add_argument("--no-plot", action="store_true", help="do not write efficiency.png")
    add_budget_args(p)


def _multi_arm(args: Any) -> bool:
    n_sel = len(args.selected or [])
    if n_sel == 0 and not args.recipes:
        raise ValueError("--selected: give a `thresher select` folder (or several), or --recipes to run")
    return bool(args.recipes or args.seeds or n_sel > 1)


def _baselines(text: str) -> list[str]:
    names = [b.strip() for b in str(text).split(",") if b.strip()]
    if names == ["none"]:
        return []
    bad = [b for b in names if b not in arms_mod.COUNTERPARTS]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"--baselines: expected random, full, both (random,full) or none, got {text!r}")
    return [b for b in (arms_mod.RANDOM, arms_mod.FULL) if b in names]


def _recipe_options(args: Any, recipes: list[str]) -> dict[str, dict]:
    opts: dict[str, dict] = {r: {} for r in recipes}
    for key, value in parse_kv(args.recipe_option, "--recipe-option").items():
        rec, dot, name = key.partition(".")
        if not dot or rec not in opts:
            raise ValueError(f"--recipe-option: write RECIPE.KEY=VALUE, RECIPE among --recipes {recipes}; got {key!r}")
        opts[rec][name] = value
    return opts


def _selection_arms(args: Any) -> list:
    out = []
    for spec in args.selected or []:
        name, eq, folder = spec.partition("=")
        path = Path(folder if eq else spec)
        sel_path = _selected_file(path)
        sel_dir = sel_path.parent if path.is_file() else path
        recipe = _manifest_recipe(sel_dir)
        arm_name = name if eq else sel_dir.resolve().name
        out.append(arms_mod.Arm(arm_name, rows=read_samples(sel_path), recipe=recipe, source=str(sel_path)))
    return out


def _arms_plan(args: Any, n_pool: Optional[int]) -> tuple[Optional[int], dict[str, dict], list[str], list[int]]:
    """(k, recipe options, baselines, seeds), all checked before any selection or training."""
    if args.tokens is not None:
        raise ValueError("--tokens: arms are compared at one SDF; give --k or --ratio")
    if args.recipe or args.feasibility or args.name:
        raise ValueError("--recipe/--feasibility/--name: single-selection options; with arms, feasibility comes "
                         "from each arm's recipe (a selection folder's manifest or --recipes)")  # fmt: skip
    recipes = [r.strip() for r in (args.recipes or "").split(",") if r.strip()]
    for r in recipes:
        feasibility_from_recipe(r, where="--recipes")  # unknown recipe: fails here
    k = args.k
    if args.ratio is not None:
        if not 0 < args.ratio <= 1:
            raise ValueError(f"--ratio: expected a fraction in (0, 1], got {args.ratio}")
        k = max(1, int(round(args.ratio * n_pool))) if n_pool is not None else None
    if recipes and args.k is None and args.ratio is None and not args.selected:
        raise ValueError("--k: give --k or --ratio for the --recipes arms (or a --selected folder fixing k)")
    seeds = arms_mod.parse_seeds(args.seeds) if args.seeds else [args.seed]
    return k, _recipe_options(args, recipes), _baselines(args.baselines), seeds


def _run_arms(args: Any) -> int:
    out = Path(args.out) if args.out else None
    if out is None:
        raise ValueError("--out: give an output folder for an evaluation of several arms")
    if (out / "pir.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already holds pir.json; pass --overwrite to replace it")
    cfg = _proxy_config(args)
    log = (lambda s: None) if args.quiet or args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.dry_run:
        k, rec_opts, baselines, seeds = _arms_plan(args, None)
        plan = {"dry_run": True, "k": k, "ratio": args.ratio, "selected": args.selected, "recipes": rec_opts,
                "baselines": baselines, "seeds": seeds, "out": str(out), "proxy": vars(cfg)}  # fmt: skip
        if args.json:
            emit_json(plan)
        else:
            print(f"plan (dry run): {json.dumps(plan, default=str)}")
        return 0
    pool = read_samples(args.data)
    k, rec_opts, baselines, seeds = _arms_plan(args, len(pool))
    target = _read_target(args)
    arms = _selection_arms(args)
    if k is None and arms:
        k = len(arms[0].rows)
    for rec, opts in rec_opts.items():
        log(f"selecting {k} rows with recipe {rec}")
        cache = args.cache_dir or out / "cache"
        arms.append(arms_mod.select_recipe_arm(args.data, pool, rec, opts, k, out / "arms" / rec, cache_dir=cache))
    arms += [arms_mod.Arm(b) for b in baselines]
    result = arms_mod.evaluate_arms(
        pool, arms, target, cfg, seeds, k=k, group="group" if "group" in target else None,
        loader=_loader(args.model), log=log,
    )  # fmt: skip
    paths = arms_mod.write_outputs(result, out, plot=not args.no_plot)
    if args.json:
        outputs = {n: str(v) for n, v in paths.items()}
        emit_json({"sdf": result.sdf, "k": result.k, "table": result.table, "outputs": outputs})
    elif not args.quiet:
        print(arms_mod.markdown_table(result), end="")
        print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


def _read_target(args: Any):
    src = open_dataset(args.target, group_field=args.group_field)
    target = src.read_all()
    if args.group_field is not None and args.group_field not in (src.columns or []):
        raise ValueError(f"--group-field: {args.target} has no field {args.group_field!r} (fields: {src.columns})")
    if args.max_target is not None and len(target) > args.max_target:
        target = target.sample(n=args.max_target, random_state=args.seed).sort_index()
    return target
