"""Only the optional BLAS shim lives here; everything else is in pyproject.toml."""

import sys

from setuptools import Extension, setup

# A plain shared library (loaded with ctypes by entropix_mlx/model/backend.py, never imported),
# built where MLX's CPU backend uses a system BLAS. `optional`: without a C compiler, slower decode.
GEMV = Extension("entropix_mlx.model._gemv", ["entropix_mlx/model/_gemv.c"], optional=True)

setup(ext_modules=[GEMV] if sys.platform.startswith("linux") else [])
