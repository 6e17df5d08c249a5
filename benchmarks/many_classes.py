"""Many-class benchmark: TabICL, TabPFNv2 and Mitra (in-context learning, hierarchical above the network's
``max_classes``) vs RandomForest, LightGBM and the class prior on the development datasets with more than 10 classes.

The datasets are letter (26 classes), libras_movement (15), texture (11) and gss_vocab (11). Everything else is
``benchmarks/classification.py``: the same split (70/30 stratified after a seeded shuffle, train part subsampled to
``--max-train`` rows, test part to ``--max-test``), methods, metrics, ``--merge-csv`` and options. On top of it each TFM
row records how many nodes its class tree has (``tree_nodes``: 0 = the network saw all classes at once; a tree of
``k`` nodes costs ``k`` network calls per ensemble member). Results go to ``benchmarks/results/many_classes.md`` and a
CSV of the raw rows next to it.

Example::

    python benchmarks/many_classes.py --seeds 1 --n-estimators 8 --max-train 2000 --max-test 1000
    python benchmarks/many_classes.py --quick --checkpoint tiny --checkpoint-tabpfnv2 tiny --checkpoint-mitra tiny
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: import the helpers as the `benchmarks` package
    _here = Path(__file__).resolve().parent  # (benchmarks/datasets.py must not shadow the `datasets` package)
    sys.path[:] = [str(_here.parent), *(entry for entry in sys.path if Path(entry or ".").resolve() != _here)]

from benchmarks._common import ReportTables, Split, count_wins  # noqa: E402
from benchmarks.classification import METHOD_LABELS, ClassificationBenchmark  # noqa: E402
from benchmarks.datasets import DATASETS, dev_datasets  # noqa: E402

MIN_CLASSES = 11  # "more than 10 classes": above the shipped networks' max_classes (10)
QUICK_DATASETS = ("libras_movement",)  # the smallest (360 rows), still 15 classes: a two-level class tree


def many_class_datasets() -> list[str]:
    """The classification dev datasets with more than 10 classes, in DATASETS.md order."""
    return [name for name in dev_datasets("classification") if (DATASETS[name].n_classes or 0) >= MIN_CLASSES]


class ManyClassBenchmark(ClassificationBenchmark):
    title = "Many-class benchmark (development datasets with more than 10 classes)"
    report_name = "many_classes"
    metric_columns = (*ClassificationBenchmark.metric_columns, "tree_nodes")
    quick_datasets = QUICK_DATASETS

    def default_datasets(self) -> list[str]:
        return many_class_datasets()

    def evaluate(self, model: Any, split: Split, sizes: dict[str, int]) -> dict[str, float]:
        out = super().evaluate(model, split, sizes)
        if hasattr(model, "class_tree_"):  # a TFM: record whether (and how deep) it went hierarchical
            tree = model.class_tree_
            out["tree_nodes"] = 0 if tree is None else tree.count_nodes()
        return out

    def method_summary(self, report: ReportTables, method: str, label: str) -> list[str]:
        lines, parts = [], []
        accuracy, log_loss = report.means["accuracy"], report.means["log_loss"]
        for other in ("rf", "lgbm", "majority"):
            if other not in report.methods:
                continue
            won, n = count_wins(log_loss, method, other, higher_is_better=False)
            won_acc, n_acc = count_wins(accuracy, method, other, higher_is_better=True)
            parts.append(f"{METHOD_LABELS[other]} on {won}/{n} by log loss and {won_acc}/{n_acc} by accuracy")
        if parts:
            lines.append(f"- {label} beats " + "; ".join(parts) + ".")
        nodes = report.means["tree_nodes"][method].dropna()
        if len(nodes):
            trees = ", ".join(f"{dataset} {value:.0f}" for dataset, value in nodes.items())
            lines.append(f"- {label} class-tree nodes (0 = flat): {trees}.")
        return lines

    def tables(self, report: ReportTables) -> list[str]:
        return self.accuracy_log_loss_tables(report)


BENCHMARK = ManyClassBenchmark()
parse_args = BENCHMARK.parse_args
main = BENCHMARK.main

if __name__ == "__main__":
    sys.exit(main())
