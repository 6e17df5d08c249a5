"""AutoGluon integration: registry glue, the TabICL adapter, and full TabularPredictor fits with a tiny network.

The long tests (real AutoGluon fits) are marked ``slow``; they use a tiny randomly initialised network, two ensemble
members and a few hundred rows, so prediction quality is not asserted, only behaviour.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import subprocess_env

import autogluon_tfm
from autogluon_tfm.autogluon import TabICLModel, register, unregister
from autogluon_tfm.autogluon.base import TFMBaseModel, torch_num_threads
from autogluon_tfm.checkpoints import make_tiny_network, save_network

pytest.importorskip("autogluon.tabular")
from autogluon.tabular import TabularPredictor  # noqa: E402
from autogluon.tabular.models.tabicl.tabicl_model import TabICLModel as BuiltinTabICLModel  # noqa: E402
from autogluon.tabular.registry import ag_model_registry  # noqa: E402

LABEL = "target"




@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "tiny-tabicl.safetensors"
    save_network(make_tiny_network("tabicl", "classification", seed=0), path)
    return str(path)


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 240-row train / 80-row test subsample of sklearn's breast cancer data, plus a categorical column with NaN."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame.rename(columns={"target": LABEL})
    data = data.sample(n=320, random_state=0).reset_index(drop=True)
    # Ten numeric features keep the fits fast; the categorical column exercises category handling and NaN.
    data = data[[*data.columns[:10], LABEL]]
    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], size=len(data)).astype(object)
    colour[rng.random(len(data)) < 0.1] = None
    data.insert(0, "colour", pd.Series(colour, dtype="category"))
    return data.iloc[:240].reset_index(drop=True), data.iloc[240:].reset_index(drop=True)


@pytest.fixture
def restore_registry():
    yield
    register()  # tests that unregister must leave the process as `import autogluon_tfm` left it


# ------------------------------------------------------------------------------------------------------ registry
def test_import_replaces_builtin_tabicl_key():
    assert ag_model_registry.key_to_cls("TABICL") is TabICLModel
    assert not ag_model_registry.exists(BuiltinTabICLModel)
    assert autogluon_tfm.TabICLModel is TabICLModel
    assert (TabICLModel.ag_key, TabICLModel.ag_name, TabICLModel.ag_priority) == ("TABICL", "TabICL", 65)
    assert ag_model_registry.priority(TabICLModel) == 65


def test_unregister_restores_builtin_and_register_is_idempotent(restore_registry, caplog):
    unregister()
    assert ag_model_registry.key_to_cls("TABICL") is BuiltinTabICLModel
    assert not ag_model_registry.exists(TabICLModel)
    unregister()  # idempotent
    assert ag_model_registry.key_to_cls("TABICL") is BuiltinTabICLModel

    with caplog.at_level(logging.INFO, logger="autogluon_tfm"):
        assert register() == ["TABICL", "TABPFNV2", "MITRA"]
        register()
        register()
    assert ag_model_registry.key_to_cls("TABICL") is TabICLModel
    assert sum(m is TabICLModel for m in ag_model_registry.model_cls_list) == 1
    records = [r for r in caplog.records if r.name.startswith("autogluon_tfm") and r.levelno == logging.INFO]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "TABICL" in records[0].getMessage() and "replacing" in records[0].getMessage()


def test_import_registers_in_a_fresh_process():
    """A plain `import autogluon_tfm` is all a process needs for the string key to resolve to our model."""
    code = textwrap.dedent("""
        import autogluon_tfm
        from autogluon.tabular.registry import ag_model_registry
        cls = ag_model_registry.key_to_cls("TABICL")
        assert cls.__module__ == "autogluon_tfm.autogluon.tabicl", cls
        autogluon_tfm.unregister()
        assert ag_model_registry.key_to_cls("TABICL").__module__.startswith("autogluon.tabular.models"), "not restored"
        autogluon_tfm.register()
        assert ag_model_registry.key_to_cls("TABICL") is autogluon_tfm.TabICLModel
        print("OK")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


# ------------------------------------------------------------------------------------------------ adapter units
def _initialized_model(hyperparameters: dict, problem_type: str = "binary") -> TabICLModel:
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    y = pd.Series([0, 1, 0, 1])
    model = TabICLModel(path="", name="TabICL", problem_type=problem_type, hyperparameters=hyperparameters)
    model.initialize(X=X, y=y)
    return model


def test_hyperparameters_translate_to_estimator_kwargs_without_mutating_params():
    model = _initialized_model({"checkpoint": "some.safetensors", "softmax_temperature": 0.5})
    params_before = dict(model.params)
    kwargs = model._get_estimator_kwargs(device="cpu")
    assert kwargs["model"] == "tabicl"
    assert kwargs["device"] == "cpu"
    assert kwargs["n_estimators"] == 8  # default
    assert kwargs["checkpoint"] == "some.safetensors"
    assert kwargs["softmax_temperature"] == 0.5
    assert kwargs["random_state"] == 0  # AutoGluon's seed goes to the estimator's seed
    kwargs["n_estimators"] = 99
    assert dict(model.params) == params_before


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"not_a_param": 1}, "Unknown hyperparameter"),
        ({"device": "cuda"}, "ag.num_gpus"),
        ({"model": "mitra"}, "always runs model='tabicl'"),
    ],
)
def test_bad_hyperparameters_raise_clear_value_error(hyperparameters, message):
    model = _initialized_model(hyperparameters)
    with pytest.raises(ValueError, match=message):
        model._get_estimator_kwargs(device="cpu")


def test_class_declarations():
    assert TabICLModel.supported_problem_types() == ["binary", "multiclass", "regression", "quantile"]
    assert TabICLModel.seed_name == "random_state"
    assert TabICLModel.default_num_gpus == 1
    ensemble_args = TabICLModel._get_default_ag_args_ensemble()
    assert ensemble_args["fold_fitting_strategy"] == "sequential_local" and ensemble_args["refit_folds"] is True
    aux = _initialized_model({}).params_aux
    assert aux["max_rows"] == 100_000 and aux["max_features"] == 2_000
    assert _initialized_model({})._get_tags()["can_refit_full"] is True
    assert issubclass(TabICLModel, TFMBaseModel)


def test_static_memory_estimate_grows_with_data():
    X_small = pd.DataFrame(np.zeros((100, 10)))
    X_large = pd.DataFrame(np.zeros((10_000, 10)))
    small = TabICLModel.estimate_memory_usage_static(X=X_small, problem_type="binary", num_classes=2)
    large = TabICLModel.estimate_memory_usage_static(X=X_large, problem_type="binary", num_classes=2)
    assert isinstance(small, int) and small > TabICLModel.network_bytes_estimate
    assert large > small


def test_probabilities_are_aligned_to_all_classes_when_the_fit_data_missed_one():
    """A fold without a rare class still returns one column per AutoGluon class (0 for the unseen class)."""
    model = _initialized_model({}, problem_type="multiclass")
    model.num_classes = 3
    model.model = SimpleNamespace(classes_=np.array([0, 2]))
    aligned = model._align_to_all_classes(np.array([[0.25, 0.75], [0.5, 0.5]]))
    np.testing.assert_allclose(aligned, [[0.25, 0.0, 0.75], [0.5, 0.0, 0.5]])


def test_torch_num_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_num_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_num_threads(before + 1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------------------ AutoGluon fits (slow)
@pytest.mark.slow
def test_verify_model_with_fit_helper(tiny_checkpoint, tmp_path, monkeypatch):
    """AutoGluon's own model checklist: binary + multiclass toy fits, 2-fold bag, refit_full, seeds, global state.

    Regression and quantile problems are checked in test_autogluon_regression.py (they need a regression network).
    """
    from autogluon.tabular.testing import FitHelper

    monkeypatch.chdir(tmp_path)  # FitHelper writes ./datasets/...
    FitHelper.verify_model(
        model_cls=TabICLModel,
        model_hyperparameters={"n_estimators": 2, "checkpoint": tiny_checkpoint},
        problem_types=["binary", "multiclass"],
        verify_load_wo_cuda=True,
    )


@pytest.mark.slow
def test_predictor_fit_predict_save_load_refit(tiny_checkpoint, breast_cancer, tmp_path, monkeypatch):
    train, test = breast_cancer
    from autogluon_tfm.inference import TFMClassifier

    # Record the torch thread count the estimator fits with, to check that AutoGluon's num_cpus reaches it.
    threads_seen_in_fit = []
    original_fit = TFMClassifier.fit

    def recording_fit(self, *args, **kwargs):
        threads_seen_in_fit.append(torch.get_num_threads())
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(TFMClassifier, "fit", recording_fit)
    threads_before = torch.get_num_threads()
    predictor_path = tmp_path / "predictor"
    with torch_num_threads(3):  # differs from num_cpus=1 below, so setting and restoring are both visible
        predictor = TabularPredictor(label=LABEL, path=str(predictor_path), verbosity=0).fit(
            train,
            hyperparameters={"TABICL": {"n_estimators": 2, "checkpoint": tiny_checkpoint}, "GBM": {}},
            num_cpus=1,
            num_gpus=0,
        )
        assert torch.get_num_threads() == 3, "fit leaked its torch thread count"
    assert torch.get_num_threads() == threads_before
    assert threads_seen_in_fit == [1]

    leaderboard = predictor.leaderboard(test)
    assert "TabICL" in set(leaderboard["model"])
    assert predictor.model_info("TabICL")["model_type"] == "TabICLModel"
    model = predictor._trainer.load_model("TabICL")
    assert type(model) is TabICLModel and model.get_device() == "cpu"

    proba = predictor.predict_proba(test, model="TabICL")
    assert proba.shape == (len(test), 2) and list(proba.columns) == [0, 1]
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(predictor.predict_proba(test, model="TabICL"), proba, atol=1e-6)  # deterministic
    pred = predictor.predict(test, model="TabICL")
    assert set(pred.unique()) <= {0, 1}
    assert (pred.to_numpy() == proba.to_numpy().argmax(axis=1)).all()

    # A test batch whose categorical column is entirely missing (as in an out-of-fold split) must predict.
    test_all_nan_cat = test.copy()
    test_all_nan_cat["colour"] = pd.Series([None] * len(test), dtype="category")
    proba_nan_cat = predictor.predict_proba(test_all_nan_cat, model="TabICL")
    assert np.isfinite(proba_nan_cat.to_numpy()).all()

    # Save + load in a fresh process without the checkpoint file: the weights travel inside the saved model.
    expected_path = tmp_path / "expected.json"
    test_path = tmp_path / "test.pkl"
    test.to_pickle(test_path)
    os.remove(tiny_checkpoint)
    try:
        code = textwrap.dedent(f"""
            import json, pandas as pd
            from autogluon.tabular import TabularPredictor
            predictor = TabularPredictor.load(r"{predictor_path}")
            proba = predictor.predict_proba(pd.read_pickle(r"{test_path}"), model="TabICL")
            json.dump(proba.to_numpy().tolist(), open(r"{expected_path}", "w"))
        """)
        result = subprocess.run(
            [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=300
        )
    finally:
        save_network(make_tiny_network("tabicl", "classification", seed=0), tiny_checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    proba_reloaded = np.asarray(json.loads(expected_path.read_text()))
    np.testing.assert_allclose(proba_reloaded, proba.to_numpy(), atol=1e-5)

    # refit_full: an in-context model refit on all rows is just a larger context.
    refit_names = predictor.refit_full(model="TabICL")
    assert refit_names["TabICL"] == "TabICL_FULL"
    proba_full = predictor.predict_proba(test, model="TabICL_FULL")
    assert proba_full.shape == (len(test), 2) and np.isfinite(proba_full.to_numpy()).all()
    assert predictor._trainer.load_model("TabICL_FULL").get_info()["val_in_fit"] is False


@pytest.mark.slow
def test_bagged_fit_uses_sequential_folds_and_refits_one_model(tiny_checkpoint, breast_cancer, tmp_path):
    train, test = breast_cancer
    predictor = TabularPredictor(label=LABEL, path=str(tmp_path / "bag"), verbosity=0).fit(
        train,
        hyperparameters={"TABICL": {"n_estimators": 1, "checkpoint": tiny_checkpoint}},
        num_bag_folds=3,
        num_bag_sets=1,
        fit_weighted_ensemble=False,
        num_cpus=1,
        num_gpus=0,
    )
    assert predictor.model_names() == ["TabICL_BAG_L1"]
    bag = predictor._trainer.load_model("TabICL_BAG_L1")
    assert bag._get_model_params().get("fold_fitting_strategy", "sequential_local") == "sequential_local"
    # refit_folds=True: the three fold models only produce out-of-fold predictions; one full-data child is served.
    assert len(bag.models) == 1
    oof = predictor.predict_proba_oof()
    assert oof.shape == (len(train), 2) and np.isfinite(oof.to_numpy()).all()
    proba = predictor.predict_proba(test)
    assert proba.shape == (len(test), 2) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    refit_names = predictor.refit_full()
    assert predictor.predict_proba(test, model=refit_names["TabICL_BAG_L1"]).shape == (len(test), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fit_runs_on_cuda_and_saved_model_loads_on_cpu(tiny_checkpoint, breast_cancer, tmp_path):
    train, test = breast_cancer
    predictor_path = tmp_path / "gpu"
    predictor = TabularPredictor(label=LABEL, path=str(predictor_path), verbosity=0).fit(
        train,
        hyperparameters={"TABICL": {"n_estimators": 2, "checkpoint": tiny_checkpoint}},
        fit_weighted_ensemble=False,
        num_gpus=1,
    )
    model = predictor._trainer.load_model("TabICL")
    assert model.get_device() == "cuda"
    proba = predictor.predict_proba(test)
    out_path = tmp_path / "cpu.json"
    test_path = tmp_path / "test.pkl"
    test.to_pickle(test_path)
    code = textwrap.dedent(f"""
        import json, os
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        import pandas as pd, torch
        from autogluon.tabular import TabularPredictor
        assert not torch.cuda.is_available()
        predictor = TabularPredictor.load(r"{predictor_path}")
        assert predictor._trainer.load_model("TabICL").get_device() == "cpu"
        json.dump(predictor.predict_proba(pd.read_pickle(r"{test_path}")).to_numpy().tolist(), open(r"{out_path}", "w"))
    """)
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    # bf16 autocast on CUDA vs fp32 on CPU: close, not identical.
    np.testing.assert_allclose(np.asarray(json.loads(out_path.read_text())), proba.to_numpy(), atol=5e-2)
