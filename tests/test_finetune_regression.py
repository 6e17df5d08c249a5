"""Regression finetuning (``RegressionFinetuneData`` and ``TFMRegressor(fine_tune=...)``) of the three networks.

Tiny randomly initialised networks (``make_tiny_network(arch, "regression")``) keep every test to a few seconds on
one core. As in ``test_finetune.py``, the "finetuning learns" test switches off feature shuffling so that the random
network can learn the synthetic rule (a linear function of feature 0) into its weights.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import ARCHS, MODEL_NAMES, assert_same_state, fit_in_context_and_finetuned, record_finetune, state_of

from autogluon_tfm.checkpoints import make_tiny_network
from autogluon_tfm.finetune import FinetuneConfig, RegressionFinetuneData, finetune, stratified_split, target_bins
from autogluon_tfm.inference import TFMRegressor
from autogluon_tfm.inference.regression_heads import BarDistributionHead
from autogluon_tfm.nn.losses import regression_loss

torch.set_num_threads(1)


def linear_task(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = 5 x0 + 2 + noise: far from z-scored, so the target scaling matters."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 3))
    return X, 5.0 * X[:, 0] + 2.0 + 0.1 * rng.normal(size=n_rows)


def regressor(arch: str, network: torch.nn.Module, **kwargs) -> TFMRegressor:
    defaults = dict(model=MODEL_NAMES[arch], checkpoint=network, n_estimators=2, device="cpu", random_state=0)
    return TFMRegressor(**{**defaults, **kwargs})


def step_data(network: torch.nn.Module) -> RegressionFinetuneData:
    """Finetuning data straight from arrays (one normalisation method, no preprocessing, no validation)."""
    X, y = linear_task(120)
    return RegressionFinetuneData({"none": X}, y, network)


def mse(model: TFMRegressor, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((model.predict(X) - y) ** 2))


# ------------------------------------------------------------------------------------------------ steps and loss
@pytest.mark.parametrize("arch", ARCHS)
def test_steps_scale_targets_by_their_context_rows(arch):
    network = make_tiny_network(arch, "regression")
    data = step_data(network)
    batch = data.sample_step(np.random.default_rng(0), rows_per_step=80, query_fraction=0.25)
    n_context, n_query = batch.y_context.shape[1], batch.y_query.shape[1]
    assert batch.X.shape == (1, n_context + n_query, 3) and batch.n_labels is None
    assert abs(n_context + n_query - 80) <= 10 and 15 <= n_query <= 25
    context = batch.y_context[0].double()
    if arch == "mitra":  # min-max over the context rows
        assert data.target_scaling == "minmax"
        assert float(context.min()) == pytest.approx(0.0, abs=1e-6) and float(context.max()) == pytest.approx(1.0)
    else:  # z-score over the context rows (population std, as TargetScaler)
        assert data.target_scaling == "zscore"
        assert float(context.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(context.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        loss = data.loss(network(batch.X, batch.y_context), batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(loss, regression_loss(network, network(batch.X, batch.y_context), batch.y_query))


def test_target_bins_keep_the_extremes_in_the_context():
    y = np.concatenate([np.zeros(500), np.linspace(1, 2, 100)])
    bins = target_bins(y)
    assert bins[np.argmin(y)] != bins[np.argmax(y)]
    for seed in range(5):
        context, _ = stratified_split(bins, 60, 0.25, np.random.default_rng(seed))
        assert y[context].min() == 0 and y[context].max() == 2  # never a constant context


@pytest.mark.parametrize("arch", ARCHS)
def test_validation_loss_scores_the_regressors_ensemble_prediction(arch, monkeypatch):
    """The validation pass predicts what ``TFMRegressor`` predicts for the same rows (same members, preprocessing,
    scaling), scored with the head's loss."""
    X, y = linear_task(150)
    X_val, y_val = linear_task(40, seed=1)
    seen = record_finetune(monkeypatch)
    network = make_tiny_network(arch, "regression")
    fitted = regressor(arch, network, n_estimators=4, fine_tune="full", fine_tune_steps=0)  # one validation pass
    fitted.fit(X, y, X_val=pd.DataFrame(X_val), y_val=y_val)
    data = seen["data"]
    # Up to 4 members score the validation pass (Mitra's regressor has one: it ignores column order and scale).
    assert len(data.y_train) == 150 and len(data.y_val) == 40
    assert len(data.eval_members) == (1 if arch == "mitra" else 4)

    head = fitted.head_
    icl = regressor(arch, network, n_estimators=4).fit(X, y)  # the pretrained network, same members
    averaged = icl._average_over_members(pd.DataFrame(X_val), head.prepare)
    output = np.log(np.maximum(averaged, 1e-30)) if isinstance(head, BarDistributionHead) else averaged
    y_val_scaled = torch.from_numpy(icl.target_scaler_.transform(y_val))[None]
    expected = float(regression_loss(network, torch.from_numpy(output)[None], y_val_scaled))
    assert data.validation_loss(network, torch.device("cpu")) == pytest.approx(expected, rel=1e-4)
    assert fitted.fine_tune_report_.initial_loss == pytest.approx(expected, rel=1e-4)
    if arch == "mitra":  # squared error of the scaled point prediction
        scaled_error = (icl.predict(X_val) - y_val) / icl.target_scaler_.scale_
        assert expected == pytest.approx(float(np.mean(scaled_error**2)), rel=1e-4)


# ------------------------------------------------------------------------------------------------ full finetuning
@pytest.mark.parametrize("arch", ARCHS)
def test_full_regression_finetuning_changes_predictions_and_lowers_the_loss(arch):
    X, y = linear_task(300)
    X_test, y_test = linear_task(300, seed=1)
    network = make_tiny_network(arch, "regression")
    icl, tuned = fit_in_context_and_finetuned(TFMRegressor, arch, network, X, y, learning_rate=1e-2)
    # The head's own loss on the training split, before and after (validation pass over the training rows).
    members = tuned.members_
    X_pre = tuned.preprocessor_.train_transformed_
    train_split = RegressionFinetuneData(X_pre, y, network, X_val=X_pre, y_val=y, members=members)
    loss_before = train_split.validation_loss(network, torch.device("cpu"))
    loss_after = train_split.validation_loss(tuned.network_, torch.device("cpu"))
    # Measured (seed 0), head loss: tabicl 0.36 -> 0.05, tabpfn_v2 3.50 -> 2.72, mitra 0.082 -> 0.014; MSE of the
    # predicted mean (target variance 25): tabicl 24 -> 1.5, tabpfn_v2 24 -> 4.4, mitra 96 -> 17.
    assert loss_after < 0.8 * loss_before
    assert mse(tuned, X, y) < 0.5 * mse(icl, X, y)
    assert mse(tuned, X_test, y_test) < 0.5 * mse(icl, X_test, y_test)
    assert not np.allclose(icl.predict(X_test), tuned.predict(X_test), atol=1e-3)


# --------------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("arch", ARCHS)
def test_regression_lora_trains_only_adapters(arch):
    network = make_tiny_network(arch, "regression")
    pretrained = state_of(network)
    config = FinetuneConfig(mode="lora", max_steps=4, learning_rate=1e-2, lora_rank=2, merge_lora=False)
    tuned, report = finetune(network, step_data(network), config)

    assert_same_state(state_of(network), pretrained)
    trainable = {name for name, p in tuned.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert report.n_trainable_parameters == sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    tuned_state = state_of(tuned)
    for name, value in tuned_state.items():
        if ".lora_" not in name:
            assert torch.equal(value, pretrained[name.replace(".base_layer", "")]), name
    assert any(name.endswith("lora_B.default.weight") and value.abs().sum() > 0 for name, value in tuned_state.items())

    # Through the estimator: adapters merged into a plain network of the same class; predictions move.
    X, y = linear_task(100)
    icl = regressor(arch, network).fit(X, y)
    tuned = regressor(arch, network, fine_tune="lora", fine_tune_steps=4, learning_rate=1e-2,
                      validation_fraction=0.0).fit(X, y)
    assert type(tuned.network_) is type(network) and tuned.network_.state_dict().keys() == pretrained.keys()
    assert_same_state(state_of(network), pretrained)
    assert not np.allclose(icl.predict(X), tuned.predict(X), atol=1e-4)


# ------------------------------------------------------------------------------- early stopping (see test_finetune.py)
@pytest.mark.parametrize("arch", ARCHS)
def test_a_harmful_learning_rate_returns_the_pretrained_regressor(arch):
    X, y = linear_task(200)
    network = make_tiny_network(arch, "regression")
    icl = regressor(arch, network).fit(X, y)
    tuned = regressor(arch, network, fine_tune="full", fine_tune_steps=10, learning_rate=10.0).fit(X, y)

    report = tuned.fine_tune_report_
    assert report.best_step == 0 and report.steps_run >= 1 and report.best_loss == report.initial_loss
    assert_same_state(state_of(tuned.network_), state_of(network))
    np.testing.assert_allclose(tuned.predict(X), icl.predict(X), atol=1e-6)


# ------------------------------------------------------------------------------------------------ estimator glue
def test_pickled_finetuned_regressor_predicts_identically():
    X, y = linear_task(150)
    network = make_tiny_network("tabicl", "regression")
    tuned = regressor("tabicl", network, fine_tune="full", fine_tune_steps=6, learning_rate=3e-3,
                      validation_fraction=0.0).fit(X, y)
    assert not np.allclose(tuned.predict(X), regressor("tabicl", network).fit(X, y).predict(X), atol=1e-4)
    restored = pickle.loads(pickle.dumps(tuned))
    np.testing.assert_array_equal(restored.predict(X), tuned.predict(X))
    np.testing.assert_array_equal(restored.predict_quantiles(X), tuned.predict_quantiles(X))
    assert restored.fine_tune_report_.steps_run == 6


def test_internal_validation_split_and_constant_target(monkeypatch, caplog):
    X, y = linear_task(100)
    seen = record_finetune(monkeypatch)
    regressor("mitra", make_tiny_network("mitra", "regression"), fine_tune="full", fine_tune_steps=2).fit(X, y)
    assert len(seen["data"].y_train) == 80 and len(seen["data"].y_val) == 20  # validation_fraction=0.2
    y_train, y_val = seen["data"].y_train, seen["data"].y_val  # Mitra: min-max space; the extremes train
    assert (y_train.min(), y_train.max()) == (0.0, 1.0) and 0 < y_val.min() <= y_val.max() < 1

    network = make_tiny_network("tabicl", "regression")
    constant = regressor("tabicl", network, fine_tune="full").fit(X, np.full(100, 3.0))
    assert constant.fine_tune_report_ is None and np.all(constant.predict(X) == 3.0)
    assert "not finetuning" in caplog.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fine_tune": "partial"}, "Unknown fine_tune"),
        ({"fine_tune_steps": "many"}, "fine_tune_steps"),
        ({"validation_fraction": "half"}, "validation_fraction"),
        ({"fine_tune": "full", "learning_rate": 0.0}, "learning_rate"),
        ({"fine_tune": "lora", "lora_rank": 0}, "lora_rank"),
        ({"fine_tune": "full", "validation_fraction": 1.0}, "validation_fraction"),
    ],
)
def test_bad_regression_finetuning_parameters_raise(params, message):
    X, y = linear_task(40)
    with pytest.raises(ValueError, match=message):
        regressor("tabicl", make_tiny_network("tabicl", "regression"), **params).fit(X, y)


def test_fine_tune_auto_follows_the_weights_card(caplog):
    import copy
    import logging

    from autogluon_tfm.checkpoints import load_network

    X, y = linear_task(120)
    network = make_tiny_network("mitra", "regression")
    plain = regressor("mitra", network).fit(X, y)  # no card: in-context learning only
    assert plain.fine_tune == "auto" and plain.fine_tune_ is None and plain.fine_tune_report_ is None
    assert plain.network_ is network

    carded = copy.deepcopy(network)
    carded.inference_defaults = {"fine_tune": "full", "fine_tune_steps": 3, "validation_fraction": 0.0}
    tuned = regressor("mitra", carded).fit(X, y)
    assert (tuned.fine_tune_, tuned.fine_tune_steps_, tuned.validation_fraction_) == ("full", 3, 0.0)
    assert tuned.fine_tune_report_ is not None and tuned.fine_tune_report_.steps_run == 3
    assert tuned.network_ is not carded  # a copy was finetuned; the module passed in is untouched
    assert_same_state(state_of(carded), state_of(network))
    # Explicit parameters win over the card.
    assert regressor("mitra", carded, fine_tune=None).fit(X, y).fine_tune_report_ is None
    longer = regressor("mitra", carded, fine_tune_steps=5).fit(X, y)
    assert longer.fine_tune_report_.steps_run == 5 and longer.fine_tune_report_.initial_loss is None  # no early stop
    held_out = regressor("mitra", carded, validation_fraction=0.25).fit(X, y)
    assert held_out.validation_fraction_ == 0.25 and held_out.fine_tune_report_.initial_loss is not None
    # Without a card value: the estimator's DEFAULT_VALIDATION_FRACTION.
    carded.inference_defaults = {"fine_tune": "full", "fine_tune_steps": 3}
    assert regressor("mitra", carded).fit(X, y).validation_fraction_ == 0.2

    # Too small a table to finetune: "auto" says so at INFO level (the user did not ask for finetuning).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="autogluon_tfm"):
        small = regressor("mitra", carded).fit(X[:4], y[:4])
    assert small.fine_tune_report_ is None and "skipping finetuning" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]

    carded.inference_defaults = {"fine_tune": "partial"}
    with pytest.raises(ValueError, match="card recommends fine_tune='partial'"):
        regressor("mitra", carded).fit(X, y)
    carded.inference_defaults = {"fine_tune": "full", "validation_fraction": 1.5}
    with pytest.raises(ValueError, match="card recommends validation_fraction=1.5"):
        regressor("mitra", carded).fit(X, y)
    # The shipped Mitra regression weights are finetuned by default (as AutoGluon's own Mitra is); TabICL's are not.
    mitra_defaults = load_network("mitra-reg-small").inference_defaults
    assert (mitra_defaults.get("fine_tune"), mitra_defaults.get("validation_fraction")) == ("full", 0.0)
    assert "fine_tune" not in load_network("tabicl-reg-small").inference_defaults
