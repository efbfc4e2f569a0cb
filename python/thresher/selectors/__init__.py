"""Selectors: functions registered in thresher.registry.SELECTORS (basic.py: topk, threshold,
pareto, weighted/rrf aggregate, random; diversity.py: repr_filter, kcenter, facility_location, car, ...)."""
