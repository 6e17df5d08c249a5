"""AutoGluon regression and quantile problems through the shared adapter (``TabICLModel`` -> ``TFMRegressor``).

The fits use tiny randomly initialised TabICL networks saved to disk, so prediction quality is not asserted, only
behaviour: AutoGluon's own model checklist, a TabularPredictor fit with save / load in a fresh process and
refit_full, and one hyperparameter dict serving classification and regression.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers import subprocess_env

import autogluon_tfm  # noqa: F401 - registers TABICL
from autogluon_tfm.autogluon import TabICLModel
from autogluon_tfm.checkpoints import CheckpointMismatchError, make_tiny_network, save_network
from autogluon_tfm.inference import TFMClassifier, TFMRegressor

pytest.importorskip("autogluon.tabular")
from autogluon.tabular import TabularPredictor  # noqa: E402

LABEL = "target"




@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for task in ("classification", "regression"):
        paths[task] = str(save_network(make_tiny_network("tabicl", task, seed=0), folder / f"tiny-{task}.safetensors"))
    return paths


@pytest.fixture(scope="module")
def diabetes() -> tuple[pd.DataFrame, pd.DataFrame]:
    """240 train / 80 test rows of sklearn's diabetes data (target x 10 + 5000, far from z-scored), plus a
    categorical column with NaN."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True).frame.rename(columns={"target": LABEL})
    data = data.sample(n=320, random_state=0).reset_index(drop=True)
    data[LABEL] = data[LABEL] * 10 + 5000
    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], size=len(data)).astype(object)
    colour[rng.random(len(data)) < 0.1] = None
    data.insert(0, "colour", pd.Series(colour, dtype="category"))
    return data.iloc[:240].reset_index(drop=True), data.iloc[240:].reset_index(drop=True)


def _initialized_model(hyperparameters: dict, problem_type: str = "regression") -> TabICLModel:
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    y = pd.Series([0.5, 1.5, 0.25, 3.0] if problem_type in ("regression", "quantile") else [0, 1, 0, 1])
    if problem_type == "quantile":  # AutoGluon hands quantile levels to models as an auxiliary parameter
        hyperparameters = {**hyperparameters, "ag.quantile_levels": [0.1, 0.5, 0.9]}
    model = TabICLModel(path="", name="TabICL", problem_type=problem_type, hyperparameters=hyperparameters)
    model.initialize(X=X, y=y)
    return model, X, y


# ------------------------------------------------------------------------------------------------ adapter units
def test_estimator_class_follows_the_problem_type():
    assert TabICLModel.supported_problem_types() == ["binary", "multiclass", "regression", "quantile"]
    for problem_type, expected in [
        ("binary", TFMClassifier),
        ("multiclass", TFMClassifier),
        ("regression", TFMRegressor),
        ("quantile", TFMRegressor),
    ]:
        model, _, _ = _initialized_model({}, problem_type)
        assert model._get_estimator_cls() is expected


def test_one_hyperparameter_dict_serves_classification_and_regression():
    hyperparameters = {
        "n_estimators": 3,
        "softmax_temperature": 0.5,  # classification only: ignored for regression
        "checkpoint": {"classification": "clf.safetensors", "regression": "reg.safetensors"},
    }
    regression, _, _ = _initialized_model(hyperparameters, "regression")
    params_before = dict(regression.params)
    kwargs = regression._get_estimator_kwargs(device="cpu")
    assert kwargs["checkpoint"] == "reg.safetensors" and kwargs["n_estimators"] == 3
    assert "softmax_temperature" not in kwargs and kwargs["model"] == "tabicl"
    TFMRegressor(**kwargs)  # every kwarg is a TFMRegressor argument
    assert dict(regression.params) == params_before  # the dict inside AutoGluon's params is untouched

    binary, _, _ = _initialized_model(hyperparameters, "binary")
    kwargs = binary._get_estimator_kwargs(device="cpu")
    assert kwargs["checkpoint"] == "clf.safetensors" and kwargs["softmax_temperature"] == 0.5

    only_clf, _, _ = _initialized_model({"checkpoint": {"classification": "clf.safetensors"}}, "regression")
    assert only_clf._get_estimator_kwargs(device="cpu")["checkpoint"] == "default"


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"checkpoint": {"regresion": "x"}}, "unknown keys \\['regresion'\\]"),
        ({"not_a_param": 1}, "Unknown hyperparameter"),
    ],
)
def test_bad_hyperparameters_raise(hyperparameters, message):
    model, _, _ = _initialized_model(hyperparameters)
    with pytest.raises(ValueError, match=message):
        model._get_estimator_kwargs(device="cpu")


def test_classification_checkpoint_for_regression_fails_clearly(checkpoints):
    model, X, y = _initialized_model({"checkpoint": checkpoints["classification"], "n_estimators": 1})
    with pytest.raises(CheckpointMismatchError, match="not a regressor.*checkpoint=\\{'classification'"):
        model.fit(X=X, y=y)


def test_regression_and_quantile_predictions_have_autogluon_shapes(checkpoints):
    for problem_type, shape in [("regression", (4,)), ("quantile", (4, 3))]:
        model, X, y = _initialized_model({"checkpoint": checkpoints["regression"], "n_estimators": 2}, problem_type)
        model.fit(X=X, y=y)
        prediction = model.predict(X)
        assert prediction.shape == shape and np.isfinite(prediction).all()
        if problem_type == "quantile":
            assert (np.diff(prediction, axis=1) >= 0).all()


# ------------------------------------------------------------------------------------------ AutoGluon fits (slow)
@pytest.mark.slow
def test_verify_model_with_fit_helper_regression_and_quantile(checkpoints, tmp_path, monkeypatch):
    """AutoGluon's model checklist for regression and quantile problems: toy fits, 2-fold bag, refit_full, seeds."""
    from autogluon.tabular.testing import FitHelper

    monkeypatch.chdir(tmp_path)  # FitHelper writes ./datasets/...
    FitHelper.verify_model(
        model_cls=TabICLModel,
        model_hyperparameters={"n_estimators": 2, "checkpoint": dict(checkpoints)},
        problem_types=["regression", "quantile"],
        refit_full=True,
        verify_load_wo_cuda=True,
    )


@pytest.mark.slow
def test_predictor_regression_fit_save_load_refit(checkpoints, diabetes, tmp_path):
    train, test = diabetes
    # One hyperparameter dict for every problem type (classification-only arguments are ignored here).
    hyperparameters = {"n_estimators": 2, "softmax_temperature": 0.9, "checkpoint": dict(checkpoints)}
    predictor_path = tmp_path / "predictor"
    predictor = TabularPredictor(label=LABEL, path=str(predictor_path), problem_type="regression", verbosity=0).fit(
        train, hyperparameters={"TABICL": hyperparameters, "GBM": {}}, num_cpus=1, num_gpus=0
    )
    leaderboard = predictor.leaderboard(test)
    assert {"TabICL", "LightGBM", "WeightedEnsemble_L2"} <= set(leaderboard["model"])
    model = predictor._trainer.load_model("TabICL")
    assert isinstance(model.model, TFMRegressor) and model.model.checkpoint == checkpoints["regression"]

    pred = predictor.predict(test, model="TabICL")
    assert pred.shape == (len(test),) and np.isfinite(pred.to_numpy()).all()
    low, high = train[LABEL].min(), train[LABEL].max()
    assert (pred > low - (high - low)).all() and (pred < high + (high - low)).all()  # on the target's scale
    np.testing.assert_allclose(predictor.predict(test, model="TabICL"), pred, rtol=1e-6)  # deterministic

    # Save + load in a fresh process without the checkpoint files: the weights travel inside the saved model.
    out_path = tmp_path / "pred.json"
    test_path = tmp_path / "test.pkl"
    test.to_pickle(test_path)
    moved = {task: Path(path).rename(Path(path).with_suffix(".moved")) for task, path in checkpoints.items()}
    try:
        code = textwrap.dedent(f"""
            import json, pandas as pd
            from autogluon.tabular import TabularPredictor
            predictor = TabularPredictor.load(r"{predictor_path}")
            pred = predictor.predict(pd.read_pickle(r"{test_path}"), model="TabICL")
            json.dump(pred.tolist(), open(r"{out_path}", "w"))
        """)
        result = subprocess.run(
            [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=300
        )
    finally:
        for task, path in moved.items():
            path.rename(checkpoints[task])
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(json.loads(out_path.read_text()), pred.to_numpy(), rtol=1e-5)

    refit_names = predictor.refit_full(model="TabICL")
    pred_full = predictor.predict(test, model=refit_names["TabICL"])
    assert pred_full.shape == (len(test),) and np.isfinite(pred_full.to_numpy()).all()

    # The same dict fits a binary problem with the classification checkpoint.
    binary = train.assign(**{LABEL: (train[LABEL] > train[LABEL].median()).astype(int)})
    clf_predictor = TabularPredictor(label=LABEL, path=str(tmp_path / "binary"), verbosity=0).fit(
        binary, hyperparameters={"TABICL": hyperparameters}, fit_weighted_ensemble=False, num_cpus=1, num_gpus=0
    )
    clf_model = clf_predictor._trainer.load_model("TabICL")
    assert isinstance(clf_model.model, TFMClassifier) and clf_model.model.checkpoint == checkpoints["classification"]
    assert clf_predictor.predict_proba(test).shape == (len(test), 2)
