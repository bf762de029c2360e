"""Make MLX's CPU matmuls use OpenBLAS on Linux by loading it before MLX binds its BLAS symbols.

The Linux MLX wheel links the netlib reference BLAS (~2–5 GFLOP/s float32 sgemm on a small CPU).
A `RTLD_GLOBAL` load of OpenBLAS puts its `cblas_*` symbols first in the process's global lookup
scope, so MLX's calls resolve to it (~30–70× faster on 2 cores). Python imports extension modules
with `RTLD_NOW`, so the symbols are bound when `mlx.core` is imported: the preload only takes
effect if it runs *before* the first `import mlx.core` in the process.

MLX also computes decode's 1-row products with sgemm, which OpenBLAS does at a third of its sgemv
speed; the small `_gemv` library built with the package (`_gemv.c`) is loaded first so MLX binds its
`cblas_sgemm`, which sends those products to OpenBLAS's sgemv (decode 1.6x faster, same results).

The state is process-global because the dynamic linker's state is; `functools.cache` only remembers
what was done so a second call is free. Importing this module has no effect and never imports MLX;
the package's `__init__` calls `setup()`, so this happens in exactly one place.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
import sys
import warnings
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
LATE = "reference BLAS (mlx.core was imported before entropix_mlx; import entropix_mlx first)"


def _load(path: str, mode: int = ctypes.RTLD_GLOBAL) -> ctypes.CDLL | str:
    """dlopen `path` (globally unless told); the error text if that fails."""
    try:
        return ctypes.CDLL(path, mode=mode)
    except OSError as err:
        return str(err)


def _shim_path() -> str | None:
    """The package's `_gemv` library; None where it was not built (no C compiler at install)."""
    here = Path(__file__).parent
    paths = (here / f"_gemv{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES)
    return next((str(path) for path in paths if path.exists()), None)


@functools.cache
def _shim() -> ctypes.CDLL | None:
    """The shim loaded locally: its pointers can be set before anything can bind to it."""
    path = _shim_path()
    lib = _load(path, ctypes.RTLD_LOCAL) if path else None
    return lib if isinstance(lib, ctypes.CDLL) else None


def _openblas(path: str) -> str | None:
    """Put OpenBLAS at `path`, behind the gemv shim, in the global scope; the error if it fails.

    Both are loaded locally first and promoted to global in order (dlopen with RTLD_GLOBAL appends
    an already-loaded library to the global scope), so MLX binds the shim's `cblas_sgemm`, and only
    once its pointers lead to this OpenBLAS; everything else MLX needs comes from OpenBLAS.
    """
    lib = _load(path, ctypes.RTLD_LOCAL)
    if isinstance(lib, str):
        return lib
    shim = _shim()
    if shim is not None and hasattr(lib, "cblas_sgemm") and hasattr(lib, "cblas_sgemv"):
        for name in ("sgemm", "sgemv"):
            target = ctypes.cast(getattr(lib, f"cblas_{name}"), ctypes.c_void_p)
            ctypes.c_void_p.in_dll(shim, f"entropix_{name}").value = target.value
        _load(_shim_path())
    _load(path)
    return None


def _describe(path: str) -> str:
    shim = _shim()
    if shim is None:
        return f"OpenBLAS ({path}; no gemv shim: reinstall with a C compiler for faster decoding)"
    if ctypes.c_void_p.in_dll(shim, "entropix_sgemv").value is None:  # `_openblas` left it out
        return f"OpenBLAS ({path}; no cblas_sgemv in it: decoding's 1-row products stay on sgemm)"
    return f"OpenBLAS ({path})"


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
        return LATE
    if override:
        error = _openblas(override)
        if error:
            return f"reference BLAS ({ENV_VAR}={override} failed to load: {error})"
        return _describe(override)
    for candidate in _CANDIDATES:
        if Path(candidate).exists() and _openblas(candidate) is None:
            return _describe(candidate)
    return f"reference BLAS (no OpenBLAS found: {_INSTALL_HINT})"


def blas_status() -> str:
    """What `preload_blas` did in this process, or that it was never called."""
    if preload_blas.cache_info().currsize or not sys.platform.startswith("linux"):
        return preload_blas()
    return "reference BLAS (preload_blas was not called before MLX was imported)"


def setup() -> str:
    """The package's import calls this: the BLAS before MLX, or one warning that it came too late.

    A program that imports `mlx.core` first runs ~20x slower on a Linux CPU (measured: prefill 10
    instead of 350 tok/s), which nothing else would say.
    """
    status = preload_blas()
    if status == LATE:
        warnings.warn(f"entropix_mlx: {status}", RuntimeWarning, stacklevel=2)
    return status


def on_cpu() -> bool:
    """Whether MLX computes on the CPU: the one place the CPU/GPU policy asks."""
    import mlx.core as mx

    return mx.default_device().type == mx.cpu


def free_buffers_at_once() -> None:
    """On MLX's CPU backend, hand freed buffers straight back to malloc instead of MLX's buffer
    cache. A decode step's buffers change size every token (the scores gain a key), so the cache
    seldom reuses them and only grows: default model, 500-token prompt, 128 tokens: RSS 245 →
    184 MiB, decode speed unchanged (47.7 → 51.7 tok/s, within noise). Metal and CUDA keep it:
    allocating is expensive there."""
    import mlx.core as mx

    if on_cpu():
        mx.set_cache_limit(0)


def release_memory() -> None:
    """Give freed memory back to the system: MLX's buffer cache, then glibc's free lists.

    Loading a quantized model frees the checkpoint's arrays once they are repacked (about the
    file's size); glibc keeps such memory in its heap, so without a trim the process stays that
    much bigger (measured on the default model: 290 → 167 MiB after a 500-token prompt).
    """
    import mlx.core as mx

    mx.clear_cache()
    if sys.platform.startswith("linux"):
        libc = _load("libc.so.6", ctypes.RTLD_LOCAL)
        if isinstance(libc, ctypes.CDLL) and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
