"""Measure prior generation speed: ``python -m autogluon_tfm.prior.benchmark [config] [batch] [rows] [max_features]``.

Run with ``OMP_NUM_THREADS=1`` to measure what one DataLoader worker produces.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from autogluon_tfm.prior.config import PriorConfig
from autogluon_tfm.prior.sampler import PriorSampler


def measure_generation_speed(
    config: PriorConfig | str = "tabicl_mix",
    batch_size: int = 8,
    n_rows: int = 512,
    max_features: int = 20,
    n_batches: int = 20,
    seed: int = 0,
) -> dict:
    """Average seconds per batch over ``n_batches`` (after one warm-up batch that pays the xgboost import)."""
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    sampler = PriorSampler(config, seed=seed)
    sampler.sample_batch(batch_size, n_rows, max_features=max_features)
    kinds: Counter[str] = Counter()
    start = time.perf_counter()
    for _ in range(n_batches):
        kinds.update(sampler.sample_batch(batch_size, n_rows, max_features=max_features).kinds)
    seconds_per_batch = (time.perf_counter() - start) / n_batches
    return {
        "config": sampler.config.name,
        "shape": f"{batch_size}x{n_rows}x<={max_features}",
        "seconds_per_batch": seconds_per_batch,
        "batches_per_second": 1.0 / seconds_per_batch,
        "tables_by_kind": dict(kinds),
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config = args[0] if len(args) > 0 else "tabicl_mix"
    batch_size, n_rows, max_features = (int(a) for a in (args[1:4] + ["8", "512", "20"][len(args[1:4]) :]))
    print(measure_generation_speed(config, batch_size, n_rows, max_features))


if __name__ == "__main__":
    main()
