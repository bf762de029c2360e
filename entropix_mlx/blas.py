"""Make MLX's CPU matmuls use OpenBLAS on Linux by loading it before MLX binds its BLAS symbols.

The Linux MLX wheel links the netlib reference BLAS (~2–5 GFLOP/s float32 sgemm on a small CPU).
A `RTLD_GLOBAL` load of OpenBLAS puts its `cblas_*` symbols first in the process's global lookup
scope, so MLX's calls resolve to it (~30–70× faster on 2 cores). Python imports extension modules
with `RTLD_NOW`, so the symbols are bound when `mlx.core` is imported: the preload only takes
effect if it runs *before* the first `import mlx.core` in the process.

The state is process-global because the dynamic linker's state is; `functools.cache` only remembers
what was done so a second call is free. Importing this module has no effect and never imports MLX.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

ENV_VAR = "ENTROPIX_BLAS"

# Debian/Ubuntu (multiarch, alternatives), Fedora/RHEL, Arch/Alpine, in order of preference.
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/lib/libopenblas.so",
)
_INSTALL_HINT = "apt-get install libopenblas0-pthread"


def _load(path: str) -> str | None:
    """dlopen `path` globally; the error text if that fails."""
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        return str(err)
    return None


@functools.cache
def preload_blas() -> str:
    """Load OpenBLAS globally (Linux) and say what was done; call before anything imports MLX.

    `ENTROPIX_BLAS=/path/to/lib.so` picks the library, `ENTROPIX_BLAS=none` turns this off.
    Never raises: a failure is reported in the returned text (the program still runs, slower).
    """
    if sys.platform == "darwin":
        return "n/a (macOS: Accelerate)"
    if not sys.platform.startswith("linux"):
        return f"n/a ({sys.platform})"
    override = os.environ.get(ENV_VAR, "").strip()
    if override.lower() in ("none", "off", "0"):
        return f"disabled ({ENV_VAR}={override})"
    if "mlx.core" in sys.modules:
        return "reference BLAS (mlx.core was imported before preload_blas(); call it first)"
    if override:
        error = _load(override)
        if error:
            return f"reference BLAS ({ENV_VAR}={override} failed to load: {error})"
        return f"OpenBLAS ({override})"
    for candidate in _CANDIDATES:
        if Path(candidate).exists() and _load(candidate) is None:
            return f"OpenBLAS ({candidate})"
    return f"reference BLAS (no OpenBLAS found: {_INSTALL_HINT})"


def blas_status() -> str:
    """What `preload_blas` did in this process, or that it was never called."""
    if preload_blas.cache_info().currsize or not sys.platform.startswith("linux"):
        return preload_blas()
    return "reference BLAS (preload_blas was not called before MLX was imported)"
