"""A token budget counted with the scoring model's tokenizer (``--tokens`` with a model-based criterion).

The counts are per shard entries of the score cache (``tokens-lm``), computed where the shard is
read: in this process while the shards are scored, or by the engine's worker that reads the shard
(:class:`ModelTokenCounter`, shipped like a criterion), so the driver of a run whose workers read
the input never reads a row's text for them. :func:`model_token_counts` gathers them for the
selection as a memory map, with one more pass over the input only for shards the cache lacks (a
model given as a loaded object, which a worker cannot rebuild)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ..cache import cache_key
from ..criteria.base import model_fingerprint
from ..models.loader import LoadedLM, load_tokenizer
from ..plan import TOKENS, Plan, Step
from ..render import render_sample
from .state import RunState, concat

TOKENS_LM = "tokens-lm"  # cache folder of the model-tokenizer counts
TOKENS_LM_SPEC = "__tokens_lm__"  # the worker spec that counts them


def token_model(plan: Plan) -> Optional[Step]:
    """The first model-based criterion (one with a ``model`` option): its tokenizer counts a token budget."""
    for step in plan.criteria:
        m = step.options.get("model")
        if isinstance(m, (str, LoadedLM)):
            return step
    return None


def counting_step(cfg: Any, plan: Plan) -> Optional[Step]:
    """The criterion whose tokenizer counts this run's token budget, or None (no token budget, no
    selection, or no model-based criterion: the ``length`` criterion's estimate counts)."""
    return token_model(plan) if cfg.tokens is not None and not cfg.score_only else None


def token_count_kind(cfg: Any, plan: Plan) -> str:
    """What ``tokens`` counts: ``tokenizer of <criterion> (<model>)`` under a token budget with a
    model-based criterion, else ``approximate`` (the ``length`` criterion's estimate)."""
    step = counting_step(cfg, plan)
    if step is None:
        return "approximate"
    return f"tokenizer of {step.col} ({model_fingerprint(step.options['model'])}), whole conversation"


def _template(step: Step) -> str:
    return step.options.get("template") or "alpaca"


def lm_tokens_key(st: RunState, step: Step, shard_key: str) -> str:
    """The cache key of one shard's counts (the model's fingerprint computed once per run)."""
    memo = f"{TOKENS_LM}:{step.col}"
    if memo not in st.keys:
        st.keys[memo] = f"{model_fingerprint(step.options['model'])}/template={_template(step)}/v1"
    return cache_key(TOKENS_LM, st.keys[memo], shard_key)


def count_tokens(table: pd.DataFrame, tokenizer: Any, template: str) -> pd.DataFrame:
    """Tokens of each row's whole rendered conversation (prompt template or chat template, every turn)."""
    counts = np.zeros(len(table), dtype=np.float64)
    for i, row in enumerate(table.to_dict("records")):
        r = render_sample(row, template, tokenizer, sid=str(row["id"]))
        counts[i] = len(tokenizer(r.text, add_special_tokens=not r.special_in_text)["input_ids"])
    return pd.DataFrame({"id": table["id"].astype(str), TOKENS: counts})


class ModelTokenCounter:
    """The counts of a table with a model's tokenizer (loaded on first use, never the model): what a
    worker runs for a shard it reads, as it runs a criterion."""

    def __init__(self, model: str, template: str = "alpaca") -> None:
        self.model, self.template = model, template
        self.tokenizer: Any = None

    def __call__(self, table: pd.DataFrame) -> pd.DataFrame:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model)
        return count_tokens(table, self.tokenizer, self.template)


def worker_spec(cfg: Any, plan: Plan) -> Optional[tuple]:
    """``(class, options)`` of the workers' counter for this run, or None (nothing to count there; a
    loaded model object cannot be rebuilt on a worker)."""
    step = counting_step(cfg, plan)
    if step is None or not isinstance(step.options["model"], str):
        return None
    return ModelTokenCounter, {"model": step.options["model"], "template": _template(step)}


def _tokenizer(st: RunState, step: Step) -> Any:
    sc = st.scorers.get(step.col)
    if getattr(sc, "tokenizer", None) is not None:
        return sc.tokenizer
    m = step.options["model"]
    return m.tokenizer if isinstance(m, LoadedLM) else load_tokenizer(m)


def count_shard(st: RunState, step: Step, shard: Any, digest: str) -> None:
    """This process's counts of a shard it read (skipped when the cache has them)."""
    key = lm_tokens_key(st, step, shard.key)
    if st.cache.info(TOKENS_LM, key).get("ids") != digest:
        st.cache.write(TOKENS_LM, key, count_tokens(shard.table, _tokenizer(st, step), _template(step)), ids=digest)


def model_token_counts(st: RunState, step: Step) -> np.ndarray:
    """Per pool row, its token count with ``step``'s tokenizer, as a read-only memory map of the run's
    row store (an array when the run has none): a shard's counts are held at a time. Counted while the
    shards were scored; one more pass over the input only for the shards the cache lacks."""
    keys = [lm_tokens_key(st, step, ref.key) for ref in st.shards]
    lacking = {i for i, (k, r) in enumerate(zip(keys, st.shards)) if st.cache.info(TOKENS_LM, k).get("ids") != r.ids}
    if lacking:
        for i, shard in enumerate(st.source.shards()):
            if i in lacking:
                count_shard(st, step, shard, st.shards[i].ids)
    store, name, parts = st.rowstore, "", []
    if store is not None:
        name = store.unique("tokens-lm")
    for k, ref in zip(keys, st.shards):
        part = st.cache.get(TOKENS_LM, k, ref.ids)
        if part is None:
            raise RuntimeError(f"selection: the token counts {st.cache.path(TOKENS_LM, k)} are missing or changed")
        v = part[TOKENS].to_numpy(np.float64)
        if store is not None:
            store.append(name, v, np.float64)
        else:
            parts.append(v)
    return store.column(name, np.float64) if store is not None else concat(parts, np.float64)


__all__ = [
    "TOKENS_LM",
    "TOKENS_LM_SPEC",
    "token_model",
    "counting_step",
    "token_count_kind",
    "lm_tokens_key",
    "count_tokens",
    "ModelTokenCounter",
    "worker_spec",
    "count_shard",
    "model_token_counts",
]
