"""Selectors: functions registered in thresher.registry.SELECTORS.

* :mod:`.base`: what every selector shares: the ``@selector`` registration (options validated,
  ``k`` through the one budget policy :func:`~.base.check_k`), :func:`~.base.columns_read`
  (the score columns a selector reads) and the score-column / embedding helpers.
* :mod:`.basic`: topk, threshold, pareto, weighted / rrf / aggregate, random, cascade.
* :mod:`.diversity`: repr_filter, kcenter, facility_location, car, cluster_balanced, group_topk.
"""
