"""Criteria: one registered scorer per selection signal.

Each module here registers its scorers in :data:`thresher.registry.CRITERIA`
(see the conventions in :mod:`thresher.registry`): ``Scorer(**options)`` loads
its model once, ``scorer(batch) -> DataFrame`` keyed by ``id`` with the main
column, ``<name>.<component>`` columns and ``<name>.reason``.

* :mod:`.loss`    - ifd, reverse_ifd, perplexity, entropy, el2n (per-token losses)
* :mod:`.judge`   - selectit, rating (judge prompts read at one position)
* :mod:`.nuggets` - nuggets (one-shot golden score against an anchor set)
"""
