"""Training utilities: the short warm-up LoRA training of the LESS pipeline."""

from .warmup import WarmupResult, load_warmup, warmup_lora  # noqa: F401
