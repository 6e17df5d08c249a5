"""The learnability filter keeps mostly tables whose labels depend on the features."""

from __future__ import annotations

import numpy as np
import torch

from autogluon_tfm.prior import PriorSampler
from autogluon_tfm.prior.filters import learnability_gain, regression_learnability_gain


def test_filter_detects_signal_and_noise():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(400, 3, generator=gen)
    signal = (X[:, 0] > 0).float()
    noise = torch.randint(0, 2, (400,), generator=gen).float()
    assert learnability_gain(X, signal, 300, seed=0) > 0.3
    assert learnability_gain(X, noise, 300, seed=0) < 0.1


def _median_gain(prior: str, gain=learnability_gain) -> float:
    """Median learnability of 18 tables of ``prior`` (200 rows, 120 for training, 6 features)."""
    sampler = PriorSampler(prior, seed=11)
    gains = []
    for _ in range(3):
        batch = sampler.sample_batch(6, 200, n_features=6, max_features=6, n_train=120)
        gains += [gain(batch.X[i, :, : batch.d[i]], batch.y[i], 120, seed=1) for i in range(6)]
    return float(np.median(gains))


def test_filtered_prior_is_more_learnable_than_unfiltered():
    assert _median_gain("tabicl_mix_learnable") > _median_gain("tabicl_mix") + 0.02


def test_regression_filter_detects_signal_and_noise():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(400, 3, generator=gen)
    signal = X[:, 0] ** 2 + 0.1 * torch.randn(400, generator=gen)
    noise = torch.randn(400, generator=gen)
    assert regression_learnability_gain(X, signal, 300, seed=0) > 0.5
    assert regression_learnability_gain(X, noise, 300, seed=0) < 0.1
    assert regression_learnability_gain(X, torch.ones(400), 300, seed=0) == 0.0  # constant target: no gain


def test_filtered_regression_prior_is_more_learnable_than_unfiltered():
    # Measured (96 tables of 64-512 rows): extra-trees test R2 median -0.02 unfiltered, 0.42 filtered.
    learnable = _median_gain("tabicl_mix_regression_learnable", regression_learnability_gain)
    assert learnable > _median_gain("tabicl_mix_regression", regression_learnability_gain) + 0.15
