"""Decoding options: everything besides the prompt that decides an answer's tokens, in one frozen
value built by `decoding_options`. Every command builds its options there, so `--sampler sample`
means the same everywhere: the profile's base parameters T0/k0/p0/m0, each overridable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from .config import SamplerConfig, check_sampler
from .sampler import SamplingParams


def random_seed() -> int:
    """A fresh 32-bit seed, for when none is given (record it to reproduce the run)."""
    return int.from_bytes(os.urandom(4), "little")


@dataclass(frozen=True)
class DecodingOptions:
    """The sampler, its config, the parameters `sample` draws with, the token budget and seed."""

    sampler: str  # entropix | greedy | sample
    config: SamplerConfig
    params: SamplingParams  # what `sample` draws with (entropix and greedy ignore it)
    max_tokens: int
    seed: int

    def __post_init__(self) -> None:
        check_sampler(self.sampler)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer ≥ 1")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be ≥ 1")

    def with_sampler(self, name: str) -> DecodingOptions:
        """The same options (same seed) for another sampler."""
        return replace(self, sampler=name)

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `generate` these options set."""
        return {
            "sampler": self.sampler,
            "config": self.config,
            "params": self.params,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


def decoding_options(
    sampler: str,
    config: SamplerConfig,
    *,
    max_tokens: int,
    seed: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> DecodingOptions:
    """The one way options are built. `sample`'s parameters are the config's T0/k0/p0/m0, each
    replaced by the one given here; no seed draws a random one. ValueError on a bad value."""
    base = SamplingParams.from_config(config)
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    params = replace(base, **{k: v for k, v in given.items() if v is not None})
    return DecodingOptions(
        sampler=sampler,
        config=config,
        params=params,
        max_tokens=max_tokens,
        seed=random_seed() if seed is None else seed,
    )
