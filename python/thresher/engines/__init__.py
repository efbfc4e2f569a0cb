"""Engines drive scorer classes over sample tables: ``local`` (in process) and
``ray`` (Ray Data ``map_batches`` with the same classes; optional dependency)."""
from .local import LocalEngine, ScoreColumns  # noqa: F401

__all__ = ["LocalEngine", "ScoreColumns"]
