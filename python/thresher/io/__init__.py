"""Data in and out: streaming readers with schema detection, stable ids, and
writers for the selected subset (input's own format), scores and manifest."""

from ..fs import atomic_write_bytes
from .readers import FORMATS, Shard, Source, detect_format, file_checksum, open_dataset, read_samples
from .schema import DataError, Schema, content_hash, detect_schema, normalize_record
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
    "atomic_write_bytes",
    "selected_name",
    "write_json_atomic",
    "write_manifest",
    "write_parquet_atomic",
    "write_scores",
    "write_selected",
    "write_table",
]
