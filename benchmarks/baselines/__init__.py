"""Faithful re-implementations of published reference code, used as test oracles and benchmark baselines."""
