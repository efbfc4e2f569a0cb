"""thresher's Triton kernels (installed as ``thresher.kernels``).

Private: call them through :mod:`thresher.ops`, which validates arguments and
chooses a backend. Each module states its algorithm and complexity at the top.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (used by the tests).
"""

if __name__ == "kernels":  # tests/ops/test_kernels_name.py
    # Imported as a top-level package: a source checkout's root is on sys.path (pytest, the benchmarks), where
    # this folder shadows Hugging Face's ``kernels``, which transformers imports when it is installed. Hand
    # the name to that package when there is one; otherwise stay (nothing imports ``kernels`` for thresher).
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    _root = Path(__file__).resolve().parent.parent
    _rest = [p for p in sys.path if Path(p or ".").resolve() != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _rest)
    if _spec is not None and _spec.loader is not None:
        _other = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _other
        _spec.loader.exec_module(_other)
