"""Classification benchmark: TabICL (autogluon_tfm.TFMClassifier) vs RandomForest, LightGBM and the class prior.

For every classification development dataset (see ``benchmarks/datasets.py``) and every seed: rows are shuffled,
split 70/30 stratified, the train part is subsampled (stratified) to at most ``--max-train`` rows and the test part
to at most ``--max-test`` rows; each method is fitted and scored on the same split. Results go to a markdown report
(``--out``) and a CSV of raw per-seed rows next to it (same name, ``.csv``).

Example::

    python benchmarks/classification.py --seeds 5 --max-train 2000 --max-test 2000 \\
        --out benchmarks/results/classification.md
    python benchmarks/classification.py --quick --methods rf,lgbm,majority
    python benchmarks/classification.py --quick --checkpoint tiny   # random tiny network: plumbing check only

A method that fails on a dataset/seed is recorded as an error for that cell; the run goes on.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on sys.path, where datasets.py would shadow any installed
    # package called `datasets`. Import the benchmark helpers as the `benchmarks` package from the repo root instead.
    _script_dir = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _script_dir]
    sys.path.insert(0, str(_REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from benchmarks.datasets import DATASETS, dev_datasets, load_dataset  # noqa: E402

METHODS = ("tabicl", "rf", "lgbm", "majority")
METHOD_LABELS = {"tabicl": "TabICL", "rf": "RF", "lgbm": "LightGBM", "majority": "Majority"}
QUICK_DATASETS = ("iris", "breast_cancer", "credit_approval")  # small; credit_approval exercises categoricals
QUICK_SEEDS = 2
PROBA_CLIP = 1e-7  # log loss: probabilities are clipped to [1e-7, 1] and renormalised
REACH_TOLERANCE = 0.005  # TabICL "reaches" RF when its accuracy >= RF accuracy - this
RF_PREPROCESSING = (
    "RF: categorical columns ordinal-encoded (unseen level -> -1, missing -> -2), numeric NaN mean-imputed; "
    "LightGBM: pandas category dtype, NaN passed through; TabICL: raw DataFrame; "
    "Majority: class prior as probabilities"
)


@dataclass
class Split:
    X_train: pd.DataFrame
    y_train: np.ndarray  # class codes 0..k-1 of the full dataset
    X_test: pd.DataFrame
    y_test: np.ndarray


@dataclass
class ResultRow:
    dataset: str
    task: str
    seed: int
    method: str
    n_train: int
    n_test: int
    n_features: int
    n_classes: int
    accuracy: float = float("nan")
    log_loss: float = float("nan")
    roc_auc: float = float("nan")
    fit_s: float = float("nan")
    predict_s: float = float("nan")
    time_s: float = float("nan")
    error: str = ""


# ------------------------------------------------------------------------------------------------------ splitting
def _stratified_subset(indices: np.ndarray, codes: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most ``size`` of ``indices``, stratified by class when every class can be kept, else uniformly."""
    from sklearn.model_selection import train_test_split

    if len(indices) <= size:
        return indices
    _, counts = np.unique(codes[indices], return_counts=True)
    stratify = codes[indices] if counts.min() >= 2 and size >= len(counts) else None
    try:
        subset, _ = train_test_split(indices, train_size=size, random_state=seed, stratify=stratify)
    except ValueError:  # a class too rare for the requested size: fall back to a plain random subset
        subset = np.random.default_rng(seed).choice(indices, size=size, replace=False)
    return np.sort(subset)


def make_split(
    X: pd.DataFrame, codes: np.ndarray, seed: int, test_fraction: float, max_train: int, max_test: int
) -> Split:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(codes))
    _, counts = np.unique(codes, return_counts=True)
    stratify = codes if counts.min() >= 2 else None
    train_idx, test_idx = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=stratify)
    train_idx = _stratified_subset(train_idx, codes, max_train, seed)
    test_idx = _stratified_subset(test_idx, codes, max_test, seed)
    return Split(
        X_train=X.iloc[train_idx].reset_index(drop=True),
        y_train=codes[train_idx],
        X_test=X.iloc[test_idx].reset_index(drop=True),
        y_test=codes[test_idx],
    )


# -------------------------------------------------------------------------------------------------------- methods
def _categorical_columns(X: pd.DataFrame) -> list[str]:
    return [column for column in X.columns if not pd.api.types.is_numeric_dtype(X[column])]


def make_rf(X: pd.DataFrame, seed: int, threads: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    categorical = _categorical_columns(X)
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
    forest = RandomForestClassifier(n_estimators=300, n_jobs=threads, random_state=seed)
    return Pipeline([("encode", encode), ("forest", forest)])


class _LightGBMWithCategories:
    """LightGBM defaults; object columns become pandas category (LightGBM's own categorical handling)."""

    def __init__(self, seed: int, threads: int) -> None:
        import lightgbm

        self.model = lightgbm.LGBMClassifier(verbose=-1, random_state=seed, n_jobs=threads)

    @staticmethod
    def _prepare(X: pd.DataFrame) -> pd.DataFrame:
        objects = [column for column in X.columns if X[column].dtype == object]
        return X.astype({column: "category" for column in objects}) if objects else X

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> _LightGBMWithCategories:
        self.model.fit(self._prepare(X), y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(self._prepare(X))

    @property
    def classes_(self) -> np.ndarray:
        return self.model.classes_


class TabICLFactory:
    """Builds TFMClassifier instances; the network is loaded once per run (not timed) when the API allows it."""

    def __init__(self, checkpoint: str, n_estimators: int, device: str, precision: str) -> None:
        self.checkpoint = checkpoint
        self.n_estimators = n_estimators
        self.device = device
        self.precision = precision
        self._network: Any = None

    def _resolve_network(self) -> Any:
        if self._network is not None:
            return self._network
        if self.checkpoint == "tiny":
            from autogluon_tfm.checkpoints import make_tiny_network

            self._network = make_tiny_network(arch="tabicl", task="classification", seed=0)
            return self._network
        try:
            from autogluon_tfm.checkpoints import load_network, resolve_checkpoint
        except ImportError:  # checkpoint helpers not there yet: let the estimator resolve the name itself
            return self.checkpoint
        path = Path(self.checkpoint)
        source = self.checkpoint if path.exists() else resolve_checkpoint("tabicl", "classification", self.checkpoint)
        self._network = load_network(source)
        return self._network

    def __call__(self, seed: int) -> Any:
        from autogluon_tfm import TFMClassifier

        return TFMClassifier(
            model="tabicl",
            checkpoint=self._resolve_network(),
            n_estimators=self.n_estimators,
            device=self.device,
            precision=self.precision,
            random_state=seed,
        )


def make_model(method: str, X_train: pd.DataFrame, seed: int, args: argparse.Namespace, tabicl: TabICLFactory) -> Any:
    if method == "tabicl":
        return tabicl(seed)
    if method == "rf":
        return make_rf(X_train, seed, args.threads)
    if method == "lgbm":
        return _LightGBMWithCategories(seed, args.threads)
    if method == "majority":
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="prior")
    raise ValueError(f"unknown method {method!r}")


# -------------------------------------------------------------------------------------------------------- metrics
def full_probabilities(proba: np.ndarray, model_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Place a model's probability columns (for the classes it saw in training) into all ``n_classes`` columns."""
    proba = np.asarray(proba, dtype=float)
    model_classes = np.asarray(model_classes)
    if proba.ndim != 2 or proba.shape[1] != len(model_classes):
        raise ValueError(f"predict_proba gave shape {proba.shape} for {len(model_classes)} classes")
    if not np.all(np.isfinite(proba)):
        raise ValueError("predict_proba returned non-finite values")
    full = np.zeros((proba.shape[0], n_classes))
    full[:, model_classes.astype(int)] = proba
    return full


def score(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    accuracy = float(np.mean(proba.argmax(axis=1) == y_true))
    clipped = np.clip(proba, PROBA_CLIP, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    log_loss = float(-np.mean(np.log(clipped[np.arange(len(y_true)), y_true])))
    roc_auc = float("nan")
    if proba.shape[1] == 2 and len(np.unique(y_true)) == 2:
        roc_auc = float(roc_auc_score(y_true, proba[:, 1]))
    return {"accuracy": accuracy, "log_loss": log_loss, "roc_auc": roc_auc}


def run_method(
    method: str, split: Split, n_classes: int, seed: int, args: argparse.Namespace, tabicl: TabICLFactory
) -> dict[str, Any]:
    model = make_model(method, split.X_train, seed, args, tabicl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn/lightgbm chatter on small splits would drown the progress bar
        start = time.perf_counter()
        model.fit(split.X_train, split.y_train)
        fitted = time.perf_counter()
        proba = model.predict_proba(split.X_test)
        done = time.perf_counter()
    proba = full_probabilities(proba, model.classes_, n_classes)
    return {**score(split.y_test, proba), "fit_s": fitted - start, "predict_s": done - fitted, "time_s": done - start}


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("|", "/")
    return text[:300]


def run_dataset(name: str, args: argparse.Namespace, tabicl: TabICLFactory) -> list[ResultRow]:
    rows: list[ResultRow] = []
    task = DATASETS[name].task
    for seed in range(args.seeds):
        try:
            X, y, task = load_dataset(name, seed=seed)
            classes, codes = np.unique(y.to_numpy(), return_inverse=True)
            split = make_split(X, codes, seed, args.test_fraction, args.max_train, args.max_test)
        except Exception as error:  # e.g. a missing data package: every method gets the error
            for method in args.methods:
                rows.append(ResultRow(name, task, seed, method, 0, 0, 0, 0, error=_error_text(error)))
            continue
        for method in args.methods:
            row = ResultRow(name, task, seed, method, len(split.y_train), len(split.y_test), X.shape[1], len(classes))
            try:
                for key, value in run_method(method, split, len(classes), seed, args, tabicl).items():
                    setattr(row, key, value)
            except Exception as error:  # one failing method must not stop the benchmark
                row.error = _error_text(error)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------- report
def _format(value: float, n_errors: int, n_seeds: int, digits: int = 3) -> str:
    if n_errors >= n_seeds or not np.isfinite(value):
        return "error" if n_errors else "–"
    cell = f"{value:.{digits}f}"
    return f"{cell} ({n_errors} err)" if n_errors else cell


def _mean_ranks(means: pd.DataFrame, methods: list[str], higher_is_better: bool) -> pd.Series:
    """Mean over datasets of each method's rank (1 = best; ties share the mean rank; a missing value ranks last)."""
    table = means[methods]
    worst = -np.inf if higher_is_better else np.inf
    ranks = table.fillna(worst).rank(axis=1, ascending=not higher_is_better, method="average")
    return ranks.mean(axis=0)


def build_report(results: pd.DataFrame, args: argparse.Namespace, methods: list[str]) -> str:
    ok = results[results["error"] == ""]
    grouped = ok.groupby(["dataset", "method"])
    means = {
        metric: grouped[metric].mean().unstack("method").reindex(columns=methods)
        for metric in ("accuracy", "log_loss", "roc_auc", "time_s")
    }
    errors = results[results["error"] != ""].groupby(["dataset", "method"]).size().unstack("method")
    errors = errors.reindex(columns=methods).fillna(0).astype(int) if len(errors) else None
    seeds_run = results.groupby(["dataset", "method"]).size().unstack("method").reindex(columns=methods)

    datasets = list(dict.fromkeys(results["dataset"]))
    shape = results[results["n_train"] > 0].groupby("dataset")[["n_train", "n_test", "n_features", "n_classes"]]
    shape = shape.max().reindex(datasets)
    for metric in means:
        means[metric] = means[metric].reindex(datasets)

    def n_err(dataset: str, method: str) -> int:
        return 0 if errors is None or dataset not in errors.index else int(errors.loc[dataset, method])

    def n_runs(dataset: str, method: str) -> int:
        value = seeds_run.loc[dataset, method]
        return 0 if pd.isna(value) else int(value)

    labels = [METHOD_LABELS[method] for method in methods]
    lines = [
        "# Classification benchmark (development datasets)",
        "",
        f"Seeds: {args.seeds} | split: stratified {1 - args.test_fraction:.0%}/{args.test_fraction:.0%} after a "
        f"seeded shuffle, train <= {args.max_train} rows, test <= {args.max_test} rows (stratified subsample) | "
        f"TabICL: checkpoint={args.checkpoint!r}, n_estimators={args.n_estimators}, device={args.device!r} "
        f"(network loaded once, not timed) | threads: {args.threads}",
        "",
        f"Preprocessing: {RF_PREPROCESSING}. Log loss clips probabilities at {PROBA_CLIP:g}. "
        "Cells are means over seeds; '(n err)' = seeds where the method failed; mean rank: 1 = best, "
        "a failed method ranks last.",
    ]

    def metric_table(title: str, metric: str, higher_is_better: bool, subset: list[str] | None = None) -> None:
        rows_in = subset if subset is not None else datasets
        if not rows_in:
            return
        lines.extend(
            [
                "",
                f"## {title}",
                "",
                "| dataset | task | train | test | feat | classes | " + " | ".join(labels) + " |",
                "|---|---|---:|---:|---:|---:|" + "---:|" * len(methods),
            ]
        )
        for dataset in rows_in:
            info = shape.loc[dataset] if dataset in shape.index else None
            dims = ["–"] * 4 if info is None or info.isna().any() else [str(int(v)) for v in info]
            cells = [
                _format(
                    means[metric].loc[dataset, method],
                    n_err(dataset, method),
                    max(n_runs(dataset, method), 1),
                    digits=2 if metric == "time_s" else 3,
                )
                for method in methods
            ]
            lines.append(f"| {dataset} | {DATASETS[dataset].task} | " + " | ".join(dims + cells) + " |")
        if metric != "time_s":
            ranks = _mean_ranks(means[metric].loc[rows_in], methods, higher_is_better)
            lines.append("| **mean rank** | | | | | | " + " | ".join(f"{ranks[m]:.2f}" for m in methods) + " |")

    metric_table("Accuracy (higher is better)", "accuracy", True)
    metric_table("Log loss (lower is better)", "log_loss", False)
    binary = [dataset for dataset in datasets if DATASETS[dataset].task == "binary"]
    metric_table("ROC AUC, binary datasets (higher is better)", "roc_auc", True, binary)
    metric_table("Time per fit + predict, seconds", "time_s", False)

    lines.extend(["", "## Summary", ""])
    lines.extend(summary_lines(means, methods, datasets))
    failures = results[results["error"] != ""].drop_duplicates(["dataset", "method"])
    if len(failures):
        lines.extend(["", "## Errors (first per dataset and method)", ""])
        lines.extend(f"- {row.dataset} / {METHOD_LABELS[row.method]}: {row.error}" for row in failures.itertuples())
    return "\n".join(lines) + "\n"


def summary_lines(means: dict[str, pd.DataFrame], methods: list[str], datasets: list[str]) -> list[str]:
    lines = []
    accuracy, log_loss = means["accuracy"], means["log_loss"]
    if "tabicl" in methods and "majority" in methods:
        both = accuracy[["tabicl", "majority"]].dropna()
        both_ll = log_loss[["tabicl", "majority"]].dropna()
        lines.append(
            f"- TabICL beats the majority class on {int((both['tabicl'] > both['majority']).sum())}/{len(both)} "
            f"datasets by accuracy and on {int((both_ll['tabicl'] < both_ll['majority']).sum())}/{len(both_ll)} "
            "by log loss."
        )
    if "tabicl" in methods and "rf" in methods:
        both = accuracy[["tabicl", "rf"]].dropna()
        reached = int((both["tabicl"] >= both["rf"] - REACH_TOLERANCE).sum())
        lines.append(
            f"- TabICL reaches RF's accuracy (TabICL >= RF - {REACH_TOLERANCE}) on {reached}/{len(both)} datasets."
        )
    for title, table, higher in (("log loss", log_loss, False), ("accuracy", accuracy, True)):
        ranks = _mean_ranks(table.loc[datasets], methods, higher)
        ordered = ", ".join(f"{METHOD_LABELS[m]} {ranks[m]:.2f}" for m in ranks.sort_values().index)
        lines.append(f"- Mean rank by {title} over {len(datasets)} datasets: {ordered}.")
    return lines


# ------------------------------------------------------------------------------------------------------------ CLI
def _split_list(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help="dataset names, space or comma separated (default: all classification dev datasets)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--max-test", type=int, default=2000)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--methods", nargs="+", default=None, help=f"subset of {','.join(METHODS)} (default: all)")
    parser.add_argument(
        "--checkpoint",
        default="default",
        help="TFMClassifier checkpoint: 'default', a shipped name, a path, or 'tiny' (random tiny "
        "network from autogluon_tfm.checkpoints.make_tiny_network, for plumbing checks)",
    )
    parser.add_argument("--n-estimators", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS / LightGBM / RF threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SEEDS} seeds on {', '.join(QUICK_DATASETS)} (unless --datasets is given)",
    )
    parser.add_argument("--out", type=Path, default=_REPO_ROOT / "benchmarks" / "results" / "classification.md")
    args = parser.parse_args(argv)

    args.methods = _split_list(args.methods) or list(METHODS)
    args.datasets = _split_list(args.datasets)
    if args.quick:
        args.seeds = QUICK_SEEDS
        args.datasets = args.datasets or list(QUICK_DATASETS)
    args.datasets = args.datasets or dev_datasets("classification")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    bad = [d for d in args.datasets if d not in DATASETS or DATASETS[d].task == "regression"]
    if bad:
        parser.error(f"not classification datasets: {bad}; choose from {dev_datasets('classification')}")
    for flag in ("seeds", "max_train", "max_test", "n_estimators", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    if "tabicl" in args.methods:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass  # recorded as TabICL errors below
    tabicl = TabICLFactory(args.checkpoint, args.n_estimators, args.device, args.precision)
    csv_path = args.out.with_suffix(".csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    rows: list[ResultRow] = []
    with threadpool_limits(limits=args.threads):
        progress = tqdm(args.datasets, desc="datasets", unit="dataset", file=sys.stderr)
        for name in progress:
            progress.set_postfix_str(name)
            rows.extend(run_dataset(name, args, tabicl))
            # Written after every dataset so that a long run interrupted midway still leaves its raw results.
            pd.DataFrame([asdict(row) for row in rows]).to_csv(csv_path, index=False)

    results = pd.DataFrame([asdict(row) for row in rows])
    report = build_report(results, args, args.methods)
    args.out.write_text(report)
    print(report)
    print(f"written: {args.out} and {csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
