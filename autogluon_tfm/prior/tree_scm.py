"""Tree structural causal model: XGBoost ensembles fitted on pure noise, used as random piecewise-constant maps.

Each layer fits a small multi-output ``xgboost`` booster (<= 4 trees of depth <= 4) from the layer input to
standard-normal targets and replaces the input by the booster's predictions (plus Gaussian noise). Since the targets
are noise, the fitted splits are random axis-aligned partitions: this injects the inductive bias of tree models
(axis-aligned, hierarchical interactions) that MLP SCMs lack. Non-causal: the features are the causes and the target
is the output of the last layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from autogluon_tfm.prior.causes import sample_causes
from autogluon_tfm.prior.config import PriorConfig
from autogluon_tfm.prior.random_utils import PriorRandom


@dataclass(frozen=True)
class TreeSCMParams:
    n_layers: int
    hidden_dim: int
    noise_std: float
    cause_sampling: str
    random_cause_moments: bool


def sample_tree_scm_params(rng: PriorRandom, config: PriorConfig) -> TreeSCMParams:
    return TreeSCMParams(
        n_layers=rng.integer(*config.tree_layers),
        hidden_dim=rng.integer(*config.tree_hidden_dim),
        noise_std=rng.log_scaled_truncated_normal(*config.noise_std_mean),
        cause_sampling=config.cause_samplings[rng.integer(0, len(config.cause_samplings) - 1)],
        random_cause_moments=rng.bernoulli(0.5),
    )


def _sample_booster_size(rng: PriorRandom, config: PriorConfig) -> tuple[int, int]:
    """(n_estimators, max_depth) = (1 + Exp, 2 + Exp) truncated to integers and capped."""
    mean = 1.0 / config.tree_exponential_rate
    n_estimators = min(1 + int(rng.np.exponential(mean)), config.tree_max_estimators)
    max_depth = min(2 + int(rng.np.exponential(mean)), config.tree_max_depth)
    return n_estimators, max(max_depth, 1)


def random_tree_map(rng: PriorRandom, inputs: torch.Tensor, n_outputs: int, config: PriorConfig) -> torch.Tensor:
    """Fit an XGBoost booster from ``inputs (n, k)`` to ``N(0, 1)`` targets ``(m, n_outputs)`` on ``m <= tree_fit_rows``
    random rows, and return its predictions on all ``n`` rows as a float32 ``(n, n_outputs)`` tensor."""
    import xgboost  # local import: xgboost is heavy and only the tree prior needs it

    n_rows = inputs.shape[0]
    features = inputs.nan_to_num(0.0).numpy().astype(np.float32, copy=False)
    if n_rows > config.tree_fit_rows:
        fit_rows = rng.np.choice(n_rows, size=config.tree_fit_rows, replace=False)
        fit_features = features[fit_rows]
    else:
        fit_features = features
    targets = rng.np.standard_normal((fit_features.shape[0], n_outputs)).astype(np.float32)
    n_estimators, max_depth = _sample_booster_size(rng, config)
    booster_params = {
        "tree_method": "hist",
        "max_depth": max_depth,
        "max_bin": config.tree_max_bin,
        "nthread": 1,
        "seed": rng.child_seed(),
        "verbosity": 0,
    }
    if n_outputs > 1:
        booster_params["multi_strategy"] = "multi_output_tree"
    train_matrix = xgboost.DMatrix(fit_features, label=targets, nthread=1)
    booster = xgboost.train(booster_params, train_matrix, num_boost_round=n_estimators)
    predictions = booster.inplace_predict(features)
    return torch.from_numpy(np.asarray(predictions, dtype=np.float32).reshape(n_rows, n_outputs))


@torch.no_grad()
def generate_tree_scm_table(
    rng: PriorRandom, n_rows: int, n_features: int, config: PriorConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a tree SCM and ``n_rows`` rows of ``X (n_rows, n_features)``, ``y (n_rows,)`` (float32)."""
    if n_rows < 1 or n_features < 1:
        raise ValueError(f"n_rows and n_features must be >= 1, got {n_rows}, {n_features}")
    params = sample_tree_scm_params(rng, config)
    causes = sample_causes(rng, n_rows, n_features, params.cause_sampling, params.random_cause_moments)
    hidden = random_tree_map(rng, causes, params.hidden_dim, config)
    for width in [params.hidden_dim] * (params.n_layers - 1) + [1]:
        hidden = random_tree_map(rng, hidden, width, config)
        hidden = hidden + rng.randn(*hidden.shape) * params.noise_std
    return causes, hidden[:, 0]
