"""thresher: a native-accelerated scoring engine for choosing LLM fine-tuning data.

Three stages (see README): feature extraction -> criteria -> selection and
evaluation. Hot paths go through :mod:`thresher.ops`, which dispatches to Triton,
CUDA, C++ or plain-PyTorch reference backends.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
