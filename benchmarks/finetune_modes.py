"""Finetuning modes benchmark: in-context learning (ICL) vs full finetuning vs LoRA for the TFM classifiers.

For every dataset, seed and model (``TFMClassifier(model=...)``): the split of ``benchmarks/classification.py`` (70/30
stratified, train part subsampled to ``--max-train`` rows, test part to ``--max-test``), then three fits on it:
``fine_tune=None`` (ICL), ``"full"`` and ``"lora"``. The finetuned fits run at most ``--steps`` steps at learning rate
``--lr`` (both default to the estimator's defaults), stop at ``--time-limit`` seconds of fit time, early-stop on the
estimator's internal stratified 20 % validation split of the train part and keep the best weights seen (the
pretrained ones included); prediction uses all train rows as context. The runs themselves are those of
``benchmarks/finetune_lr_sweep.py`` (its ``sweep_rows``) with one learning rate.

Reported per dataset x model x mode: test log loss, test accuracy, the validation log loss on the internal split
(ICL: the pretrained weights'; full / LoRA: the kept weights'), fit + predict seconds and the kept / run steps; the
summary counts on how many datasets each finetuning mode beats ICL. The validation loss chose the kept step, so its
gain is optimistic; the test log loss is the unbiased comparison.

Default datasets: the classification dev datasets with 1,000 to 10,000 rows (see ``benchmarks/datasets.py``).

Example::

    python benchmarks/finetune_modes.py --seeds 1 --time-limit 60              # all three models, full and LoRA
    python benchmarks/finetune_modes.py --models tabicl --datasets kr_vs_kp splice
    python benchmarks/finetune_modes.py --models mitra --merge-csv benchmarks/results/finetune_modes.csv
    python benchmarks/finetune_modes.py --quick --checkpoint tiny               # plumbing: 1 dataset, 4 steps
    python benchmarks/finetune_modes.py --report-only --merge-csv benchmarks/results/finetune_modes.csv --notes "..."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: import the helpers as the `benchmarks` package
    _here = Path(__file__).resolve().parent  # (benchmarks/datasets.py must not shadow the `datasets` package)
    sys.path[:] = [str(_here.parent), *(entry for entry in sys.path if Path(entry or ".").resolve() != _here)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from autogluon_tfm.finetune import SHIPPED_WEIGHTS_LEARNING_RATE  # noqa: E402
from benchmarks._common import TFM_LABELS, TFM_METHODS, TFMFactory  # noqa: E402
from benchmarks.datasets import DATASETS, dev_datasets  # noqa: E402
from benchmarks.finetune_lr_sweep import (  # noqa: E402
    VALIDATION_FRACTION,
    add_model_arguments,
    add_run_arguments,
    check_run_arguments,
    error_lines,
    markdown_table,
    parse_with_outputs,
    sweep_rows,
    tfm_factories,
    with_columns,
    write_report,
)

MIN_ROWS, MAX_ROWS = 1_000, 10_000  # the dataset sizes this benchmark is about (whole dataset, before the split)
MODES = ("none", "full", "lora")  # the "mode" column: fine_tune=None is recorded as "none"
MODE_LABELS = {"none": "ICL", "full": "full", "lora": "LoRA"}
QUICK_DATASETS = ("contraceptive",)
SETTING_COLUMNS = ("time_limit", "max_steps", "learning_rate", "n_estimators", "max_train")
KEY = ["dataset", "seed", "model"]


def finetune_datasets() -> list[str]:
    """The classification dev datasets with ``MIN_ROWS`` to ``MAX_ROWS`` rows, in DATASETS.md order."""
    return [name for name in dev_datasets("classification") if MIN_ROWS <= DATASETS[name].n_rows <= MAX_ROWS]


def estimator_default(name: str) -> Any:
    """A default of ``TFMClassifier``'s constructor, so the report follows the estimator when its defaults move."""
    from autogluon_tfm import TFMClassifier

    return TFMClassifier().get_params()[name]


def mode_rows(name: str, seed: int, args: argparse.Namespace, factories: dict[str, TFMFactory]) -> list[dict]:
    """One row per model x mode (ICL first) on one dataset and seed; failures become error rows."""
    rows = sweep_rows(name, seed, args, factories)  # args.lrs is [args.lr]: one run per finetuning mode
    settings = {"time_limit": args.time_limit, "max_steps": args.steps, "learning_rate": args.lr,
                "n_estimators": args.n_estimators, "max_train": args.max_train}
    for row in rows:
        row.update(n_features=DATASETS[name].n_features, **settings)
        if row["mode"] == "none":
            row["learning_rate"] = np.nan  # no finetuning: no learning rate
    return rows


# --------------------------------------------------------------------------------------------------------- report
def _means(results: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per dataset, model and mode of the successful rows (NaN-free index of all three)."""
    ok = results[results["error"].fillna("") == ""]
    columns = ["test_log_loss", "test_accuracy", "fit_s", "predict_s", "val_initial", "val_best", "best_step",
               "steps_run"]
    return ok.groupby(["dataset", "model", "mode"])[columns].mean().assign(time_s=lambda f: f["fit_s"] + f["predict_s"])


def icl_validation(means: pd.DataFrame) -> pd.Series:
    """The pretrained weights' validation log loss per (dataset, model): the initial loss of a finetuning run (full
    and LoRA score the same pretrained network on the same internal split)."""
    tuned = means.reset_index()
    tuned = tuned[tuned["mode"] != "none"].dropna(subset=["val_initial"])
    return tuned.groupby(["dataset", "model"])["val_initial"].first()


def _cell(results: pd.DataFrame, key: tuple[str, str, str], value: float, digits: int) -> str:
    if np.isfinite(value):
        return f"{value:.{digits}f}"
    dataset, model, mode = key
    failed = results[(results["dataset"] == dataset) & (results["model"] == model) & (results["mode"] == mode)]
    return "error" if (failed["error"].fillna("") != "").any() else "–"


def metric_table(results: pd.DataFrame, models: list[str], column: str, digits: int) -> pd.DataFrame:
    """dataset x (model, mode) cells of one column of :func:`_means`; two special columns: ``"validation"`` (ICL:
    the pretrained weights' loss, full / LoRA: the kept weights') and ``"steps"`` (kept / run; no ICL cells)."""
    means = _means(results)
    pretrained = icl_validation(means)
    order = {name: i for i, name in enumerate(DATASETS)}
    datasets = sorted(set(results["dataset"]), key=order.__getitem__)
    modes = MODES[1:] if column == "steps" else MODES
    cells: dict[str, dict[str, str]] = {}
    for dataset in datasets:
        sizes = results[results["dataset"] == dataset].iloc[0]
        row = {"train": f"{int(sizes['n_train'])}", "feat": f"{int(sizes['n_features'])}",
               "classes": f"{int(sizes['n_classes'])}"}
        for model in models:
            for mode in modes:
                key = (dataset, model, mode)
                header = f"{TFM_LABELS[model]} {MODE_LABELS[mode]}"
                if column == "steps" and key in means.index:
                    row[header] = f"{means.loc[key, 'best_step']:.0f} / {means.loc[key, 'steps_run']:.0f}"
                    continue
                if column == "validation":
                    value = pretrained.get((dataset, model), np.nan) if mode == "none" else means["val_best"].get(
                        key, np.nan)
                else:
                    value = means[column].get(key, np.nan) if column in means else np.nan
                row[header] = _cell(results, key, value, digits)
        cells[dataset] = row
    frame = pd.DataFrame.from_dict(cells, orient="index").fillna("–")
    return frame.loc[:, (frame != "–").any(axis=0)]  # no column for a mode that did not run (e.g. --modes full)


def summary_rows(results: pd.DataFrame, models: list[str]) -> list[str]:
    """Per model and finetuning mode: how often and by how much it beats ICL (validation and test), and its cost."""
    means = _means(results)
    pretrained = icl_validation(means)
    lines = [
        "| model | mode | validation log loss < ICL | mean Δ validation | test log loss < ICL | mean Δ test log loss "
        "| test accuracy >= ICL | mean Δ accuracy | mean steps kept / run | mean fit + predict s (ICL) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        for mode in MODES[1:]:
            try:
                tuned = means.xs((model, mode), level=("model", "mode"))
                icl = means.xs((model, "none"), level=("model", "mode"))
            except KeyError:
                continue
            both = tuned.index.intersection(icl.index)
            if not len(both):
                continue
            tuned, icl = tuned.loc[both], icl.loc[both]
            before = pd.Series({dataset: pretrained.get((dataset, model), np.nan) for dataset in both})
            val_delta = (tuned["val_best"] - before).dropna()
            test_delta = tuned["test_log_loss"] - icl["test_log_loss"]
            acc_delta = tuned["test_accuracy"] - icl["test_accuracy"]
            lines.append(
                f"| {TFM_LABELS[model]} | {MODE_LABELS[mode]} | {int((val_delta < 0).sum())}/{len(val_delta)} "
                f"| {val_delta.mean():+.4f} | {int((test_delta < 0).sum())}/{len(both)} | {test_delta.mean():+.4f} "
                f"| {int((acc_delta >= 0).sum())}/{len(both)} | {acc_delta.mean():+.4f} "
                f"| {tuned['best_step'].mean():.0f} / {tuned['steps_run'].mean():.0f} "
                f"| {tuned['time_s'].mean():.0f} ({icl['time_s'].mean():.1f}) |"
            )
    return lines


def _settings_text(results: pd.DataFrame) -> str:
    """The finetuning settings of the rows (several values where merged runs differ)."""
    tuned = results[results["mode"] != "none"]
    parts = []
    for column, label in [("max_steps", "fine_tune_steps"), ("learning_rate", "learning_rate"),
                          ("time_limit", "time_limit (s)"), ("n_estimators", "n_estimators"),
                          ("max_train", "max train rows")]:
        values = sorted(set(tuned[column].dropna())) if column in tuned else []
        parts.append(f"{label}: {' / '.join(f'{value:g}' for value in values) or '–'}")
    return " | ".join(parts)


def build_report(results: pd.DataFrame, args: argparse.Namespace) -> str:
    models = [model for model in TFM_METHODS if model in set(results["model"])]
    checkpoints = ", ".join(sorted(set(results["checkpoint"].dropna().astype(str)) - {""})) or "–"
    lines = [
        "# Finetuning modes: ICL vs full vs LoRA (classification)",
        "",
        f"Datasets: {len(set(results['dataset']))} | seeds: {int(results['seed'].max()) + 1} | split: "
        f"classification.py's ({1 - args.test_fraction:.0%}/{args.test_fraction:.0%} stratified), test <= "
        f"{args.max_test} rows | {_settings_text(results)} | early stopping on a stratified "
        f"{VALIDATION_FRACTION:.0%} of the train rows (validation every 5 steps, patience 16) | threads: "
        f"{args.threads} | device: {args.device} | checkpoints: {checkpoints}",
        "",
        "Cells are means over seeds. The validation log loss is on the estimator's internal validation rows (ICL: "
        "the pretrained weights; full / LoRA: the weights finetuning kept, which may be the pretrained ones, and "
        "which that same loss selected: optimistic). The test log loss and accuracy are on the held-out test split "
        "with all train rows as context. Seconds: fit (finetuning included) + predict, on a shared CPU.",
    ]
    if args.merge_csv:
        source = "Report rebuilt from the rows of" if args.report_only else "Rows of earlier runs merged from"
        lines += ["", f"{source} `{args.merge_csv}` (their settings are in the line above)."]
    if args.notes:
        lines += ["", args.notes]
    for title, column, digits in [
        ("Test log loss (lower is better)", "test_log_loss", 4),
        ("Test accuracy (higher is better)", "test_accuracy", 3),
        ("Validation log loss (ICL: pretrained weights; full / LoRA: kept weights)", "validation", 4),
        ("Fit + predict seconds", "time_s", 0),
        ("Finetuning steps kept / run", "steps", 0),
    ]:
        lines += ["", f"## {title}", "", *markdown_table(metric_table(results, models, column, digits), "dataset")]
    lines += ["", "## Summary (per model and mode, over the datasets where both it and ICL ran)", "",
              *summary_rows(results, models)]
    return "\n".join(lines + error_lines(results)) + "\n"


# ------------------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, finetune_datasets(), models=list(TFM_METHODS), modes=["full", "lora"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="fine_tune_steps (default: the estimator's)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning_rate (default: what the estimator's learning_rate='auto' gives shipped weights)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="estimator time_limit (s) of each fit")
    add_run_arguments(parser, "'default' (each model's shipped weights unless an official checkpoint is cached), a "
                      "shipped name, a path, or 'tiny' (random tiny networks, for plumbing checks)")
    parser.add_argument("--merge-csv", type=Path, default=None,
                        help="CSV of an earlier run: its rows of (dataset, seed, model) triples not run now join the "
                        "report; may be the output CSV itself")
    parser.add_argument("--notes", default="", help="a paragraph for the report (e.g. why a subset was run)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite the report from the rows of --merge-csv (e.g. with new --notes)")
    args = parse_with_outputs(parser, argv, "finetune_modes", quick_runs="4 steps")
    args.steps = estimator_default("fine_tune_steps") if args.steps is None else args.steps
    args.lr = SHIPPED_WEIGHTS_LEARNING_RATE if args.lr is None else args.lr
    if args.quick:
        args.datasets = args.datasets or list(QUICK_DATASETS)
        args.steps, args.max_train, args.max_test = min(args.steps, 4), min(args.max_train, 300), 200
    args.datasets = args.datasets or finetune_datasets()
    args.lrs = [args.lr]  # what sweep_rows reads
    check_run_arguments(parser, args)
    if not (args.lr > 0 and args.time_limit > 0 and 0 < args.test_fraction < 1):
        parser.error("--lr and --time-limit must be > 0 and --test-fraction in (0, 1)")
    if args.merge_csv is not None and not args.merge_csv.is_file():
        parser.error(f"--merge-csv {args.merge_csv}: no such file")
    if args.report_only and args.merge_csv is None:
        parser.error("--report-only needs --merge-csv")
    return args


def combine(earlier: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """The earlier rows whose (dataset, seed, model) this run did not redo, then this run's rows."""
    new = pd.DataFrame(rows)
    if earlier.empty:
        return new
    if new.empty:
        return earlier
    redone = earlier.set_index(KEY).index.isin(new.set_index(KEY).index)
    return pd.concat([earlier[~redone], new], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    factories = tfm_factories(args, params={"time_limit": args.time_limit})
    earlier = pd.read_csv(args.merge_csv, keep_default_na=True) if args.merge_csv else pd.DataFrame()
    csv_path = args.out.with_suffix(".csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in [] if args.report_only else args.datasets:
        for seed in range(args.seeds):
            rows += mode_rows(name, seed, args, factories)
            combine(earlier, rows).to_csv(csv_path, index=False)  # partial results survive an interrupted run
    results = with_columns(combine(earlier, rows), ("error", "checkpoint", "val_initial", "val_best", "best_step",
                                                    "steps_run", *SETTING_COLUMNS))
    results.to_csv(csv_path, index=False)
    return write_report(build_report(results, args), args.out)


if __name__ == "__main__":
    sys.exit(main())
