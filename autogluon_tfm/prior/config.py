"""Configuration of the synthetic-dataset prior (what kinds of tables are generated, and how)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from autogluon_tfm.prior.causes import CAUSE_SAMPLINGS

TASKS: tuple[str, ...] = ("classification", "regression")
CLASS_ASSIGNMENTS: tuple[str, ...] = ("rank", "value")
# Mitra's tree-based priors (prior/mitra_trees.py): decision tree, extra trees, random forest, gradient boosting,
# directly sampled random forest. The names double as the generator kind reported in PriorBatch.kinds.
MITRA_TREE_FAMILIES: tuple[str, ...] = ("mitra_dt", "mitra_et", "mitra_rf", "mitra_gb", "mitra_dsrf")
# "cells": every cell missing with one rate (MCAR); "mixed": per table one of MCAR cells, MCAR on a random subset of
# columns (each its own rate), or missing-not-at-random (a column's large values go missing more often).
NAN_MODES: tuple[str, ...] = ("cells", "mixed")


@dataclass(frozen=True)
class PriorConfig:
    """All knobs of the prior. Ranges are ``(low, high)`` inclusive; ``*_mean`` ranges bound the per-dataset mean
    of a log-scaled truncated normal (see :meth:`PriorRandom.log_scaled_truncated_normal`).

    The defaults reproduce the TabICL v1 ``mix_scm`` prior (70 % MLP-SCM, 30 % XGBoost tree-SCM).
    """

    name: str = "tabicl_mix"
    task: str = "classification"
    # Probability that a table comes from the tree SCM rather than the MLP SCM.
    p_tree: float = 0.3

    # ---- table shape (the batch-level n_rows / n_train / max_features are arguments of sample_batch)
    min_features: int = 2
    train_fraction: tuple[float, float] = (0.3, 0.9)
    max_classes: int = 10
    # With this probability a table gets U{2..max_classes} classes, otherwise 2.
    multiclass_prob: float = 0.5

    # ---- MLP SCM
    num_causes_mean: tuple[float, float] = (1.0, 12.0)
    num_layers_mean: tuple[float, float] = (1.0, 6.0)
    max_layers: int = 6
    hidden_dim_mean: tuple[float, float] = (5.0, 130.0)
    min_hidden_dim: int = 4
    max_hidden_dim: int = 130
    init_std_mean: tuple[float, float] = (0.01, 10.0)
    noise_std_mean: tuple[float, float] = (1e-4, 0.3)
    causal_prob: float = 0.5
    block_dropout_prob: float = 0.5
    # Bernoulli weight dropout is max_weight_dropout * Beta(a, b) with a, b ~ U(0.1, 5).
    max_weight_dropout: float = 0.9
    random_function_weight: float = 10.0
    same_activation_prob: float = 0.5
    n_frequencies: int = 256
    cause_samplings: tuple[str, ...] = CAUSE_SAMPLINGS

    # ---- tree SCM (XGBoost fitted on Gaussian noise, used as a random function)
    tree_layers: tuple[int, int] = (1, 2)
    tree_hidden_dim: tuple[int, int] = (3, 9)
    tree_max_estimators: int = 4
    tree_max_depth: int = 4
    # Rate of the exponential added to 1 (estimators) / 2 (depth) before capping.
    tree_exponential_rate: float = 0.5
    # Trees are fit on at most this many random rows (their targets are noise anyway) and predict on all rows.
    tree_fit_rows: int = 512
    # Coarse histograms make the fits ~6x faster; with <= 4 trees of depth <= 4 the split choice is not limiting.
    tree_max_bin: int = 32

    # ---- post-processing (regression -> classification, features)
    categorical_prob: float = 0.2
    max_categories: int = 100
    outlier_threshold: float = 4.0
    feature_clip: float = 100.0
    permute_features: bool = True
    # Irrelevant columns: with irrelevant_feature_prob, a share U(irrelevant_feature_fraction) of a table's columns
    # (at least one, never all) is replaced by row-shuffled copies of random columns: realistic marginals, no relation
    # to the target. The shipped small networks do not ignore such columns (one informative column among seven
    # shuffled ones: log loss 0.07 -> 0.3); a short warm start on them did not fix it (prior_ablation.md).
    irrelevant_feature_prob: float = 0.0
    irrelevant_feature_fraction: tuple[float, float] = (0.1, 0.8)
    class_assignments: tuple[str, ...] = CLASS_ASSIGNMENTS
    # Every class always occurs in the train part; with this flag also in the test part (as TabICL's sanity check),
    # except when the test part has fewer rows than classes. Tables with a single-row class are then redrawn.
    classes_in_test: bool = True
    # Probability of keeping the natural (ordinal) order of classes instead of a random permutation.
    ordered_classes_prob: float = 0.0
    # Missing values: OFF by default. Of the networks only TabPFN v2 reads NaN (as an indicator embedding); TabICL
    # turns NaN into NaN outputs and Mitra's quantile embedding needs imputed input, so pretrain() refuses NaN priors
    # for them. max_nan_fraction bounds the expected share of missing cells of a table.
    nan_prob: float = 0.0
    max_nan_fraction: float = 0.3
    nan_mode: str = "cells"

    # ---- class imbalance: with imbalance_prob, class boundaries sit at target quantiles whose spacings follow a
    # Dirichlet(alpha) with alpha log-uniform in imbalance_concentration (alpha < 1: a few large classes and small
    # ones). Otherwise boundaries follow class_assignments (rank: Dirichlet(1) spacings; value: N(0, 1) cut points).
    imbalance_prob: float = 0.0
    imbalance_concentration: tuple[float, float] = (0.1, 1.0)

    # ---- Mitra tree-based priors: a table comes from them with p_mitra_tree (a family drawn uniformly from
    # mitra_tree_families), otherwise from the XGBoost tree SCM with p_tree, otherwise from the MLP SCM.
    # p_mitra_tree = 0 draws nothing extra, so the older named configs replay exactly the same tables.
    p_mitra_tree: float = 0.0
    mitra_tree_families: tuple[str, ...] = MITRA_TREE_FAMILIES
    mitra_tree_max_depth: int = 8
    # Trees of ET / RF / DSRF (2..this); gradient boosting draws up to 3x as many rounds.
    mitra_tree_max_estimators: int = 16
    # Trees are fitted on at most this many random rows (the targets are noise) and predict on all rows.
    mitra_tree_fit_rows: int = 512

    # ---- skewed regression targets: real targets are often prices, durations or counts (long right tails), while an
    # SCM's standardized, outlier-clipped output is roughly symmetric. With target_warp_prob the standardized target
    # y becomes exp(s * y), s ~ U(target_warp_scale) (log-normal-like tails); a share target_count_prob of those is
    # then replaced by Poisson counts around it (mean count log-uniform in target_count_mean). Re-standardized after.
    target_warp_prob: float = 0.0
    target_warp_scale: tuple[float, float] = (0.3, 1.5)
    target_count_prob: float = 0.4
    target_count_mean: tuple[float, float] = (0.5, 30.0)

    # ---- learnability filter: keep a table only if extra-trees beat the majority class on its test part by at
    # least `min_learnability_gain` accuracy (regression: reach that test R² over the training mean); unlearnable
    # tables are still kept with `keep_unlearnable_prob`.
    min_learnability_gain: float | None = None
    keep_unlearnable_prob: float = 0.1
    # ---- batch layout
    # False: X is zero-padded to the largest d in the batch; True: to sample_batch's max_features.
    pad_to_max_features: bool = False
    max_attempts: int = 100

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not 0.0 <= self.p_tree <= 1.0:
            raise ValueError(f"p_tree must be in [0, 1], got {self.p_tree}")
        if self.task == "classification" and self.max_classes < 2:
            raise ValueError(f"max_classes must be >= 2 for classification, got {self.max_classes}")
        if self.min_features < 1:
            raise ValueError(f"min_features must be >= 1, got {self.min_features}")
        low, high = self.train_fraction
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"train_fraction must satisfy 0 < low <= high < 1, got {self.train_fraction}")
        for field_name in ("num_causes_mean", "num_layers_mean", "hidden_dim_mean", "init_std_mean", "noise_std_mean"):
            low, high = getattr(self, field_name)
            if not 0.0 < low <= high:
                raise ValueError(f"{field_name} must satisfy 0 < low <= high, got {(low, high)}")
        if self.max_layers < 2:
            raise ValueError(f"max_layers must be >= 2, got {self.max_layers}")
        if not 1 <= self.min_hidden_dim <= self.max_hidden_dim:
            raise ValueError("need 1 <= min_hidden_dim <= max_hidden_dim")
        if not self.cause_samplings or any(s not in CAUSE_SAMPLINGS for s in self.cause_samplings):
            raise ValueError(f"cause_samplings must be a non-empty subset of {CAUSE_SAMPLINGS}")
        if not self.class_assignments or any(a not in CLASS_ASSIGNMENTS for a in self.class_assignments):
            raise ValueError(f"class_assignments must be a non-empty subset of {CLASS_ASSIGNMENTS}")
        if not 1 <= self.tree_layers[0] <= self.tree_layers[1]:
            raise ValueError(f"tree_layers must satisfy 1 <= low <= high, got {self.tree_layers}")
        if not 1 <= self.tree_hidden_dim[0] <= self.tree_hidden_dim[1]:
            raise ValueError(f"tree_hidden_dim must satisfy 1 <= low <= high, got {self.tree_hidden_dim}")
        if self.tree_max_estimators < 1 or self.tree_max_depth < 1 or self.tree_fit_rows < 2 or self.tree_max_bin < 2:
            raise ValueError("tree_max_estimators, tree_max_depth >= 1 and tree_fit_rows, tree_max_bin >= 2 required")
        for field_name in (
            "multiclass_prob",
            "causal_prob",
            "block_dropout_prob",
            "same_activation_prob",
            "categorical_prob",
            "ordered_classes_prob",
            "nan_prob",
            "imbalance_prob",
            "p_mitra_tree",
            "target_warp_prob",
            "target_count_prob",
            "irrelevant_feature_prob",
        ):
            value = getattr(self, field_name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field_name} must be in [0, 1], got {value}")
        if not 0.0 <= self.max_weight_dropout < 1.0 or not 0.0 <= self.max_nan_fraction < 1.0:
            raise ValueError("max_weight_dropout and max_nan_fraction must be in [0, 1)")
        if self.max_categories < 2 or self.n_frequencies < 1 or self.max_attempts < 1:
            raise ValueError("max_categories >= 2, n_frequencies >= 1 and max_attempts >= 1 required")
        if self.outlier_threshold <= 0 or self.feature_clip <= 0:
            raise ValueError("outlier_threshold and feature_clip must be > 0")
        if self.nan_mode not in NAN_MODES:
            raise ValueError(f"nan_mode must be one of {NAN_MODES}, got {self.nan_mode!r}")
        for field_name in ("imbalance_concentration", "target_warp_scale", "target_count_mean"):
            low, high = getattr(self, field_name)
            if not 0.0 < low <= high:
                raise ValueError(f"{field_name} must satisfy 0 < low <= high, got {(low, high)}")
        low, high = self.irrelevant_feature_fraction
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"irrelevant_feature_fraction must satisfy 0 < low <= high < 1, got {(low, high)}")
        if self.target_warp_prob > 0 and self.task != "regression":
            raise ValueError("target_warp_prob applies to regression priors only (task='regression')")
        if not self.mitra_tree_families or any(f not in MITRA_TREE_FAMILIES for f in self.mitra_tree_families):
            raise ValueError(f"mitra_tree_families must be a non-empty subset of {MITRA_TREE_FAMILIES}")
        if self.mitra_tree_max_depth < 1 or self.mitra_tree_max_estimators < 2 or self.mitra_tree_fit_rows < 2:
            raise ValueError("mitra_tree_max_depth >= 1, mitra_tree_max_estimators >= 2, mitra_tree_fit_rows >= 2 required")

    def replace(self, **changes: Any) -> PriorConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


PRIOR_CONFIGS: dict[str, PriorConfig] = {
    "tabicl_mix": PriorConfig(name="tabicl_mix", p_tree=0.3),
    "scm_only": PriorConfig(name="scm_only", p_tree=0.0),
    "tree_only": PriorConfig(name="tree_only", p_tree=1.0),
    "tabicl_mix_learnable": PriorConfig(name="tabicl_mix_learnable", p_tree=0.3, min_learnability_gain=0.05),
    # The SCM-only arm of the prior ablation (benchmarks/results/prior_ablation.md), with the same filter.
    "scm_only_learnable": PriorConfig(name="scm_only_learnable", p_tree=0.0, min_learnability_gain=0.05),
    "tabicl_mix_regression": PriorConfig(name="tabicl_mix_regression", p_tree=0.3, task="regression"),
    # Mitra (seed 002) mixes SCM and tree-based priors 50/50.
    "mitra_mix_learnable": PriorConfig(name="mitra_mix_learnable", p_tree=0.5, min_learnability_gain=0.05),
    "mitra_mix_regression": PriorConfig(name="mitra_mix_regression", p_tree=0.5, task="regression"),
    # The regression mixtures with the learnability filter (extra-trees test R² >= 0.2; 10% of the rest kept).
    "tabicl_mix_regression_learnable": PriorConfig(
        name="tabicl_mix_regression_learnable", p_tree=0.3, task="regression", min_learnability_gain=0.2
    ),
    "mitra_mix_regression_learnable": PriorConfig(
        name="mitra_mix_regression_learnable", p_tree=0.5, task="regression", min_learnability_gain=0.2
    ),
    # The filtered regression mixtures with skewed targets for half of the tables (a fifth of all as counts, before
    # the learnability filter, which drops most noisy count tables).
    "tabicl_mix_regression_skewed": PriorConfig(
        name="tabicl_mix_regression_skewed", p_tree=0.3, task="regression", min_learnability_gain=0.2,
        target_warp_prob=0.5,
    ),
    "mitra_mix_regression_skewed": PriorConfig(
        name="mitra_mix_regression_skewed", p_tree=0.5, task="regression", min_learnability_gain=0.2,
        target_warp_prob=0.5,
    ),
    # Mitra's own mixture: 50 % MLP SCM, 50 % split evenly among its five tree-based priors (DT, ET, RF, GB, DSRF),
    # with explicit class imbalance for a fifth of the classification tables.
    "mitra_trees_mix": PriorConfig(name="mitra_trees_mix", p_tree=0.0, p_mitra_tree=0.5, imbalance_prob=0.2),
    "mitra_trees_mix_learnable": PriorConfig(
        name="mitra_trees_mix_learnable", p_tree=0.0, p_mitra_tree=0.5, imbalance_prob=0.2, min_learnability_gain=0.05
    ),
    "mitra_trees_mix_regression": PriorConfig(
        name="mitra_trees_mix_regression", p_tree=0.0, p_mitra_tree=0.5, task="regression"
    ),
    "mitra_trees_only": PriorConfig(name="mitra_trees_only", p_tree=0.0, p_mitra_tree=1.0),
    # With missing values (half of the tables, up to 30 % of cells, mixed patterns): for networks that read NaN
    # (TabPFN v2); pretrain() refuses them for the others.
    "tabicl_mix_learnable_nan": PriorConfig(
        name="tabicl_mix_learnable_nan", p_tree=0.3, min_learnability_gain=0.05, nan_prob=0.5, nan_mode="mixed"
    ),
    "tabicl_mix_regression_nan": PriorConfig(
        name="tabicl_mix_regression_nan", p_tree=0.3, task="regression", nan_prob=0.5, nan_mode="mixed"
    ),
    # With irrelevant columns in half of the tables (see irrelevant_feature_prob).
    "tabicl_mix_learnable_irrelevant": PriorConfig(
        name="tabicl_mix_learnable_irrelevant", p_tree=0.3, min_learnability_gain=0.05, irrelevant_feature_prob=0.5
    ),
    "mitra_mix_learnable_irrelevant": PriorConfig(
        name="mitra_mix_learnable_irrelevant", p_tree=0.5, min_learnability_gain=0.05, irrelevant_feature_prob=0.5
    ),
    "tabicl_mix_regression_skewed_irrelevant": PriorConfig(
        name="tabicl_mix_regression_skewed_irrelevant", p_tree=0.3, task="regression", min_learnability_gain=0.2,
        target_warp_prob=0.5, irrelevant_feature_prob=0.5,
    ),
    "mitra_mix_regression_skewed_irrelevant": PriorConfig(
        name="mitra_mix_regression_skewed_irrelevant", p_tree=0.5, task="regression", min_learnability_gain=0.2,
        target_warp_prob=0.5, irrelevant_feature_prob=0.5,
    ),
}


def get_prior_config(config: PriorConfig | str = "tabicl_mix", **overrides: Any) -> PriorConfig:
    """Resolve a named config (see :data:`PRIOR_CONFIGS`) or pass a :class:`PriorConfig` through, applying
    ``overrides`` (field=value) on top."""
    if isinstance(config, str):
        if config not in PRIOR_CONFIGS:
            raise ValueError(f"unknown prior config {config!r}; known: {sorted(PRIOR_CONFIGS)}")
        config = PRIOR_CONFIGS[config]
    elif not isinstance(config, PriorConfig):
        raise ValueError(f"config must be a PriorConfig or a name, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config
