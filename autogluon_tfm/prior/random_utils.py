"""Seeded random streams and hyper-parameter distributions shared by the prior generators.

Every random draw of the priors goes through one :class:`PriorRandom` so that a sampler built with the same seed
replays exactly the same datasets, independently of the global torch / numpy random state.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class PriorRandom:
    """A pair of independent, seeded generators: a numpy one for scalars and a torch one for tensors.

    Scalar draws (hyper-parameters, choices) use numpy because it is much cheaper per call than torch;
    tensor draws use the torch generator so that no data crosses between the two libraries.
    """

    def __init__(self, seed: int | np.random.SeedSequence):
        seed_sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
        numpy_seed, torch_seed = seed_sequence.spawn(2)
        self.np = np.random.default_rng(numpy_seed)
        self.torch = torch.Generator(device="cpu")
        self.torch.manual_seed(int(torch_seed.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))

    # ----------------------------------------------------------------------------------------------- scalars
    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return float(self.np.uniform(low, high))

    def log_uniform(self, low: float, high: float) -> float:
        return math.exp(self.np.uniform(math.log(low), math.log(high)))

    def integer(self, low: int, high_inclusive: int) -> int:
        return int(self.np.integers(low, high_inclusive + 1))

    def bernoulli(self, p: float) -> bool:
        return bool(self.np.random() < p)

    def child_seed(self) -> int:
        """A fresh 31-bit seed for third-party code that takes an integer seed (xgboost)."""
        return int(self.np.integers(0, 2**31 - 1))

    def log_scaled_truncated_normal(
        self,
        min_mean: float,
        max_mean: float,
        lower_bound: float = 0.0,
        round_to_int: bool = False,
        min_relative_std: float = 0.01,
        max_relative_std: float = 1.0,
    ) -> float:
        """Two-level draw: a mean log-uniform in [min_mean, max_mean], a std relative to that mean, then a
        normal sample truncated to be >= 0, shifted by ``lower_bound``.

        Drawing the distribution's parameters per dataset (rather than fixing them) makes the marginal heavy-tailed,
        so most datasets are small/simple while a few are large/complex.
        """
        mean = self.log_uniform(min_mean, max_mean)
        std = mean * self.log_uniform(min_relative_std, max_relative_std)
        sample = -1.0
        for _ in range(16):  # rejection sampling of the truncation; P(sample < 0) <= 0.5 so 16 tries nearly always do
            sample = float(self.np.normal(mean, std))
            if sample >= 0.0:
                break
        sample = abs(sample)
        if round_to_int:
            sample = round(sample)
        return lower_bound + sample

    # ----------------------------------------------------------------------------------------------- tensors
    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.torch, dtype=torch.float32)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.torch, dtype=torch.float32)

    def randint(self, low: int, high_exclusive: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(low, high_exclusive, shape, generator=self.torch)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.torch)
