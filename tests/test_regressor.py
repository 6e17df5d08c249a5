"""Tests of ``TFMRegressor``, the regression heads, target scaling, and model-name / checkpoint checks.

Tiny random networks of all three architectures (``make_tiny_network(arch, "regression")``) check behaviour (shapes,
scale, determinism, pickling); stand-in "oracle" networks that follow the network protocol and predict the scaled
target of the nearest training row check that target scaling, its inverse and member averaging are exactly right.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from autogluon_tfm import TFMClassifier, TFMRegressor
from autogluon_tfm.checkpoints import (
    MODEL_ARCHITECTURES,
    CheckpointMismatchError,
    make_tiny_network,
    model_architecture,
    resolve_checkpoint,
    save_network,
)
from autogluon_tfm.checkpoints import io as ckpt_io
from autogluon_tfm.inference.regression_heads import (
    BarDistributionHead,
    QuantileHead,
    ScalarHead,
    TargetScaler,
    regression_head_for,
)

torch.set_num_threads(1)

MODELS = {"tabicl": "tabicl", "tabpfnv2": "tabpfn_v2", "mitra": "mitra"}  # estimator name -> architecture


# ---------------------------------------------------------------------------------------------------- stand-ins
class _NearestRowOracle(torch.nn.Module):
    """Base of the stand-ins: finds each test row's nearest training row (Euclidean) and records what it was fed."""

    arch = "oracle"
    max_classes = 0

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter, so .to(device) / pickling behave as usual
        self.n_forward_calls = 0
        self.y_train_seen: list[torch.Tensor] = []

    def nearest_target(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        self.n_forward_calls += 1
        self.y_train_seen.append(y_train.detach().clone())
        n_train = y_train.shape[1]
        nearest = torch.cdist(X[:, n_train:].double(), X[:, :n_train].double()).argmin(dim=-1)
        return torch.gather(y_train.double(), 1, nearest)  # (B, n_test)


class QuantileOracle(_NearestRowOracle):
    """TabICL-like: quantile ``k`` = nearest row's scaled target + ``(k - (K-1)/2) * spread``, where ``spread`` =
    ``|first feature| + 0.1`` of the test row in the member's preprocessing and feature order, so members differ."""

    def __init__(self, num_quantiles: int = 5):
        super().__init__()
        self.num_quantiles = num_quantiles
        self.config = {"num_quantiles": num_quantiles}

    def forward(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        target = self.nearest_target(X, y_train)
        spread = X[:, y_train.shape[1] :, 0].double().abs() + 0.1
        offsets = torch.arange(self.num_quantiles, dtype=torch.float64) - (self.num_quantiles - 1) / 2
        # Reversed order: the estimator must sort crossing quantiles itself.
        return (target[..., None] + spread[..., None] * offsets).flip(-1).float()


class BarOracle(_NearestRowOracle):
    """TabPFN-like: all probability in the bucket of ``borders`` that holds the nearest row's scaled target."""

    def __init__(self, borders: torch.Tensor):
        super().__init__()
        self.register_buffer("borders", borders)
        self.config = {"num_buckets": len(borders) - 1}

    def forward(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        target = self.nearest_target(X, y_train)
        bucket = (torch.searchsorted(self.borders.double(), target.contiguous(), right=True) - 1).clamp(
            0, len(self.borders) - 2
        )
        return 60.0 * torch.nn.functional.one_hot(bucket, len(self.borders) - 1).float()


class ScalarOracle(_NearestRowOracle):
    """Mitra-like: one value, the nearest row's target in min-max scaled space."""

    regression_target_scaling = "minmax"
    n_out = 1

    def __init__(self):
        super().__init__()
        self.config = {"dim_output": 1, "task": "regression"}

    def forward(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        return self.nearest_target(X, y_train)[..., None].float()


# ----------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny_networks() -> dict[str, torch.nn.Module]:
    return {model: make_tiny_network(arch, "regression", seed=0) for model, arch in MODELS.items()}


def regression_frame(n_rows: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=n_rows)
    colour = rng.choice(["red", "green", "blue"], size=n_rows).astype(object)
    colour[::6] = None
    frame = pd.DataFrame(
        {
            "numeric": numeric,
            "count": rng.integers(0, 6, size=n_rows),
            "colour": pd.Categorical(colour),
            "flag": rng.random(n_rows) > 0.5,
            "skewed": rng.exponential(size=n_rows) * 100,
        }
    )
    frame.loc[::7, "numeric"] = np.nan
    target = 2.0 * np.nan_to_num(numeric) + frame["count"] + (colour == "red") + 0.1 * rng.normal(size=n_rows)
    return frame, pd.Series(target, name="target")


def make_regressor(model: str, network: torch.nn.Module, **params) -> TFMRegressor:
    return TFMRegressor(model=model, checkpoint=network, n_estimators=params.pop("n_estimators", 4), device="cpu",
                        **params)


def distinct_rows(n_rows: int = 30, n_features: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_rows, n_features))


# ------------------------------------------------------------------------------------- tiny networks, all models
@pytest.mark.parametrize("model", list(MODELS))
def test_fit_predict_shapes_scale_and_affine_equivariance(tiny_networks, model):
    X, y = regression_frame()
    X_train, X_test, y_train = X.iloc[:30], X.iloc[30:], y.iloc[:30]
    reg = make_regressor(model, tiny_networks[model]).fit(X_train, y_train)
    pred = reg.predict(X_test)
    assert pred.shape == (len(X_test),) and pred.dtype == np.float64 and np.isfinite(pred).all()
    assert reg.n_features_in_ == 5 and list(reg.feature_names_in_) == list(X.columns)

    # On the target's scale: a target x1000 and shifted by 1e6 gives predictions in its range, and exactly the
    # same affine map of the predictions (the network only ever sees the scaled target).
    big = make_regressor(model, tiny_networks[model]).fit(X_train, y_train * 1000 + 1e6)
    pred_big = big.predict(X_test)
    span = 1000 * (y_train.max() - y_train.min())
    assert (pred_big > 1e6 + 1000 * y_train.min() - span).all() and (pred_big < 1e6 + 1000 * y_train.max() + span).all()
    np.testing.assert_allclose(pred_big, pred * 1000 + 1e6, rtol=0, atol=1e-6 * span)


def test_many_level_categoricals_are_ranked_by_target_by_default(tiny_networks):
    rng = np.random.default_rng(1)
    level = rng.permutation(np.repeat(np.arange(15), 6))  # 15 ZIP codes, 6 rows each
    effect = rng.permutation(15).astype(float)  # the sorted names z00 < z01 < ... say nothing about the target
    X = pd.DataFrame({"zip": [f"z{v:02d}" for v in level], "x": rng.normal(size=len(level))})
    y = effect[level] + 0.01 * rng.normal(size=len(level))
    reg = make_regressor("tabicl", tiny_networks["tabicl"]).fit(X, y)
    codes = reg.encoder_.transform(X)[:, 0]
    mean_by_code = pd.Series(y).groupby(codes).mean()
    assert list(mean_by_code.index) == list(range(15)) and mean_by_code.is_monotonic_increasing
    lexical = make_regressor("tabicl", tiny_networks["tabicl"], categorical_order="lexical").fit(X, y)
    np.testing.assert_array_equal(lexical.encoder_.transform(X)[:, 0], level)
    assert not np.allclose(reg.predict(X), lexical.predict(X))

    # An estimator pickled before categorical_order existed encoded in sorted order: it unpickles as "lexical".
    del lexical.__dict__["categorical_order"]
    old = pickle.loads(pickle.dumps(lexical))
    assert old.get_params()["categorical_order"] == "lexical"
    np.testing.assert_array_equal(old.predict(X), lexical.predict(X))


@pytest.mark.parametrize("model", list(MODELS))
def test_deterministic_and_single_row_equals_batch(tiny_networks, model):
    X, y = regression_frame()
    reg = make_regressor(model, tiny_networks[model]).fit(X.iloc[:30], y.iloc[:30])
    batch = reg.predict(X.iloc[30:])
    again = make_regressor(model, tiny_networks[model]).fit(X.iloc[:30], y.iloc[:30]).predict(X.iloc[30:])
    np.testing.assert_array_equal(batch, again)
    single = np.array([reg.predict(X.iloc[[i]])[0] for i in range(30, 40)])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["tabicl", "tabpfnv2"])
def test_quantiles_are_monotone_and_bracket_the_mean(tiny_networks, model):
    X, y = regression_frame()
    reg = make_regressor(model, tiny_networks[model]).fit(X.iloc[:30], y.iloc[:30])
    levels = [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]
    quantiles = reg.predict_quantiles(X.iloc[30:], levels)
    assert quantiles.shape == (10, len(levels)) and np.isfinite(quantiles).all()
    assert (np.diff(quantiles, axis=1) >= 0).all()
    mean = reg.predict(X.iloc[30:])
    q10, median, q90 = quantiles[:, 1], quantiles[:, 3], quantiles[:, 5]
    assert ((q10 <= mean) & (mean <= q90)).all()
    assert (np.abs(median - mean) <= 0.5 * (q90 - q10)).all()
    # Default levels (0.1, 0.5, 0.9) and a single level.
    np.testing.assert_allclose(reg.predict_quantiles(X.iloc[30:]), quantiles[:, [1, 3, 5]], rtol=1e-12)
    assert reg.predict_quantiles(X.iloc[30:], [0.5]).shape == (10, 1)


def test_mitra_has_no_quantiles(tiny_networks):
    X, y = regression_frame()
    reg = make_regressor("mitra", tiny_networks["mitra"]).fit(X.iloc[:30], y.iloc[:30])
    with pytest.raises(ValueError, match="scalar regression head"):
        reg.predict_quantiles(X.iloc[30:])
    assert isinstance(reg.head_, ScalarHead) and reg.target_scaler_.method == "minmax"


@pytest.mark.parametrize("model", list(MODELS))
def test_pickle_round_trip_predicts_identically(tiny_networks, model):
    X, y = regression_frame()
    reg = make_regressor(model, copy.deepcopy(tiny_networks[model])).fit(X.iloc[:30], y.iloc[:30])
    before = reg.predict(X.iloc[30:])
    restored = pickle.loads(pickle.dumps(reg))
    assert all(p.device.type == "cpu" for p in restored.network_.parameters())
    np.testing.assert_array_equal(restored.predict(X.iloc[30:]), before)
    np.testing.assert_array_equal(reg.predict(X.iloc[30:]), before)
    if model != "mitra":
        np.testing.assert_array_equal(restored.predict_quantiles(X.iloc[30:]), reg.predict_quantiles(X.iloc[30:]))


@pytest.mark.parametrize("model", list(MODELS))
def test_saved_checkpoint_path_loads_and_predicts_like_the_module(tmp_path, tiny_networks, model):
    X, y = regression_frame()
    path = save_network(tiny_networks[model], tmp_path / f"{model}-reg.safetensors")
    from_path = TFMRegressor(model=model, checkpoint=str(path), n_estimators=4, device="cpu").fit(X, y)
    from_module = make_regressor(model, tiny_networks[model]).fit(X, y)
    np.testing.assert_allclose(from_path.predict(X), from_module.predict(X), rtol=0, atol=1e-10)
    assert from_path.checkpoint_path_ == str(path)


def test_inputs_are_not_mutated(tiny_networks):
    X, y = regression_frame()
    X_before, y_before = X.copy(), y.copy()
    reg = make_regressor("tabicl", tiny_networks["tabicl"]).fit(X, y)
    reg.predict(X)
    reg.predict_quantiles(X)
    pd.testing.assert_frame_equal(X, X_before)
    pd.testing.assert_series_equal(y, y_before)


# ------------------------------------------------------------------------------------------------------ oracles
def test_quantile_oracle_exact_scaling_and_member_averaging():
    """Predicting the training rows: nearest row = the row itself in every member's space, so the expected output
    of each member is known exactly; the estimator must average members and undo the z-scoring exactly."""
    X = distinct_rows()
    y = np.random.default_rng(1).normal(size=len(X)) * 1000 + 5e4
    oracle = QuantileOracle(num_quantiles=5)
    reg = make_regressor("tabicl", oracle, n_estimators=6).fit(X, y)

    seen = oracle.y_train_seen  # nothing yet: fit runs no forward
    assert oracle.n_forward_calls == 0 and not seen
    mean = reg.predict(X)
    y_fed = oracle.y_train_seen[0][0].double().numpy()
    np.testing.assert_allclose(y_fed, (y - y.mean()) / y.std(), atol=1e-6)  # z-score, population std
    np.testing.assert_allclose(mean, y, rtol=0, atol=1e-6 * y.std() * 10)  # symmetric quantiles: mean = target

    # Quantiles at the head's levels = the members' average quantiles, mapped back with the same scale.
    X_encoded = reg.encoder_.transform(pd.DataFrame(X))
    spreads = [
        np.abs(reg.preprocessor_.transform(X_encoded, m.norm_method)[:, m.feature_order[0]]).astype(np.float32) + 0.1
        for m in reg.members_
    ]
    assert len(reg.members_) == 6 and len({s.tobytes() for s in spreads}) > 1  # members really differ
    mean_spread = np.mean(spreads, axis=0)
    levels = np.arange(1, 6) / 6
    quantiles = reg.predict_quantiles(X, levels)
    expected = y[:, None] + y.std() * mean_spread[:, None] * (np.arange(5) - 2)[None, :]
    np.testing.assert_allclose(quantiles, expected, rtol=0, atol=1e-4 * y.std())
    # Between two levels: linear interpolation of the averaged quantiles.
    middle = reg.predict_quantiles(X, [(levels[1] + levels[2]) / 2])[:, 0]
    np.testing.assert_allclose(middle, (expected[:, 1] + expected[:, 2]) / 2, rtol=0, atol=1e-4 * y.std())


def test_bar_oracle_mean_and_quantiles_land_in_the_right_bucket():
    borders = torch.linspace(-4, 4, 801)  # buckets of width 0.01 in z-space
    X = distinct_rows(seed=2)
    y = np.random.default_rng(3).normal(size=len(X)) * 250 - 3e3
    reg = make_regressor("tabpfnv2", BarOracle(borders)).fit(X, y)
    assert isinstance(reg.head_, BarDistributionHead)
    half_bucket = 0.005 * y.std()
    np.testing.assert_allclose(reg.predict(X), y, rtol=0, atol=half_bucket + 1e-9)
    quantiles = reg.predict_quantiles(X, [0.01, 0.5, 0.99])
    assert (np.abs(quantiles - y[:, None]) <= 2 * half_bucket + 1e-9).all()


def test_scalar_oracle_minmax_scaling_is_exact():
    X = distinct_rows(seed=4)
    y = np.random.default_rng(5).uniform(-7, 3, size=len(X)) * 1e4
    oracle = ScalarOracle()
    reg = make_regressor("mitra", oracle).fit(X, y)
    pred = reg.predict(X)
    y_fed = oracle.y_train_seen[0][0].double().numpy()
    np.testing.assert_allclose(y_fed, (y - y.min()) / (y.max() - y.min()), atol=1e-7)
    assert y_fed.min() == 0.0 and y_fed.max() == 1.0
    np.testing.assert_allclose(pred, y, rtol=0, atol=1e-6 * (y.max() - y.min()))
    with pytest.raises(ValueError, match="scalar regression head"):
        reg.predict_quantiles(X)


class OvershootingScalarOracle(ScalarOracle):
    """Mitra-like, but pushes every prediction 0.5 further from the middle of the scaled range ([0, 1])."""

    def forward(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        scaled = self.nearest_target(X, y_train)
        return (scaled + torch.sign(scaled - 0.5) * 0.5)[..., None].float()


def test_minmax_point_predictions_are_clipped_to_the_training_range():
    X = distinct_rows(seed=6)
    y = np.random.default_rng(7).uniform(2, 9, size=len(X))
    pred = make_regressor("mitra", OvershootingScalarOracle()).fit(X, y).predict(X)
    assert pred.min() >= y.min() and pred.max() <= y.max()
    assert np.isclose(pred, y.min()).any() and np.isclose(pred, y.max()).any()  # overshoots land on the bounds


def test_batch_size_and_test_chunking_do_not_change_results():
    X = distinct_rows(seed=6)
    y = np.random.default_rng(7).normal(size=len(X))
    reference = make_regressor("tabicl", QuantileOracle(), n_estimators=6, batch_size=8).fit(X, y)
    small_batches = make_regressor("tabicl", QuantileOracle(), n_estimators=6, batch_size=1).fit(X, y)
    small_batches.max_test_rows_per_forward = 7
    np.testing.assert_allclose(small_batches.predict(X), reference.predict(X), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        small_batches.predict_quantiles(X), reference.predict_quantiles(X), rtol=0, atol=1e-12
    )


# --------------------------------------------------------------------------------------------- degenerate targets
@pytest.mark.parametrize("model", list(MODELS))
def test_constant_target_predicts_the_constant_without_network_calls(tiny_networks, model):
    X, _ = regression_frame()
    oracle = QuantileOracle()
    reg = make_regressor("tabicl", oracle).fit(X, np.full(len(X), 3.25))
    np.testing.assert_array_equal(reg.predict(X), np.full(len(X), 3.25))
    np.testing.assert_array_equal(reg.predict_quantiles(X, [0.1, 0.9]), np.full((len(X), 2), 3.25))
    assert oracle.n_forward_calls == 0 and reg.constant_target_ == 3.25
    # Same with each real tiny network (exactly the constant, even on the far scale).
    real = make_regressor(model, tiny_networks[model]).fit(X, np.full(len(X), -1e9))
    np.testing.assert_array_equal(real.predict(X.iloc[:3]), [-1e9] * 3)


@pytest.mark.parametrize("model", list(MODELS))
def test_single_training_row_predicts_its_value(tiny_networks, model):
    X, _ = regression_frame()
    reg = make_regressor(model, tiny_networks[model]).fit(X.iloc[:1], [42.5])
    np.testing.assert_array_equal(reg.predict(X), np.full(len(X), 42.5))
    assert reg.predict(X.iloc[:0]).shape == (0,)


def test_empty_test_frame(tiny_networks):
    X, y = regression_frame()
    reg = make_regressor("tabpfnv2", tiny_networks["tabpfnv2"]).fit(X, y)
    assert reg.predict(X.iloc[:0]).shape == (0,)
    assert reg.predict_quantiles(X.iloc[:0], [0.2, 0.8]).shape == (0, 2)


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (pd.DataFrame({"a": []}), [], "0 rows"),
        (pd.DataFrame(index=range(4)), [0.0, 1.0, 2.0, 3.0], "0 columns"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [0.0, 1.0], "different lengths"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [0.0, np.nan, 1.0], "NaN/inf"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [0.0, np.inf, 1.0], "NaN/inf"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [-np.inf, 1.0, 2.0], "NaN/inf"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), pd.Series([1.0, None, 2.0], dtype="Float64"), "NaN/inf"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), ["cat", "dog", "cat"], "look like class labels"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), np.array(["1", "2", "3"]), "look like class labels"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), pd.Series(["a", "b", "a"], dtype="category"), "class labels"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [True, False, True], "class labels"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), np.array([1.0, "x", 2.0], dtype=object), "class labels"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), np.zeros((3, 2)), "1-D"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), None, "y is None"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [1e308, -1e308, 0.0], "too large"),
        (np.arange(4.0), [0.0, 1.0, 2.0, 3.0], "2-D"),
        (pd.Series([1.0, 2.0]), [0.0, 1.0], "Series"),
    ],
)
def test_bad_training_input_raises_and_mutates_nothing(X, y, message):
    X_before = copy.deepcopy(X)
    y_before = copy.deepcopy(y)
    with pytest.raises(ValueError, match=message):
        make_regressor("tabicl", QuantileOracle()).fit(X, y)
    if isinstance(X, pd.DataFrame):
        pd.testing.assert_frame_equal(X, X_before)
    if isinstance(y, pd.Series):
        pd.testing.assert_series_equal(y, y_before)
    elif isinstance(y, np.ndarray):
        np.testing.assert_array_equal(y, y_before)


def test_numeric_object_and_nullable_targets_are_accepted():
    X = distinct_rows(n_rows=4)
    for y in (np.array([1, 2.5, 3, 4], dtype=object), pd.Series([1, 2, 3, 4], dtype="Int64"), [1, 2, 3, 4]):
        reg = make_regressor("tabicl", QuantileOracle()).fit(X, y)
        np.testing.assert_allclose(reg.predict(X), np.asarray(y, dtype=float), atol=1e-5)


def test_bad_prediction_input_raises(tiny_networks):
    X, y = regression_frame()
    with pytest.raises(ValueError, match="not fitted"):
        make_regressor("tabicl", tiny_networks["tabicl"]).predict(X)
    reg = make_regressor("tabicl", tiny_networks["tabicl"]).fit(X, y)
    with pytest.raises(ValueError, match=r"missing columns \['flag'\]"):
        reg.predict(X.drop(columns=["flag"]))
    with pytest.raises(ValueError, match=r"unexpected columns \['surprise'\]"):
        reg.predict(X.assign(surprise=1))
    with pytest.raises(ValueError, match="4 columns.*fitted with 5"):
        reg.predict(X.to_numpy()[:, :4])
    np.testing.assert_allclose(reg.predict(X[list(reversed(X.columns))]), reg.predict(X), atol=1e-12)
    for levels in ([0.0, 0.5], [0.5, 1.0], [], [[0.1, 0.2]], [1.5]):
        with pytest.raises(ValueError, match="quantile"):
            reg.predict_quantiles(X, levels)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_estimators": 0}, "n_estimators"),
        ({"batch_size": 0}, "batch_size"),
        ({"norm_methods": ("none", "bogus")}, "bogus"),
        ({"feat_shuffle": "sideways"}, "sideways"),
        ({"categorical_order": "alphabetical"}, "alphabetical"),
        ({"precision": "int8"}, "int8"),
        ({"outlier_threshold": 0}, "outlier_threshold"),
        ({"model": "xgboost"}, "Unknown model"),
    ],
)
def test_bad_parameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        make_regressor(params.pop("model", "tabicl"), QuantileOracle(), **params).fit(distinct_rows(), np.arange(30.0))


# --------------------------------------------------------------------------------- model names and checkpoints
def test_model_names_map_to_architectures():
    assert MODEL_ARCHITECTURES == {"tabicl": "tabicl", "tabpfnv2": "tabpfn_v2", "mitra": "mitra"}
    assert model_architecture("TabPFNv2") == "tabpfn_v2" and model_architecture("tabpfn_v2") == "tabpfn_v2"
    with pytest.raises(ValueError, match="Unknown model 'catboost'"):
        model_architecture("catboost")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No official file anywhere: empty HF and tabpfn caches."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("TABPFN_MODEL_CACHE_DIR", str(tmp_path / "tabpfn-empty"))
    monkeypatch.setattr(ckpt_io, "find_cached_tabpfn_v2_file", lambda filename: None)
    return tmp_path


@pytest.mark.parametrize("model", ["tabicl", "tabpfnv2", "mitra"])
def test_default_without_weights_says_to_pass_a_checkpoint(empty_caches, model, monkeypatch):
    # As on an install whose shipped weights for this model are missing.
    monkeypatch.delitem(ckpt_io.SHIPPED_DEFAULTS, (MODELS[model], "regression"), raising=False)
    with pytest.raises(ValueError, match=f"No shipped weights for {model} regression yet.*checkpoint=<path"):
        resolve_checkpoint(model, "regression", "default")
    with pytest.raises(ValueError, match=f"No shipped weights for {model} regression"):
        TFMRegressor(model=model).fit(distinct_rows(), np.arange(30.0))


def test_default_finds_official_files_in_local_caches(empty_caches, monkeypatch):
    tabpfn_file = empty_caches / "tabpfn-v2-regressor.ckpt"
    tabpfn_file.write_bytes(b"not loaded by resolve_checkpoint")
    monkeypatch.setattr(
        ckpt_io, "find_cached_tabpfn_v2_file", lambda name: tabpfn_file if name == tabpfn_file.name else None
    )
    assert resolve_checkpoint("tabpfnv2", "regression") == str(tabpfn_file)

    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = empty_caches / "hf-empty" / "models--autogluon--mitra-regressor" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(revision)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_text("{}")
    assert resolve_checkpoint("mitra", "regression") == str(snapshot)


def test_network_must_match_model_and_task(tmp_path, tiny_networks):
    X, y = distinct_rows(), np.arange(30.0)
    clf_path = save_network(make_tiny_network("tabicl", "classification"), tmp_path / "clf.safetensors")
    with pytest.raises(CheckpointMismatchError, match="classification network.*not a regressor"):
        TFMRegressor(checkpoint=str(clf_path), device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="regression network.*not a classifier"):
        TFMClassifier(checkpoint=tiny_networks["tabicl"], device="cpu").fit(X, np.arange(30) % 2)
    with pytest.raises(CheckpointMismatchError, match="'tabicl' network, but model='mitra'"):
        TFMRegressor(model="mitra", checkpoint=tiny_networks["tabicl"]).fit(X, y)
    with pytest.raises(CheckpointMismatchError, match="'tabpfnv2' network, but model='tabicl'"):
        TFMRegressor(model="tabicl", checkpoint=tiny_networks["tabpfnv2"]).fit(X, y)


# ------------------------------------------------------------------------------------------------------- heads
def test_quantile_head_interpolation_and_tails():
    head = QuantileHead(3)  # levels 0.25, 0.5, 0.75
    prepared = head.prepare(np.array([[3.0, 1.0, 2.0]]))
    np.testing.assert_array_equal(prepared, [[1.0, 2.0, 3.0]])
    assert head.mean(prepared)[0] == 2.0
    levels = np.array([0.001, 0.1, 0.25, 0.375, 0.5, 0.75, 0.9, 0.999])
    q = head.quantiles(prepared, levels)[0]
    np.testing.assert_allclose(q[[2, 3, 4, 5]], [1.0, 1.5, 2.0, 3.0])
    assert (np.diff(q) > 0).all() and q[0] < 0 and q[-1] > 4  # unbounded tails, continuous at the end levels
    near = head.quantiles(prepared, np.array([0.25 - 1e-9, 0.75 + 1e-9]))[0]
    np.testing.assert_allclose(near, [1.0, 3.0], atol=1e-7)
    assert QuantileHead(1).quantiles(np.array([[5.0]]), levels).tolist() == [[5.0] * len(levels)]


def test_bar_head_matches_official_tabpfn_bar_distribution():
    bar_distribution = pytest.importorskip("tabpfn.architectures.shared.bar_distribution")
    borders = torch.sort(torch.randn(51, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).values
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    official = bar_distribution.FullSupportBarDistribution(borders)
    head = BarDistributionHead(borders)
    probs = head.prepare(logits.numpy())
    # The official half-normal tail scale is computed in float32; everything else in float64.
    np.testing.assert_allclose(head.mean(probs), official.mean(logits).numpy(), rtol=0, atol=1e-6)
    for level in (0.01, 0.3, 0.5, 0.97):
        ours = head.quantiles(probs, np.array([level]))[:, 0]
        np.testing.assert_allclose(ours, official.icdf(logits, level).numpy(), rtol=1e-9, atol=1e-9)


def test_bar_head_uniform_and_validation():
    head = BarDistributionHead(np.linspace(0, 1, 11))
    uniform = np.full((1, 10), 0.1)
    np.testing.assert_allclose(head.quantiles(uniform, np.array([0.05, 0.5, 0.93])), [[0.05, 0.5, 0.93]])
    assert head.mean(uniform)[0] == pytest.approx(0.5)  # symmetric tails
    with pytest.raises(ValueError, match="increasing"):
        BarDistributionHead(np.array([0.0, 1.0, 1.0]))


def test_head_selection_and_target_scaler(tiny_networks):
    assert isinstance(regression_head_for(tiny_networks["tabicl"]), QuantileHead)
    assert isinstance(regression_head_for(tiny_networks["tabpfnv2"]), BarDistributionHead)
    assert isinstance(regression_head_for(tiny_networks["mitra"]), ScalarHead)
    with pytest.raises(ValueError, match="Cannot tell"):
        regression_head_for(torch.nn.Linear(2, 3))
    y = np.array([1.0, 3.0, 8.0])
    for method in ("zscore", "minmax"):
        scaler = TargetScaler(method).fit(y)
        np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(y)), y)
    np.testing.assert_allclose(TargetScaler("minmax").fit(y).transform(y), [0.0, 2 / 7, 1.0])
    with pytest.raises(ValueError, match="Unknown target scaling"):
        TargetScaler("log")


def test_mitra_members_collapse_to_class_relabellings_because_the_network_ignores_column_order_and_scale() -> None:
    """Mitra ranks each column's values and has no column positions: reordered columns or a monotone transform of
    them give the same output (up to the quantile interpolation), so the estimators keep one member per class relabelling (a regressor: one)."""
    from autogluon_tfm.checkpoints import make_tiny_network

    network = make_tiny_network("mitra", "regression", seed=0)
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.normal(size=(1, 50, 4)), dtype=torch.float32)
    y = torch.as_tensor(rng.uniform(size=(1, 40)), dtype=torch.float32)
    with torch.no_grad():
        base = network(X, y)
        reordered = network(X[..., [2, 0, 3, 1]], y)
        rescaled = network(torch.sinh(X * 3) + 5, y)  # strictly increasing map of every column
    torch.testing.assert_close(reordered, base, atol=1e-5, rtol=1e-4)
    # Nearly: a test value between two training values is ranked by interpolated quantiles, which a non-linear map
    # moves a little.
    assert (rescaled - base).abs().max() < 0.01 * base.std()

    frame, target = regression_frame()
    reg = TFMRegressor(model="mitra", checkpoint=network, n_estimators=8, device="cpu").fit(frame, target)
    assert len(reg.members_) == 1 and reg.members_[0].norm_method == "none"
    classifier_net = make_tiny_network("mitra", "classification", seed=0)
    labels = (target > np.median(target)).map({True: "high", False: "low"})
    clf = TFMClassifier(model="mitra", checkpoint=classifier_net, n_estimators=8, device="cpu").fit(frame, labels)
    assert sorted(tuple(m.class_pattern) for m in clf.members_) == [(0, 1), (1, 0)]  # both class shifts, once
    tabicl = TFMRegressor(model="tabicl", checkpoint=make_tiny_network("tabicl", "regression", seed=0),
                          n_estimators=8, device="cpu").fit(frame, target)
    assert len(tabicl.members_) == 8  # other networks keep every member
