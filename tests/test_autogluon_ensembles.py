"""The TFMs as AutoGluon ensemble citizens in worker processes: parallel fold fitting and DyStack's ray sub-fit.

Both paths run models in fresh ray worker processes that never executed ``import autogluon_tfm`` themselves; the
string keys must still resolve to this project's models (and never be dropped silently).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from autogluon_tfm.checkpoints import make_tiny_network, save_network

pytest.importorskip("ray")
from autogluon.tabular import TabularPredictor  # noqa: E402

LABEL = "target"


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tiny")
    paths = {}
    for model, arch in {"tabicl": "tabicl", "tabpfnv2": "tabpfn_v2"}.items():
        paths[model] = str(folder / f"{model}.safetensors")
        save_network(make_tiny_network(arch, "classification", seed=2), paths[model])
    return paths


@pytest.fixture(scope="module")
def binary_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(150, 4)), columns=[f"x{i}" for i in range(4)])
    frame[LABEL] = np.where(frame["x0"] - frame["x1"] > 0, "a", "b")
    return frame


def _stacked_fit_kwargs(tiny_checkpoints: dict[str, str], num_bag_folds: int) -> dict:
    """TabularPredictor.fit arguments shared by both tests: two TFMs and LightGBM, bagged, one stacker level."""
    hyperparameters = {
        "TABICL": {"n_estimators": 1, "checkpoint": tiny_checkpoints["tabicl"]},
        "TABPFNV2": {"n_estimators": 1, "checkpoint": tiny_checkpoints["tabpfnv2"]},
        "GBM": {"num_boost_round": 10},
    }
    return dict(hyperparameters=hyperparameters, num_bag_folds=num_bag_folds, num_bag_sets=1, num_stack_levels=1,
                num_cpus=2, num_gpus=0)


@pytest.mark.slow
def test_parallel_local_bagging_with_stacking(tiny_checkpoints, binary_frame, tmp_path):
    predictor = TabularPredictor(label=LABEL, path=str(tmp_path), verbosity=0).fit(
        binary_frame,
        **_stacked_fit_kwargs(tiny_checkpoints, num_bag_folds=3),
        ag_args_ensemble={"fold_fitting_strategy": "parallel_local"},
        raise_on_model_failure=True,
    )
    names = set(predictor.model_names())
    assert {"TabICL_BAG_L1", "TabPFNv2_BAG_L1", "LightGBM_BAG_L1"} <= names
    assert {"TabICL_BAG_L2", "TabPFNv2_BAG_L2"} <= names  # stacker level too
    bag = predictor._trainer.load_model("TabICL_BAG_L1")
    assert bag._get_model_params()["fold_fitting_strategy"] == "parallel_local"
    proba = predictor.predict_proba(binary_frame.drop(columns=LABEL).iloc[:20])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.slow
def test_dynamic_stacking_sub_fit_in_ray_resolves_string_keys(tiny_checkpoints, binary_frame, tmp_path):
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # AutoGluon's logger does not propagate
    ag_logger = logging.getLogger("autogluon")
    ag_logger.addHandler(handler)
    try:
        predictor = TabularPredictor(label=LABEL, path=str(tmp_path), verbosity=2).fit(
            binary_frame,
            **_stacked_fit_kwargs(tiny_checkpoints, num_bag_folds=2),
            dynamic_stacking=True,
            ds_args={"memory_safe_fits": True, "enable_ray_logging": False},
        )
    finally:
        ag_logger.removeHandler(handler)
    log = "\n".join(records)
    import ray

    # memory_safe_fits=True runs the sub-fit in a ray worker (AutoGluon logs that only when it starts ray itself).
    assert ray.is_initialized()
    assert "Exception encountered during DyStack sub-fit" not in log, log[-3000:]
    assert "Unknown model type" not in log
    # The sub-fit's holdout leaderboard lists our models: they were fit inside the ray worker.
    holdout_board = log.split("Leaderboard on holdout data (DyStack)", 1)[1].split("DyStack   runtime", 1)[0]
    assert "TabICL_BAG_L1" in holdout_board and "TabPFNv2_BAG_L1" in holdout_board, holdout_board
    names = set(predictor.model_names())
    assert any(name.startswith("TabICL") for name in names) and any(name.startswith("TabPFNv2") for name in names)
