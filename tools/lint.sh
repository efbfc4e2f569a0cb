#!/usr/bin/env bash
# The lint and type gates (run by .ci/run before the tests; run it yourself before a commit):
# ruff (rules E, F, W, I, B, SIM and a complexity limit, pyproject.toml), ruff's formatter,
# mypy on the typed core (ops, registry, plan), clang-format on csrc, and the layer map.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${VENV:-.venv}/bin"
"$bin/ruff" check python kernels tests benchmarks tools
"$bin/ruff" format --check python kernels tests benchmarks tools
"$bin/mypy"
mapfile -t native < <(find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' | sort)
"$bin/clang-format" --dry-run --Werror "${native[@]}"
"$bin/python" tools/layers.py >/dev/null || { "$bin/python" tools/layers.py; exit 1; }
echo "lint: ruff, ruff format, mypy, clang-format, layers: all clean"
