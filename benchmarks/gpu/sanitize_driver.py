"""One small case per CUDA kernel of thresher._cuda, for ``compute-sanitizer --tool racecheck``.

Run by benchmarks/gpu/run.sh. Without a CUDA device or without thresher._cuda it prints why
and exits 0 (nothing to check); a wrong result exits 1.
"""

from __future__ import annotations

import sys

import torch


def main() -> int:
    from thresher import _native
    from thresher.ops import random_project, segment_reduce, topk

    ok, why = _native.cuda_device_available()
    if not ok or _native.cuda_ext() is None:
        print(f"skipped: {why if not ok else _native.why_unavailable('cuda')}")
        return 0
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (4099,), generator=g).float()  # ties
    v, i = topk(x.to(dev), 37, backend="cuda")
    rv, ri = topk(x, 37, backend="reference")
    bad = [] if torch.equal(i.cpu(), ri) else ["topk"]
    off = torch.tensor([0, 0, 5, 1000, 4099])
    for vals in (x, x[:4098].reshape(-1, 2)):
        o = off if vals.dim() == 1 else torch.tensor([0, 0, 3, 500, 2049])
        got = segment_reduce(vals.to(dev), o.to(dev), "sum", backend="cuda").cpu()
        ref = segment_reduce(vals, o, "sum", backend="reference")
        if not torch.allclose(got, ref, atol=1e-3):
            bad.append(f"segment_reduce {vals.dim()}-d")
    emb = torch.randn(33, 70, generator=g)
    p = random_project(emb.to(dev), 16, 0, backend="cuda").cpu()
    if p.shape != (33, 16) or not torch.isfinite(p).all():
        bad.append("random_project")
    torch.cuda.synchronize()
    print("mismatch: " + ", ".join(bad) if bad else "all CUDA kernels ran")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
