"""AutoGluon adapters of all three architectures: TABPFNV2 and MITRA next to TABICL.

Each adapter is a thin subclass of the shared :class:`TFMBaseModel`; these tests check what differs between them
(keys, supported problem types, registry entries) and run AutoGluon's own model checklist and a mixed
TabularPredictor fit with tiny random networks, so behaviour is asserted, not quality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import autogluon_tfm
from autogluon_tfm.autogluon import MitraModel, TabICLModel, TabPFNv2Model
from autogluon_tfm.autogluon.base import TFMBaseModel
from autogluon_tfm.checkpoints import make_tiny_network, save_network
from autogluon_tfm.checkpoints.io import model_architecture

pytest.importorskip("autogluon.tabular")
from autogluon.tabular import TabularPredictor  # noqa: E402
from autogluon.tabular.models.mitra.mitra_model import MitraModel as BuiltinMitraModel  # noqa: E402
from autogluon.tabular.registry import ag_model_registry  # noqa: E402

ADAPTERS = {"tabicl": TabICLModel, "tabpfnv2": TabPFNv2Model, "mitra": MitraModel}
ARCH = {model: model_architecture(model) for model in ADAPTERS}
LABEL = "target"


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict[str, dict[str, str]]:
    """model name -> {"classification": path, "regression": path} of tiny random networks."""
    folder = tmp_path_factory.mktemp("tiny")
    out: dict[str, dict[str, str]] = {}
    for model, arch in ARCH.items():
        out[model] = {}
        for task in ("classification", "regression"):
            path = folder / f"{model}-{task}.safetensors"
            save_network(make_tiny_network(arch, task, seed=1), path)
            out[model][task] = str(path)
    return out


def test_public_api_exports_all_three_adapters():
    assert autogluon_tfm.TabPFNv2Model is TabPFNv2Model
    assert autogluon_tfm.MitraModel is MitraModel
    for cls in ADAPTERS.values():
        assert issubclass(cls, TFMBaseModel)
        assert cls.__dict__.get("_fit") is None, "adapters stay thin: fitting lives in the shared base"


@pytest.mark.parametrize("model", sorted(ADAPTERS))
def test_keys_resolve_to_our_adapters(model):
    cls = ADAPTERS[model]
    assert ag_model_registry.key_to_cls_map()[cls.ag_key] is cls
    assert cls.estimator_model_name == model


def test_declared_keys_names_and_problem_types():
    assert (TabPFNv2Model.ag_key, TabPFNv2Model.ag_name) == ("TABPFNV2", "TabPFNv2")
    assert (MitraModel.ag_key, MitraModel.ag_name) == ("MITRA", "Mitra")
    assert TabPFNv2Model.supported_problem_types() == ["binary", "multiclass", "regression", "quantile"]
    # Mitra's regression head predicts one value per row: no quantiles.
    assert MitraModel.supported_problem_types() == ["binary", "multiclass", "regression"]
    # Fit order: TabICL, then TabPFNv2, then Mitra (the slowest), all before GBDTs cut by time limits matter less.
    assert TabICLModel.ag_priority > TabPFNv2Model.ag_priority > MitraModel.ag_priority


def test_unregister_restores_builtin_mitra_and_register_puts_ours_back():
    try:
        autogluon_tfm.unregister()
        keys = ag_model_registry.key_to_cls_map()
        assert keys["MITRA"] is BuiltinMitraModel
        assert "TABPFNV2" not in keys  # a new key: nothing to restore
    finally:
        autogluon_tfm.register()
    keys = ag_model_registry.key_to_cls_map()
    assert keys["MITRA"] is MitraModel and keys["TABPFNV2"] is TabPFNv2Model


@pytest.mark.parametrize("model", ["tabpfnv2", "mitra"])
def test_wrong_architecture_checkpoint_fails_clearly(model, tiny_checkpoints):
    other = "tabicl"
    train = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0) % 3, LABEL: np.arange(40) % 2})
    with pytest.raises(ValueError, match=f"model='{model}' was requested"):
        TabularPredictor(label=LABEL, verbosity=0).fit(
            train, hyperparameters={ADAPTERS[model].ag_key: {"checkpoint": tiny_checkpoints[other]}},
            raise_on_model_failure=True,
        )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tabpfnv2", "mitra"])
def test_verify_model_with_fit_helper(model, tiny_checkpoints, tmp_path, monkeypatch):
    """AutoGluon's own checklist: toy fits per problem type, 2-fold bag, refit_full, seeds, load without CUDA."""
    from autogluon.tabular.testing import FitHelper

    monkeypatch.chdir(tmp_path)  # FitHelper writes ./datasets/...
    cls = ADAPTERS[model]
    FitHelper.verify_model(
        model_cls=cls,
        model_hyperparameters={"n_estimators": 2, "checkpoint": dict(tiny_checkpoints[model])},
        problem_types=cls.supported_problem_types(),
        refit_full=True,
        verify_load_wo_cuda=True,
    )


def _toy_frame(problem_type: str, n: int = 160, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 4)), columns=[f"x{i}" for i in range(4)])
    frame["colour"] = pd.Series(rng.choice(["red", "green", "blue"], size=n), dtype="category")
    signal = frame["x0"] + 0.5 * frame["x1"] - (frame["colour"] == "red")
    if problem_type == "binary":
        frame[LABEL] = np.where(signal > 0, "yes", "no")
    elif problem_type == "multiclass":
        frame[LABEL] = pd.cut(signal, [-np.inf, -0.7, 0.3, np.inf], labels=["low", "mid", "high"]).astype(str)
    else:
        frame[LABEL] = 3.0 * signal + rng.normal(scale=0.1, size=n)
    return frame


@pytest.mark.slow
@pytest.mark.parametrize("problem_type", ["binary", "multiclass", "regression"])
def test_one_predictor_fits_all_three_tfms_with_gbdts(problem_type, tiny_checkpoints, tmp_path):
    data = _toy_frame(problem_type)
    train, test = data.iloc[:120], data.iloc[120:]
    hyperparameters = {
        cls.ag_key: {"n_estimators": 2, "checkpoint": dict(tiny_checkpoints[model])} for model, cls in ADAPTERS.items()
    }
    hyperparameters.update({"GBM": {"num_boost_round": 20}, "CAT": {"iterations": 20}})
    predictor = TabularPredictor(label=LABEL, problem_type=problem_type, path=str(tmp_path), verbosity=0).fit(
        train, hyperparameters=hyperparameters, num_cpus=1, num_gpus=0, raise_on_model_failure=True,
    )
    leaderboard = predictor.leaderboard(test)
    names = set(leaderboard["model"])
    assert {"TabICL", "TabPFNv2", "Mitra", "LightGBM", "CatBoost", "WeightedEnsemble_L2"} <= names
    # The weighted ensemble's candidates are the level-1 models; it keeps only those with non-zero weight.
    assert {"TabICL", "TabPFNv2", "Mitra"} <= set(predictor.model_names(stack_name="core", level=1))
    ensemble_of_tfms = predictor.fit_weighted_ensemble(base_models=["TabICL", "TabPFNv2", "Mitra"], name_suffix="TFM")
    kept = set(predictor._trainer.load_model(ensemble_of_tfms[0]).base_model_names)
    assert kept and kept <= {"TabICL", "TabPFNv2", "Mitra"}
    for name in ("TabICL", "TabPFNv2", "Mitra"):
        pred = predictor.predict(test, model=name)
        assert len(pred) == len(test)
        if problem_type == "regression":
            assert np.isfinite(pred.to_numpy()).all()
        else:
            assert set(pred.unique()) <= set(train[LABEL].unique())
            proba = predictor.predict_proba(test, model=name)
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_mitra_finetunes_when_its_card_says_so_with_autogluons_validation_rows(tmp_path):
    import json

    # A tiny Mitra regression checkpoint whose card recommends finetuning, as the shipped mitra-reg-small's does.
    path = tmp_path / "mitra-carded.safetensors"
    save_network(make_tiny_network("mitra", "regression", seed=1), path)
    path.with_suffix(".json").write_text(json.dumps({"inference_defaults": {"fine_tune": "full", "fine_tune_steps": 3}}))
    data = _toy_frame("regression")
    predictor = TabularPredictor(label=LABEL, path=str(tmp_path / "ag"), verbosity=0).fit(
        data.iloc[:120], hyperparameters={"MITRA": {"n_estimators": 1, "checkpoint": str(path)}},
        num_cpus=1, num_gpus=0, raise_on_model_failure=True,
    )
    estimator = predictor._trainer.load_model("Mitra").model
    assert (estimator.fine_tune, estimator.fine_tune_, estimator.fine_tune_steps_) == ("auto", "full", 3)
    report = estimator.fine_tune_report_
    assert report is not None and report.steps_run == 3 and report.initial_loss is not None  # AutoGluon's X_val
    assert np.isfinite(np.asarray(predictor.predict(data.iloc[120:]), dtype=float)).all()


@pytest.mark.slow
def test_quantile_problem_uses_tabicl_and_tabpfnv2_and_skips_mitra(tiny_checkpoints, tmp_path):
    data = _toy_frame("regression")
    hyperparameters = {
        cls.ag_key: {"n_estimators": 2, "checkpoint": dict(tiny_checkpoints[model])} for model, cls in ADAPTERS.items()
    }
    predictor = TabularPredictor(
        label=LABEL, problem_type="quantile", quantile_levels=[0.1, 0.5, 0.9], path=str(tmp_path), verbosity=0
    ).fit(data.iloc[:120], hyperparameters=hyperparameters, num_cpus=1, num_gpus=0)
    names = set(predictor.model_names())
    assert {"TabICL", "TabPFNv2"} <= names and "Mitra" not in names
    quantiles = predictor.predict(data.iloc[120:], model="TabPFNv2")
    assert quantiles.shape == (40, 3)
    assert (np.diff(quantiles.to_numpy(), axis=1) >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("problem_type", ["regression", "quantile"])
def test_regression_finetuning_through_tabular_predictor(problem_type, tiny_checkpoints, tmp_path):
    data = _toy_frame("regression")
    train, test = data.iloc[:120], data.iloc[120:]
    hyperparameters = {
        "TABPFNV2": {"fine_tune": "full", "fine_tune_steps": 3, "n_estimators": 2,
                     "checkpoint": dict(tiny_checkpoints["tabpfnv2"])}
    }
    quantiles = {"quantile_levels": [0.1, 0.5, 0.9]} if problem_type == "quantile" else {}
    predictor = TabularPredictor(
        label=LABEL, problem_type=problem_type, path=str(tmp_path), verbosity=0, **quantiles
    ).fit(train, hyperparameters=hyperparameters, num_cpus=1, num_gpus=0, raise_on_model_failure=True)
    estimator = predictor._trainer.load_model("TabPFNv2").model
    report = estimator.fine_tune_report_
    assert report is not None and report.steps_run == 3 and report.initial_loss is not None  # AutoGluon's X_val
    assert estimator.network_ is not None and 0 <= report.best_step <= 3
    pred = predictor.predict(test)
    assert len(pred) == len(test) and np.isfinite(np.asarray(pred, dtype=float)).all()


# --------------------------------------------------------------------------------------------------- portfolios
@pytest.mark.parametrize("name", ["fast", "medium", "best_quality"])
def test_portfolios_name_registered_models_and_fit_tfms_first(name):
    from autogluon.tabular.models import LGBModel

    hyperparameters = autogluon_tfm.get_hyperparameters(name)
    keys = ag_model_registry.key_to_cls_map()
    assert set(hyperparameters) <= set(keys)
    assert "TABICL" in hyperparameters
    gbm_priority = ag_model_registry.priority(LGBModel)
    for key in ("TABICL", "TABPFNV2", "MITRA"):
        configs = hyperparameters.get(key, [])
        for config in configs if isinstance(configs, list) else [configs]:
            assert config["ag_args"]["priority"] > gbm_priority, (key, config)
            estimator_params = {k: v for k, v in config.items() if k != "ag_args"}
            assert set(estimator_params) <= TFMBaseModel._estimator_param_names()


def test_get_hyperparameters_returns_fresh_copies_and_rejects_unknown_names():
    first = autogluon_tfm.get_hyperparameters("fast")
    first["TABICL"]["n_estimators"] = 99
    assert "n_estimators" not in autogluon_tfm.get_hyperparameters("fast")["TABICL"]
    with pytest.raises(ValueError, match="Unknown portfolio 'huge'.*best_quality"):
        autogluon_tfm.get_hyperparameters("huge")


def test_cell_attention_models_declare_smaller_limits_than_tabicl():
    for cls in (TabPFNv2Model, MitraModel):
        aux = cls._default_auxiliary_params_extra
        assert (aux["max_rows"], aux["max_features"]) == (10_000, 500)
        assert "max_classes" not in aux  # more than 10 classes run hierarchically
    assert TabICLModel._default_auxiliary_params_extra["max_rows"] == 100_000


def test_too_many_rows_is_a_clean_autogluon_skip(tiny_checkpoints):
    data = _toy_frame("binary", n=120)
    hyperparameters = {
        "TABPFNV2": {"checkpoint": dict(tiny_checkpoints["tabpfnv2"]), "n_estimators": 1, "ag.max_rows": 50},
        "TABICL": {"checkpoint": dict(tiny_checkpoints["tabicl"]), "n_estimators": 1},
    }
    predictor = TabularPredictor(label=LABEL, verbosity=0).fit(data, hyperparameters=hyperparameters, num_gpus=0)
    assert "TabPFNv2" not in predictor.model_names() and "TabICL" in predictor.model_names()
