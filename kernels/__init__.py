"""thresher's Triton kernels (installed as ``thresher.kernels``).

Private: call them through :mod:`thresher.ops`, which validates arguments and
chooses a backend. Each module states its algorithm and complexity at the top.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (used by the tests).
"""
