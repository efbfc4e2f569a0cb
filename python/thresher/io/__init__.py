"""Data in and out: streaming readers with schema detection, stable ids, and
writers for the selected subset (input's own format), scores and manifest."""
from .readers import FORMATS, Shard, Source, detect_format, file_checksum, open_dataset, read_samples  # noqa: F401
from .schema import DataError, Schema, content_hash, detect_schema, normalize_record  # noqa: F401
from .writers import (atomic_write_bytes, selected_name, write_json_atomic, write_manifest,  # noqa: F401
                      write_parquet_atomic, write_scores, write_selected)

__all__ = ["FORMATS", "Shard", "Source", "detect_format", "file_checksum", "open_dataset", "read_samples",
           "DataError", "Schema", "content_hash", "detect_schema", "normalize_record", "atomic_write_bytes",
           "selected_name", "write_json_atomic", "write_manifest", "write_parquet_atomic", "write_scores",
           "write_selected"]
