"""The output folder: fresh, resumed or overwritten, and never anything else touched.

``out/run.json`` records the run's identity (config, data checksum, plan) and the
names of the files the run writes there. A folder holding the same run resumes it;
a folder holding another thresher run is refused unless ``overwrite`` (which
deletes exactly the files that run listed, and keeps the content-keyed cache); a
non-empty folder without ``run.json`` is never written into.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import thresher

from ..errors import OutputExistsError
from ..fs import clean_stale_temp, write_json_atomic
from ..io.sources import is_url
from ..plan import PipelineConfig, Plan

RUN_FILE = "run.json"
# What runs written before run.json listed its outputs wrote (exact names, no globbing).
LEGACY_OUTPUTS = (
    "scores.parquet",
    "manifest.json",
    "report.html",
    "run.log",
    "selected.jsonl",
    "selected.json",
    "selected.csv",
    "selected.tsv",
    "selected.parquet",
    "selected.jsonl.gz",
    "selected.json.gz",
    "selected.csv.gz",
    "selected.tsv.gz",
)


def data_label(data: Any) -> str:
    """``data`` as the identity and the manifest name it: a local path resolved; a URL or a
    ``load_dataset`` id as given; an in-memory object by its type (its checksum names its content)."""
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        if not is_url(text) and Path(text).exists():
            return str(Path(text).resolve())
        return str(text)
    return f"<{type(data).__name__}>"


def config_identity(cfg: PipelineConfig, plan: Plan, checksum: str) -> dict:
    """What makes two runs the same run (a folder holding the same identity resumes)."""
    return {
        "thresher": thresher.__version__,
        "data": {
            "path": data_label(cfg.data),
            "split": cfg.split,
            "streaming": bool(cfg.streaming),
            "sha256": checksum,
            "format": cfg.format,
            "fields": cfg.fields,
            "group_field": cfg.group_field,
            "on_bad_row": cfg.on_bad_row,
            "limit": cfg.limit,
        },
        "plan": plan.describe(),
        "budget": {"k": cfg.k, "ratio": cfg.ratio, "tokens": cfg.tokens},
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "score_only": cfg.score_only,
        "output_options": {
            "id_column": cfg.id_column or "id",
            "with_scores": bool(cfg.with_scores),
            "write_rejected": bool(cfg.write_rejected),
        },
    }


def _read_run(run_file: Path) -> Optional[dict]:
    try:
        prev = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return prev if isinstance(prev, dict) else None


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..", RUN_FILE) and "/" not in name and "\\" not in name


def remove_outputs(out: Path, names: Iterable[str]) -> list[str]:
    """Delete the listed files (or folders) directly inside ``out``; return the names removed."""
    removed = []
    for name in names:
        if not _plain_name(name):
            continue
        p = out / name
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(name)
    return removed


def prepare_out(out: Path, identity: dict, overwrite: bool, outputs: Iterable[str] = ()) -> str:
    """Check the output folder; return 'fresh', 'resume' or 'overwrite'. ``outputs``: the names this run writes."""
    out = Path(out)
    run_file = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"out: {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        mode = "fresh"
    else:
        prev = _read_run(run_file)
        if prev is None:
            raise OutputExistsError(
                f"out: {out} is not empty and holds no thresher run (no run.json); choose an empty or new "
                "folder (--overwrite replaces only a previous thresher run's outputs)"
            )
        prev_identity = prev.get("identity", prev)
        if prev_identity == identity:
            mode = "resume"
        elif not overwrite:
            diff = [k for k in identity if identity.get(k) != prev_identity.get(k)]
            raise OutputExistsError(
                f"out: {out} already holds another run's results (differs in: {', '.join(diff) or 'version'}); "
                "pass --overwrite to replace them (the score cache is kept and reused), or choose another --out"
            )
        else:
            mode = "overwrite"
            listed = prev.get("outputs")
            remove_outputs(out, listed if isinstance(listed, list) else LEGACY_OUTPUTS)
        clean_stale_temp(out)
    write_json_atomic({"identity": identity, "outputs": sorted(set(outputs))}, run_file)
    return mode
