"""Post-processing of embeddings: centring, whitening and PCA.

``EmbeddingTransform(center=True, whiten=False, pca=None).fit(x)`` learns the
mean and the eigen-decomposition of the covariance (``d x d``, float64, via
``torch.linalg.eigh``: O(N d^2 + d^3)); ``apply(x)`` maps rows. ``pca`` is an
integer number of components or a fraction in (0, 1) of the variance to keep
(e.g. 0.95, as CaR does). ``whiten`` scales each kept component to unit
variance. ``normalize`` re-projects rows onto the unit sphere afterwards.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch


class EmbeddingTransform:
    def __init__(
        self,
        center: bool = True,
        whiten: bool = False,
        pca: Union[int, float, None] = None,
        normalize: bool = False,
        eps: float = 1e-8,
    ) -> None:
        if pca is not None:
            if isinstance(pca, bool) or not isinstance(pca, (int, float, np.integer, np.floating)):
                raise ValueError(f"pca: expected an int (components) or a float in (0, 1), got {pca!r}")
            if isinstance(pca, (float, np.floating)) and not 0 < pca <= 1:
                raise ValueError(f"pca: a variance fraction must be in (0, 1], got {pca}")
            if isinstance(pca, (int, np.integer)) and pca < 1:
                raise ValueError(f"pca: number of components must be >= 1, got {pca}")
        self.center, self.whiten, self.pca, self.normalize, self.eps = center, whiten, pca, normalize, eps
        self.mean: Optional[np.ndarray] = None
        self.components: Optional[np.ndarray] = None  # [d, c]
        self.scale: Optional[np.ndarray] = None  # [c]
        self.explained: Optional[np.ndarray] = None  # variance ratio of kept components

    def fit(self, x: Any) -> "EmbeddingTransform":
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"embeddings: expected a non-empty [N, d] array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("embeddings: contain NaN or inf")
        self.mean = x.mean(0) if self.center or self.whiten or self.pca else np.zeros(x.shape[1])
        if not (self.whiten or self.pca):
            return self
        xc = torch.from_numpy(x - self.mean)
        cov = (xc.T @ xc) / max(x.shape[0] - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.flip(0).clamp_min(0).numpy()
        evecs = evecs.flip(1).numpy()
        total = evals.sum() or 1.0
        ratio = evals / total
        if self.pca is None:
            c = x.shape[1]
        elif isinstance(self.pca, (float, np.floating)):
            c = min(int(np.searchsorted(np.cumsum(ratio), float(self.pca) - 1e-12) + 1), x.shape[1])
        else:
            c = min(int(self.pca), x.shape[1])
        self.components = evecs[:, :c].copy()
        self.explained = ratio[:c].copy()
        self.scale = 1.0 / np.sqrt(evals[:c] + self.eps) if self.whiten else np.ones(c)
        return self

    def apply(self, x: Any) -> np.ndarray:
        if self.mean is None:
            raise ValueError("transform: call fit() first")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"embeddings: expected [N, {self.mean.shape[0]}], got shape {x.shape}")
        y = x - self.mean
        if self.components is not None:
            y = (y @ self.components) * self.scale
        y = y.astype(np.float32)
        if self.normalize:
            y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y

    def fit_apply(self, x: Any) -> np.ndarray:
        return self.fit(x).apply(x)
