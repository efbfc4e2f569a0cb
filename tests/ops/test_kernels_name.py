"""The source checkout's ``kernels/`` folder (installed as ``thresher.kernels``) must not take the top-level
name ``kernels`` from Hugging Face's package of that name, which transformers imports when installed: with the
checkout's root on sys.path (pytest, the benchmarks) it used to, and every model load failed (``cannot import
name 'CUDAProperties' from 'kernels'``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import sys; sys.path[:0] = sys.argv[1:]; import kernels; "
    "print(kernels.__file__); print(getattr(kernels, 'MARK', None))"
)


def _run(*path: str) -> list[str]:
    # -S: no site-packages (where Hugging Face's kernels may be installed): only the folders given
    out = subprocess.run([sys.executable, "-S", "-c", PROBE, *path], capture_output=True, text=True, timeout=60)
    return out.stdout.split("\n")[:2] if out.returncode == 0 else ["error", out.stderr.strip().splitlines()[-1]]


def test_the_top_level_name_goes_to_another_kernels_package(tmp_path):
    other = tmp_path / "site" / "kernels"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("MARK = 'hub kernels'\n")
    got = _run(str(ROOT), str(tmp_path / "site"))  # the checkout first, as pytest and the benchmarks put it
    assert got == [str(other / "__init__.py"), "hub kernels"]


def test_without_another_package_the_folder_stays_and_thresher_kernels_loads(tmp_path):
    got = _run(str(ROOT), str(tmp_path))
    assert got == [str(ROOT / "kernels" / "__init__.py"), "None"]
    from thresher import _native

    if _native.triton_module() is not None:
        assert _native.kernels().__name__ == "thresher.kernels"
