"""Learning-rate sweep for finetuning the TFM classifiers (``TFMClassifier(fine_tune="full" | "lora")``).

Grid (from seed 000's setup): ``np.logspace(log10(5e-6), log10(5e-4), 5)`` = 5e-6, 1.58e-5, 5e-5, 1.58e-4, 5e-4, i.e.
two decades in half-decade steps around the estimator's default learning rate (1e-4).

For every dataset and seed: the split of ``benchmarks/classification.py`` (its ``make_split``: 70/30 stratified, train
part subsampled to ``--max-train`` rows, test part to ``--max-test``); then in-context learning only (the reference,
"ICL") and, for every finetuning mode and learning rate, a fit with ``fine_tune_steps=--steps`` that early-stops on
the estimator's internal stratified 20 % validation split of the train part (``validation_fraction=0.2``; prediction
still uses all train rows as context) and keeps the best weights (the pretrained ones included). Reported per
dataset x learning rate: the validation log loss of the kept weights (ICL column: the pretrained network's), the test
log loss, the kept / run steps and the fit seconds; the summary ranks the learning rates.

Example::

    python benchmarks/finetune_lr_sweep.py                     # 3 datasets, tabicl, full finetuning, 60 steps
    python benchmarks/finetune_lr_sweep.py --modes full lora --steps 100 --max-train 3000
    python benchmarks/finetune_lr_sweep.py --quick              # plumbing: 1 dataset, 2 learning rates, 4 steps
    python benchmarks/finetune_lr_sweep.py --quick --checkpoint tiny --models tabicl tabpfnv2 mitra

``--models tabpfnv2 mitra`` need a checkpoint (``--checkpoint PATH`` or ``tiny``) until weights of theirs ship:
``"default"`` raises a clear error for them, recorded as an error row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: import the helpers as the `benchmarks` package
    _here = Path(__file__).resolve().parent  # (benchmarks/datasets.py must not shadow the `datasets` package)
    sys.path[:] = [str(_here.parent), *(entry for entry in sys.path if Path(entry or ".").resolve() != _here)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._common import REPO_ROOT, TFM_LABELS, TFM_METHODS, TFMFactory, error_text  # noqa: E402
from benchmarks.classification import full_probabilities, make_split, score  # noqa: E402
from benchmarks.datasets import DATASETS, load_dataset  # noqa: E402

LR_GRID = tuple(float(lr) for lr in np.logspace(np.log10(5e-6), np.log10(5e-4), 5))
DEFAULT_DATASETS = ("contraceptive", "image_segment", "kr_vs_kp")  # 1.5K-3.2K rows; 3 / 7 / 2 classes
QUICK_DATASETS = ("contraceptive",)
VALIDATION_FRACTION = 0.2
ICL = "ICL"  # the learning-rate column of the in-context-learning reference


def sweep_rows(name: str, seed: int, args: argparse.Namespace, factories: dict[str, TFMFactory]) -> list[dict]:
    """One row per model x (ICL + mode x learning rate) on one dataset and seed; failures become error rows."""
    X, y, _ = load_dataset(name, seed=seed)
    classes, codes = np.unique(y.to_numpy(), return_inverse=True)
    split = make_split(X, codes, seed, args.test_fraction, args.max_train, args.max_test)
    base = {"dataset": name, "seed": seed, "n_train": len(split.y_train), "n_test": len(split.y_test),
            "n_classes": len(classes)}
    runs = [("none", ICL)] + [(mode, lr) for mode in args.modes for lr in args.lrs]
    rows = []
    for model in args.models:
        for mode, lr in runs:
            row: dict[str, Any] = {**base, "model": model, "mode": mode, "lr": lr}
            try:
                row.update(evaluate(factories[model], split, len(classes), seed, mode, lr, args.steps))
            except Exception as error:  # one failing run must not stop the sweep
                row["error"] = error_text(error)
            rows.append(row)
            print(format_progress(row), file=sys.stderr, flush=True)
    return rows


def evaluate(factory: TFMFactory, split, n_classes: int, seed: int, mode: str, lr: Any, steps: int) -> dict:
    estimator = factory(seed)
    if mode != "none":
        estimator.set_params(fine_tune=mode, fine_tune_steps=steps, learning_rate=lr,
                             validation_fraction=VALIDATION_FRACTION)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        estimator.fit(split.X_train, split.y_train)
        fitted = time.perf_counter()
        proba = estimator.predict_proba(split.X_test)
        done = time.perf_counter()
    test = score(split.y_test, full_probabilities(proba, estimator.classes_, n_classes))
    out = {"test_log_loss": test["log_loss"], "test_accuracy": test["accuracy"], "fit_s": fitted - start,
           "predict_s": done - fitted, "checkpoint": str(factory.source)}
    report = estimator.fine_tune_report_
    if report is not None:
        out.update(val_initial=report.initial_loss, val_best=report.best_loss, best_step=report.best_step,
                   steps_run=report.steps_run, stop_reason=report.stop_reason)
    return out


def format_progress(row: dict) -> str:
    head = f"{row['dataset']} seed {row['seed']} {row['model']} {row['mode']} lr={lr_label(row['lr'])}"
    if row.get("error"):
        return f"{head}: {row['error']}"
    tail = f"test log loss {row['test_log_loss']:.4f} ({row['fit_s']:.0f}s fit)"
    if row["mode"] != "none":
        tail += f", val {row['val_initial']:.4f} -> {row['val_best']:.4f}"
        tail += f", kept step {row['best_step']}/{row['steps_run']}"
    return f"{head}: {tail}"


# --------------------------------------------------------------------------------------------------------- report
def lr_label(lr: Any) -> str:
    return lr if isinstance(lr, str) else f"{lr:.3g}"


def markdown_table(frame: pd.DataFrame, index_name: str) -> list[str]:
    columns = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join([str(index), *map(str, values)]) + " |" for index, values in frame.iterrows()]
    return lines


def mode_tables(results: pd.DataFrame, model: str, mode: str) -> list[str]:
    """The tables of one model and finetuning mode: dataset x learning rate (ICL first)."""
    subset = results[(results["model"] == model) & results["mode"].isin(["none", mode])]
    order = [ICL, *(lr_label(lr) for lr in sorted(lr for lr in subset["lr"].unique() if lr != ICL))]
    grouped = subset.assign(lr=subset["lr"].map(lr_label)).groupby(["dataset", "lr"], sort=False)
    means = grouped.mean(numeric_only=True)
    errors = grouped["error"].apply(lambda values: int((values.fillna("") != "").sum()))

    def table(column: str, fmt) -> pd.DataFrame:
        cells = {}
        for (dataset, lr), row in means.iterrows():
            text = "error" if errors[(dataset, lr)] and not np.isfinite(row.get(column, np.nan)) else fmt(row, lr)
            cells.setdefault(dataset, {})[lr] = text
        return pd.DataFrame.from_dict(cells, orient="index").reindex(columns=order).fillna("–")

    def number(column: str, digits: int = 4):
        return lambda row, lr: "–" if not np.isfinite(row.get(column, np.nan)) else f"{row[column]:.{digits}f}"

    def validation(row, lr):
        value = row.get("val_initial") if lr == ICL else row.get("val_best")
        return "–" if value is None or not np.isfinite(value) else f"{value:.4f}"

    def steps(row, lr):
        return "–" if lr == ICL else f"{row['best_step']:.0f} / {row['steps_run']:.0f}"

    # The ICL column of the validation table: the pretrained network's loss, i.e. any finetuning row's initial one.
    finetuned = means.reset_index()
    finetuned = finetuned[finetuned["lr"] != ICL].groupby("dataset")["val_initial"].first()
    for dataset, value in finetuned.items():
        if (dataset, ICL) in means.index:
            means.loc[(dataset, ICL), "val_initial"] = value
    title = f"{TFM_LABELS.get(model, model)}, fine_tune={mode!r}"
    lines = []
    for heading, frame in [
        ("validation log loss of the kept weights (ICL: pretrained)", table("val_initial", validation)),
        ("test log loss", table("test_log_loss", number("test_log_loss"))),
        ("kept step / steps run", table("steps_run", steps)),
        ("fit seconds (finetuning included)", table("fit_s", number("fit_s", 0))),
    ]:
        lines += ["", f"### {title}: {heading}", "", *markdown_table(frame, "dataset \\ lr")]
    return lines


def summary(results: pd.DataFrame, model: str, mode: str) -> tuple[list[str], str | None]:
    """Per learning rate: mean change of test and validation log loss against ICL, and mean rank on test log loss."""
    ok = results[(results["model"] == model) & (results["error"].fillna("") == "")]
    icl = ok[ok["mode"] == "none"].groupby("dataset")["test_log_loss"].mean()
    tuned = ok[ok["mode"] == mode]
    if tuned.empty or icl.empty:
        return [], None
    test = tuned.groupby(["dataset", "lr"])["test_log_loss"].mean().unstack("lr")
    val_gain = (tuned["val_initial"] - tuned["val_best"]).groupby([tuned["dataset"], tuned["lr"]]).mean().unstack("lr")
    ranks = test.rank(axis=1, method="average").mean(axis=0)
    test_change = test.sub(icl.reindex(test.index), axis=0).mean(axis=0)
    lines = [
        "",
        f"{TFM_LABELS.get(model, model)}, fine_tune={mode!r} (means over {test.shape[0]} dataset(s)):",
        "",
        "| lr | test log loss - ICL | validation log loss gain | mean rank (test log loss) |",
        "|---|---|---|---|",
    ]
    for lr in test.columns:
        lines.append(f"| {lr_label(lr)} | {test_change[lr]:+.4f} | {val_gain[lr].mean():+.4f} | {ranks[lr]:.2f} |")
    best = min(test.columns, key=lambda lr: (ranks[lr], test_change[lr]))
    if not (val_gain.mean(axis=0) > 0).any():
        return lines, "no learning rate improved the validation loss of the pretrained weights"
    return lines, f"best mean rank on test log loss at lr = {lr_label(best)} ({test_change[best]:+.4f} vs ICL)"


def build_report(results: pd.DataFrame, args: argparse.Namespace) -> str:
    lines = [
        "# Finetuning learning-rate sweep (classification)",
        "",
        f"Datasets: {', '.join(args.datasets)} | seeds: {args.seeds} | split: classification.py's "
        f"({1 - args.test_fraction:.0%}/{args.test_fraction:.0%} stratified), train <= {args.max_train} rows, "
        f"test <= {args.max_test} rows | models: {', '.join(args.models)} | modes: {', '.join(args.modes)} | "
        f"fine_tune_steps: {args.steps} (early stopping on a stratified {VALIDATION_FRACTION:.0%} of the train "
        f"rows, validation every 5 steps, patience 16) | n_estimators: {args.n_estimators} | threads: "
        f"{args.threads} | checkpoint: {', '.join(sorted(set(results['checkpoint'].dropna().astype(str))))}",
        "",
        ("Learning-rate grid: `np.logspace(log10(5e-6), log10(5e-4), 5)` = " if list(args.lrs) == list(LR_GRID)
         else "Learning rates (not the default grid): ")
        + ", ".join(lr_label(lr) for lr in args.lrs)
        + ". Cells are means over seeds. The validation loss is that of the weights finetuning kept (step 0 = the "
        "pretrained weights), on the internal validation rows; the test log loss is on the held-out test split "
        "with all train rows as context.",
    ]
    recommended = []
    for model in args.models:
        for mode in args.modes:
            lines += mode_tables(results, model, mode)
    lines += ["", "## Summary"]
    for model in args.models:
        for mode in args.modes:
            table, best = summary(results, model, mode)
            lines += table
            if best is not None:
                recommended.append(f"- {TFM_LABELS.get(model, model)}, fine_tune={mode!r}: {best}")
    lines += ["", *recommended] if recommended else ["", "No successful finetuning runs."]
    return "\n".join(lines + error_lines(results)) + "\n"


def error_lines(results: pd.DataFrame) -> list[str]:
    """The report's error section: the first error per dataset, model and mode (no lines without errors)."""
    failures = results[results["error"].fillna("") != ""].drop_duplicates(["dataset", "model", "mode"])
    if not len(failures):
        return []
    return ["", "## Errors (first per dataset, model and mode)", "",
            *(f"- {row.dataset} / {row.model} / {row.mode}: {row.error}" for row in failures.itertuples())]


# ------------------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, DEFAULT_DATASETS, models=["tabicl"], modes=["full"])
    parser.add_argument("--lrs", nargs="+", type=float, default=None, help="learning rates (default: the grid)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60, help="fine_tune_steps (at most; early stopping)")
    add_run_arguments(parser, "'default' (shipped tabicl-clf-small for tabicl), a shipped name, a path, or 'tiny'")
    args = parse_with_outputs(parser, argv, "finetune_lr_sweep", quick_runs="2 learning rates, 4 steps")
    if args.quick:
        args.datasets = args.datasets or list(QUICK_DATASETS)
        args.lrs = args.lrs or [LR_GRID[2], LR_GRID[4]]
        args.steps, args.max_train, args.max_test = min(args.steps, 4), min(args.max_train, 300), 200
    args.datasets = args.datasets or list(DEFAULT_DATASETS)
    args.lrs = args.lrs or list(LR_GRID)
    check_run_arguments(parser, args)
    if not all(lr > 0 for lr in args.lrs):
        parser.error("--lrs must be > 0")
    return args


def add_model_arguments(parser: argparse.ArgumentParser, datasets: Sequence[str], models: list[str],
                        modes: list[str]) -> None:
    """--datasets (default: ``datasets``), --models and --modes, with their defaults."""
    parser.add_argument("--datasets", nargs="+", default=None,
                        help=f"classification datasets (default: {' '.join(datasets)})")
    parser.add_argument("--models", nargs="+", default=models, choices=TFM_METHODS)
    parser.add_argument("--modes", nargs="+", default=modes, choices=["full", "lora"])


def add_run_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """The split sizes, ensemble size, checkpoint, device, precision and threads of every fit."""
    parser.add_argument("--max-train", type=int, default=1500)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--n-estimators", type=int, default=4)
    parser.add_argument("--checkpoint", default="default", help=checkpoint_help)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1)


def parse_with_outputs(parser: argparse.ArgumentParser, argv: list[str] | None, name: str,
                       quick_runs: str) -> argparse.Namespace:
    """Adds --quick (a plumbing run: 1 dataset, train <= 300 rows, ``quick_runs``) and --out, then parses ``argv``.

    The default --out is ``benchmarks/results/{name}.md``, or ``{name}_quick.md`` in the temporary directory.
    """
    parser.add_argument("--quick", action="store_true",
                        help=f"plumbing run: 1 dataset, train <= 300 rows, {quick_runs}; writes to the temporary "
                        "directory unless --out is given")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"report path (default benchmarks/results/{name}.md); a CSV of the raw rows goes next to "
                        "it")
    args = parser.parse_args(argv)
    if args.out is None:
        folder = Path(tempfile.gettempdir()) if args.quick else REPO_ROOT / "benchmarks" / "results"
        args.out = folder / (f"{name}_quick.md" if args.quick else f"{name}.md")
    return args


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Classification datasets only; counts and sizes >= 1."""
    bad = [name for name in args.datasets if name not in DATASETS or DATASETS[name].task == "regression"]
    if bad:
        parser.error(f"not classification datasets: {bad}")
    for flag in ("seeds", "steps", "max_train", "max_test", "n_estimators", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")


def tfm_factories(args: argparse.Namespace, params: dict[str, Any] | None = None) -> dict[str, TFMFactory]:
    """Sets torch's threads; one classifier factory per model of ``args.models`` (``params``: further estimator
    parameters)."""
    import torch

    torch.set_num_threads(args.threads)
    return {
        model: TFMFactory(model, "classification", args.checkpoint, args.n_estimators, args.device, args.precision,
                          params=params)
        for model in args.models
    }


def with_columns(results: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``results`` with the missing ``columns`` added (NaN), so that the report can read them."""
    for column in columns:
        if column not in results:
            results[column] = np.nan
    return results


def write_report(report: str, out: Path) -> int:
    """Writes the report to ``out`` and prints it (the raw rows are in the CSV next to it)."""
    out.write_text(report)
    print(report)
    print(f"written: {out} and {out.with_suffix('.csv')}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    factories = tfm_factories(args)
    csv_path = args.out.with_suffix(".csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in args.datasets:
        for seed in range(args.seeds):
            rows += sweep_rows(name, seed, args, factories)
            pd.DataFrame(rows).to_csv(csv_path, index=False)  # partial results survive an interrupted run
    results = with_columns(pd.DataFrame(rows), ("error", "checkpoint", "val_initial", "val_best", "best_step",
                                                "steps_run"))
    return write_report(build_report(results, args), args.out)


if __name__ == "__main__":
    sys.exit(main())
