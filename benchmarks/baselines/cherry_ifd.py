"""Faithful re-implementation of Cherry LLM's IFD reference algorithm (the test oracle).

Re-written from the published algorithm of ``tianyi-lab/Cherry_LLM``
(``cherry_seletion/data_analysis.py`` with ``--mod cherry`` and
``cherry_seletion/data_by_IFD.py``), keeping its semantics and its cost:

* one sample at a time, a full forward with labels (the model computes its own
  masked mean loss) and full [T x V] logits;
* token losses from a Python loop over positions i = 1..T-1:
  ``nll(log_softmax(logits[i-1]), ids[i])``;
* the answer's first token index comes from tokenising the text before the
  answer *separately* (``len(encode(text[:text.rfind(output)]))``);
* the conditional text is truncated to ``max_length`` tokens, the direct text
  ``"### Response:" + output`` to ``max_length - len(encode(prompt)) - 2``;
* data_by_IFD: losses ``loss_list[start-1 : end-1]``, IFD = mean(cond) / mean(direct);
  the sample is skipped (None here) when ``max_length - prompt_len - 2 <= 4``,
  when either span is empty, or when ``prompt_len + len_direct > max_length``.

Only the prompt templates ``alpaca`` and ``wiz`` of the reference exist here.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def _encode(tokenizer: Any, text: str, max_length: Optional[int] = None) -> list[int]:
    if max_length is None:
        return tokenizer.encode(text)
    return tokenizer.encode(text, truncation=True, max_length=max_length)


def token_losses(
    model: Any, tokenizer: Any, text: str, target_span: str, max_length: int, device: str = "cpu"
) -> list[float]:
    """Cherry's get_perplexity_and_embedding_part_text: every position's loss, full logits, Python loop."""
    input_ids = torch.tensor([_encode(tokenizer, text, max_length)], device=device)
    start_index = text.rfind(target_span)
    start_token = len(_encode(tokenizer, text[:start_index]))
    end_token = input_ids.shape[1]
    labels = input_ids.clone()
    labels[0, :start_token] = -100
    with torch.no_grad():
        outputs = model(input_ids, labels=labels)
    logits = outputs.logits
    losses = []
    for i in range(1, end_token):
        log_prob_dist = torch.log_softmax(logits[0, i - 1].float(), dim=-1)
        true_token = input_ids[0, i]
        losses.append(float(torch.nn.functional.nll_loss(log_prob_dist.unsqueeze(0), true_token.unsqueeze(0))))
    return losses


def _span(tokenizer: Any, text: str, target_span: str, max_length: int, loss_list: list[float]):
    """data_by_IFD.get_loss_part_text: (length, answer losses)."""
    input_ids = _encode(tokenizer, text, max_length)
    start_index = text.rfind(target_span)
    start_token = len(_encode(tokenizer, text[:start_index]))
    end_token_real = len(input_ids)
    return end_token_real - start_token, loss_list[start_token - 1 : end_token_real - 1]


def cherry_ifd(
    model: Any,
    tokenizer: Any,
    instruction: str,
    output: str,
    input: str = "",
    *,
    max_length: int = 512,
    prompt: str = "alpaca",
    device: str = "cpu",
) -> Optional[dict]:
    """One sample: {"ifd", "loss_cond", "loss_direct", "n_cond", "n_direct"}, or None when the
    reference skips it. No batching, by design."""
    direct_answer_text = "### Response:" + output
    if prompt == "alpaca":
        prompt_text = (PROMPT_INPUT if input else PROMPT_NO_INPUT).format_map(
            {"instruction": instruction, "input": input}
        )
        whole_text = prompt_text + output
    elif prompt == "wiz":
        prompt_text = instruction + ("\nInput:" + input if input else "")
        whole_text = prompt_text + "\n\n### Response:" + output
    else:
        raise ValueError(f"prompt: {prompt!r} not one of alpaca, wiz")
    instruct_len = len(_encode(tokenizer, prompt_text, max_length))
    direct_max = max_length - instruct_len - 2
    if direct_max <= 4:
        return None
    loss_alone = token_losses(model, tokenizer, direct_answer_text, output, direct_max, device)
    loss_cond = token_losses(model, tokenizer, whole_text, output, max_length, device)
    len_1, l1 = _span(tokenizer, direct_answer_text, output, direct_max, loss_alone)
    len_2, l2 = _span(tokenizer, whole_text, output, max_length, loss_cond)
    if len_1 <= 0 or len_2 <= 0 or not l1 or not l2:
        return None
    if instruct_len + len_1 > max_length:
        return None
    m1 = sum(l1) / len(l1)
    m2 = sum(l2) / len(l2)
    return {"ifd": m2 / m1, "loss_cond": m2, "loss_direct": m1, "n_cond": len(l2), "n_direct": len(l1)}
