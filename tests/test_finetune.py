"""Finetuning (``autogluon_tfm.finetune`` and ``TFMClassifier(fine_tune=...)``) of the three networks.

Tiny randomly initialised networks (``make_tiny_network``) keep every test to a few seconds on one core. A random tiny
network is no in-context learner, so the "finetuning learns" test switches off the feature and class augmentation:
the network can then learn the synthetic rule (class = sign of feature 0) into its weights within a few dozen steps.
"""

from __future__ import annotations

import logging
import pickle
import time

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import (
    ARCHS,
    MODEL_NAMES,
    ScriptedValidation,
    assert_same_state,
    fit_in_context_and_finetuned,
    record_finetune,
    state_of,
)
from sklearn.metrics import log_loss

from autogluon_tfm.checkpoints import make_tiny_network, save_network
from autogluon_tfm.finetune import (
    DEFAULT_LORA_TARGETS,
    ClassificationFinetuneData,
    FinetuneConfig,
    RegressionFinetuneData,
    add_lora,
    finetune,
    stratified_split,
)
from autogluon_tfm.inference import TFMClassifier
from autogluon_tfm.inference.ensemble import build_ensemble

torch.set_num_threads(1)


def sign_task(n_rows: int, n_features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    return X, (X[:, 0] > 0).astype(np.int64)


def step_data(n_rows: int = 120, with_validation: bool = False, seed: int = 0) -> ClassificationFinetuneData:
    """Finetuning data straight from arrays (one normalisation method, no preprocessing)."""
    X, y = sign_task(n_rows, seed=seed)
    X_val, y_val = sign_task(40, seed=seed + 1)
    members = build_ensemble(n_features=X.shape[1], n_classes=2, n_estimators=2, norm_methods=("none",))
    return ClassificationFinetuneData(
        {"none": X},
        y,
        n_classes=2,
        X_val={"none": X_val} if with_validation else None,
        y_val=y_val if with_validation else None,
        members=members,
    )


def classifier(arch: str, network: torch.nn.Module, **kwargs) -> TFMClassifier:
    defaults = dict(model=MODEL_NAMES[arch], checkpoint=network, n_estimators=2, device="cpu", random_state=0)
    return TFMClassifier(**{**defaults, **kwargs})


# --------------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_only_adapters_and_leaves_base_weights_unchanged(arch):
    network = make_tiny_network(arch)
    pretrained = state_of(network)
    config = FinetuneConfig(mode="lora", max_steps=6, learning_rate=1e-2, lora_rank=4, merge_lora=False)
    tuned, report = finetune(network, step_data(), config)

    assert_same_state(state_of(network), pretrained)  # the given module is never modified
    trainable = {name for name, p in tuned.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert report.n_trainable_parameters == sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    # Every default target kind is wrapped somewhere in every architecture.
    wrapped = {name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name in trainable if ".lora_A." in name}
    assert wrapped == set(DEFAULT_LORA_TARGETS)
    # Base weights: peft keeps them under `base_layer`; all equal the pretrained weights.
    tuned_state = state_of(tuned)
    for name, value in tuned_state.items():
        if ".lora_" in name:
            continue
        assert torch.equal(value, pretrained[name.replace(".base_layer", "")]), name
    assert any(name.endswith("lora_B.default.weight") and value.abs().sum() > 0 for name, value in tuned_state.items())

    # Merging folds the adapters into plain weights: same class, same state-dict keys, same outputs.
    X, y = sign_task(50)
    inputs = torch.tensor(X, dtype=torch.float32)[None], torch.tensor(y[:40], dtype=torch.float32)[None]
    with torch.no_grad():
        outputs_wrapped = tuned.eval()(*inputs)
    merged, _ = finetune(network, step_data(), FinetuneConfig(**{**config.__dict__, "merge_lora": True}))
    assert type(merged) is type(network) and merged.state_dict().keys() == network.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(merged(*inputs), outputs_wrapped, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged(*inputs), network(*inputs))


def test_lora_rejects_targets_that_match_nothing():
    with pytest.raises(ValueError, match="match no layer"):
        add_lora(make_tiny_network("tabicl"), target_modules=["no_such_layer"])


# ------------------------------------------------------------------------------------------------ full finetuning
@pytest.mark.parametrize("arch", ARCHS)
def test_full_finetuning_changes_predictions_and_lowers_the_loss(arch):
    X, y = sign_task(300)
    X_test, y_test = sign_task(300, seed=1)
    icl, tuned = fit_in_context_and_finetuned(
        TFMClassifier, arch, make_tiny_network(arch), X, y, learning_rate=3e-3, class_shift=False
    )
    train_before, train_after = log_loss(y, icl.predict_proba(X)), log_loss(y, tuned.predict_proba(X))
    test_before, test_after = log_loss(y_test, icl.predict_proba(X_test)), log_loss(y_test, tuned.predict_proba(X_test))
    # Measured (seed 0): tabicl 0.74 -> 0.03, tabpfn_v2 0.69 -> 0.07, mitra 0.80 -> 0.48 on the training split.
    assert train_after < 0.8 * train_before
    assert test_after < 0.8 * test_before
    assert not np.allclose(icl.predict_proba(X_test), tuned.predict_proba(X_test), atol=1e-3)


# ------------------------------------------------------------------------------------------------ early stopping
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_early_stopping_restores_the_best_weights(task):
    network = make_tiny_network("tabicl", task)
    if task == "classification":
        steps = step_data()
    else:
        X, _ = sign_task(120)
        steps = RegressionFinetuneData({"none": X}, 3.0 * X[:, 0] + 1.0, network)
    data = ScriptedValidation(steps, [1.0, 0.9, 0.5, 0.6, 0.7, 0.8, 0.1, 0.1])
    config = FinetuneConfig(max_steps=100, learning_rate=1e-2, eval_every=2, patience=3)
    tuned, report = finetune(network, data, config)

    assert report.stop_reason.endswith("(early stopping)")
    assert report.steps_run == 10 and len(report.history) == 6  # passes at steps 0, 2, ..., 10
    assert [entry[0] for entry in report.history] == [0, 2, 4, 6, 8, 10]
    assert (report.best_step, report.initial_loss, report.best_loss) == (4, 1.0, 0.5)
    assert_same_state(state_of(tuned), data.seen_states[2])  # the weights of step 4 ...
    with pytest.raises(AssertionError):
        assert_same_state(state_of(tuned), data.seen_states[-1])  # ... not the last ones


@pytest.mark.parametrize("arch", ARCHS)
def test_a_harmful_learning_rate_returns_the_pretrained_network(arch):
    """Never worse than pretrained on validation: with a huge learning rate every pass is worse than the first."""
    X, y = sign_task(200)
    network = make_tiny_network(arch)
    icl = classifier(arch, network).fit(X, y)
    tuned = classifier(arch, network, fine_tune="full", fine_tune_steps=30, learning_rate=10.0).fit(X, y)

    report = tuned.fine_tune_report_
    assert report.best_step == 0 and report.steps_run >= 1
    assert report.best_loss == report.initial_loss
    assert_same_state(state_of(tuned.network_), state_of(network))
    np.testing.assert_allclose(tuned.predict_proba(X), icl.predict_proba(X), atol=1e-6)


def test_time_limit_is_respected():
    # No early stopping (huge patience), so only the time limit can end the run.
    config = FinetuneConfig(mode="full", max_steps=100_000, time_limit=2.0, patience=10**6)
    start = time.monotonic()
    _, report = finetune(make_tiny_network("tabicl"), step_data(400, with_validation=True), config, device="cpu")
    elapsed = time.monotonic() - start
    assert report.stop_reason.startswith("time limit")
    assert 0 < report.steps_run < 100_000
    assert elapsed < 2.0 + 0.5, elapsed  # a step or a validation pass that would overrun is not started



def test_time_limited_schedule_is_planned_to_fit_the_budget():
    """A time-limited run shortens its warm-up + cosine horizon to the steps it can afford, so it does not spend the
    whole budget warming up."""
    from autogluon_tfm.finetune.trainer import _plan_horizon

    config = FinetuneConfig(max_steps=200, eval_every=5, time_limit=30.0)
    horizon = {"steps": 200}
    # 0.5 s per step + 1 s per validation pass (every 5 steps): 0.7 s a step; 29 s left -> 41 more steps
    _plan_horizon(horizon, config, step=1, elapsed=1.0, step_seconds=0.5, eval_seconds=1.0)
    assert horizon["steps"] == 1 + int(29.0 / 0.7)
    _plan_horizon(horizon, config, step=3, elapsed=2.0, step_seconds=0.1, eval_seconds=0.0)
    assert horizon["steps"] == 1 + int(29.0 / 0.7), "the horizon never grows back"
    fast = {"steps": 200}
    _plan_horizon(fast, config, step=1, elapsed=0.1, step_seconds=0.001, eval_seconds=0.0)
    assert fast["steps"] == 200, "an affordable max_steps is kept"


def test_time_limited_finetune_plans_its_schedule(caplog):
    X, y = sign_task(400)
    with caplog.at_level(logging.INFO, logger="autogluon_tfm.finetune.trainer"):
        tuned = classifier("tabicl", make_tiny_network("tabicl"), fine_tune="full", fine_tune_steps=100_000,
                           time_limit=2.0).fit(X, y)
    assert tuned.fine_tune_report_.steps_run < 100_000
    assert "learning-rate schedule is planned for" in caplog.text


# ------------------------------------------------------------------------------------------------ estimator glue
def test_given_validation_rows_are_used_and_unknown_labels_ignored(monkeypatch, caplog):
    X, y = sign_task(150)
    X_val, y_val = sign_task(30, seed=3)
    y, y_val = np.where(y == 1, "pos", "neg"), np.where(y_val == 1, "pos", "neg").astype(object)
    y_val[0] = "never seen"  # not a training class: ignored with a warning
    seen = record_finetune(monkeypatch)
    with caplog.at_level(logging.INFO, logger="autogluon_tfm"):
        tuned = classifier("tabicl", make_tiny_network("tabicl"), fine_tune="lora", fine_tune_steps=5).fit(
            X, y, X_val=pd.DataFrame(X_val), y_val=y_val
        )
    data = seen["data"]
    assert len(data.y_train) == 150 and len(data.y_val) == 29  # all training rows train; 29 usable validation rows
    assert seen["config"].mode == "lora" and seen["config"].max_steps == 5
    assert "Ignoring 1 validation rows" in caplog.text
    assert "validation loss before the first step" in caplog.text and "Finetuning stopped after" in caplog.text
    assert tuned.fine_tune_report_.initial_loss is not None

    # Without X_val, a stratified 20 % of the training rows is held out for early stopping.
    classifier("tabicl", make_tiny_network("tabicl"), fine_tune="full", fine_tune_steps=5).fit(X, y)
    assert len(seen["data"].y_train) == 120 and len(seen["data"].y_val) == 30


def test_pickle_round_trip_keeps_the_finetuned_weights():
    X, y = sign_task(150)
    network = make_tiny_network("mitra")
    tuned = classifier("mitra", network, fine_tune="lora", fine_tune_steps=10, learning_rate=1e-2,
                       validation_fraction=0.0).fit(X, y)
    proba = tuned.predict_proba(X)
    assert not np.allclose(proba, classifier("mitra", network).fit(X, y).predict_proba(X), atol=1e-4)
    restored = pickle.loads(pickle.dumps(tuned))
    assert type(restored.network_) is type(network)  # adapters were merged: a plain network travels
    np.testing.assert_allclose(restored.predict_proba(X), proba, atol=1e-6)
    assert restored.fine_tune_report_.steps_run == 10


def test_bf16_autocast_finetuning_runs_on_cpu():
    X, y = sign_task(120)
    tuned = classifier("tabpfn_v2", make_tiny_network("tabpfn_v2"), precision="bf16", fine_tune="full",
                       fine_tune_steps=6, learning_rate=1e-3).fit(X, y)
    report = tuned.fine_tune_report_
    assert report.steps_run == 6 and np.isfinite(report.best_loss)
    assert all(p.dtype == torch.float32 for p in tuned.network_.parameters())  # autocast: weights stay fp32
    assert np.isfinite(tuned.predict_proba(X)).all()


def test_fine_tune_none_is_plain_in_context_learning():
    X, y = sign_task(80)
    network = make_tiny_network("tabicl")
    fitted = classifier("tabicl", network).fit(X, y, X_val=X[:10], y_val=y[:10])  # X_val ignored without fine_tune
    assert fitted.network_ is network and fitted.fine_tune_report_ is None


# ---------------------------------------------------------------------------------------------- many classes
def bits_task(n_rows: int, n_classes: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class c is written in binary in the 4 features (+-1, plus noise): every class is learnable."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n_rows) % n_classes)
    X = ((y[:, None] >> np.arange(4)) & 1) * 2.0 - 1 + 0.1 * rng.normal(size=(n_rows, 4))
    return X, y


def test_many_class_steps_train_the_nodes_of_the_class_tree():
    X, y = bits_task(300)
    data = ClassificationFinetuneData({"none": X}, y, n_classes=15, max_classes=10, class_shift=False)
    assert data.hierarchical and [len(node.classes) for node in data.step_nodes] == [15, 8, 7]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        batch = data.sample_step(rng, rows_per_step=100, query_fraction=0.25)
        context, query = batch.y_context[0].long(), batch.y_query[0]
        assert 2 <= batch.n_labels <= 10 and int(context.max()) < batch.n_labels
        assert set(query.tolist()) <= set(context.tolist())  # every label asked for is in the context
        # Rows of one node only: the root (all 15 classes, 2 groups), or a leaf (its 8 or 7 classes, by class).
        classes = {tuple(node.classes) for node in data.step_nodes if node.n_labels == batch.n_labels}
        assert len(classes) == 1
        seen.add(classes.pop())
        assert batch.X.shape[1] == len(context) + len(query)
    assert len(seen) == 3
    logits = torch.zeros(1, batch.y_query.shape[1], 10)
    assert float(data.loss(logits, batch)) == pytest.approx(np.log(batch.n_labels))  # over the node's labels only


def test_many_class_validation_loss_is_the_log_loss_of_the_hierarchical_prediction(monkeypatch):
    X, y = bits_task(150)
    X_val, y_val = bits_task(45, seed=1)
    seen = record_finetune(monkeypatch)
    network = make_tiny_network("tabicl")
    tuned = classifier("tabicl", network, n_estimators=4, fine_tune="full", fine_tune_steps=0).fit(
        X, y, X_val=X_val, y_val=y_val
    )
    icl = classifier("tabicl", network, n_estimators=4).fit(X, y)
    assert icl.class_tree_ is not None and seen["data"].hierarchical
    expected = log_loss(y_val, icl.predict_proba(X_val), labels=range(15))
    assert tuned.fine_tune_report_.initial_loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_finetuning_with_more_classes_than_the_network_supports(arch):
    X, y = bits_task(300)
    icl, tuned = fit_in_context_and_finetuned(
        TFMClassifier, arch, make_tiny_network(arch), X, y, learning_rate=1e-2, class_shift=False
    )
    assert tuned.class_tree_ is not None
    proba = tuned.predict_proba(X)
    assert proba.shape == (300, 15) and (proba > 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    # Measured (seed 0): training log loss tabicl 2.81 -> 1.99, tabpfn_v2 2.73 -> 0.45, mitra 3.14 -> 2.29; classes
    # predicted for some row: tabicl 4, tabpfn_v2 15, mitra 8 (the tiny random tabicl and mitra need ~150+ steps).
    assert log_loss(y, proba) < 0.9 * log_loss(y, icl.predict_proba(X))
    if arch == "tabpfn_v2":
        assert set(tuned.predict(X)) == set(range(15))  # every class is predicted for some row


def test_many_class_finetuning_with_augmentation_and_early_stopping():
    X, y = bits_task(240)
    y = np.array([f"class {label:02d}" for label in y])
    tuned = classifier("tabpfn_v2", make_tiny_network("tabpfn_v2"), fine_tune="lora", fine_tune_steps=10,
                       learning_rate=1e-2).fit(X, y)  # internal stratified validation split, hierarchical validation
    report = tuned.fine_tune_report_
    assert report.steps_run == 10 and len(report.history) == 3 and np.isfinite(report.best_loss)
    assert report.best_loss <= report.initial_loss
    proba = tuned.predict_proba(X)
    assert proba.shape == (240, 15) and list(tuned.classes_) == sorted(set(y))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fine_tune": "partial"}, "Unknown fine_tune"),
        ({"fine_tune": "full", "learning_rate": 0.0}, "learning_rate"),
        ({"fine_tune": "full", "fine_tune_steps": -1}, "fine_tune_steps"),
        ({"fine_tune": "lora", "lora_rank": 0}, "lora_rank"),
        ({"fine_tune": "lora", "lora_dropout": 1.0}, "lora_dropout"),
        ({"fine_tune": "full", "validation_fraction": 1.0}, "validation_fraction"),
        ({"fine_tune": "full", "time_limit": 0}, "time_limit"),
        ({"fine_tune": "lora", "lora_target_modules": ["nothing"]}, "match no layer"),
    ],
)
def test_bad_finetuning_parameters_raise(params, message):
    X, y = sign_task(40)
    with pytest.raises(ValueError, match=message):
        classifier("tabicl", make_tiny_network("tabicl"), **params).fit(X, y)


def test_stratified_split_keeps_every_class_in_the_context():
    rng = np.random.default_rng(0)
    y = np.array([0] * 500 + [1] * 100 + [2] * 3 + [3])
    context, query = stratified_split(y, 200, 0.25, rng)
    assert len(np.intersect1d(context, query)) == 0
    assert set(y[context]) == {0, 1, 2, 3} and 3 not in set(y[query])
    assert abs(len(context) + len(query) - 200) <= 4
    assert 0.2 < len(query) / (len(context) + len(query)) < 0.3
    counts = np.bincount(y[np.concatenate([context, query])], minlength=4)
    assert abs(counts[0] / counts[1] - 5) < 0.3  # class shares are kept
    all_context, all_query = stratified_split(y, 10_000, 0.25, rng)
    assert len(all_context) + len(all_query) == len(y)


# --------------------------------------------------------------------------------------------------- AutoGluon
@pytest.mark.slow
def test_tabular_predictor_bagged_lora_finetuning_uses_the_out_of_fold_rows(tmp_path, monkeypatch):
    from autogluon.tabular import TabularPredictor

    checkpoint = tmp_path / "tiny.safetensors"
    save_network(make_tiny_network("tabicl"), checkpoint)
    X, y = sign_task(240, n_features=4)
    train = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)]).assign(label=y)
    fits = []
    original_fit = TFMClassifier.fit

    def recording_fit(self, X, y, X_val=None, y_val=None):
        fits.append({"n_val": None if X_val is None else len(X_val), "validation_fraction": self.validation_fraction,
                     "steps": self.fine_tune_steps, "time_limit": self.time_limit})
        return original_fit(self, X, y, X_val=X_val, y_val=y_val)

    monkeypatch.setattr(TFMClassifier, "fit", recording_fit)
    hyperparameters = {
        "TABICL": {"checkpoint": str(checkpoint), "fine_tune": "lora", "fine_tune_steps": 10, "n_estimators": 1,
                   "learning_rate": 1e-3}
    }
    predictor = TabularPredictor(label="label", path=str(tmp_path / "ag"), verbosity=0).fit(
        train, hyperparameters=hyperparameters, num_bag_folds=2, num_bag_sets=1, fit_weighted_ensemble=False,
        num_cpus=1, num_gpus=0, time_limit=120,
    )
    # Two fold fits early-stop on their out-of-fold rows within AutoGluon's time limit; the served refit trains the
    # folds' mean kept step count without validation rows.
    assert [fit["n_val"] for fit in fits] == [120, 120, None]
    assert all(fit["time_limit"] is not None for fit in fits[:2])
    assert fits[2]["validation_fraction"] == 0.0 and 0 <= fits[2]["steps"] <= 10
    bag = predictor._trainer.load_model("TabICL_BAG_L1")
    child = bag.load_child(bag.models[0])
    assert child.model.fine_tune_report_.steps_run == fits[2]["steps"]
    proba = predictor.predict_proba(train.drop(columns="label"))
    assert proba.shape == (240, 2) and np.isfinite(proba.to_numpy()).all()
    oof = predictor.predict_proba_oof()
    assert oof.shape == (240, 2) and np.isfinite(oof.to_numpy()).all()


def test_auto_learning_rate_follows_the_weights():
    from autogluon_tfm.finetune import (
        OTHER_WEIGHTS_LEARNING_RATE,
        SHIPPED_WEIGHTS_LEARNING_RATE,
        SHIPPED_WEIGHTS_LORA_LEARNING_RATE,
    )

    X, y = np.random.default_rng(0).normal(size=(60, 3)), np.arange(60) % 2
    shipped = TFMClassifier(n_estimators=1, device="cpu").fit(X, y)
    assert shipped.learning_rate == "auto" and shipped._learning_rate("full") == SHIPPED_WEIGHTS_LEARNING_RATE
    assert shipped._learning_rate("lora") == SHIPPED_WEIGHTS_LORA_LEARNING_RATE
    module = TFMClassifier(checkpoint=make_tiny_network("tabicl"), n_estimators=1, device="cpu").fit(X, y)
    assert module._learning_rate("full") == OTHER_WEIGHTS_LEARNING_RATE
    explicit = TFMClassifier(checkpoint=make_tiny_network("tabicl"), learning_rate=3e-3, n_estimators=1).fit(X, y)
    assert explicit._learning_rate("lora") == 3e-3
    with pytest.raises(ValueError, match="learning_rate"):
        TFMClassifier(fine_tune="full", learning_rate="fast", n_estimators=1).fit(X, y)
