"""InsTag: open-set intention tags from a tagger LM; complexity = number of normalised tags.

The tagger (any causal LM; the paper's InsTagger is a fine-tuned LLaMA, the default here is
the default LM) is asked, with the paper's prompt, for the intention tags of each user query
and answers a JSON list ``[{"tag": ..., "explanation": ...}, ...]`` (greedy decoding,
``max_new_tokens``). A reply that is not such a list gives NaN with a reason
(``parse="lenient"`` instead extracts every ``"tag": "..."`` pair with a regular expression,
as the reference tagging scripts do).

Normalisation over the whole pool (hence ``scope="pool"``), in this order:

1. **rules**: lower-case, characters other than letters, digits and spaces become spaces,
   runs of spaces collapse;
2. **frequency filtering**: a tag carried by fewer than ``min_frequency`` rows of the pool
   is dropped (the paper: alpha = 20);
3. **alias merging**: tags with the same stemmed form (``stem``: a small suffix stemmer,
   thresher's stand-in for the paper's NLTK stemming) merge, and, with ``merge_similarity``
   set, a tag whose embedding has cosine similarity >= the threshold with a more frequent
   canonical tag merges into it (thresher's deterministic stand-in for the paper's DBSCAN
   over PhraseBERT embeddings). A merged group is named by its most frequent member.

Columns: ``tags`` = complexity = number of distinct normalised tags of the row;
``tags.tags`` = those tags (JSON list, first-mention order); ``tags.raw`` = the tagger's
tags before normalisation (JSON list); ``tags.reply`` = the raw reply.

Generation goes through :func:`generate_replies` (greedy, left-padded batches), shared with
MoDS's necessity criterion; tests replace it with canned replies.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..embed import embed_texts, get_embedder
from ..frames import as_pandas
from ..models import shared_lm
from ..ops.blas import tiled_width
from ..registry import CRITERIA, Option
from ..render import SampleError, get_conversation, get_str
from .base import MODEL_OPTIONS, Criterion, embedder_fingerprint, model_fingerprint, sample_ids

# The InsTag tagging prompt (the paper's wording; {query} is the user query).
INSTAG_PROMPT = (
    "You are a helpful assistant. Please identify tags of user intentions in the following user query and "
    'provide an explanation for each tag. Please respond in the JSON format {{"tag": str, "explanation": str}}.\n'
    "Query: {query}\nAssistant:"
)
_LENIENT = re.compile(r'"tag"\s*:\s*"((?:[^"\\]|\\.)*)"')
_NON_WORD = re.compile(r"[^0-9a-z ]+")


# ------------------------------------------------------------------ generation
def generate_replies(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy continuations of ``prompts`` (already chat-wrapped if wanted), left-padded batches."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else int(pad)
    dev = next(model.parameters()).device
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[s : s + batch_size]]
        real = len(enc)
        enc += [enc[-1]] * (tiled_width(1, real) - real)  # rows a multiple of the BLAS tile (copies of the last):
        T = max(len(e) for e in enc)  # no step's bits follow the thread count (ops.blas)
        ids = torch.full((len(enc), T), pad, dtype=torch.long)
        att = torch.zeros((len(enc), T), dtype=torch.long)
        for b, e in enumerate(enc):
            if e:
                ids[b, T - len(e) :] = torch.tensor(e)
                att[b, T - len(e) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(dev),
                attention_mask=att.to(dev),
                max_new_tokens=int(max_new_tokens),
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        out.extend(tokenizer.decode(g[T:], skip_special_tokens=True) for g in gen[:real])
    return out


def chat_wrap(tokenizer: Any, body: str, mode: str) -> str:
    """``body`` as one user turn of the tokenizer's chat template (``mode`` auto/yes/no)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "yes" and not has:
        raise ValueError("chat=yes but the tokenizer has no chat template")
    if mode == "no" or not has:
        return body
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
    )


# ------------------------------------------------------------------ parsing
def parse_tags(reply: str, mode: str = "json") -> list[str]:
    """The tags of a tagger reply: a JSON list of ``{"tag", "explanation"}`` objects (a single
    object is taken as a list of one; the list may be surrounded by other text). ValueError
    when the reply is not such a list; ``mode="lenient"`` extracts ``"tag": "..."`` pairs instead."""
    if mode == "lenient":
        found = [json.loads(f'"{m}"') for m in _LENIENT.findall(reply)]
        if not found and reply.strip() not in ("[]", ""):
            raise ValueError('tagger reply holds no \'"tag": "..."\' pair')
        return found
    data = _json_payload(reply)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"tagger reply is a JSON {type(data).__name__}, not a list of {{tag, explanation}}")
    tags = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("tag"), str):
            raise ValueError(f"tagger reply item {json.dumps(item)[:60]} has no string 'tag'")
        tags.append(item["tag"])
    return tags


def _json_payload(reply: str) -> Any:
    text = reply.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    lo, hi = text.find("["), text.rfind("]")
    if 0 <= lo < hi:
        try:
            return json.loads(text[lo : hi + 1])
        except ValueError:
            pass
    raise ValueError(f"tagger reply is not valid JSON: {text[:60]!r}")


# ------------------------------------------------------------------ normalisation
def clean_tag(tag: str) -> str:
    """Rule normalisation: lower-case, non-alphanumerics to spaces, spaces collapsed."""
    return " ".join(_NON_WORD.sub(" ", tag.lower()).split())


def stem_word(w: str) -> str:
    """A small suffix stemmer (plural, -ing, -ed, -ly, -ment, -ation): aliases such as
    'math problem'/'math problems', 'coding'/'code' share a stem."""
    for suf, rep, keep in (
        ("ational", "ate", 3),
        ("ations", "ate", 3),
        ("ation", "ate", 3),
        ("ments", "", 4),
        ("ment", "", 4),
        ("ies", "y", 2),
        ("ing", "", 3),
        ("ly", "", 4),
        ("ed", "", 3),
        ("es", "", 4),
        ("s", "", 3),
    ):
        if w.endswith(suf) and len(w) - len(suf) >= keep and not (suf == "s" and w.endswith("ss")):
            w = w[: len(w) - len(suf)] + rep
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def stem_tag(tag: str) -> str:
    return " ".join(stem_word(w) for w in tag.split())


def normalise_tags(
    raw: Sequence[Optional[list]],
    *,
    min_frequency: int = 1,
    stem: bool = True,
    merge_similarity: Optional[float] = None,
    embed: Optional[Callable[[list], np.ndarray]] = None,
) -> list[Optional[list]]:
    """Pool normalisation of per-row raw tag lists (``None`` rows stay ``None``); see the module doc.

    Frequencies count rows (a tag mentioned twice by one row counts once)."""
    rows = [None if r is None else list(dict.fromkeys(t for t in map(clean_tag, r) if t)) for r in raw]
    freq = Counter(t for r in rows if r is not None for t in r)
    kept = {t for t, c in freq.items() if c >= min_frequency}
    # canonical order: most frequent first, ties by name (deterministic)
    vocab = sorted(kept, key=lambda t: (-freq[t], t))
    canon = _merge_by_stem(vocab, freq) if stem else {t: t for t in vocab}
    if merge_similarity is not None and vocab:
        if embed is None:
            raise ValueError("merge_similarity: an embedder is needed to merge tags by similarity")
        canon = _merge_by_similarity(vocab, canon, freq, float(merge_similarity), embed)
    out: list[Optional[list]] = []
    for r in rows:
        out.append(None if r is None else list(dict.fromkeys(canon[t] for t in r if t in kept)))
    return out


def _merge_by_stem(vocab: list, freq: Counter) -> dict:
    """tag -> the most frequent tag with the same stem (ties by name)."""
    head: dict = {}
    canon = {}
    for t in vocab:  # most frequent first
        canon[t] = head.setdefault(stem_tag(t), t)
    return canon


def _merge_by_similarity(vocab: list, canon: dict, freq: Counter, thr: float, embed: Callable) -> dict:
    """Each canonical tag, most frequent first, joins the first earlier kept head with cosine >= thr."""
    heads = list(dict.fromkeys(canon[t] for t in vocab))
    heads.sort(key=lambda t: (-sum(freq[u] for u in vocab if canon[u] == t), t))
    e = np.asarray(embed(heads), dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    target: dict = {}
    kept_heads: list[int] = []
    for i, h in enumerate(heads):
        j = next((k for k in kept_heads if float(e[i] @ e[k]) >= thr), None)
        if j is None:
            kept_heads.append(i)
            target[h] = h
        else:
            target[h] = heads[j]
    return {t: target[canon[t]] for t in vocab}


# ------------------------------------------------------------------ the criterion
def user_query(row: dict, sid: str) -> str:
    """The user query: instruction (+ newline + input), or the user turns of a conversation."""
    conv = get_conversation(row, sid)
    if conv is not None:
        turns = [str(m.get("content", "")) for m in conv if m.get("role") == "user"]
        if not any(t.strip() for t in turns):
            raise SampleError(f"sample {sid!r}: conversation has no user turn")
        return "\n".join(turns)
    ins = get_str(row, "instruction", sid, required=True)
    inp = get_str(row, "input", sid, required=False)
    if not ins.strip() and not inp.strip():
        raise SampleError(f"sample {sid!r}: empty instruction")
    return ins + ("\n" + inp if inp.strip() else "")


@CRITERIA.register(
    "tags",
    doc="InsTag complexity: number of normalised open-set intention tags a tagger LM gives the user query "
    "(JSON list of {tag, explanation}); normalisation over the pool (lower-casing, frequency filtering, "
    "alias merging by stems and optionally embedding similarity). Component tags.tags lists the tags.",
    options=list(MODEL_OPTIONS)
    + [
        Option("prompt", INSTAG_PROMPT, "tagging prompt with a {query} field", type=str),
        Option("chat", "auto", "wrap the prompt in the chat template: auto | yes | no", ("auto", "yes", "no")),
        Option("max_new_tokens", 256, "generation budget per reply (greedy decoding)", min=1),
        Option("max_length", 2048, "max prompt tokens (longer prompts: NaN with a reason)", min=1),
        Option("batch_size", 8, "prompts per generation batch", min=1),
        Option(
            "parse",
            "json",
            'json (a reply must be a JSON list) or lenient (\'"tag": "..."\' pairs)',
            ("json", "lenient"),
        ),
        Option("min_frequency", 20, "drop tags carried by fewer rows of the pool (the paper: 20)", min=1),
        Option("stem", True, "merge tags with the same stemmed form"),
        Option(
            "merge_similarity",
            None,
            "merge tags whose embeddings have cosine >= this (None: off)",
            type=float,
            min=-1,
            max=1,
        ),
        Option("embedder", "default", "sentence embedder for merge_similarity"),
    ],
    direction="max",
    needs=("model",),
    scope="pool",
    components=("tags", "raw", "reply"),
)
class Tags(Criterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if "{query}" not in o["prompt"]:
            raise ValueError("tags: option prompt must contain {query}")
        self.lm = shared_lm(o["model"], dtype=o["dtype"], device=o["device"])

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out["model"] = model_fingerprint(options["model"])
        out["embedder"] = embedder_fingerprint(options["embedder"]) if options["merge_similarity"] is not None else None
        return out

    def _prompts(self, rows: list, ids: list, reasons: list) -> dict:
        tok, o = self.lm.tokenizer, self.options
        prompts: dict = {}
        for i, row in enumerate(rows):
            try:
                body = o["prompt"].format(query=user_query(row, ids[i]))
            except SampleError as exc:
                reasons[i] = str(exc)
                continue
            text = chat_wrap(tok, body, o["chat"])
            if len(tok(text, add_special_tokens=False)["input_ids"]) > o["max_length"]:
                reasons[i] = f"prompt longer than max_length={o['max_length']} tokens"
                continue
            prompts[i] = text
        return prompts

    def __call__(self, batch: Any) -> pd.DataFrame:
        df, o = as_pandas(batch), self.options
        ids, rows = sample_ids(df), df.to_dict("records")
        reasons = [""] * len(rows)
        prompts = self._prompts(rows, ids, reasons)
        order = sorted(prompts)
        got = (
            generate_replies(
                self.lm.model,
                self.lm.tokenizer,
                [prompts[i] for i in order],
                max_new_tokens=o["max_new_tokens"],
                batch_size=o["batch_size"],
            )
            if order
            else []
        )
        replies = dict(zip(order, got))
        raw: list[Optional[list]] = [None] * len(rows)
        for i, rep in replies.items():
            try:
                raw[i] = parse_tags(rep, o["parse"])
            except ValueError as exc:
                reasons[i] = str(exc)
        norm = normalise_tags(
            raw,
            min_frequency=o["min_frequency"],
            stem=o["stem"],
            merge_similarity=o["merge_similarity"],
            embed=self._embed if o["merge_similarity"] is not None else None,
        )
        return tags_frame(self.NAME, ids, norm, raw, [replies.get(i, "") for i in range(len(rows))], reasons)

    def _embed(self, texts: list) -> np.ndarray:
        return embed_texts(texts, get_embedder(self.options["embedder"]))


def tags_frame(name: str, ids: list, norm: list, raw: list, replies: list, reasons: list) -> pd.DataFrame:
    """The criterion's frame: complexity, tags (JSON), raw tags (JSON), reply, reason."""
    comp = np.array([np.nan if t is None else float(len(t)) for t in norm], dtype=np.float64)
    return pd.DataFrame(
        {
            "id": ids,
            name: comp,
            f"{name}.tags": [json.dumps(t if t is not None else []) for t in norm],
            f"{name}.raw": [json.dumps(t if t is not None else []) for t in raw],
            f"{name}.reply": replies,
            f"{name}.reason": reasons,
        }
    )
