"""Plumbing of the benchmark scripts (benchmarks/classification.py, benchmarks/regression.py) with tiny networks."""

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

from benchmarks import classification, regression  # noqa: E402
from benchmarks.datasets import DATASETS  # noqa: E402

TINY = ["--checkpoint", "tiny", "--checkpoint-tabpfnv2", "tiny", "--checkpoint-mitra", "tiny", "--n-estimators", "2"]


def _run(script, tmp_path: Path, name: str, *argv: str) -> tuple[int, pd.DataFrame, str]:
    out = tmp_path / f"{name}.md"
    code = script.main([*argv, "--out", str(out)])
    if code != 0:
        return code, pd.DataFrame(), ""
    return code, pd.read_csv(out.with_suffix(".csv"), keep_default_na=False), out.read_text()


@pytest.mark.parametrize(
    ("script", "dataset", "metric"),
    [(classification, "iris", "accuracy"), (regression, "diabetes", "rmse")],
)
def test_quick_mode_runs_every_method_with_tiny_networks(script, dataset: str, metric: str, tmp_path: Path) -> None:
    code, raw, report = _run(script, tmp_path, "quick", "--quick", "--datasets", dataset, "--seeds", "1", *TINY)
    assert code == 0
    assert list(raw["method"]) == list(script.METHODS)
    assert (raw["error"] == "").all(), raw["error"].tolist()
    assert np.isfinite(raw[metric].astype(float)).all()
    tfm_rows = raw[raw["method"].isin(["tabicl", "tabpfnv2", "mitra"])]
    assert (tfm_rows["checkpoint"] == "tiny").all() and (
        raw.loc[~raw.index.isin(tfm_rows.index), "checkpoint"] == ""
    ).all()
    for label in script.METHOD_LABELS.values():
        assert f"| {label} " in report or f"| {label} |" in report
    for label in ("TabICL", "TabPFNv2", "Mitra"):
        assert f"- {label} beats " in report  # one summary line (at least) per TFM
    assert f"| {dataset} | {DATASETS[dataset].task} |" in report and "## Errors" not in report


def test_regression_metrics_on_the_original_scale(tmp_path: Path) -> None:
    code, raw, report = _run(
        regression, tmp_path, "reg", "--datasets", "diabetes", "--seeds", "1", "--methods", "rf,mean"
    )
    assert code == 0
    rows = raw.set_index("method")
    # diabetes targets range ~25..346 (std ~77): RMSE on that scale, not on standardised targets
    assert 40 < float(rows.loc["rf", "rmse"]) < float(rows.loc["mean", "rmse"]) < 100
    assert float(rows.loc["rf", "r2"]) > 0.2 and float(rows.loc["mean", "r2"]) <= 0.01
    assert "beats LightGBM" not in report and "Mean rank by RMSE over 1 datasets: RF 1.00, Mean 2.00." in report
    split = regression.make_split(pd.DataFrame({"a": range(100)}), np.arange(100.0), 0, 0.3, 50, 20)
    assert (len(split.y_train), len(split.y_test)) == (50, 20)
    assert regression.score(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == {"rmse": pytest.approx(2**0.5), "r2": -1.0}


def test_merge_csv_joins_earlier_rows_and_checks_the_splits(tmp_path: Path) -> None:
    common = ["--datasets", "iris,wine", "--seeds", "1", "--max-test", "40"]
    code, first, _ = _run(classification, tmp_path, "baselines", *common, "--methods", "rf,majority")
    assert code == 0
    earlier = tmp_path / "baselines.csv"

    # A run of one TFM only, merged with the baselines: one report with all three methods, in report order.
    code, merged, report = _run(
        classification, tmp_path, "merged", *common, "--methods", "mitra", *TINY, "--merge-csv", str(earlier)
    )
    assert code == 0
    assert merged["method"].tolist() == ["mitra", "rf", "majority"] * 2
    assert merged["dataset"].tolist() == ["iris"] * 3 + ["wine"] * 3
    rf = merged[merged["method"] == "rf"].reset_index(drop=True)
    pd.testing.assert_series_equal(rf["accuracy"], first[first["method"] == "rf"].reset_index(drop=True)["accuracy"])
    assert "| Mitra | RF | Majority |" in report and "merged from" in report
    assert "- Mitra beats the majority class" in report and "- Mitra reaches RF's accuracy" in report
    assert "TabICL" not in report.split("## Accuracy")[1]

    # The merged CSV may be the output itself; re-running a method replaces its earlier rows.
    in_place = tmp_path / "merged.md"
    argv = [*common, "--methods", "majority", "--merge-csv", str(in_place.with_suffix(".csv")), "--out", str(in_place)]
    assert classification.main(argv) == 0
    again = pd.read_csv(in_place.with_suffix(".csv"), keep_default_na=False)
    assert sorted(again["method"]) == sorted(merged["method"])

    # Other split settings than the merged rows' are refused before anything runs.
    code, _, _ = _run(
        classification, tmp_path, "bad", *common[:-1], "30", "--methods", "majority", "--merge-csv", str(earlier)
    )
    assert code == 2 and not (tmp_path / "bad.csv").exists()
    # ... and so is another benchmark's CSV.
    argv = ["--datasets", "diabetes", "--seeds", "1", "--methods", "mean", "--merge-csv", str(earlier)]
    assert _run(regression, tmp_path, "wrong", *argv)[0] == 2


def test_quick_defaults_and_checkpoint_options() -> None:
    args = regression.parse_args(["--quick"])
    assert args.seeds == 2 and args.datasets == list(regression.QUICK_DATASETS)
    assert all(DATASETS[name].task == "regression" for name in args.datasets)
    assert args.methods == ["tabicl", "tabpfnv2", "mitra", "rf", "lgbm", "mean"]
    args = classification.parse_args(["--checkpoint-tabicl", "a", "--checkpoint-mitra", "b"])
    assert (args.checkpoint_tabicl, args.checkpoint_tabpfnv2, args.checkpoint_mitra) == ("a", "default", "b")
    assert args.seeds == 5 and "iris" in args.datasets and "diabetes" not in args.datasets
    with pytest.raises(SystemExit):
        regression.parse_args(["--datasets", "iris"])
