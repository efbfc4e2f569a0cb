#!/usr/bin/env bash
# Developer build: compile thresher._C (and thresher._cuda when nvcc works) into
# build/dev and copy the modules into python/thresher/ so that
# `PYTHONPATH=python python -c "import thresher"` uses them. Serialised with a
# lock so several shells can call it at once. CI uses `pip install .` instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
mkdir -p build/dev
exec 9>build/dev/.lock
flock 9
pybind_dir="$("$py" -m pybind11 --cmakedir)"
if [ ! -f build/dev/build.ninja ] || [ "${RECONFIGURE:-0}" = 1 ]; then
  cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$py" -Dpybind11_DIR="$pybind_dir" \
    -DTHRESHER_CUDA="${THRESHER_CUDA:-auto}" >build/dev/configure.log 2>&1 \
    || { cat build/dev/configure.log; exit 1; }
fi
cmake --build build/dev -j "${JOBS:-2}"
for f in build/dev/_C*.so build/dev/_cuda*.so; do
  [ -f "$f" ] || continue
  dst="python/thresher/$(basename "$f")"
  cp "$f" "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst"   # atomic for running processes
  echo "installed $dst"
done
