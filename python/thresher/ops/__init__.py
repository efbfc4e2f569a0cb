"""thresher.ops: the one entry point for kernels.

Each op validates its arguments, then dispatches to a backend (see
:mod:`thresher.ops._dispatch`). ``OPS`` holds every registered op; ``thresher
doctor`` prints their backends and why any cannot run. Op modules register
themselves on import: keep one import line per op module below. The codes
passed to the native backends live in :mod:`thresher.ops.abi`.
"""

from . import abi  # noqa: F401
from ._dispatch import OPS, last_backend  # noqa: F401
from .blas import BLAS_ROW_TILE, blockwise_activations, tile_matmul, tile_rows, tiled_width  # noqa: F401
from .knn import knn, knn_merge_tile  # noqa: F401
from .knn_shard import knn_shard_task, merge_topk, sharded_knn  # noqa: F401
from .pareto import crowding_distance, pareto_ranks  # noqa: F401
from .projection import Projector, random_project, structured_project  # noqa: F401
from .ranking import aggregate, normalize  # noqa: F401
from .segment import segment_reduce  # noqa: F401
from .token_loss import TokenLoss, expected_score, score_at_position, token_loss  # noqa: F401
from .topk import TopKAccumulator, topk  # noqa: F401
