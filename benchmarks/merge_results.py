"""Replace rows of a kept benchmark CSV with those of a newer run on the same splits, and rebuild its report.

    python -m benchmarks.merge_results classification benchmarks/results/classification_three_models_seed0.csv \
        /tmp/new.csv --take tabicl --seeds 1 --max-train 2000 --max-test 1000

A row of the newer CSV of a method named by ``--take`` (a run's CSV also holds the rows it merged from elsewhere)
replaces the kept row with the same (dataset, seed, method); kept rows without a newer
counterpart stay, in their order. A newer row on a split of other sizes is refused (``MergeError``). The report next
to the kept CSV (same name, ``.md``) is rebuilt from the merged rows with the benchmark arguments given after the two
CSVs (they describe the split: seeds, train and test sizes); the hand-edited head of the old report (its settings
line and the notes after it, up to "Preprocessing:") is carried over, for a new note to be added by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from benchmarks import _common

KEYS = ["dataset", "seed", "method"]


def merge_rows(spec: _common.Benchmark, kept: pd.DataFrame, newer: pd.DataFrame) -> pd.DataFrame:
    """``kept`` with its rows replaced (or extended) by ``newer``'s rows of the same keys."""
    sizes = list(spec.size_columns)
    newer_splits = newer[newer["n_train"] > 0].drop_duplicates(["dataset", "seed"]).set_index(["dataset", "seed"])
    kept_splits = kept[kept["n_train"] > 0].drop_duplicates(["dataset", "seed"]).set_index(["dataset", "seed"])
    shared = newer_splits.index.intersection(kept_splits.index)
    differ = [key for key in shared if not newer_splits.loc[key, sizes].equals(kept_splits.loc[key, sizes])]
    if differ:
        raise _common.MergeError(f"the newer rows were made on other splits (sizes differ) for {differ[:3]}")
    replaced = kept.set_index(KEYS).index.isin(newer.set_index(KEYS).index)
    merged = pd.concat([kept[~replaced], newer], ignore_index=True)
    datasets = list(dict.fromkeys([*kept["dataset"], *newer["dataset"]]))
    return _common.combine(spec, _common.results_frame(spec, merged), [], datasets)


def kept_header(report: str) -> list[str]:
    """The hand-edited part of a report: its settings line and the notes after it, up to "Preprocessing:"."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Seeds: ")), None)
    end = next((i for i, line in enumerate(lines) if line.startswith("Preprocessing: ")), None)
    if start is None or end is None or end <= start:
        return []
    header = lines[start:end]
    while header and not header[-1].strip():
        header.pop()
    return header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["classification", "regression"])
    parser.add_argument("kept", type=Path, help="the benchmark CSV kept in benchmarks/results/")
    parser.add_argument("newer", type=Path, help="CSV of a newer run on the same splits")
    parser.add_argument("--take", nargs="+", required=True, help="the methods whose rows the newer CSV replaces")
    known, rest = parser.parse_known_args(argv)
    if known.task == "classification":
        from benchmarks.classification import BENCHMARK as spec
    else:
        from benchmarks.regression import BENCHMARK as spec
    kept = _common.results_frame(spec, pd.read_csv(known.kept, float_precision="round_trip"))
    unknown = sorted(set(known.take) - set(spec.methods))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(spec.methods)}")
    newer = pd.read_csv(known.newer, float_precision="round_trip")
    newer = _common.results_frame(spec, newer[newer["method"].isin(known.take)])
    try:
        merged = merge_rows(spec, kept, newer)
    except _common.MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report_path = known.kept.with_suffix(".md")
    args = spec.parse_args([*rest, "--datasets", *merged["dataset"].unique(), "--out", str(report_path)])
    report = _common.build_report(spec, merged, args).splitlines()
    header = kept_header(report_path.read_text()) if report_path.exists() else []
    if header:  # the settings line (hand-edited: it names what the rows were measured with) and the notes
        report[2:3] = header
    merged.to_csv(known.kept, index=False)
    report_path.write_text("\n".join(report) + "\n")
    print(f"written: {known.kept} ({len(merged)} rows, {int(newer.shape[0])} from {known.newer}) and {report_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
