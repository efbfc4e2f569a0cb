"""thresher.ops: the one entry point for kernels.

Each op validates its arguments, then dispatches to a backend (see
:mod:`thresher.ops._dispatch`). ``OPS`` holds every registered op; ``thresher
doctor`` prints their backends and why any cannot run.
"""
from ._dispatch import OPS, last_backend  # noqa: F401

# Op modules register themselves on import. Keep one line per op module.
from .segment import segment_reduce  # noqa: F401
from .topk import TopKAccumulator, topk  # noqa: F401
from .knn import knn, knn_merge_tile  # noqa: F401
from .token_loss import TokenLoss, token_loss, score_at_position, expected_score  # noqa: F401
from .projection import Projector, random_project, structured_project  # noqa: F401
from .pareto import pareto_ranks, crowding_distance, normalize, aggregate  # noqa: F401
