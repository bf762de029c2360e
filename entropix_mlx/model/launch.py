"""Whether `mlx.launch` (or mpirun) started this process among others, and as which rank: read
from the environment only, so the CLI can tell before importing MLX."""

from __future__ import annotations

import os
from pathlib import Path

# What mlx.launch (ring: MLX_RANK + MLX_HOSTFILE; jaccl/nccl: MLX_RANK) or mpirun sets.
LAUNCH_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
RANK_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launched() -> bool:
    """Whether a launcher started this process among others."""
    return any(name in os.environ for name in LAUNCH_ENV) and not alone()


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched), before connecting."""
    for name in RANK_ENV:
        if name in os.environ:
            return int(os.environ[name])
    return 0


def alone() -> bool:
    """`mlx.launch -n 1` gives the ring an empty hostfile, which MLX cannot parse: one process."""
    path = os.environ.get("MLX_HOSTFILE")
    try:
        return path is not None and not Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return False
