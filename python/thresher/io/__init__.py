"""Data in and out: sources (files, fsspec URLs, HF datasets and ids, in-memory tables),
streaming readers with per-row schema detection and stable ids, and writers for the
selected subset (input's own format), scores and manifest."""

from ..fs import atomic_write_bytes
from .readers import FORMATS, Shard, Source, detect_format, file_checksum, open_dataset, read_samples
from .schema import DataError, Schema, content_hash, detect_schema, normalize_record, row_schema
from .sources import Location, locate
from .writers import (
    selected_name,
    write_json_atomic,
    write_manifest,
    write_parquet_atomic,
    write_scores,
    write_selected,
    write_table,
)

__all__ = [
    "FORMATS",
    "Shard",
    "Source",
    "detect_format",
    "file_checksum",
    "open_dataset",
    "read_samples",
    "DataError",
    "Schema",
    "content_hash",
    "detect_schema",
    "normalize_record",
    "row_schema",
    "Location",
    "locate",
    "atomic_write_bytes",
    "selected_name",
    "write_json_atomic",
    "write_manifest",
    "write_parquet_atomic",
    "write_scores",
    "write_selected",
    "write_table",
]
