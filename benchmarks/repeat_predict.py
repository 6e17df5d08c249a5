"""First vs repeated ``predict`` after ``fit``: what the train-side caches save (TabICL, TabPFN v2, Mitra).

    OMP_NUM_THREADS=1 python benchmarks/repeat_predict.py --out benchmarks/results/repeat_predict.md

For each model: ``TFMClassifier(model=..., checkpoint="default")`` (the shipped weights) on a random table of
``--rows`` training rows x ``--features`` features and ``--classes`` classes (above the weights' classes per call,
every member answers a class tree, each node with its own cache), then two ``predict_proba`` calls of ``--n-test`` new rows each.
The first predict runs the training rows (and keeps their cache), the second only the test rows. The same fit is
timed with the cache turned off (every predict runs training + test rows), and the probabilities of both paths are
compared. Results are printed as a table and written as markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # import the helpers as the `benchmarks` package (see classification.py)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != _here]

import numpy as np
import torch

import autogluon_tfm.inference.base as inference_base
from autogluon_tfm.inference import TFMClassifier


def measure(model: str, n_rows: int, n_features: int, n_test: int, n_estimators: int, cached: bool,
            checkpoint: str = "default", n_classes: int = 2) -> dict:
    """Fit once, predict two sets of new rows; seconds of each predict and the probabilities."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows + 2 * n_test, n_features))
    score = X[:, 0] + X[:, 1] ** 2
    # Binary: the threshold of the first published table; more classes: about equal class sizes.
    thresholds = [1.0] if n_classes == 2 else np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
    y = np.digitize(score, thresholds)
    kv_check, train_check = inference_base.supports_kv_cache, inference_base.supports_train_cache
    if not cached:  # the generic path: every call runs the training rows again
        inference_base.supports_kv_cache = inference_base.supports_train_cache = lambda network: False
    try:
        clf = TFMClassifier(model=model, checkpoint=checkpoint, n_estimators=n_estimators, device="cpu",
                            precision="fp32").fit(X[:n_rows], y[:n_rows])
        start = time.perf_counter()
        first = clf.predict_proba(X[n_rows : n_rows + n_test])
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        second = clf.predict_proba(X[n_rows + n_test :])
        second_s = time.perf_counter() - start
    finally:
        inference_base.supports_kv_cache, inference_base.supports_train_cache = kv_check, train_check
    return {"first_s": first_s, "second_s": second_s, "proba": np.concatenate([first, second])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tabicl,tabpfnv2,mitra")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--n-estimators", type=int, default=2)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default="default", help="'default' (shipped weights) or 'tiny' (tests)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        "# Repeated predict after fit (train-side caches)",
        "",
        f"Shipped weights, random table of {args.classes} classes: {args.rows:,} training rows x "
        f"{args.features} features, "
        f"{args.n_test:,} new rows per predict, n_estimators={args.n_estimators}, fp32, {args.threads} thread(s). "
        "`uncached` = the same estimator with the caches turned off.",
        "",
        "| model | first predict s | second predict s | speedup | uncached first s | uncached second s "
        "| max abs proba diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for model in args.models.split(","):
        checkpoint = args.checkpoint
        if checkpoint == "tiny":
            from autogluon_tfm.checkpoints import make_tiny_network

            checkpoint = make_tiny_network({"tabpfnv2": "tabpfn_v2"}.get(model, model), "classification")
        cached = measure(model, args.rows, args.features, args.n_test, args.n_estimators, True, checkpoint,
                         args.classes)
        plain = measure(model, args.rows, args.features, args.n_test, args.n_estimators, False, checkpoint,
                        args.classes)
        diff = float(np.abs(cached["proba"] - plain["proba"]).max())
        lines.append(
            f"| {model} | {cached['first_s']:.1f} | {cached['second_s']:.1f} | "
            f"{cached['first_s'] / cached['second_s']:.1f}x | {plain['first_s']:.1f} | {plain['second_s']:.1f} | "
            f"{diff:.1e} |"
        )
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
