"""Saved AutoGluon models and their weights: stored inside the model or by reference to a large checkpoint.

A tiny random TabICL network saved in the official ``.ckpt`` format stands in for a full-size official checkpoint;
``ag.store_weights_max_mb`` is set below its size (~0.1 MB) so that it counts as large. The checks: the saved model
does not hold the weights, it loads and predicts in a fresh offline process without CUDA, it finds the checkpoint
again in a moved cache, and a missing or changed checkpoint fails with an error that says what to do. Finetuned
networks and small networks are always stored inside.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import subprocess_env

from autogluon_tfm import TFMClassifier
from autogluon_tfm.autogluon.persistence import (
    MB,
    CheckpointReferenceError,
    network_nbytes,
    store_by_reference,
    validate_store_weights,
)
from autogluon_tfm.checkpoints import make_tiny_network

pytest.importorskip("autogluon.tabular")
from autogluon.tabular import TabularPredictor  # noqa: E402

LABEL = "target"
OFFICIAL_NAME = "tabicl-classifier-v2-20260212.ckpt"  # the newest official name: "default" picks it from the cache
SMALL_MB = 0.05  # below the tiny network's ~0.1 MB: it counts as "large"


def _save_official(network: torch.nn.Module, path: Path) -> Path:
    """A network in the official tabicl ``.ckpt`` layout ({"config", "state_dict"})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dict(network.config), "state_dict": network.state_dict()}, path)
    return path


def _fake_hf_cache(root: Path, network: torch.nn.Module) -> Path:
    """A local Hugging Face cache holding ``network`` as the official TabICL classifier file; returns its path."""
    repo = root / "models--jingang--TabICL"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return _save_official(network, repo / "snapshots" / revision / OFFICIAL_NAME)


def _data(n: int = 90, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(4)])
    frame[LABEL] = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return frame


# ------------------------------------------------------------------------------------------------ policy (no fits)
@pytest.fixture
def fitted_estimator(tmp_path) -> TFMClassifier:
    data = _data(40)
    path = _save_official(make_tiny_network(seed=2), tmp_path / "official.ckpt")
    return TFMClassifier(checkpoint=str(path), n_estimators=1, device="cpu").fit(data.drop(columns=LABEL), data[LABEL])


def test_policy_stores_small_and_references_large_checkpoints(fitted_estimator, tmp_path):
    size_mb = network_nbytes(fitted_estimator.network_) / MB
    assert 0.05 < size_mb < 1
    assert store_by_reference(fitted_estimator, "auto", max_mb=50) is None  # small: inside the saved model
    assert store_by_reference(fitted_estimator, True, max_mb=0) is None  # always inside
    reference = store_by_reference(fitted_estimator, "auto", max_mb=SMALL_MB)
    assert reference is not None
    assert reference.path == str((tmp_path / "official.ckpt").absolute())
    assert reference.size_bytes == (tmp_path / "official.ckpt").stat().st_size and len(reference.sha256) == 64
    assert "ag.store_weights_max_mb=0.05" in reference.policy
    assert store_by_reference(fitted_estimator, False, max_mb=50) is not None  # by reference whatever the size


def test_finetuned_or_in_memory_networks_are_never_referenced(fitted_estimator):
    data = _data(40)
    tuned = TFMClassifier(
        checkpoint=fitted_estimator.checkpoint, n_estimators=1, device="cpu", fine_tune="full", fine_tune_steps=1,
        validation_fraction=0.0,
    ).fit(data.drop(columns=LABEL), data[LABEL])
    assert store_by_reference(tuned, False, max_mb=0) is None  # the finetuned state exists nowhere else
    in_memory = TFMClassifier(checkpoint=make_tiny_network(seed=3), n_estimators=1, device="cpu")
    in_memory.fit(data.drop(columns=LABEL), data[LABEL])
    assert store_by_reference(in_memory, False, max_mb=0) is None  # no file to refer to


@pytest.mark.parametrize("store_weights, max_mb", [("yes", 50), (1, 50), ("auto", -1), ("auto", "50"), (True, None)])
def test_bad_store_weights_values_are_rejected(store_weights, max_mb):
    with pytest.raises(ValueError, match="ag.store_weights"):
        validate_store_weights(store_weights, max_mb)


# ----------------------------------------------------------------------------------------- TabularPredictor fits
@pytest.mark.slow
def test_large_official_checkpoint_is_stored_by_reference(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    checkpoint_file = _fake_hf_cache(cache, make_tiny_network(seed=7))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    data = _data()
    train, test = data.iloc[:70], data.iloc[70:].drop(columns=LABEL).reset_index(drop=True)
    predictor_path = tmp_path / "predictor"
    common = {"n_estimators": 1}  # checkpoint "default": the official file found in the (fake) local cache
    predictor = TabularPredictor(label=LABEL, path=str(predictor_path), verbosity=0).fit(
        train,
        hyperparameters={
            "TABICL": [
                {**common, "ag.store_weights_max_mb": SMALL_MB, "ag_args": {"name_suffix": "Ref"}},
                {**common, "ag_args": {"name_suffix": "Inside"}},  # default threshold: stored inside
            ]
        },
        num_bag_folds=2,  # the served child of a bag is saved by the bag (save_child), not by the trainer
        fit_weighted_ensemble=False,
        num_cpus=1,
        num_gpus=0,
    )
    names = {"ref": "TabICLRef_BAG_L1", "inside": "TabICLInside_BAG_L1"}
    assert set(predictor.model_names()) == set(names.values())
    expected = {key: predictor.predict_proba(test, model=name).to_numpy() for key, name in names.items()}

    # The saved child holds no weights: its pickle is smaller than the other one by about the network's size.
    child_pickles = {key: next((predictor_path / "models" / name).glob("*/model.pkl")) for key, name in names.items()}
    network_bytes = network_nbytes(make_tiny_network(seed=7))
    saved_difference = child_pickles["inside"].stat().st_size - child_pickles["ref"].stat().st_size
    assert saved_difference > 0.9 * network_bytes

    # A fresh process: offline, no CUDA; both models load and predict as before.
    test_path, out_path = tmp_path / "test.pkl", tmp_path / "out.json"
    test.to_pickle(test_path)
    code = textwrap.dedent(f"""
        import json, os
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        import pandas as pd
        from autogluon.tabular import TabularPredictor
        predictor = TabularPredictor.load(r"{predictor_path}")
        test = pd.read_pickle(r"{test_path}")
        ref = predictor._trainer.load_model("{names["ref"]}")
        child = ref.load_child(ref.models[0])
        assert child.weights_reference is not None and child.weights_reference.path.endswith("{OFFICIAL_NAME}")
        out = {{key: predictor.predict_proba(test, model=name).to_numpy().tolist() for key, name in {names!r}.items()}}
        json.dump(out, open(r"{out_path}", "w"))
    """)
    env = {**subprocess_env(), "HF_HUB_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(out_path.read_text())
    for key in names:
        np.testing.assert_allclose(np.asarray(reloaded[key]), expected[key], atol=1e-6)

    # The cache is gone: a clear error naming the checkpoint, the expected path and the ways out; the model that
    # stored its weights still predicts.
    moved = tmp_path / "hf_moved"
    shutil.move(cache, moved)
    predictor = TabularPredictor.load(str(predictor_path))
    with pytest.raises(CheckpointReferenceError) as error:
        predictor.predict_proba(test, model=names["ref"])
    message = str(error.value)
    for needed in (OFFICIAL_NAME, str(checkpoint_file), "missing", "HF_HUB_CACHE", "'ag.store_weights': True"):
        assert needed in message, needed
    np.testing.assert_allclose(predictor.predict_proba(test, model=names["inside"]).to_numpy(), expected["inside"])

    # The cache is found again by name once HF_HUB_CACHE points to its new place.
    monkeypatch.setenv("HF_HUB_CACHE", str(moved))
    predictor = TabularPredictor.load(str(predictor_path))
    np.testing.assert_allclose(predictor.predict_proba(test, model=names["ref"]).to_numpy(), expected["ref"])

    # Another file at the same place (e.g. a newer download) is not silently used.
    shutil.move(moved, cache)
    _save_official(make_tiny_network(seed=8), checkpoint_file)
    predictor = TabularPredictor.load(str(predictor_path))
    with pytest.raises(CheckpointReferenceError, match="different checkpoint"):
        predictor.predict_proba(test, model=names["ref"])
