"""What the benchmark scripts ``classification.py``, ``regression.py`` and ``many_classes.py`` share (the finetuning
scripts ``finetune_lr_sweep.py`` and ``finetune_modes.py`` use its TFM factory and helpers).

The baselines and their preprocessing, the factory of the tabular foundation model (TFM) estimators, the loop over
datasets and seeds, the merge with the rows of an earlier run (``--merge-csv``), the report tables and the command
line options. Each script describes itself with a :class:`Benchmark` (methods, split, metrics, report body).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from benchmarks.datasets import DATASETS, load_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TFM_METHODS = ("tabicl", "tabpfnv2", "mitra")  # TFMClassifier / TFMRegressor ``model=`` names
TFM_LABELS = {"tabicl": "TabICL", "tabpfnv2": "TabPFNv2", "mitra": "Mitra"}
TREE_LABELS = {"rf": "RF", "lgbm": "LightGBM"}
QUICK_SEEDS = 2
DEFAULT_SEEDS = 5
PREPROCESSING = (
    "RF: categorical columns ordinal-encoded (unseen level -> -1, missing -> -2), numeric NaN mean-imputed; "
    "LightGBM: pandas category dtype, NaN passed through; TabICL / TabPFNv2 / Mitra: raw DataFrame"
)
KEY_COLUMNS = ("dataset", "task", "seed", "method")
TIME_COLUMNS = ("fit_s", "predict_s", "time_s")
TEXT_COLUMNS = ("checkpoint", "error")  # checkpoint: what a TFM's checkpoint resolved to ("" for the others)


class MergeError(ValueError):
    """The ``--merge-csv`` file does not fit this run: not this benchmark's CSV, or made on other splits."""


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray

    @classmethod
    def take(cls, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray) -> Split:
        return cls(
            X_train=X.iloc[train_idx].reset_index(drop=True),
            y_train=y[train_idx],
            X_test=X.iloc[test_idx].reset_index(drop=True),
            y_test=y[test_idx],
        )


class Benchmark:
    """One benchmark script: its task, methods and how it splits, scores and reports. A script subclasses it, sets
    the class attributes and implements the four hooks; ``main`` runs it from the command line."""

    task: str  # "classification" | "regression": the TFM estimator and the checkpoint task
    title: str  # report heading
    labels: dict[str, str]  # method -> label, in report order
    size_columns: dict[str, str]  # per-split sizes recorded in every row -> report column header
    metric_columns: tuple[str, ...]
    quick_datasets: tuple[str, ...]
    split_text: str  # how the split is made, for the report header ("{train}/{test}" are filled in)
    preprocessing: str
    report_name: str | None = None  # default report file name (without .md); None = the task's name

    def default_datasets(self) -> list[str]:
        """The datasets run when ``--datasets`` is not given (and not ``--quick``): all dev datasets of the task."""
        from benchmarks.datasets import dev_datasets

        return dev_datasets(self.task)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.labels)

    @property
    def columns(self) -> list[str]:
        return [*KEY_COLUMNS, *self.size_columns, *self.metric_columns, *TIME_COLUMNS, *TEXT_COLUMNS]

    def prepare(self, X: pd.DataFrame, y: pd.Series, seed: int, args: argparse.Namespace) -> tuple[Split, dict]:
        """The split of one seed and its sizes other than n_train / n_test / n_features (e.g. n_classes)."""
        raise NotImplementedError

    def evaluate(self, model: Any, split: Split, sizes: dict[str, int]) -> dict[str, float]:
        """Fit the (unfitted) model on the split; its metrics and times (see :func:`fit_predict`)."""
        raise NotImplementedError

    def tables(self, report: ReportTables) -> list[str]:
        """The report's metric tables (markdown lines)."""
        raise NotImplementedError

    def summary(self, report: ReportTables) -> list[str]:
        """The report's summary lines."""
        raise NotImplementedError

    def parse_args(self, argv: list[str] | None = None) -> argparse.Namespace:
        description = (sys.modules[type(self).__module__].__doc__ or self.title).split("\n\n")[0]
        return parse_args(self, description, argv)

    def main(self, argv: list[str] | None = None) -> int:
        return run_benchmark(self, self.parse_args(argv))


# ------------------------------------------------------------------------------------------------------ splitting
def random_subset(indices: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most ``size`` of ``indices``, drawn uniformly (sorted)."""
    if len(indices) <= size:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=size, replace=False))


# -------------------------------------------------------------------------------------------------------- methods
def categorical_columns(X: pd.DataFrame) -> list[str]:
    return [column for column in X.columns if not pd.api.types.is_numeric_dtype(X[column])]


def make_rf(X: pd.DataFrame, seed: int, threads: int, task: str) -> Any:
    """RandomForest (300 trees) behind ordinal encoding of the categorical columns and mean imputation."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    categorical = categorical_columns(X)
    numeric = [column for column in X.columns if column not in categorical]
    encode = ColumnTransformer(
        [
            (
                "categorical",
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2),
                categorical,
            ),
            ("numeric", SimpleImputer(strategy="mean", keep_empty_features=True), numeric),
        ]
    )
    forest_class = RandomForestRegressor if task == "regression" else RandomForestClassifier
    forest = forest_class(n_estimators=300, n_jobs=threads, random_state=seed)
    return Pipeline([("encode", encode), ("forest", forest)])


class LightGBMWithCategories:
    """LightGBM defaults; object columns become pandas category (LightGBM's own categorical handling)."""

    def __init__(self, seed: int, threads: int, task: str = "classification") -> None:
        import lightgbm

        estimator = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
        self.model = estimator(verbose=-1, random_state=seed, n_jobs=threads)

    @staticmethod
    def _prepare(X: pd.DataFrame) -> pd.DataFrame:
        objects = [column for column in X.columns if X[column].dtype == object]
        return X.astype({column: "category" for column in objects}) if objects else X

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> LightGBMWithCategories:
        self.model.fit(self._prepare(X), y)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict(self._prepare(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(self._prepare(X))

    @property
    def classes_(self) -> np.ndarray:
        return self.model.classes_


class TFMFactory:
    """Builds ``TFMClassifier`` / ``TFMRegressor`` instances of one model; the network is loaded once per run (not
    timed).

    ``checkpoint``: ``"default"`` (resolved by :func:`autogluon_tfm.checkpoints.resolve_checkpoint`: an official
    checkpoint in the local cache, else the shipped weights, else a ``ValueError``), a shipped name, a path, or
    ``"tiny"`` (a random tiny network, for plumbing checks).
    """

    def __init__(
        self,
        model: str,
        task: str,
        checkpoint: str,
        n_estimators: int,
        device: str,
        precision: str,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.task = task
        self.checkpoint = checkpoint
        self.source = checkpoint  # what the checkpoint resolved to, recorded in the CSV
        self.n_estimators = n_estimators
        self.device = device
        self.precision = precision
        # Further estimator parameters given to every instance (e.g. a finetuning ``time_limit``).
        self.params = dict(params or {})
        self._network: Any = None

    def network(self) -> Any:
        if self._network is None:
            from autogluon_tfm.checkpoints import (
                load_network,
                make_tiny_network,
                model_architecture,
                resolve_checkpoint,
            )

            if self.checkpoint == "tiny":
                self._network = make_tiny_network(arch=model_architecture(self.model), task=self.task, seed=0)
            else:
                self.source = resolve_checkpoint(self.model, self.task, self.checkpoint)
                self._network = load_network(self.source)
        return self._network

    def __call__(self, seed: int) -> Any:
        from autogluon_tfm import TFMClassifier, TFMRegressor

        estimator = TFMRegressor if self.task == "regression" else TFMClassifier
        return estimator(
            model=self.model,
            checkpoint=self.network(),
            n_estimators=self.n_estimators,
            device=self.device,
            precision=self.precision,
            random_state=seed,
            **self.params,
        )


def make_model(
    spec: Benchmark, method: str, X_train: pd.DataFrame, seed: int, args: argparse.Namespace, factories: dict
) -> Any:
    if method in TFM_METHODS:
        return factories[method](seed)
    if method == "rf":
        return make_rf(X_train, seed, args.threads, spec.task)
    if method == "lgbm":
        return LightGBMWithCategories(seed, args.threads, spec.task)
    if method == "majority":
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="prior")
    if method == "mean":
        from sklearn.dummy import DummyRegressor

        return DummyRegressor(strategy="mean")
    raise ValueError(f"unknown method {method!r}")


def fit_predict(model: Any, split: Split, predict: str) -> tuple[np.ndarray, dict[str, float]]:
    """Fit on the train part, call ``model.<predict>`` on the test part; the output and the seconds taken."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn/lightgbm chatter on small splits would drown the progress bar
        start = time.perf_counter()
        model.fit(split.X_train, split.y_train)
        fitted = time.perf_counter()
        output = getattr(model, predict)(split.X_test)
        done = time.perf_counter()
    return output, {"fit_s": fitted - start, "predict_s": done - fitted, "time_s": done - start}


def error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("|", "/")
    return text[:300]


# ------------------------------------------------------------------------------------------------------- running
def load_split(spec: Benchmark, name: str, seed: int, args: argparse.Namespace) -> tuple[str, Split, dict]:
    """The dataset's task, the split of one seed and its sizes (``spec.size_columns``)."""
    X, y, task = load_dataset(name, seed=seed)
    split, extra_sizes = spec.prepare(X, y, seed, args)
    sizes = {"n_train": len(split.y_train), "n_test": len(split.y_test), "n_features": X.shape[1], **extra_sizes}
    return task, split, sizes


def check_merge_splits(spec: Benchmark, args: argparse.Namespace, merged: pd.DataFrame) -> None:
    """Raise :class:`MergeError` where this run's splits differ in size from the merged rows' splits."""
    columns = list(spec.size_columns)
    made = merged[merged["n_train"] > 0].drop_duplicates(["dataset", "seed"])
    mismatches = []
    for row in made.itertuples(index=False):
        try:
            _, _, sizes = load_split(spec, row.dataset, row.seed, args)
        except Exception:  # the run records this failure as error rows
            continue
        theirs = {column: int(getattr(row, column)) for column in columns}
        if theirs != {column: sizes[column] for column in columns}:
            mismatches.append(f"{row.dataset} seed {row.seed}: {theirs} there, {sizes} now")
    if mismatches:
        raise MergeError(
            f"the splits of {args.merge_csv} differ from this run's ({len(mismatches)} dataset/seed pairs, e.g. "
            f"{mismatches[0]}); run with the split settings of that CSV "
            "(--max-train, --max-test, --test-fraction)"
        )


def run_dataset(spec: Benchmark, name: str, args: argparse.Namespace, factories: dict) -> list[dict[str, Any]]:
    """Rows (dicts) of every method and seed on one dataset; a failing method becomes an error row."""
    rows: list[dict[str, Any]] = []
    task = DATASETS[name].task
    for seed in range(args.seeds):
        try:
            task, split, sizes = load_split(spec, name, seed, args)
        except Exception as error:  # e.g. a missing data package: every method gets the error
            rows.extend(
                {"dataset": name, "task": task, "seed": seed, "method": method, "error": error_text(error)}
                for method in args.methods
            )
            continue
        for method in args.methods:
            row: dict[str, Any] = {"dataset": name, "task": task, "seed": seed, "method": method, **sizes}
            try:
                model = make_model(spec, method, split.X_train, seed, args, factories)
                row.update(spec.evaluate(model, split, sizes))
            except Exception as error:  # one failing method must not stop the benchmark
                row["error"] = error_text(error)
            if method in factories:
                row["checkpoint"] = factories[method].source
            rows.append(row)
    return rows


def results_frame(spec: Benchmark, rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows in the CSV's column order, with "" for no error / no checkpoint and 0 for the sizes of a failed split."""
    frame = pd.DataFrame(rows).reindex(columns=spec.columns)
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    for column in ("seed", *spec.size_columns):
        frame[column] = frame[column].fillna(0).astype(int)
    return frame


def load_merge_csv(spec: Benchmark, args: argparse.Namespace) -> pd.DataFrame:
    """The rows of ``args.merge_csv`` for this run's datasets and seeds and for the methods this run does not run."""
    raw = pd.read_csv(args.merge_csv)
    missing = [column for column in (*KEY_COLUMNS, *spec.size_columns, *spec.metric_columns) if column not in raw]
    if missing:
        raise MergeError(f"{args.merge_csv} is not a {spec.task} benchmark CSV: columns {missing} are missing")
    unknown = sorted(set(raw["method"]) - set(spec.methods))
    if unknown:
        raise MergeError(f"{args.merge_csv} has rows of unknown methods {unknown}; known: {list(spec.methods)}")
    keep = (
        raw["dataset"].isin(args.datasets) & raw["seed"].between(0, args.seeds - 1) & ~raw["method"].isin(args.methods)
    )
    merged = results_frame(spec, raw[keep])
    for method, rows in merged.groupby("method"):
        have = set(zip(rows["dataset"], rows["seed"]))
        lacking = [(name, seed) for name in args.datasets for seed in range(args.seeds) if (name, seed) not in have]
        if lacking:
            print(
                f"warning: {args.merge_csv} has no {spec.labels[method]} rows for {len(lacking)} dataset/seed pairs "
                f"of this run, e.g. {lacking[:3]}",
                file=sys.stderr,
            )
    return merged


def combine(spec: Benchmark, merged: pd.DataFrame, rows: list[dict[str, Any]], datasets: list[str]) -> pd.DataFrame:
    """Merged and new rows in one frame, ordered by dataset (as run), seed and method (report order)."""
    frame = (
        pd.concat([merged, results_frame(spec, rows)], ignore_index=True) if len(merged) else results_frame(spec, rows)
    )
    order = {name: i for i, name in enumerate(datasets)}
    method_order = {method: i for i, method in enumerate(spec.methods)}
    keys = pd.DataFrame({"d": frame["dataset"].map(order), "s": frame["seed"], "m": frame["method"].map(method_order)})
    return frame.loc[keys.sort_values(["d", "s", "m"], kind="stable").index].reset_index(drop=True)


def run_benchmark(spec: Benchmark, args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    if any(method in TFM_METHODS for method in args.methods):
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass  # recorded as TFM errors below
    # None: the estimator's "auto". Classification only: most classes one network call decides between, and
    # whether the probabilities get a temperature fitted in context. Both tasks: principal components for wide tables.
    params = {
        name: getattr(args, name)
        for name in _TFM_PARAMS
        if getattr(args, name, None) is not None
    }
    factories = {
        method: TFMFactory(
            method, spec.task, getattr(args, f"checkpoint_{method}"), args.n_estimators, args.device, args.precision,
            params=params,
        )
        for method in TFM_METHODS
        if method in args.methods
    }
    merged = results_frame(spec, [])
    if args.merge_csv:
        try:
            merged = load_merge_csv(spec, args)
            check_merge_splits(spec, args, merged)
        except MergeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    csv_path = args.out.with_suffix(".csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    with threadpool_limits(limits=args.threads):
        progress = tqdm(args.datasets, desc="datasets", unit="dataset", file=sys.stderr)
        for name in progress:
            progress.set_postfix_str(name)
            rows.extend(run_dataset(spec, name, args, factories))
            # Written after every dataset so that a long run interrupted midway still leaves its raw results
            # (with the merged rows, so that --merge-csv may name the output CSV itself).
            combine(spec, merged, rows, args.datasets).to_csv(csv_path, index=False)

    results = combine(spec, merged, rows, args.datasets)
    report = build_report(spec, results, args)
    args.out.write_text(report)
    print(report)
    print(f"written: {args.out} and {csv_path}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------------- report
def format_cell(value: float, n_errors: int, n_seeds: int, digits: int = 3) -> str:
    if n_errors >= n_seeds or not np.isfinite(value):
        return "error" if n_errors else "–"
    cell = f"{value:.{digits}f}"
    return f"{cell} ({n_errors} err)" if n_errors else cell


def mean_ranks(means: pd.DataFrame, methods: list[str], higher_is_better: bool) -> pd.Series:
    """Mean over datasets of each method's rank (1 = best; ties share the mean rank; a missing value ranks last)."""
    table = means[methods]
    worst = -np.inf if higher_is_better else np.inf
    ranks = table.fillna(worst).rank(axis=1, ascending=not higher_is_better, method="average")
    return ranks.mean(axis=0)


def count_wins(
    table: pd.DataFrame, method: str, other: str, higher_is_better: bool, tolerance: float | None = None
) -> tuple[int, int]:
    """On how many of the datasets where both have a value ``method`` beats ``other`` (strictly; with ``tolerance``:
    is no worse than ``other`` by more than it), and on how many both have a value."""
    both = table[[method, other]].dropna()
    sign = 1.0 if higher_is_better else -1.0
    gap = sign * (both[method] - both[other])
    wins = gap > 0 if tolerance is None else gap >= -tolerance
    return int(wins.sum()), len(both)


class ReportTables:
    """Means over seeds per dataset and method of every metric, error counts, and markdown tables of them."""

    def __init__(self, spec: Benchmark, results: pd.DataFrame, methods: list[str]) -> None:
        self.spec = spec
        self.methods = methods
        self.labels = [spec.labels[method] for method in methods]
        self.datasets = list(dict.fromkeys(results["dataset"]))
        ok = results[results["error"] == ""]
        self.means = {
            metric: ok.pivot_table(index="dataset", columns="method", values=metric, aggfunc="mean", dropna=False)
            .reindex(index=self.datasets, columns=methods)
            .astype(float)
            for metric in (*spec.metric_columns, "time_s")
        }
        self.errors = (
            results.assign(failed=results["error"] != "")
            .pivot_table(index="dataset", columns="method", values="failed", aggfunc="sum")
            .reindex(index=self.datasets, columns=methods)
            .fillna(0)
            .astype(int)
        )
        self.runs = (
            results.groupby(["dataset", "method"])
            .size()
            .unstack("method")
            .reindex(index=self.datasets, columns=methods)
        )
        made = results[results["n_train"] > 0]
        self.shape = made.groupby("dataset")[list(spec.size_columns)].max().reindex(self.datasets)

    def table(
        self, title: str, metric: str, higher_is_better: bool | None, subset: list[str] | None = None
    ) -> list[str]:
        """A markdown table of ``metric``; with a mean-rank row unless ``higher_is_better`` is None."""
        datasets = self.datasets if subset is None else subset
        if not datasets:
            return []
        headers = ["dataset", "task", *self.spec.size_columns.values(), *self.labels]
        n_info = 2 + len(self.spec.size_columns)
        lines = [
            "",
            f"## {title}",
            "",
            "| " + " | ".join(headers) + " |",
            "|---|---|" + "---:|" * (len(headers) - 2),
        ]
        digits = 2 if metric == "time_s" else 3
        for dataset in datasets:
            info = self.shape.loc[dataset]
            dims = ["–"] * len(info) if info.isna().any() else [str(int(v)) for v in info]
            cells = [
                format_cell(
                    self.means[metric].loc[dataset, method],
                    int(self.errors.loc[dataset, method]),
                    max(int(np.nan_to_num(self.runs.loc[dataset, method])), 1),
                    digits,
                )
                for method in self.methods
            ]
            lines.append(f"| {dataset} | {DATASETS[dataset].task} | " + " | ".join(dims + cells) + " |")
        if higher_is_better is not None:
            ranks = mean_ranks(self.means[metric].loc[datasets], self.methods, higher_is_better)
            lines.append(
                "| **mean rank** |"
                + " |" * (n_info - 1)
                + " "
                + " | ".join(f"{ranks[m]:.2f}" for m in self.methods)
                + " |"
            )
        return lines

    def rank_line(self, title: str, metric: str, higher_is_better: bool) -> str:
        ranks = mean_ranks(self.means[metric], self.methods, higher_is_better)
        ordered = ", ".join(f"{self.spec.labels[m]} {ranks[m]:.2f}" for m in ranks.sort_values().index)
        return f"- Mean rank by {title} over {len(self.datasets)} datasets: {ordered}."

    def tfms(self) -> list[str]:
        return [method for method in self.methods if method in TFM_METHODS]


# Estimator parameters the command line may set for every TFM (None: the estimator's default).
_TFM_PARAMS = (
    "max_classes_per_call", "calibrate", "feature_compression", "fine_tune", "fine_tune_steps", "learning_rate",
    "validation_fraction",
)


def _tfm_settings(results: pd.DataFrame, args: argparse.Namespace, methods: list[str], labels: dict[str, str]) -> str:
    """' | TFMs (settings): TabICL checkpoint 'x', ...' for the report header; '' without TFMs."""
    parts = []
    for method in (m for m in methods if m in TFM_METHODS):
        used = [value for value in dict.fromkeys(results.loc[results["method"] == method, "checkpoint"]) if value]
        checkpoint = " / ".join(repr(value) for value in used) if used else "not recorded"
        parts.append(f"{labels[method]} {checkpoint}" + ("" if method in args.methods else " (merged)"))
    if not parts:
        return ""
    settings = "network loaded once, not timed"
    if any(method in TFM_METHODS for method in args.methods):
        settings = f"n_estimators={args.n_estimators}, device={args.device!r}, {settings}"
        for name in reversed(_TFM_PARAMS):
            if getattr(args, name, None) is not None:
                settings = f"{name}={getattr(args, name)!r}, {settings}"
    return f" | TFMs ({settings}), checkpoints: " + ", ".join(parts)


def build_report(spec: Benchmark, results: pd.DataFrame, args: argparse.Namespace) -> str:
    methods = [method for method in spec.methods if method in set(results["method"])]
    tables = ReportTables(spec, results, methods)
    split = spec.split_text.format(train=f"{1 - args.test_fraction:.0%}", test=f"{args.test_fraction:.0%}")
    lines = [
        f"# {spec.title}",
        "",
        f"Seeds: {args.seeds} | split: {split}, train <= {args.max_train} rows, test <= {args.max_test} rows"
        + _tfm_settings(results, args, methods, spec.labels)
        + f" | threads: {args.threads}",
    ]
    merged = [spec.labels[method] for method in methods if method not in args.methods]
    if merged:
        lines.extend(
            [
                "",
                f"Rows of {', '.join(merged)} merged from `{args.merge_csv}` (an earlier run on the same datasets, "
                "seeds and splits; split sizes checked).",
            ]
        )
    lines.extend(
        [
            "",
            f"Preprocessing: {spec.preprocessing}. Cells are means over seeds; '(n err)' = seeds where the method "
            "failed; mean rank: 1 = best, a failed method ranks last.",
        ]
    )
    lines.extend(spec.tables(tables))
    lines.extend(tables.table("Time per fit + predict, seconds", "time_s", None))
    lines.extend(["", "## Summary", ""])
    lines.extend(spec.summary(tables))
    failures = results[results["error"] != ""].drop_duplicates(["dataset", "method"])
    if len(failures):
        lines.extend(["", "## Errors (first per dataset and method)", ""])
        lines.extend(f"- {row.dataset} / {spec.labels[row.method]}: {row.error}" for row in failures.itertuples())
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ CLI
def _split_list(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item]


def _parse_classes_per_call(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _parse_calibrate(text: str) -> bool | str:
    choices = {"auto": "auto", "true": True, "false": False}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
    return choices[text.lower()]


def _parse_feature_compression(text: str) -> int | str:
    from autogluon_tfm.inference.base import top_column_count

    if text.isdigit() and int(text) > 0:
        return int(text)
    if text not in ("auto", "select", "none") and top_column_count(text) is None:
        raise argparse.ArgumentTypeError(f"expected auto, select, none, top<k> or a positive integer, got {text!r}")
    return text


def parse_args(spec: Benchmark, description: str, argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.datasets import dev_datasets

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help=f"dataset names, space or comma separated (default: {' '.join(spec.default_datasets())})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"number of seeds (0..N-1; default {DEFAULT_SEEDS}, --quick {QUICK_SEEDS})",
    )
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--max-test", type=int, default=2000)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--methods", nargs="+", default=None, help=f"subset of {','.join(spec.methods)} (default: all)")
    tiny_help = "'tiny' (random tiny network from autogluon_tfm.checkpoints.make_tiny_network, for plumbing checks)"
    for model in TFM_METHODS:
        flags = ["--checkpoint", "--checkpoint-tabicl"] if model == "tabicl" else [f"--checkpoint-{model}"]
        parser.add_argument(
            *flags,
            dest=f"checkpoint_{model}",
            default="default",
            help=f"{TFM_LABELS[model]} {spec.task} checkpoint: 'default', a shipped name, a path, or {tiny_help}",
        )
    parser.add_argument("--n-estimators", type=int, default=8, help="ensemble members of the TFMs")
    if spec.task != "regression":
        parser.add_argument(
            "--max-classes-per-call", type=_parse_classes_per_call, default=None,
            help="TFMClassifier max_classes_per_call for the TFMs: 'auto' or an integer >= 2 (default: the "
            "estimator's default, 'auto')",
        )
        parser.add_argument(
            "--calibrate", type=_parse_calibrate, default=None,
            help="TFMClassifier calibrate for the TFMs: 'auto', 'true' or 'false' (default: the estimator's "
            "default, 'auto': what the weights' card recommends)",
        )
    parser.add_argument(
        "--feature-compression", type=_parse_feature_compression, default=None,
        help="feature_compression of the TFMs: 'auto', 'select', 'none', a number of principal components or "
        "'top<k>' (the k columns extra-trees rank most important) "
        "(default: the estimator's default, 'auto': what the weights' card recommends)",
    )
    parser.add_argument(
        "--fine-tune", choices=("full", "lora"), default=None,
        help="finetune the TFMs in fit ('full' or 'lora'; default: in-context learning only); early stopping on the "
        "estimator's validation_fraction of the training rows",
    )
    parser.add_argument("--fine-tune-steps", type=int, default=None, help="finetuning steps (default: the estimator's)")
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="finetuning learning rate (default: the estimator's 'auto')"
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=None,
        help="share of the training rows finetuning holds out for early stopping (0: exactly the steps asked for; "
        "default: the estimator's)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS / LightGBM / RF threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SEEDS} seeds on {', '.join(spec.quick_datasets)} (unless --seeds / --datasets are given)",
    )
    parser.add_argument(
        "--merge-csv",
        type=Path,
        default=None,
        help="CSV of an earlier run with the same split settings: its rows of the methods not run now (for this "
        "run's datasets and seeds) join the report and the CSV written; may be the output CSV itself",
    )
    report_name = spec.report_name or spec.task
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / f"{report_name}.md")
    args = parser.parse_args(argv)

    args.methods = _split_list(args.methods) or list(spec.methods)
    args.datasets = _split_list(args.datasets)
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else DEFAULT_SEEDS
    if args.quick:
        args.datasets = args.datasets or list(spec.quick_datasets)
    args.datasets = args.datasets or spec.default_datasets()
    unknown = [m for m in args.methods if m not in spec.methods]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {spec.methods}")
    regression = spec.task == "regression"
    bad = [d for d in args.datasets if d not in DATASETS or (DATASETS[d].task == "regression") != regression]
    if bad:
        parser.error(f"not {spec.task} datasets: {bad}; choose from {dev_datasets(spec.task)}")
    for flag in ("seeds", "max_train", "max_test", "n_estimators", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be in (0, 1)")
    if args.merge_csv is not None and not args.merge_csv.is_file():
        parser.error(f"--merge-csv {args.merge_csv}: no such file")
    return args
