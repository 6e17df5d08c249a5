"""Mitra-style tree-based priors (TBPs): tree models fitted to random targets, used as the labelling function.

Mitra (seed 002) mixes SCMs 50/50 with five tree-based priors: decision tree, extra trees, random forest, gradient
boosting and directly sampled random forests. Each table here is drawn as follows:

1. features ``X (n_rows, n_features)`` are independent root variables (:func:`sample_causes`: normal, uniform or a
   per-column mix of normal / categorical / Zipf / uniform);
2. a labelling function is drawn from one family:

   * ``mitra_dt`` / ``mitra_et`` / ``mitra_rf`` / ``mitra_gb``: a scikit-learn ``DecisionTreeRegressor`` /
     ``ExtraTreesRegressor`` / ``RandomForestRegressor`` / ``GradientBoostingRegressor`` with random
     hyper-parameters, fitted to N(0, 1) *noise* targets on a log-uniform number (8 .. ``mitra_tree_fit_rows``) of
     random rows of ``X``. The targets carry no signal, so the fitted splits are random axis-aligned partitions
     shaped like what each learner builds (greedy vs random thresholds, bagging, additive boosting); few fit rows,
     ``min_samples_leaf`` and the depth cap make coarse partitions that a few hundred rows suffice to learn;
   * ``mitra_dsrf``: a directly sampled random forest: complete binary trees whose nodes split a random feature at
     the value of a random row that reaches the node (so splits fall where the data is), with N(0, 1) leaf values;
     no fitting;

3. ``y`` is the function's prediction on every row plus Gaussian noise, continuous; the shared post-processing
   (:func:`postprocess_table`) turns it into classes (random boundaries, optional imbalance) or a standardized
   regression target, converts some features to categoricals and injects missing values, as for the SCMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from autogluon_tfm.prior.causes import sample_causes
from autogluon_tfm.prior.config import MITRA_TREE_FAMILIES, PriorConfig
from autogluon_tfm.prior.random_utils import PriorRandom

_MIN_FIT_ROWS = 8


@dataclass(frozen=True)
class MitraTreeParams:
    """Hyper-parameters of one Mitra tree-prior table (drawn by :func:`sample_mitra_tree_params`)."""

    family: str
    max_depth: int
    n_estimators: int
    min_samples_leaf: int
    max_features: float  # share of the features each split considers (ET / RF / GB)
    learning_rate: float  # GB only
    noise_std: float  # relative to the std of the function's output
    cause_sampling: str
    random_cause_moments: bool


def sample_mitra_tree_params(rng: PriorRandom, family: str, n_fit_rows: int, config: PriorConfig) -> MitraTreeParams:
    """Draw the hyper-parameters of one table of ``family`` fitted on ``n_fit_rows`` rows."""
    if family not in MITRA_TREE_FAMILIES:
        raise ValueError(f"family must be one of {MITRA_TREE_FAMILIES}, got {family!r}")
    # Depth 2..max: shallow trees dominate (few, large leaves) but deep ones occur, like the XGBoost tree SCM.
    max_depth = min(2 + int(rng.np.exponential(2.0)), config.mitra_tree_max_depth)
    # Boosting needs more rounds than bagging needs trees to move away from a constant.
    max_estimators = config.mitra_tree_max_estimators * (3 if family == "mitra_gb" else 1)
    n_estimators = 1 if family == "mitra_dt" else rng.integer(2, max(2, max_estimators))
    # Leaves of 1 row up to 10 % of the fit rows: from memorised noise to a few large regions.
    min_leaf = max(1, round(rng.log_uniform(1.0, max(1.0, n_fit_rows / 10))))
    return MitraTreeParams(
        family=family,
        max_depth=max(max_depth, 1),
        n_estimators=n_estimators,
        min_samples_leaf=min_leaf,
        max_features=rng.uniform(0.3, 1.0),
        learning_rate=rng.log_uniform(0.05, 0.5),
        noise_std=rng.log_scaled_truncated_normal(*config.noise_std_mean),
        cause_sampling=config.cause_samplings[rng.integer(0, len(config.cause_samplings) - 1)],
        random_cause_moments=rng.bernoulli(0.5),
    )


def _tree_model(params: MitraTreeParams, seed: int):
    """The unfitted scikit-learn regressor of ``params.family`` (single-threaded: workers run in parallel)."""
    from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor
    from sklearn.tree import DecisionTreeRegressor

    common = dict(max_depth=params.max_depth, min_samples_leaf=params.min_samples_leaf, random_state=seed)
    if params.family == "mitra_dt":
        return DecisionTreeRegressor(**common)
    if params.family == "mitra_et":
        return ExtraTreesRegressor(n_estimators=params.n_estimators, max_features=params.max_features, n_jobs=1, **common)
    if params.family == "mitra_rf":
        return RandomForestRegressor(
            n_estimators=params.n_estimators, max_features=params.max_features, n_jobs=1, **common
        )
    return GradientBoostingRegressor(
        n_estimators=params.n_estimators, learning_rate=params.learning_rate, max_features=params.max_features, **common
    )


def directly_sampled_forest(rng: PriorRandom, X: np.ndarray, n_trees: int, max_depth: int) -> np.ndarray:
    """Mean prediction on ``X (n, d)`` of ``n_trees`` random complete binary trees of depth U{1..max_depth}.

    Each node splits a random feature at the value that feature takes in a random row reaching the node (that row
    goes left, so no occupied node sends all its rows right by construction; a node no row reaches splits at
    N(0, 1)); leaves hold N(0, 1) values. Evaluated level by level, vectorised over rows.
    """
    n_rows, n_features = X.shape
    out = np.zeros(n_rows)
    rows = np.arange(n_rows)
    for _ in range(n_trees):
        depth = int(rng.np.integers(1, max_depth + 1))
        node = np.zeros(n_rows, dtype=np.int64)  # index within the current level
        for level in range(depth):
            n_nodes = 2**level
            features = rng.np.integers(0, n_features, size=n_nodes)
            thresholds = rng.np.standard_normal(n_nodes)
            # One random row per occupied node: shuffle rows, keep the first occurrence of each node.
            shuffled = rng.np.permutation(n_rows)
            occupied, first = np.unique(node[shuffled], return_index=True)
            picked = shuffled[first]
            thresholds[occupied] = X[picked, features[occupied]]
            go_right = X[rows, features[node]] > thresholds[node]
            node = 2 * node + go_right
        out += rng.np.standard_normal(2**depth)[node]
    return out / n_trees


@torch.no_grad()
def generate_mitra_tree_table(
    rng: PriorRandom, n_rows: int, n_features: int, config: PriorConfig, family: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one table of ``family`` (see the module docstring): ``X (n_rows, n_features)``, ``y (n_rows,)``."""
    if n_rows < 1 or n_features < 1:
        raise ValueError(f"n_rows and n_features must be >= 1, got {n_rows}, {n_features}")
    # Fewer fit rows give coarser partitions (few regions, each with its own random value): the log-uniform draw
    # spans coarse, very learnable functions to fine, noisy ones.
    max_fit = min(n_rows, config.mitra_tree_fit_rows)
    n_fit = min(max_fit, round(rng.log_uniform(min(_MIN_FIT_ROWS, max_fit), max_fit)))
    params = sample_mitra_tree_params(rng, family, n_fit, config)
    causes = sample_causes(rng, n_rows, n_features, params.cause_sampling, params.random_cause_moments)
    features = causes.double().numpy()
    if family == "mitra_dsrf":
        values = directly_sampled_forest(rng, features, params.n_estimators, params.max_depth)
    else:
        fit_rows = rng.np.choice(n_rows, size=n_fit, replace=False) if n_rows > n_fit else np.arange(n_rows)
        targets = rng.np.standard_normal(n_fit)
        model = _tree_model(params, rng.child_seed())
        values = model.fit(features[fit_rows], targets).predict(features)
    values = torch.from_numpy(np.asarray(values, dtype=np.float64))
    # Noise relative to the function's spread, so that noise_std means the same for every family.
    values = values + rng.randn(n_rows).double() * params.noise_std * float(values.std().clamp(min=1e-12))
    return causes, values.float()
