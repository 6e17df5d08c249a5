"""Plumbing of the benchmark scripts (benchmarks/classification.py, regression.py, many_classes.py,
finetune_modes.py) with tiny networks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

# benchmarks/ is a folder of the repository, not part of the installed package.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from benchmarks import classification, finetune_modes, many_classes, regression  # noqa: E402
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
    # --calibrate: classification only, parsed to what TFMClassifier(calibrate=...) takes; unset = the default.
    assert args.calibrate is None
    assert classification.parse_args(["--calibrate", "True"]).calibrate is True
    assert classification.parse_args(["--calibrate", "auto"]).calibrate == "auto"
    with pytest.raises(SystemExit):
        classification.parse_args(["--calibrate", "maybe"])
    with pytest.raises(SystemExit):
        regression.parse_args(["--calibrate", "true"])


def test_many_classes_records_the_class_tree_of_each_tfm(tmp_path: Path) -> None:
    assert many_classes.parse_args([]).datasets == ["letter", "libras_movement", "texture", "gss_vocab"]
    assert many_classes.parse_args([]).out.name == "many_classes.md"  # not classification.md
    code, raw, report = _run(
        many_classes, tmp_path, "many", "--quick", "--seeds", "1", "--methods", "tabicl,mitra,rf", *TINY
    )
    assert code == 0 and (raw["error"] == "").all(), raw["error"].tolist()
    rows = raw.set_index("method")
    assert (raw["dataset"] == "libras_movement").all() and (raw["n_classes"].astype(int) == 15).all()
    # 15 classes > the tiny networks' max_classes (10): a root and its child nodes, recorded for the TFMs only.
    assert float(rows.loc["tabicl", "tree_nodes"]) >= 3 and float(rows.loc["mitra", "tree_nodes"]) >= 3
    assert rows.loc["rf", "tree_nodes"] == ""
    assert "- TabICL beats RF on 0/1 by log loss" in report or "- TabICL beats RF on 1/1 by log loss" in report
    assert "- Mitra class-tree nodes (0 = flat): libras_movement " in report and "## Errors" not in report


def test_finetune_modes_runs_icl_full_and_lora_for_every_model(tmp_path: Path) -> None:
    assert len(finetune_modes.finetune_datasets()) >= 10
    assert all(1_000 <= DATASETS[name].n_rows <= 10_000 for name in finetune_modes.finetune_datasets())
    out = tmp_path / "modes.md"
    argv = ["--quick", "--checkpoint", "tiny", "--n-estimators", "2", "--steps", "3", "--out", str(out)]
    assert finetune_modes.main(argv) == 0
    raw = pd.read_csv(out.with_suffix(".csv"), keep_default_na=False)
    assert list(zip(raw["model"], raw["mode"])) == [
        (model, mode) for model in ("tabicl", "tabpfnv2", "mitra") for mode in ("none", "full", "lora")
    ]
    assert (raw["error"] == "").all(), raw["error"].tolist()
    tuned = raw[raw["mode"] != "none"]
    assert (tuned["steps_run"].astype(float) <= 3).all() and (tuned["time_limit"].astype(float) == 60.0).all()
    assert np.isfinite(tuned["val_initial"].astype(float)).all()
    assert (tuned["val_best"].astype(float) <= tuned["val_initial"].astype(float) + 1e-9).all()  # keeps the best
    report = out.read_text()
    for model in ("TabICL", "TabPFNv2", "Mitra"):
        assert f"| {model} | full | " in report and f"| {model} | LoRA | " in report
    assert "fine_tune_steps: 3 | learning_rate: 0.0005 | time_limit (s): 60" in report and "## Errors" not in report

    # A rerun of one model merged with the earlier CSV replaces that model's rows and keeps the others.
    argv = [*argv[:-1], str(tmp_path / "again.md"), "--models", "mitra", "--merge-csv", str(out.with_suffix(".csv"))]
    assert finetune_modes.main(argv) == 0
    again = pd.read_csv(tmp_path / "again.csv", keep_default_na=False)
    assert sorted(again["model"]) == sorted(raw["model"])


def test_finetune_modes_summary_counts_wins_over_icl() -> None:
    """Two datasets: full finetuning improves validation on both but test log loss on one only."""
    common = {"seed": 0, "model": "tabicl", "n_train": 100, "n_test": 50, "n_features": 3, "n_classes": 2,
              "error": "", "predict_s": 1.0}
    rows = []
    for dataset, icl_test, full_test in [("kr_vs_kp", 0.30, 0.20), ("splice", 0.40, 0.45)]:
        rows.append({**common, "dataset": dataset, "mode": "none", "test_log_loss": icl_test, "test_accuracy": 0.8,
                     "fit_s": 1.0})
        rows.append({**common, "dataset": dataset, "mode": "full", "test_log_loss": full_test, "test_accuracy": 0.9,
                     "fit_s": 9.0, "val_initial": 0.5, "val_best": 0.4, "best_step": 10, "steps_run": 20})
    lines = finetune_modes.summary_rows(pd.DataFrame(rows), ["tabicl"])
    assert lines[2] == (
        "| TabICL | full | 2/2 | -0.1000 | 1/2 | -0.0250 | 2/2 | +0.1000 | 10 / 20 | 10 (2.0) |"
    )
    table = finetune_modes.metric_table(pd.DataFrame(rows), ["tabicl"], "validation", 2)
    assert table.loc["splice", "TabICL ICL"] == "0.50" and table.loc["splice", "TabICL full"] == "0.40"
    assert "TabICL LoRA" not in table.columns  # LoRA did not run: no column


def test_speed_checkpoint_for_tabpfn_v2_loads_in_both_implementations(tmp_path: Path) -> None:
    """benchmarks/speed.py compares implementations on one file: tabpfn's own loader and ours must both read it, to
    the same weights."""
    pytest.importorskip("tabpfn")
    import torch
    from tabpfn.model_loading import load_model

    from autogluon_tfm.checkpoints import load_network
    from autogluon_tfm.checkpoints.tabpfn_v2 import convert_tabpfn_v2_state_dict
    from benchmarks.speed import make_checkpoint

    path = make_checkpoint("tabpfnv2", tmp_path)
    official, _, config, _ = load_model(path=path)
    ours = load_network(str(path))
    assert (config.emsize, config.nlayers, config.nhead) == (192, 12, 6)  # the published v2 classifier sizes
    expected = convert_tabpfn_v2_state_dict(official.state_dict())
    ours_state = ours.state_dict()
    assert set(expected) <= set(ours_state)
    assert all(torch.equal(expected[key], ours_state[key]) for key in expected)


def test_repeat_predict_benchmark_reports_cached_and_uncached_rows(tmp_path):
    from benchmarks import repeat_predict

    out = tmp_path / "repeat.md"
    repeat_predict.main(["--rows", "120", "--n-test", "30", "--checkpoint", "tiny", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tabicl") or line.startswith("| tabpfnv2")
            or line.startswith("| mitra")]
    assert len(rows) == 3
    for row in rows:  # the cached path gives the uncached probabilities
        assert float(row.split("|")[-2]) < 1e-4


def test_merge_results_replaces_the_rows_of_the_taken_methods_and_keeps_the_notes(tmp_path: Path) -> None:
    from benchmarks import merge_results

    common = ["--seeds", "1", "--max-test", "40"]
    code, kept, _ = _run(classification, tmp_path, "kept", "--datasets", "iris,wine", *common, "--methods", "rf,majority")
    assert code == 0
    report = tmp_path / "kept.md"
    lines = report.read_text().splitlines()
    report.write_text("\n".join([*lines[:3], "", "A hand-written note.", *lines[3:]]) + "\n")
    # A newer run on wine only; its CSV also holds the majority rows it merged (same values), which are not taken.
    code, newer, _ = _run(
        classification, tmp_path, "newer", "--datasets", "wine", *common, "--methods", "rf", "--n-estimators", "1",
        "--merge-csv", str(tmp_path / "kept.csv"),
    )
    newer.loc[newer["method"] == "rf", "accuracy"] = 0.5  # as if the newer run had scored differently
    newer.to_csv(tmp_path / "newer.csv", index=False)
    argv = ["classification", str(tmp_path / "kept.csv"), str(tmp_path / "newer.csv"), "--take", "rf", *common]
    assert merge_results.main(argv) == 0
    merged = pd.read_csv(tmp_path / "kept.csv", keep_default_na=False)
    assert merged[["dataset", "method"]].values.tolist() == kept[["dataset", "method"]].values.tolist()
    accuracy = merged.set_index(["dataset", "method"])["accuracy"]
    assert accuracy["wine", "rf"] == 0.5 and accuracy["iris", "rf"] == kept.set_index(["dataset", "method"])[
        "accuracy"]["iris", "rf"]
    assert "A hand-written note." in report.read_text() and "| RF | Majority |" in report.read_text()
    # Rows made on other splits are refused, and nothing is written.
    newer["n_train"] += 1
    newer.to_csv(tmp_path / "newer.csv", index=False)
    before = (tmp_path / "kept.csv").read_text()
    assert merge_results.main(argv) == 2 and (tmp_path / "kept.csv").read_text() == before


def test_synthetic_probe_scores_every_task_for_each_checkpoint_in_its_task_table(tmp_path: Path) -> None:
    from autogluon_tfm.checkpoints import make_tiny_network, save_network
    from benchmarks import synthetic_probe

    paths = [str(save_network(make_tiny_network(arch), tmp_path / arch)) for arch in ("tabicl", "tabpfn_v2", "mitra")]
    regression = [str(save_network(make_tiny_network(arch, "regression"), tmp_path / f"{arch}-reg"))
                  for arch in ("tabpfn_v2", "mitra")]
    out = tmp_path / "probe.md"
    lines = synthetic_probe.main(["--checkpoints", *paths, *regression, "--n-train", "40", "--n-test", "20",
                                  "--tables", "1", "--fit-fresh", "mitra-tiny", "--fit-steps", "3", "--out", str(out)])
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines if line.startswith(f"| {tmp_path}")}
    assert set(rows) == set(paths + regression)
    assert all(len(rows[path]) == len(synthetic_probe.TASKS) for path in paths)
    assert all(len(rows[path]) == len(synthetic_probe.REGRESSION_TASKS) for path in regression)
    assert all(0 < float(cell) < 20 for path in paths for cell in rows[path])  # cross-entropies of real calls
    assert all(0 < float(cell) < 1e6 for path in regression for cell in rows[path])  # normalised squared errors
    report = out.read_text()
    assert report.count("\n| ") == 9  # per table: header, baseline and one row per checkpoint (3 + 2)
    assert "Classification: 40 training rows" in report and "Regression: 40 training rows" in report
    assert "fresh `mitra-tiny`" in report and "step 2 " in report  # the fresh network's loss curve (steps 0..2)


def test_synthetic_probe_regression_scores_a_perfect_and_a_constant_predictor() -> None:
    from benchmarks import synthetic_probe

    class Oracle(torch.nn.Module):  # a Mitra-like scalar head that predicts the scaled column 0 (the first task)
        n_out = 1
        regression_target_scaling = "zscore"

        def __init__(self, exact: bool) -> None:
            super().__init__()
            self.exact = exact

        def forward(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
            n = y_train.shape[1]
            if not self.exact:  # the training mean of the scaled targets (0): the baseline
                return torch.zeros(1, X.shape[1] - n, 1)
            x = X[..., 0]
            scaled = (x - x[:, :n].mean()) / x[:, :n].std(unbiased=False)
            return scaled[:, n:, None]

    exact = synthetic_probe.probe_regression(Oracle(True), 200, 100, 2)
    constant = synthetic_probe.probe_regression(Oracle(False), 200, 100, 2)
    assert exact["y=x0, 1 col"] < 0.05  # only the N(0, 0.1^2) noise is missed
    assert 0.9 < constant["y=x0, 1 col"] < 1.2 and 0.9 < constant["y=x0*x1"] < 1.2


    with pytest.raises(ValueError, match="Unknown pretraining preset"):
        synthetic_probe.fit_fresh("mitra-huge", steps=1)
