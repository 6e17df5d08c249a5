"""The AutoGluon adapters' RAM / VRAM estimates (``TFMBaseModel._estimate_memory_usage_static`` and
``_estimate_gpu_memory_usage_static``): how they scale, and one real measurement (benchmarks/memory.py) below them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers import subprocess_env

from autogluon_tfm.autogluon import MitraModel, TabICLModel, TabPFNv2Model
from autogluon_tfm.autogluon.base import TFMBaseModel

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from benchmarks import memory  # noqa: E402

MODELS = [TabICLModel, TabPFNv2Model, MitraModel]


def _frame(n_rows: int, n_features: int) -> pd.DataFrame:
    values = np.random.default_rng(0).standard_normal((n_rows, n_features))
    return pd.DataFrame(values, columns=[f"f{j}" for j in range(n_features)])


def _ram(model_cls: type[TFMBaseModel], n_rows: int = 1000, n_features: int = 20, **hyperparameters) -> int:
    return model_cls._estimate_memory_usage_static(X=_frame(n_rows, n_features), hyperparameters=hyperparameters)


def _gpu(model_cls: type[TFMBaseModel], n_rows: int = 1000, n_features: int = 20, **hyperparameters) -> int:
    return model_cls._estimate_gpu_memory_usage_static(X=_frame(n_rows, n_features), hyperparameters=hyperparameters)


@pytest.mark.parametrize("model_cls", MODELS)
def test_estimates_grow_with_rows_features_and_members(model_cls):
    base = _ram(model_cls)
    assert base > TFMBaseModel._MEMORY_OVERHEAD_BYTES + model_cls.network_bytes_estimate
    assert _ram(model_cls, n_rows=4000) > base
    assert _ram(model_cls, n_features=80) > base
    # Members run per normalisation method, `batch_size` at a time: 16 members = 8 per call instead of 4. (On a
    # small table, where TabPFN v2's and Mitra's kept key/value caches fit the budget whatever the members: with
    # 8 Mitra members per call at 1,000 x 20 they would not, and the estimators then keep none.)
    small = _ram(model_cls, n_rows=200)
    assert _ram(model_cls, n_rows=200, n_estimators=16) > small
    assert _ram(model_cls, n_rows=200, n_estimators=16, batch_size=2) < _ram(model_cls, n_rows=200, n_estimators=16)
    for key, value in {"n_rows": 4000, "n_features": 80}.items():
        assert _gpu(model_cls, **{key: value}) > _gpu(model_cls)
    assert _gpu(model_cls, n_rows=200, n_estimators=16) > _gpu(model_cls, n_rows=200)


@pytest.mark.parametrize("model_cls", MODELS)
def test_activations_are_linear_in_cells(model_cls):
    """Doubling the rows doubles the activation term (the rest is fixed or tiny)."""
    fixed = TFMBaseModel._MEMORY_OVERHEAD_BYTES + model_cls.network_bytes_estimate
    small, large = _ram(model_cls, n_rows=2000) - fixed, _ram(model_cls, n_rows=4000) - fixed
    assert large / small == pytest.approx(2.0, rel=0.02)


def test_tabicl_estimate_is_capped_by_its_memory_plan():
    """TabICL's chunked inference bounds its working memory: at 10K-100K rows the estimate stops growing linearly
    (the linear model said 23 GB at 10K x 50 and 225 GB at 100K x 50, so AutoGluon skipped such tables)."""
    linear = super(TabICLModel, TabICLModel)._activation_bytes_estimate
    sizes = [(2000, 20), (10_000, 50), (30_000, 50), (100_000, 50)]
    estimates = [_ram(TabICLModel, n_rows=n, n_features=f) for n, f in sizes]
    assert all(a < b for a, b in zip(estimates, estimates[1:]))
    # Small tables: the linear model, unchanged; large ones: capped well below it.
    small = _frame(2000, 20)
    assert TabICLModel._activation_bytes_estimate(small, {}) == linear(small, {})
    big = _frame(100_000, 50)
    assert TabICLModel._activation_bytes_estimate(big, {})[0] < 0.2 * linear(big, {})[0]
    assert estimates[-1] < 20 * 1024**3  # within ag.max_rows=100K on a 24 GB machine


def test_test_rows_come_from_x_val():
    X = _frame(1000, 20)
    without = TabICLModel._estimate_memory_usage_static(X=X, hyperparameters={})
    with_small_val = TabICLModel._estimate_memory_usage_static(X=X, X_val=_frame(10, 20), hyperparameters={})
    with_large_val = TabICLModel._estimate_memory_usage_static(X=X, X_val=_frame(1000, 20), hyperparameters={})
    assert with_small_val < without < with_large_val


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("model_cls", MODELS)
def test_finetuning_adds_memory(model_cls, mode):
    plain = _ram(model_cls)
    tuned = _ram(model_cls, fine_tune=mode)
    assert tuned > plain + 4 * model_cls.network_bytes_estimate
    assert _gpu(model_cls, fine_tune=mode) > _gpu(model_cls)


@pytest.mark.parametrize("model_cls", MODELS)
def test_gpu_estimate_shares_the_activation_model(model_cls):
    X = _frame(2000, 30)
    ram = model_cls._estimate_memory_usage_static(X=X, hyperparameters={})
    gpu = model_cls._estimate_gpu_memory_usage_static(X=X, hyperparameters={})
    assert 0 < gpu <= ram
    # Same activations on the device as in RAM: only the fixed parts differ.
    ram_activations = (
        ram
        - TFMBaseModel._MEMORY_OVERHEAD_BYTES
        - model_cls.network_bytes_estimate
        - 4 * X.memory_usage(index=True, deep=True).sum()
    )
    gpu_activations = gpu - TFMBaseModel._CUDA_CONTEXT_BYTES - model_cls.network_bytes_estimate
    assert gpu_activations == pytest.approx(ram_activations, rel=0.01)
    # A GPU fit keeps the activations off the host; a fit without GPU needs no VRAM.
    ram_gpu_fit = model_cls._estimate_memory_usage_static(X=X, hyperparameters={}, num_gpus=1)
    assert ram_gpu_fit == pytest.approx(ram - ram_activations, rel=0.01)
    assert model_cls._estimate_gpu_memory_usage_static(X=X, hyperparameters={}, num_gpus=0) == 0


def test_autogluon_sees_both_estimates():
    assert TabICLModel.can_estimate_memory_usage_static()
    assert TabICLModel.can_estimate_gpu_memory_usage_static()
    X = _frame(500, 10)
    y = pd.Series(np.arange(500) % 2)
    gpu = TabPFNv2Model.estimate_gpu_memory_usage_static(X=X, y=y, hyperparameters={"n_estimators": 4})
    assert gpu == TabPFNv2Model._estimate_gpu_memory_usage_static(
        X=X, hyperparameters={"n_estimators": 4}, problem_type="binary", num_classes=2
    )


def test_measured_peak_stays_below_the_estimate(monkeypatch):
    """A mid-size point where activations dominate (~10 s): the official-width TabPFNv2 with one block (same
    working memory as the full network) on 1,000 + 500 rows x 50 features, 8 members, in a fresh process (the
    training rows run alone, then the test rows against their cached keys/values)."""
    for name, value in subprocess_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = memory.measure("tabpfnv2", "1-block", 1000, 50, 500, 8, "cpu")
    peak = memory.full_depth_peak(result)
    estimate = memory.estimate_bytes("tabpfnv2", 1000, 50, 500, 8)
    fixed = TFMBaseModel._MEMORY_OVERHEAD_BYTES + TabPFNv2Model.network_bytes_estimate
    assert estimate - fixed > 0.5 * estimate  # the activation term, not the fixed overhead, is what is tested
    assert peak <= estimate <= 2 * peak, (peak / 2**20, estimate / 2**20)


def test_kept_key_value_caches_count_only_when_the_estimator_keeps_them():
    from autogluon_tfm.inference.base import InContextEstimator, train_cache_budget

    assert TabICLModel._kept_kv_cache_bytes(1000, 20, {}) == 0  # TabICL's caches are in its own memory plan
    kept = TabPFNv2Model._kept_kv_cache_bytes(1000, 11, {"n_estimators": 8})
    assert kept == 8 * 4 * 1000 * 11 * 4 * 192  # first-head keys/values, 12 blocks, 8 members
    # Mitra keeps every head's keys/values: capped by the cache budget, and none when one call's would not fit.
    assert MitraModel._kept_kv_cache_bytes(1000, 21, {"n_estimators": 8, "batch_size": 1}) == min(
        8 * 4 * 1000 * 21 * 24 * 512, train_cache_budget(InContextEstimator.train_cache_max_bytes)
    )
    assert MitraModel._kept_kv_cache_bytes(1000, 21, {"n_estimators": 16, "batch_size": 8}) == 0  # 8 per call
    # A class tree keeps one cache per node: about one full cache per level (2 per call: 5 classes -> 3 levels).
    assert TabPFNv2Model._kept_kv_cache_bytes(1000, 11, {"n_estimators": 8}, num_classes=5) == 3 * kept
    assert TabPFNv2Model._kept_kv_cache_bytes(1000, 11, {"n_estimators": 8}, num_classes=2) == kept
    tree_of_tens = {"n_estimators": 8, "max_classes_per_call": 10}
    assert TabPFNv2Model._kept_kv_cache_bytes(1000, 11, tree_of_tens, num_classes=26) == 2 * kept
    assert TabPFNv2Model._kept_kv_cache_bytes(1000, 11, tree_of_tens, num_classes=10) == kept
    # TabICL's per-node caches too, where its memory plan (not the linear model) decides the estimate.
    X = _frame(20_000, 50)
    binary, five = (TabICLModel._activation_bytes_estimate(X, {}, None, k)[0] for k in (2, 5))
    assert five > binary

