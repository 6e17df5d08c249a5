"""Mitra-style tree priors, class imbalance and missing values: statistical properties of the new named priors,
and the guarantee that the older named priors (used by running pretraining jobs) draw exactly the same tables."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from autogluon_tfm.pretrain.trainer import PretrainConfig, pretrain
from autogluon_tfm.prior import (
    MITRA_TREE_FAMILIES,
    MLP_SCM,
    PRIOR_CONFIGS,
    PriorConfig,
    PriorRandom,
    PriorSampler,
    generate_mitra_tree_table,
    get_prior_config,
)
from autogluon_tfm.prior.filters import learnability_gain
from autogluon_tfm.prior.mitra_trees import directly_sampled_forest

OLD_NAMES = (
    "tabicl_mix", "scm_only", "tree_only", "tabicl_mix_learnable", "tabicl_mix_regression", "mitra_mix_learnable",
    "mitra_mix_regression",
)


def assert_valid_table(batch, i: int, task: str, max_classes: int = 10, allow_nan: bool = False) -> None:
    n = batch.n_train
    d, k = int(batch.d[i]), int(batch.n_classes[i])
    X, y = batch.X[i, :, :d], batch.y[i]
    assert 1 <= d and (batch.X[i, :, d:] == 0).all(), "padding columns stay exactly zero"
    if not allow_nan:
        assert torch.isfinite(X).all()
    assert torch.isfinite(y).all(), "targets are never missing"
    observed = torch.where(torch.isnan(X), torch.zeros_like(X), X)
    assert observed.abs().max() <= 100.0
    if task == "regression":
        assert k == 0 and float(y.std()) > 0.5, "no constant (or collapsed) regression target"
        return
    assert 2 <= k <= max_classes, "no constant classification target"
    assert set(y[:n].long().tolist()) == set(range(k)), "every class occurs in the train part"
    assert set(y[n:].long().tolist()) <= set(range(k))


@pytest.mark.parametrize("family", MITRA_TREE_FAMILIES)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_each_family_makes_valid_tables(family, task):
    config = get_prior_config("mitra_trees_only", mitra_tree_families=(family,), task=task)
    batch = PriorSampler(config, seed=0).sample_batch(4, 96, max_features=6, n_train=64)
    assert batch.kinds == (family,) * 4
    for i in range(4):
        assert_valid_table(batch, i, task)


def test_raw_tree_targets_and_directly_sampled_forests():
    rng = PriorRandom(0)
    config = get_prior_config("mitra_trees_only", noise_std_mean=(1e-9, 1e-9))
    for family in MITRA_TREE_FAMILIES:
        X, y = generate_mitra_tree_table(rng, 200, 4, config, family)
        assert X.shape == (200, 4) and y.shape == (200,) and torch.isfinite(y).all()
        assert float(y.std()) > 0 or family == "mitra_dt", f"{family} gave a constant target"
    features = np.random.default_rng(0).standard_normal((300, 3))
    stump = directly_sampled_forest(PriorRandom(5), features, n_trees=1, max_depth=1)
    assert len(np.unique(stump)) <= 2, "one stump has two leaves"
    deep = directly_sampled_forest(PriorRandom(5), features, n_trees=4, max_depth=6)
    assert len(np.unique(deep)) > 4, "a forest of deep random trees has many regions"
    np.testing.assert_array_equal(deep, directly_sampled_forest(PriorRandom(5), features, n_trees=4, max_depth=6))
    # Rows with equal features get equal values: the label is a function of X.
    doubled = directly_sampled_forest(PriorRandom(6), np.concatenate([features, features]), n_trees=3, max_depth=4)
    np.testing.assert_array_equal(doubled[:300], doubled[300:])


def test_mitra_trees_mix_statistics():
    """Feature and class counts, class balance, 50/50 SCM / tree split, and every tree family actually used."""
    sampler = PriorSampler("mitra_trees_mix", seed=1)
    kinds, d_values, class_counts, min_shares = [], [], [], []
    for _ in range(10):
        batch = sampler.sample_batch(8, 96, max_features=12, n_train=64)
        kinds += batch.kinds
        d_values += batch.d.tolist()
        for i in range(8):
            assert_valid_table(batch, i, "classification")
            counts = torch.bincount(batch.y[i].long()).float()
            class_counts.append(int(batch.n_classes[i]))
            min_shares.append(float(counts.min() / counts.sum()))
    counts = Counter(kinds)
    assert set(counts) == {MLP_SCM, *MITRA_TREE_FAMILIES}, f"every family is drawn: {counts}"
    share_tree = 1 - counts[MLP_SCM] / len(kinds)
    assert 0.35 < share_tree < 0.65, f"p_mitra_tree = 0.5 over 80 tables, got {share_tree:.2f}"
    assert min(d_values) >= 1 and max(d_values) <= 12 and max(d_values) >= 9
    assert min(class_counts) >= 2 and max(class_counts) <= 10 and max(class_counts) >= 5
    assert 0.3 < np.mean(np.array(class_counts) == 2) < 0.9, "binary is the mode, not everything"
    # Balance: both balanced and clearly imbalanced tables occur.
    assert max(min_shares) > 0.3 and min(min_shares) < 0.1


def test_tree_tables_are_learnable():
    """Tree-prior labels depend on the features: extra-trees beat the majority class on most tables."""
    gains = []
    sampler = PriorSampler("mitra_trees_only", seed=2)
    for _ in range(3):
        batch = sampler.sample_batch(8, 240, n_features=5, max_features=5, n_train=160)
        gains += [learnability_gain(batch.X[i, :, : batch.d[i]], batch.y[i], 160, seed=0) for i in range(8)]
    assert np.median(gains) > 0.04 and np.mean(np.array(gains) > 0.1) > 0.25, sorted(gains)


def test_regression_tree_mix_targets():
    sampler = PriorSampler("mitra_trees_mix_regression", seed=0)
    batch = sampler.sample_batch(10, 128, max_features=6, n_train=90)
    assert any(kind in MITRA_TREE_FAMILIES for kind in batch.kinds)
    for i in range(10):
        assert_valid_table(batch, i, "regression")
        assert abs(float(batch.y[i].mean())) < 0.5
        assert len(torch.unique(batch.y[i])) > 10, "noise makes tree targets continuous"


def test_explicit_imbalance_makes_smaller_minority_classes():
    def minority_shares(imbalance_prob: float) -> np.ndarray:
        config = get_prior_config("scm_only", multiclass_prob=1.0, max_classes=4, imbalance_prob=imbalance_prob)
        batch = PriorSampler(config, seed=4).sample_batch(24, 200, n_features=4, max_features=4, n_train=140)
        shares = []
        for i in range(24):
            assert_valid_table(batch, i, "classification", max_classes=4)
            counts = torch.bincount(batch.y[i].long()).float()
            shares.append(float(counts.min() / counts.sum()))
        return np.array(shares)

    balanced, imbalanced = minority_shares(0.0), minority_shares(1.0)
    assert np.median(imbalanced) < 0.75 * np.median(balanced)
    assert (imbalanced < 0.05).mean() > (balanced < 0.05).mean()
    assert imbalanced.min() * 200 >= 2 - 1e-3, "each class keeps at least 2 rows"


@pytest.mark.parametrize("name", ["tabicl_mix_learnable_nan", "tabicl_mix_regression_nan"])
def test_missing_value_priors(name):
    config = get_prior_config(name)
    assert config.nan_prob > 0 and config.nan_mode == "mixed"
    sampler = PriorSampler(config, seed=0)
    shares, with_nan, partial_columns = [], 0, 0
    for _ in range(4):
        batch = sampler.sample_batch(8, 128, max_features=8, n_train=90)
        for i in range(8):
            assert_valid_table(batch, i, config.task, allow_nan=True)
            missing = torch.isnan(batch.X[i, :, : int(batch.d[i])])
            shares.append(float(missing.float().mean()))
            with_nan += bool(missing.any())
            column_has = missing.any(0)
            partial_columns += bool(column_has.any() and not column_has.all())
    shares = np.array(shares)
    assert 0.2 < with_nan / 32 < 0.8, "nan_prob = 0.5"
    assert shares.max() <= config.max_nan_fraction + 0.1, "NaN share within bounds (plus sampling noise)"
    assert partial_columns >= 1, "mixed patterns include tables where only some columns have missing values"


def test_nan_prior_is_refused_for_networks_without_nan_support_and_trains_tabpfn_v2(tmp_path):
    tiny = dict(steps=2, batch_size=2, min_rows=24, max_rows=40, max_features=4, num_workers=0, checkpoint_every=1)
    with pytest.raises(ValueError, match="do not read NaN"):
        pretrain(PretrainConfig(arch="tabicl", model="tabicl-tiny", prior="tabicl_mix_learnable_nan",
                                out=str(tmp_path / "no"), **tiny))
    assert not (tmp_path / "no").exists()
    last = pretrain(PretrainConfig(arch="tabpfn_v2", model="tabpfnv2-tiny", prior="tabicl_mix_learnable_nan",
                                   out=str(tmp_path / "yes"), **tiny))
    losses = [float(line.split(",")[1]) for line in (tmp_path / "yes" / "log.csv").read_text().splitlines()[1:]]
    assert last.exists() and len(losses) == 2 and all(np.isfinite(losses))


def test_older_named_priors_are_unchanged():
    """Running jobs resume with these names: new fields keep their no-op defaults and the draws are the same."""
    for name in OLD_NAMES:
        config = PRIOR_CONFIGS[name]
        assert config.p_mitra_tree == 0.0 and config.imbalance_prob == 0.0
        assert config.nan_prob == 0.0 and config.nan_mode == "cells"
    # Golden values recorded with the code before the Mitra tree priors were added.
    expected = {
        "tabicl_mix_learnable": (("mlp_scm", "tree_scm", "mlp_scm", "mlp_scm", "tree_scm", "tree_scm"),
                                 [2, 5, 3, 4, 3, 2], [2, 6, 6, 2, 2, 2], 726.023, 308.0),
        "mitra_mix_learnable": (("mlp_scm", "tree_scm", "mlp_scm", "mlp_scm", "tree_scm", "tree_scm"),
                                [2, 5, 3, 4, 3, 2], [2, 6, 6, 2, 2, 2], 726.023, 308.0),
        "tabicl_mix_regression": (("mlp_scm", "mlp_scm", "mlp_scm", "mlp_scm", "tree_scm", "mlp_scm"),
                                  [2, 4, 4, 5, 3, 3], [0] * 6, 724.155, 231.544),
    }
    for name, (kinds, d, n_classes, x_abs, y_abs) in expected.items():
        batch = PriorSampler(name, seed=3).sample_batch(6, 48, max_features=5, n_train=32)
        assert batch.kinds == kinds and batch.d.tolist() == d and batch.n_classes.tolist() == n_classes
        assert float(batch.X.double().abs().sum()) == pytest.approx(x_abs, rel=1e-4)
        assert float(batch.y.double().abs().sum()) == pytest.approx(y_abs, rel=1e-4)


def test_new_fields_are_validated():
    with pytest.raises(ValueError):
        PriorConfig(p_mitra_tree=1.5)
    with pytest.raises(ValueError):
        PriorConfig(mitra_tree_families=("mitra_xgb",))
    with pytest.raises(ValueError):
        PriorConfig(nan_mode="blocks")
    with pytest.raises(ValueError):
        PriorConfig(imbalance_concentration=(0.0, 1.0))
    with pytest.raises(ValueError):
        PriorSampler("mitra_trees_mix").sample_table("mitra_xgb", 32, 20, 3, 2)
