"""Quickstart: TabICL from autogluon_tfm beside LightGBM and CatBoost in an AutoGluon leaderboard, fully offline.

The dataset ships inside scikit-learn (no download) and the TabICL weights ship inside autogluon_tfm (or an official
TabICL checkpoint already in the local Hugging Face cache is used). About 1-3 minutes on 2 CPU cores.

    python examples/quickstart.py                      # breast_cancer (569 rows, 30 features, 2 classes)
    python examples/quickstart.py --dataset wine       # wine (178 rows, 13 features, 3 classes)
    python examples/quickstart.py --path AutogluonModels/quickstart   # keep the fitted predictor
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import train_test_split

import autogluon_tfm  # noqa: F401  (registers autogluon_tfm's TabICL under AutoGluon's "TABICL" key)
from autogluon_tfm.checkpoints import resolve_checkpoint

DATASETS = {"breast_cancer": load_breast_cancer, "wine": load_wine}
LABEL = "target"


def load_dataset(name: str) -> pd.DataFrame:
    """A scikit-learn toy dataset as one DataFrame, with readable class names in the label column."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    bunch = DATASETS[name](as_frame=True)
    data = bunch.frame.copy()
    data[LABEL] = pd.Series(bunch.target_names[bunch.target.to_numpy()], index=data.index)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="breast_cancer")
    parser.add_argument("--time-limit", type=float, default=180, help="seconds for TabularPredictor.fit")
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default=None, help="where to save the predictor (default: a temporary directory)")
    # For development: run TABICL with another network file (e.g. a random tiny one) to check the plumbing.
    parser.add_argument("--checkpoint", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.time_limit <= 0:
        raise ValueError(f"--time-limit must be positive, got {args.time_limit}")

    # Fail before fitting when no TabICL weights can be found, rather than after AutoGluon skipped the model.
    try:
        weights = resolve_checkpoint("tabicl", "classification", args.checkpoint)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"TabICL weights: {weights}")

    from autogluon.tabular import TabularPredictor

    data = load_dataset(args.dataset)
    train_data, test_data = train_test_split(
        data, test_size=args.test_size, stratify=data[LABEL], random_state=args.seed
    )
    print(f"{args.dataset}: {len(train_data)} train rows, {len(test_data)} test rows, "
          f"{data.shape[1] - 1} features, {data[LABEL].nunique()} classes")

    hyperparameters = {"TABICL": {"checkpoint": args.checkpoint}, "GBM": {}, "CAT": {}}
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp_dir:
        start = time.time()
        predictor = TabularPredictor(label=LABEL, path=args.path or tmp_dir, eval_metric="accuracy", verbosity=2)
        predictor.fit(train_data, hyperparameters=hyperparameters, time_limit=args.time_limit)
        fit_seconds = time.time() - start

        leaderboard = predictor.leaderboard(test_data)
        columns = ["model", "score_test", "score_val", "eval_metric", "fit_time", "pred_time_test"]
        with pd.option_context("display.max_columns", None, "display.width", 200):
            print("\nLeaderboard (score_test = accuracy on the held-out test split):")
            print(leaderboard[columns].to_string(index=False))

        tabicl_models = [name for name in predictor.model_names() if name.startswith("TabICL")]
        if not tabicl_models:
            raise SystemExit("TabICL did not fit; see the AutoGluon log above for the reason.")
        tabicl_predictions = predictor.predict(test_data, model=tabicl_models[0])
        tabicl_accuracy = float((tabicl_predictions == test_data[LABEL]).mean())
        majority_class = train_data[LABEL].mode().iloc[0]
        majority_accuracy = float((test_data[LABEL] == majority_class).mean())
        print(f"\nTest accuracy: {tabicl_models[0]} {tabicl_accuracy:.4f} | majority class "
              f"({majority_class!r}) {majority_accuracy:.4f} | best model {leaderboard.iloc[0]['model']} "
              f"{leaderboard.iloc[0]['score_test']:.4f}")
        print(f"fit took {fit_seconds:.0f} s" + (f"; predictor saved in {args.path}" if args.path else ""))


if __name__ == "__main__":
    main()
