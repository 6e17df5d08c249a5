"""Root ("cause") variables that feed the structural causal models."""

from __future__ import annotations

import numpy as np
import torch

from autogluon_tfm.prior.random_utils import PriorRandom

CAUSE_SAMPLINGS: tuple[str, ...] = ("normal", "uniform", "mixed")
_MIXED_COLUMN_KINDS: tuple[str, ...] = ("normal", "categorical", "zipf", "uniform")
_MAX_CAUSE_CATEGORIES = 20
_ZIPF_CAP = 10.0


def _normal_columns(rng: PriorRandom, n_rows: int, n_columns: int, random_moments: bool) -> torch.Tensor:
    values = rng.randn(n_rows, n_columns)
    if random_moments:
        # Per-column location and a scale proportional to it: some causes are offset, nearly-constant signals,
        # which matters for how they propagate through biases and activations downstream.
        means = torch.from_numpy(rng.np.normal(size=n_columns)).float()
        stds = (torch.from_numpy(rng.np.normal(size=n_columns)).float() * means).abs()
        values = values * stds + means
    return values


def _categorical_columns(rng: PriorRandom, n_rows: int, n_columns: int) -> torch.Tensor:
    """Integer codes with 2-20 categories of random frequencies, standardized per column."""
    n_categories = torch.from_numpy(rng.np.integers(2, _MAX_CAUSE_CATEGORIES + 1, size=n_columns))
    weights = rng.rand(n_columns, _MAX_CAUSE_CATEGORIES) + 1e-6
    weights = weights * (torch.arange(_MAX_CAUSE_CATEGORIES)[None, :] < n_categories[:, None])
    codes = torch.multinomial(weights, n_rows, replacement=True, generator=rng.torch).T.float()
    return (codes - codes.mean(0)) / (codes.std(0) + 1e-6) if n_rows > 1 else codes - codes.mean(0)


def _zipf_columns(rng: PriorRandom, n_rows: int, n_columns: int) -> torch.Tensor:
    """Power-law counts (exponent in [2, 4], capped at 10), centred per column."""
    exponents = rng.np.uniform(2.0, 4.0, size=n_columns)
    counts = np.minimum(rng.np.zipf(exponents[None, :], size=(n_rows, n_columns)), _ZIPF_CAP)
    values = torch.from_numpy(counts.astype(np.float32))
    return values - values.mean(0)


def sample_causes(
    rng: PriorRandom, n_rows: int, n_causes: int, sampling: str = "normal", random_moments: bool = False
) -> torch.Tensor:
    """Draw a ``(n_rows, n_causes)`` float32 matrix of independent root variables.

    ``sampling``: ``"normal"`` (standard normal, or with random per-column moments if ``random_moments``),
    ``"uniform"`` (U[0, 1]) or ``"mixed"`` (each column independently normal / categorical / Zipf / uniform, with
    kind probabilities drawn per table from a flat Dirichlet).
    """
    if sampling not in CAUSE_SAMPLINGS:
        raise ValueError(f"sampling must be one of {CAUSE_SAMPLINGS}, got {sampling!r}")
    if n_rows < 1 or n_causes < 1:
        raise ValueError(f"n_rows and n_causes must be >= 1, got {n_rows}, {n_causes}")
    if sampling == "normal":
        return _normal_columns(rng, n_rows, n_causes, random_moments)
    if sampling == "uniform":
        return rng.rand(n_rows, n_causes)

    kind_probabilities = rng.np.dirichlet(np.ones(len(_MIXED_COLUMN_KINDS)))
    column_kinds = rng.np.choice(len(_MIXED_COLUMN_KINDS), size=n_causes, p=kind_probabilities)
    causes = torch.empty(n_rows, n_causes)
    generators = {
        "normal": lambda n: _normal_columns(rng, n_rows, n, random_moments),
        "categorical": lambda n: _categorical_columns(rng, n_rows, n),
        "zipf": lambda n: _zipf_columns(rng, n_rows, n),
        "uniform": lambda n: rng.rand(n_rows, n),
    }
    for kind_index, kind in enumerate(_MIXED_COLUMN_KINDS):
        columns = np.flatnonzero(column_kinds == kind_index)
        if len(columns):
            causes[:, torch.from_numpy(columns)] = generators[kind](len(columns))
    return causes
