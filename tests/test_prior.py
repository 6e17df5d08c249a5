"""Tests of the synthetic-dataset priors (autogluon_tfm.prior)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from autogluon_tfm.prior import (
    ACTIVATION_NAMES,
    MLP_SCM,
    PRIOR_CONFIGS,
    TREE_SCM,
    LayerActivation,
    PriorBatch,
    PriorConfig,
    PriorIterableDataset,
    PriorRandom,
    PriorSampler,
    RandomFourierFunction,
    collate,
    get_prior_config,
    max_features_for_rows,
)
from autogluon_tfm.prior.reg2cls import (
    clip_outliers,
    order_rows_for_split,
    replace_with_irrelevant_columns,
    warp_regression_target,
)


def assert_valid_classification_batch(batch: PriorBatch, max_classes: int = 10) -> None:
    B, T, H = batch.X.shape
    n = batch.n_train
    assert batch.X.dtype == torch.float32 and batch.y.dtype == torch.float32
    assert batch.d.dtype == torch.long and batch.n_classes.dtype == torch.long
    assert batch.y.shape == (B, T) and batch.d.shape == (B,) and batch.n_classes.shape == (B,)
    assert 2 <= n < T
    assert torch.isfinite(batch.X).all()
    assert batch.X.abs().max() <= 100.0
    for i in range(B):
        d, k = int(batch.d[i]), int(batch.n_classes[i])
        assert 1 <= d <= H
        assert (batch.X[i, :, d:] == 0).all(), "padding columns must be exactly zero"
        real = batch.X[i, :, :d]
        assert (real.amax(0) > real.amin(0)).all(), "no constant feature may remain"
        y = batch.y[i]
        assert (y == y.round()).all(), "class ids must be integer-valued"
        assert 2 <= k <= max_classes
        assert int(y.min()) == 0 and int(y.max()) == k - 1
        train_classes = set(y[:n].long().tolist())
        test_classes = set(y[n:].long().tolist())
        assert train_classes == set(range(k)), "every class must occur in the train part"
        assert test_classes <= train_classes and len(test_classes) >= 1


def test_mixture_batch_shapes_classes_and_padding():
    sampler = PriorSampler("tabicl_mix", seed=0)
    batch = sampler.sample_batch(batch_size=6, n_rows=128, max_features=12)
    assert isinstance(batch, PriorBatch)
    assert batch.X.shape[:2] == (6, 128)
    assert batch.X.shape[2] == int(batch.d.max()), "X is padded to the batch's widest table by default"
    assert len(batch.kinds) == 6 and set(batch.kinds) <= {MLP_SCM, TREE_SCM}
    assert_valid_classification_batch(batch)
    # Standardized features: per-column mean ~0 over the table.
    for i in range(6):
        assert batch.X[i, :, : int(batch.d[i])].mean(0).abs().max() < 0.5


def test_every_class_also_in_test_part_when_room():
    batch = PriorSampler("scm_only", seed=3).sample_batch(batch_size=8, n_rows=200, max_features=5, n_train=100)
    for i in range(8):
        k = int(batch.n_classes[i])
        assert set(batch.y[i, 100:].long().tolist()) == set(range(k))


def test_fixed_n_features_n_train_and_pad_to_max_features():
    config = get_prior_config("tabicl_mix", pad_to_max_features=True)
    batch = PriorSampler(config, seed=1).sample_batch(
        batch_size=4, n_rows=64, n_features=7, max_features=10, n_train=40
    )
    assert batch.X.shape == (4, 64, 10)
    assert batch.n_train == 40
    assert (batch.d <= 7).all() and (batch.d >= 1).all()
    assert (batch.X[:, :, 7:] == 0).all()
    assert_valid_classification_batch(batch)


def test_same_seed_reproduces_and_other_seed_differs():
    torch.manual_seed(123)  # the prior must not depend on the global RNG state
    first = PriorSampler("tabicl_mix", seed=7).sample_batch(4, 96, max_features=8)
    torch.manual_seed(999)
    second = PriorSampler("tabicl_mix", seed=7).sample_batch(4, 96, max_features=8)
    other = PriorSampler("tabicl_mix", seed=8).sample_batch(4, 96, max_features=8)
    assert torch.equal(first.X, second.X) and torch.equal(first.y, second.y)
    assert torch.equal(first.d, second.d) and first.n_train == second.n_train and first.kinds == second.kinds
    assert first.X.shape != other.X.shape or not torch.equal(first.X, other.X)


def test_feature_class_and_kind_distributions():
    sampler = PriorSampler("tabicl_mix", seed=11)
    d_values, class_counts, kinds = [], [], []
    for _ in range(12):
        batch = sampler.sample_batch(batch_size=8, n_rows=64, max_features=15)
        d_values += batch.d.tolist()
        class_counts += batch.n_classes.tolist()
        kinds += batch.kinds
    assert min(d_values) >= 1 and max(d_values) <= 15
    assert max(d_values) >= 10, "wide tables must be drawn too"
    assert min(class_counts) >= 2 and max(class_counts) <= 10
    share_binary = sum(k == 2 for k in class_counts) / len(class_counts)
    # P(2 classes) = 0.5 + 0.5 / 9 requested; empty bins only lower counts, so binary is the mode, not everything.
    assert 0.35 < share_binary < 0.9
    assert max(class_counts) >= 5
    share_tree = kinds.count(TREE_SCM) / len(kinds)
    assert 0.15 < share_tree < 0.45  # p_tree = 0.3 over 96 tables


def test_class_count_never_exceeds_max_classes_or_train_rows():
    config = get_prior_config("scm_only", max_classes=4, multiclass_prob=1.0)
    batch = PriorSampler(config, seed=2).sample_batch(batch_size=8, n_rows=40, max_features=4)
    assert (batch.n_classes <= 4).all()
    assert_valid_classification_batch(batch, max_classes=4)
    tiny = PriorSampler(config, seed=2).sample_batch(batch_size=4, n_rows=6, max_features=3, n_train=3)
    assert (tiny.n_classes <= 3).all()
    assert_valid_classification_batch(tiny, max_classes=4)


def test_tree_prior_runs():
    batch = PriorSampler("tree_only", seed=5).sample_batch(batch_size=4, n_rows=600, max_features=6)
    assert batch.kinds == (TREE_SCM,) * 4
    assert_valid_classification_batch(batch)


def test_regression_mode_gives_finite_standardized_targets():
    batch = PriorSampler("tabicl_mix_regression", seed=4).sample_batch(batch_size=6, n_rows=128, max_features=8)
    assert batch.y.dtype == torch.float32 and torch.isfinite(batch.y).all()
    assert (batch.n_classes == 0).all()
    assert (batch.y.std(dim=1) > 0.5).all() and (batch.y.std(dim=1) < 1.5).all()
    assert batch.y.mean(dim=1).abs().max() < 0.5
    assert not torch.equal(batch.y, batch.y.round()), "regression targets are continuous"


def test_skewed_regression_prior_gives_long_right_tails_and_counts():
    symmetric = torch.randn(400, generator=torch.Generator().manual_seed(0)).double()
    always = get_prior_config("tabicl_mix_regression_skewed", target_warp_prob=1.0, target_count_prob=0.0)
    warped = warp_regression_target(symmetric, PriorRandom(1), always)
    assert abs(float(warped.mean())) < 1e-6 and abs(float(warped.std()) - 1) < 0.01  # re-standardized
    assert float(warped.max()) > 2 * float(-warped.min())  # a long right tail
    assert torch.equal(torch.argsort(warped), torch.argsort(symmetric))  # monotone: the signal is kept
    counts = warp_regression_target(symmetric, PriorRandom(2), always.replace(target_count_prob=1.0))
    assert len(torch.unique(counts)) < 100  # Poisson counts: few distinct values
    # Off (every older config): the target and the random stream are untouched.
    off, rng = get_prior_config("tabicl_mix_regression_learnable"), PriorRandom(3)
    assert warp_regression_target(symmetric, rng, off) is symmetric and rng.uniform() == PriorRandom(3).uniform()
    # Over whole tables the skewed prior's targets are more right-skewed than the plain one's.
    def median_skew(name):
        y = PriorSampler(name, seed=5).sample_batch(batch_size=16, n_rows=128, max_features=4).y.double()
        z = (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True)
        return float((z**3).mean(1).median())

    assert median_skew("tabicl_mix_regression_skewed") > median_skew("tabicl_mix_regression_learnable") + 0.3
    with pytest.raises(ValueError, match="regression"):
        PriorConfig(target_warp_prob=0.5)  # a classification prior
    with pytest.raises(ValueError, match="target_warp_scale"):
        PriorConfig(task="regression", target_warp_scale=(1.0, 0.5))


def test_irrelevant_columns_are_shuffled_copies_unrelated_to_the_target():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 6, generator=generator).double()
    target = features[:, 0] + 0.1 * torch.randn(300, generator=generator).double()
    always = get_prior_config("tabicl_mix_learnable_irrelevant", irrelevant_feature_prob=1.0)
    for seed in range(20):
        replaced = replace_with_irrelevant_columns(features, PriorRandom(seed), always)
        changed = [j for j in range(6) if not torch.equal(replaced[:, j], features[:, j])]
        assert 1 <= len(changed) <= 5, "at least one column replaced, never all"
        for j in changed:
            # A row-shuffled copy of some column: that column's values, no relation to the target.
            column = replaced[:, j].sort().values
            assert any(torch.equal(column, features[:, k].sort().values) for k in range(6))
            assert abs(float(torch.corrcoef(torch.stack([replaced[:, j], target]))[0, 1])) < 0.25
    assert torch.equal(features[:, 0], features[:, 0].clone())  # the input is not modified
    # Off (every older config): the features and the random stream are untouched.
    off, rng = get_prior_config("tabicl_mix_learnable"), PriorRandom(3)
    assert replace_with_irrelevant_columns(features, rng, off) is features and rng.uniform() == PriorRandom(3).uniform()
    # Whole tables from the named prior stay valid (no constant column, every class in the train part).
    batch = PriorSampler("tabicl_mix_learnable_irrelevant", seed=7).sample_batch(batch_size=6, n_rows=128, max_features=8)
    assert_valid_classification_batch(batch)
    with pytest.raises(ValueError, match="irrelevant_feature_fraction"):
        PriorConfig(irrelevant_feature_fraction=(0.5, 1.0))
    with pytest.raises(ValueError, match="irrelevant_feature_prob"):
        PriorConfig(irrelevant_feature_prob=1.5)


def test_missing_values_only_when_enabled():
    assert PriorConfig().nan_prob == 0.0
    config = get_prior_config("scm_only", nan_prob=1.0, max_nan_fraction=0.5)
    batch = PriorSampler(config, seed=0).sample_batch(batch_size=4, n_rows=64, max_features=6)
    assert torch.isnan(batch.X).any()
    for i in range(4):
        assert not torch.isnan(batch.X[i, :, int(batch.d[i]) :]).any(), "padding stays zero"
    assert torch.isfinite(batch.y).all()


def test_bad_inputs_raise_value_error():
    sampler = PriorSampler("tabicl_mix", seed=0)
    with pytest.raises(ValueError):
        sampler.sample_batch(batch_size=0, n_rows=64)
    with pytest.raises(ValueError):
        sampler.sample_batch(batch_size=2, n_rows=2)
    with pytest.raises(ValueError):
        sampler.sample_batch(batch_size=2, n_rows=64, n_features=20, max_features=10)
    with pytest.raises(ValueError):
        sampler.sample_batch(batch_size=2, n_rows=64, n_train=64)
    with pytest.raises(ValueError):
        PriorSampler("no_such_prior")
    with pytest.raises(ValueError):
        PriorConfig(p_tree=1.5)
    with pytest.raises(ValueError):
        PriorConfig(task="ranking")
    with pytest.raises(ValueError):
        PriorIterableDataset(curriculum=(100, 10))


def test_named_configs():
    assert PRIOR_CONFIGS["tabicl_mix"].p_tree == 0.3
    assert PRIOR_CONFIGS["scm_only"].p_tree == 0.0 and PRIOR_CONFIGS["tree_only"].p_tree == 1.0
    assert get_prior_config("tabicl_mix", max_classes=5).max_classes == 5
    assert PRIOR_CONFIGS["tabicl_mix"].max_classes == 10, "overrides must not mutate the named config"
    assert PriorSampler("scm_only").sample_batch(2, 32, max_features=3).kinds == (MLP_SCM, MLP_SCM)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_each_activation_is_finite_and_shape_preserving(name):
    rng = PriorRandom(0)
    x = torch.randn(300, 7) * 50 + 3
    out = LayerActivation(name, rng)(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_random_fourier_function_grid_matches_exact_evaluation():
    rng = PriorRandom(1)
    x = torch.randn(400, 30)
    x[0, 0] = 9.0  # outside the grid radius: evaluated exactly
    for _ in range(3):
        function = RandomFourierFunction(rng)
        exact = function.evaluate_exactly(x.reshape(-1)).reshape(x.shape)
        assert (function(x) - exact).abs().max() < 1e-2 * max(float(exact.std()), 1e-3)


def test_clip_outliers_is_robust_to_a_huge_value():
    column = torch.cat([torch.randn(99, dtype=torch.float64), torch.tensor([1e6], dtype=torch.float64)])[:, None]
    clipped = clip_outliers(column, threshold=4.0)
    assert clipped.max() < 10.0
    assert torch.equal(clipped[:99], column[:99])


def test_split_order_brings_rare_classes_into_both_parts():
    labels = torch.tensor([0] * 10 + [1, 2, 2, 1])  # classes 1 and 2 only at the end (test part)
    order = order_rows_for_split(labels, n_train=8, rng=PriorRandom(0), classes_in_test=True)
    assert order is not None and sorted(order.tolist()) == list(range(14))
    reordered = labels[order]
    assert set(reordered[:8].tolist()) == {0, 1, 2} and set(reordered[8:].tolist()) == {0, 1, 2}
    assert order_rows_for_split(torch.tensor([0, 0, 0, 1]), 2, PriorRandom(0), classes_in_test=True) is None


def test_feature_caps_for_long_tables():
    assert max_features_for_rows(1024, 100) == 100
    assert max_features_for_rows(15_000, 100) == 80
    assert max_features_for_rows(59_000, 100) == 20
    assert max_features_for_rows(100_000, 100) == 10
    assert max_features_for_rows(1024, 30) == 30


def test_iterable_dataset_curricula_in_main_process():
    steps = []

    def curriculum(step: int) -> int:
        steps.append(step)
        return 32 + step

    dataset = PriorIterableDataset("scm_only", batch_size=2, curriculum=curriculum, max_features=4, n_batches=3)
    batches = list(dataset)
    assert steps == [0, 1, 2]
    assert [batch.n_rows for batch in batches] == [32, 33, 34]
    log_uniform = PriorIterableDataset("scm_only", batch_size=2, curriculum=(30, 300), max_features=4, n_batches=6)
    rows = [batch.n_rows for batch in log_uniform]
    assert all(30 <= n <= 300 for n in rows) and len(set(rows)) > 1
    assert all(b.d.max() <= 4 for b in log_uniform)


def test_dataloader_with_two_workers_yields_distinct_batches():
    dataset = PriorIterableDataset("tabicl_mix", batch_size=2, curriculum=48, seed=0, max_features=5, n_batches=4)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        assert isinstance(batch, PriorBatch)
        assert_valid_classification_batch(batch)
    signatures = {(batch.X.shape, round(float(batch.X.sum()), 4), batch.n_train) for batch in batches}
    assert len(signatures) == 4, "workers must not replay each other's batches"


def test_collate_concatenates_compatible_batches():
    sampler = PriorSampler("scm_only", seed=0)
    first = sampler.sample_batch(2, 32, max_features=3, n_train=20)
    second = sampler.sample_batch(3, 32, max_features=6, n_train=20)
    merged = collate([first, second])
    assert merged.X.shape == (5, 32, max(first.X.shape[2], second.X.shape[2]))
    assert torch.equal(merged.d, torch.cat([first.d, second.d]))
    assert collate(first) is first
    with pytest.raises(ValueError):
        collate([first, sampler.sample_batch(2, 40, max_features=3)])


def test_batch_to_device_round_trip():
    batch = PriorSampler("scm_only", seed=0).sample_batch(2, 16, max_features=3)
    moved = batch.to("cpu")
    assert torch.equal(moved.X, batch.X) and moved.n_train == batch.n_train and moved.kinds == batch.kinds
    assert math.isclose(float(moved.y.sum()), float(batch.y.sum()))
