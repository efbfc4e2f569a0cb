"""LoRA proxy fine-tuning of one small causal LM and its measurement on a target set
(used by :mod:`thresher.evaluation.proxy`).

Training uses every arm's examples in a seeded order (epochs of a permutation,
cycled when the subset is smaller than steps x batch size), the same LoRA
initialisation (seeded), right padding and a loss over answer tokens only; the
LM head is applied only at answer positions (the prompt never costs a
vocabulary projection). Prompts are rendered either with a plain template
(``{instruction}\\n{input}\\nAnswer:`` + `` {output}<eos>``) or the tokenizer's
chat template; prompt and answer are tokenised separately and concatenated, so
training and decoding see exactly the same prompt tokens. Over-long samples
keep the end of the prompt (left truncation) and at most half the budget of
answer tokens; the count of truncated samples is reported.

Cost per step ~ forward FLOPs x (1 + 2 x lora_layers / n_layers) over the batch's
tokens: with LoRA on the top 8 of SmolLM2-135M's 30 layers the backward pass
stops there. Measured on the shared 2-core machine under heavy load (one torch
thread): about 4 s per step of 4 x <=96 tokens, 0.6 s per target example.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import device as _device
from ..ops.blas import tile_rows, tiled_width

ARMS = ("selected", "random", "full")
METRICS = ("accuracy", "exact", "likelihood")
CLOSED_NORMS = ("none", "tokens", "chars")


@dataclass
class ProxyConfig:
    """Budget and options of the proxy fine-tuning (all arms share them)."""

    model: str = "default"
    steps: int = 200
    batch_size: int = 4
    max_length: int = 96
    lr: float = 3e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: Optional[tuple[str, ...]] = None  # None: q/k/v/o projections when present
    seed: int = 0
    max_new_tokens: int = 16
    eval_batch_size: int = 16
    template: str = "plain"  # plain | chat
    decode: str = "teacher"  # teacher (one forward pass, token-exact) | generate (model.generate, string compare)
    lora_layers: Optional[int] = 8  # LoRA on the top N decoder layers only (None: all); backward stops there
    # benchmark score behind the ratio: accuracy (closed-set accuracy on closed sets, exact match on
    # open ones) | exact (exact match everywhere) | likelihood (= exp(-loss))
    metric: str = "accuracy"
    max_labels: int = 20  # a set with 2..max_labels distinct outputs is closed (label-likelihood argmax)
    closed_norm: str = "none"  # none (sum of log-probs) | tokens | chars (see evaluation.closed_set)
    closed_eos: bool = True  # score each label followed by EOS (False: lm-evaluation-harness's scoring)
    warmup: float = 0.1  # fraction of steps with linear warm-up, then linear decay
    arms: tuple[str, ...] = ARMS
    threads: Optional[int] = None  # torch CPU threads during the run (None: leave as is)
    device: str = "auto"  # auto (cuda when visible, thresher.device) | cpu | cuda[:N]

    def _validate_closed(self) -> None:
        _check_closed(self)

    def validate(self) -> "ProxyConfig":
        for name in ("steps", "batch_size", "max_length", "lora_r", "max_new_tokens", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length: at least 8 tokens needed, got {self.max_length}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr!r}")
        if not (0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout: expected a value in [0, 1), got {self.lora_dropout!r}")
        if not (0.0 <= self.warmup < 1.0):
            raise ValueError(f"warmup: expected a fraction in [0, 1), got {self.warmup!r}")
        if self.template not in ("plain", "chat"):
            raise ValueError(f"template: expected 'plain' or 'chat', got {self.template!r}")
        if self.decode not in ("teacher", "generate"):
            raise ValueError(f"decode: expected 'teacher' or 'generate', got {self.decode!r}")
        if self.lora_layers is not None and (
            isinstance(self.lora_layers, bool) or not isinstance(self.lora_layers, int) or self.lora_layers < 1
        ):
            raise ValueError(f"lora_layers: expected a positive integer or None, got {self.lora_layers!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric: expected one of {list(METRICS)}, got {self.metric!r}")
        self._validate_closed()
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads: expected a positive integer or None, got {self.threads!r}")
        if not isinstance(self.device, str) or not (self.device in ("cpu", "auto") or self.device.startswith("cuda")):
            raise ValueError(f"device: expected cpu, cuda[:N] or auto, got {self.device!r}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms: expected a non-empty subset of {list(ARMS)}, got {list(self.arms)}")
        return self


def _check_closed(cfg: "ProxyConfig") -> None:
    if cfg.closed_norm not in CLOSED_NORMS:
        raise ValueError(f"closed_norm: expected one of {list(CLOSED_NORMS)}, got {cfg.closed_norm!r}")
    if isinstance(cfg.max_labels, bool) or not isinstance(cfg.max_labels, int) or cfg.max_labels < 2:
        raise ValueError(f"max_labels: expected an integer >= 2, got {cfg.max_labels!r}")


def resolve_device(device: str) -> str:
    if device == "auto":
        return _device.resolve_device("auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but no CUDA device is available")
    return device


# --------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    prompt: list[list[int]]
    answer: list[list[int]]
    truncated: int


def _prompt_text(instruction: str, inp: str) -> str:
    instruction = "" if instruction is None else str(instruction)
    inp = "" if inp is None or (isinstance(inp, float) and math.isnan(inp)) else str(inp)
    return instruction + ("\n" + inp if inp else "")


def answer_tokens(tokenizer, text: Any, template: str) -> list[int]:
    """Token ids of an answer as the proxy trains on it (without EOS): ``" " + text`` for the
    plain template, the text itself for the chat template."""
    if template == "chat":
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    return list(tokenizer(" " + str(text).strip(), add_special_tokens=False)["input_ids"])


def encode(table, tokenizer, *, max_length: int, template: str = "plain") -> Encoded:
    """Tokenise prompts and answers of a sample table (see the module docstring)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("model: the tokenizer has no EOS token; the proxy needs one to end answers")
    prompts, answers, truncated = [], [], 0
    for ins, inp, out in zip(
        table["instruction"], table["input"] if "input" in table else [""] * len(table), table["output"]
    ):
        text = _prompt_text(ins, inp)
        if template == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError("template: 'chat' needs a tokenizer with a chat template; use 'plain'")
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            p = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            p = tokenizer(text + "\nAnswer:", add_special_tokens=False)["input_ids"]
        a = answer_tokens(tokenizer, out, template) + [eos]
        if len(p) + len(a) > max_length:
            truncated += 1
            a = a[: max(1, max_length // 2)] if len(a) > max_length // 2 else a
            keep = max_length - len(a)
            p = p[-keep:] if keep > 0 else p[-1:]
        prompts.append(list(p))
        answers.append(list(a))
    return Encoded(prompts, answers, truncated)


def _train_batch(enc: Encoded, idx: Sequence[int], pad_id: int):
    seqs = [enc.prompt[i] + enc.answer[i] for i in idx]
    L = tiled_width(len(seqs), max(len(s) for s in seqs))  # rows x L: a multiple of the BLAS tile (ops.blas)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    for r, (i, s) in enumerate(zip(idx, seqs)):
        ids[r, : len(s)] = torch.tensor(s)
        att[r, : len(s)] = 1
        lp = len(enc.prompt[i])
        lab[r, lp : len(s)] = torch.tensor(enc.answer[i])
    return ids, att, lab


def _answer_loss(lm, ids, att, lab, *, reduction: str = "mean"):
    """Cross-entropy over answer tokens; the LM head only at those positions."""
    hidden = lm.trunk()(input_ids=ids, attention_mask=att).last_hidden_state  # [B, L, H]
    tgt = lab[:, 1:]
    pos = tgt != -100  # hidden at t predicts token t+1
    h = hidden[:, :-1][pos]  # [T, H]
    logits = lm.model.get_output_embeddings()(tile_rows(h))[: len(h)].float()  # [T, V]
    t = tgt[pos]
    if reduction == "none":
        return F.cross_entropy(logits, t, reduction="none"), pos, logits.argmax(-1) == t
    return F.cross_entropy(logits, t)


def _target_modules(model, given: Optional[Sequence[str]]) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if given:
        missing = sorted(set(given) - names)
        if missing:
            raise ValueError(f"target_modules: {missing} not found among the model's linear layers {sorted(names)}")
        return list(given)
    pref = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj") if n in names]
    if pref:
        return pref
    return sorted(n for n in names if n not in ("lm_head",))


def _order(n: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Indices for ``total`` draws: concatenated seeded permutations of range(n)."""
    reps = -(-total // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:total]


def _attach_lora(model, cfg: ProxyConfig):
    """LoRA adapters injected in place into ``model`` (top ``cfg.lora_layers`` layers); the peft model."""
    # peft is an optional extra (thresher[models]): imported where it is needed
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    extra: dict[str, Any] = {}
    if cfg.lora_layers is not None:
        n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        if n_layers < 1:
            raise ValueError("lora_layers: the model's config does not state num_hidden_layers")
        k = min(cfg.lora_layers, n_layers)
        extra["layers_to_transform"] = list(range(n_layers - k, n_layers))
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_target_modules(model, cfg.target_modules),
        bias="none",
        **extra,
    )
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lcfg)


def _schedule(opt, cfg: ProxyConfig):
    """Linear warm-up over ``cfg.warmup`` of the steps, then linear decay to 0."""
    warm = max(1, int(cfg.warmup * cfg.steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def finetune(load: Callable[[], Any], enc: Encoded, cfg: ProxyConfig, *, log: Optional[Callable[[str], None]] = None):
    """LoRA fine-tune a freshly loaded model on ``enc`` for ``cfg.steps`` steps; returns (lm, losses)."""
    n = len(enc.prompt)
    if n == 0:
        raise ValueError("selected: no training examples")
    torch.manual_seed(cfg.seed)
    lm = load()
    model = lm.model
    peft_model = _attach_lora(model, cfg)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = _schedule(opt, cfg)
    order = _order(n, cfg.steps * cfg.batch_size, np.random.default_rng(cfg.seed))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    losses: list[float] = []
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    every = max(1, cfg.steps // 10)
    for step in range(cfg.steps):
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        ids, att, lab = (t.to(dev) for t in _train_batch(enc, idx, pad))
        loss = _answer_loss(lm, ids, att, lab)
        if not torch.isfinite(loss):
            raise ValueError(f"proxy fine-tuning: non-finite loss at step {step} (lower --lr?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % every == 0:
            el = time.perf_counter() - t0
            log(
                f"  step {step + 1}/{cfg.steps}  loss {np.mean(losses[-every:]):.4f}  "
                f"{(step + 1) / el:.2f} steps/s  eta {el / (step + 1) * (cfg.steps - step - 1):.0f}s"
            )
    peft_model.eval()
    return lm, losses


def _normalize(s: str) -> str:
    return " ".join(str(s).split()).casefold()


def measure(lm, enc: Encoded, answers: Sequence[str], groups: np.ndarray, cfg: ProxyConfig) -> dict[str, Any]:
    """Per evaluation set: mean answer-token loss, likelihood exp(-loss), exact-match accuracy
    (``accuracy`` and ``exact``; :func:`thresher.evaluation.closed_set.add_closed_accuracy` turns
    ``accuracy`` into closed-set accuracy on closed sets)."""
    n = len(enc.prompt)
    with torch.no_grad():
        tok_loss_sum, tok_count, forced_ok = _teacher_forced(lm, enc, cfg)
        if cfg.decode == "teacher":
            preds: list = [None] * n  # no text is generated in teacher mode
            return _summarise(groups, tok_loss_sum, tok_count, forced_ok.copy(), preds, answers, forced_ok)
        correct, preds, token_ok = _greedy_decode(lm, enc, answers, cfg)
    return _summarise(groups, tok_loss_sum, tok_count, correct, preds, answers, forced_ok, token_ok)


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _teacher_forced(lm, enc: Encoded, cfg: ProxyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: summed answer-token loss, answer-token count, and whether greedy decoding is token-exact.

    Batched, right padded, in length order. Greedy decoding reproduces answer + EOS exactly iff every
    one of those tokens is the argmax given the answer's own prefix (teacher forcing); a truncated
    answer (EOS cut off) cannot match."""
    pad, eos = _pad_id(lm.tokenizer), lm.tokenizer.eos_token_id
    n = len(enc.prompt)
    dev = next(lm.model.parameters()).device
    tok_loss_sum, tok_count, forced_ok = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    order = np.argsort([len(p) + len(a) for p, a in zip(enc.prompt, enc.answer)], kind="stable")
    for s in range(0, n, cfg.eval_batch_size):
        idx = order[s : s + cfg.eval_batch_size]
        ids, att, lab = (t.to(dev) for t in _train_batch(enc, idx, pad))
        nll, pos, hit = _answer_loss(lm, ids, att, lab, reduction="none")
        nll, pos, hit = nll.cpu(), pos.cpu(), hit.cpu()
        per_row = torch.zeros(len(idx), dtype=torch.float64)
        rows = torch.nonzero(pos, as_tuple=True)[0]
        per_row.index_add_(0, rows, nll.double())
        tok_loss_sum[idx] = per_row.numpy()
        tok_count[idx] = pos.sum(1).numpy()
        miss = torch.zeros(len(idx), dtype=torch.long)
        miss.index_add_(0, rows, (~hit).long())
        for r, i in enumerate(idx):
            forced_ok[i] = bool(miss[r] == 0) and enc.answer[i][-1] == eos
    return tok_loss_sum, tok_count, forced_ok


def _greedy_decode(lm, enc: Encoded, answers: Sequence[str], cfg: ProxyConfig):
    """Greedy decoding (left padded prompts, KV cache, stop at EOS): (correct, predictions, token_exact)."""
    tok = lm.tokenizer
    pad, eos = _pad_id(tok), tok.eos_token_id
    n = len(enc.prompt)
    dev = next(lm.model.parameters()).device
    correct, token_ok = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    preds: list = [""] * n
    porder = np.argsort([len(p) for p in enc.prompt], kind="stable")
    for s in range(0, n, cfg.eval_batch_size):
        idx = porder[s : s + cfg.eval_batch_size]
        real = len(idx)
        idx = np.concatenate([idx, np.repeat(idx[-1:], tiled_width(1, real) - real)])  # rows a multiple of the BLAS
        P = max(len(enc.prompt[i]) for i in idx)  # tile, copies of the last (ops.blas: bits free of the thread count)
        ids = torch.full((len(idx), P), pad, dtype=torch.long)
        att = torch.zeros((len(idx), P), dtype=torch.long)
        for r, i in enumerate(idx):
            p = enc.prompt[i]
            ids[r, P - len(p) :] = torch.tensor(p)
            att[r, P - len(p) :] = 1
        out = lm.model.generate(
            input_ids=ids.to(dev),
            attention_mask=att.to(dev),
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        gen = out[:real, P:].cpu().tolist()
        for r, i in enumerate(idx[:real]):
            g = gen[r]
            token_ok[i] = g[: len(enc.answer[i])] == enc.answer[i]
            if eos in g:
                g = g[: g.index(eos)]
            preds[i] = tok.decode(g, skip_special_tokens=True)
            correct[i] = _normalize(preds[i]) == _normalize(answers[i])
    return correct, preds, token_ok


def _summarise(groups, tok_loss_sum, tok_count, correct, preds, answers, forced_ok, token_ok=None):
    n = len(correct)
    sets: dict[str, Any] = {}
    for gname in sorted(set(groups.tolist())):
        m = groups == gname
        loss = float(tok_loss_sum[m].sum() / max(1.0, tok_count[m].sum()))
        sets[str(gname)] = {
            "n": int(m.sum()),
            "loss": loss,
            "likelihood": float(math.exp(-loss)),
            "accuracy": float(correct[m].mean()),
            "exact": float(correct[m].mean()),
        }
    loss_all = float(tok_loss_sum.sum() / max(1.0, tok_count.sum()))
    return {
        "sets": sets,
        "loss": loss_all,
        "likelihood": float(math.exp(-loss_all)),
        "accuracy": float(correct.mean()) if n else float("nan"),
        "exact": float(correct.mean()) if n else float("nan"),
        "correct": correct.tolist(),
        "teacher_exact": forced_ok.tolist(),
        **({"generate_token_exact": token_ok.tolist()} if token_ok is not None else {}),
        "examples": [
            {"prediction": preds[i], "answer": str(answers[i]), "correct": bool(correct[i])} for i in range(min(n, 5))
        ],
    }
