"""Criteria: one registered scorer per selection signal.

Each module here registers its scorers in :data:`thresher.registry.CRITERIA` (see the
conventions in :mod:`thresher.registry`): ``Scorer(**options)`` loads its model once,
``scorer(batch) -> DataFrame`` keyed by ``id`` with the main column,
``<name>.<component>`` columns and ``<name>.reason``; ``Scorer.cache_key_for(**options)``
gives the score-cache key without loading a model. The shared machinery (options, cache
keys, fingerprints, the batch loop) is in :mod:`.base`.

* :mod:`.loss`      - ifd, reverse_ifd, perplexity, entropy, el2n (per-token losses)
* :mod:`.judge`     - selectit, rating (judge prompts read at one position)
* :mod:`.nuggets`   - nuggets (one-shot golden score against an anchor set)
* :mod:`.less`      - less (gradient features against a target set)
* :mod:`.diversity` - knn_distance, local_density, semdedup (embeddings, pool-scoped)
* :mod:`.text`      - length, mtld (model-free)
"""
