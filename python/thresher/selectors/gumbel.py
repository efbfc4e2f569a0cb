"""``gumbel_topk``: DSIR's importance resampling as a selector.

DSIR samples k rows without replacement with probabilities proportional to the importance
weights w(x) = exp(log w(x)). Gumbel-top-k does exactly that in one pass: add independent
Gumbel(0, 1) noise to each row's log-weight and keep the k largest.

Noise, fixed so that a run is reproducible from its seed: ``u = numpy.random.default_rng(seed)
.random(n)`` (one draw per score row, rows with a NaN score included, in row order),
``g = -log(-log(u))``; key = value / temperature + g (value negated for ``direction=min``);
rows by descending key, ties by lower position, NaN never. ``temperature`` -> 0 approaches
plain top-k; larger values flatten the distribution towards uniform.
"""

from __future__ import annotations

import numpy as np

from ..registry import Option
from .base import CRITERION, DIRECTION, order_by, score_values, selector


def gumbel_noise(n: int, seed: int) -> np.ndarray:
    """The Gumbel(0, 1) draws of :func:`gumbel_topk` (see the module doc)."""
    return gumbel_draws(np.random.default_rng(seed), n)


def gumbel_draws(rng: np.random.Generator, n: int) -> np.ndarray:
    """The next ``n`` Gumbel(0, 1) draws of ``rng``: drawn in pieces, they are the values of one draw
    (each uniform takes the next 64 bits of the stream), which the streaming selection relies on."""
    u = rng.random(n)
    with np.errstate(divide="ignore"):
        return -np.log(-np.log(u))


@selector(
    "gumbel_topk",
    doc="DSIR importance resampling: k rows without replacement with probability proportional to "
    "exp(score / temperature) (Gumbel-top-k, reproducible from the seed)",
    options=[
        CRITERION,
        DIRECTION,
        Option("temperature", 1.0, "divides the log-weights (smaller: closer to top-k)", min=0, min_exclusive=True),
    ],
)
def gumbel_topk(
    scores, k, *, embeddings=None, groups=None, seed=0, criterion=None, direction=None, temperature=1.0
) -> np.ndarray:
    v, maximize = score_values(scores, criterion, direction)
    logw = (v if maximize else -v) / float(temperature)
    return order_by(logw + gumbel_noise(len(v), int(seed)), True)[:k].astype(np.int64)
