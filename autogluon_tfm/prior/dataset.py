"""An endless stream of prior batches for ``torch.utils.data.DataLoader``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from autogluon_tfm.prior.config import PriorConfig, get_prior_config
from autogluon_tfm.prior.sampler import PriorBatch, PriorSampler

# n_rows for a batch: a fixed int, a (min_rows, max_rows) log-uniform range, or a function of the global batch index.
Curriculum = int | tuple[int, int] | Callable[[int], int]

# (largest n_rows, feature cap) pairs: long tables get fewer features to bound memory (TabICL's schedule).
_FEATURE_CAPS_BY_ROWS: tuple[tuple[int, int], ...] = (
    (10_240, 100),
    (20_000, 80),
    (30_000, 60),
    (40_000, 40),
    (50_000, 30),
    (60_000, 20),
    (65_000, 15),
)
_FEATURE_CAP_BEYOND = 10


def max_features_for_rows(n_rows: int, max_features: int) -> int:
    """``max_features`` capped for long tables (<= 10 240 rows: 100, <= 20 000: 80, ... > 65 000: 10)."""
    for row_limit, cap in _FEATURE_CAPS_BY_ROWS:
        if n_rows <= row_limit:
            return min(cap, max_features)
    return min(_FEATURE_CAP_BEYOND, max_features)


def collate(batches: PriorBatch | Sequence[PriorBatch]) -> PriorBatch:
    """``collate_fn`` for DataLoaders over :class:`PriorIterableDataset`.

    With ``batch_size=None`` each item already is a batch and is returned as is; with ``batch_size=k`` the ``k``
    batches (which must share ``n_rows`` and ``n_train``, e.g. a fixed-size curriculum with ``n_train`` fixed) are
    concatenated along the table dimension, zero-padding features to the widest one.
    """
    if isinstance(batches, PriorBatch):
        return batches
    batches = list(batches)
    if not batches or not all(isinstance(batch, PriorBatch) for batch in batches):
        raise ValueError("collate expects a PriorBatch or a non-empty sequence of PriorBatch")
    if len(batches) == 1:
        return batches[0]
    n_rows, n_train = batches[0].n_rows, batches[0].n_train
    if any(batch.n_rows != n_rows or batch.n_train != n_train for batch in batches):
        raise ValueError("cannot concatenate PriorBatches with different n_rows or n_train")
    width = max(batch.X.shape[2] for batch in batches)
    X = torch.cat([torch.nn.functional.pad(batch.X, (0, width - batch.X.shape[2])) for batch in batches])
    return PriorBatch(
        X=X,
        y=torch.cat([batch.y for batch in batches]),
        n_train=n_train,
        d=torch.cat([batch.d for batch in batches]),
        n_classes=torch.cat([batch.n_classes for batch in batches]),
        kinds=tuple(kind for batch in batches for kind in batch.kinds),
    )


class PriorIterableDataset(IterableDataset):
    """Yields :class:`PriorBatch` objects (forever unless ``n_batches`` is given).

    Use ``DataLoader(dataset, batch_size=None, num_workers=k, collate_fn=collate)``. Each worker (and each
    distributed ``rank``) draws from its own seed derived from ``(seed, rank, start_step, worker_id)``, so workers
    never repeat each other. Batch ``i`` of worker ``w`` (of ``k``) has the global index
    ``start_step + i * k + w``, which is the order in which the DataLoader returns them; a callable curriculum
    receives that index.

    Per batch: ``n_rows`` from ``curriculum``; features per table U{min_features..max_features} with
    ``max_features`` capped for long tables when ``cap_features_by_rows``; ``n_train`` from the config's
    ``train_fraction`` unless ``train_fraction`` is given here.
    """

    def __init__(
        self,
        config: PriorConfig | str = "tabicl_mix",
        batch_size: int = 8,
        curriculum: Curriculum = 1024,
        seed: int = 0,
        max_features: int = 100,
        cap_features_by_rows: bool = True,
        train_fraction: tuple[float, float] | None = None,
        start_step: int = 0,
        rank: int = 0,
        n_batches: int | None = None,
    ):
        super().__init__()
        overrides = {} if train_fraction is None else {"train_fraction": tuple(train_fraction)}
        self.config = get_prior_config(config, **overrides)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_features < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        if isinstance(curriculum, tuple):
            if len(curriculum) != 2 or not 3 <= curriculum[0] <= curriculum[1]:
                raise ValueError(
                    f"curriculum range must be (min_rows, max_rows) with 3 <= min <= max, got {curriculum}"
                )
        elif isinstance(curriculum, int):
            if curriculum < 3:
                raise ValueError(f"curriculum (n_rows) must be >= 3, got {curriculum}")
        elif not callable(curriculum):
            raise ValueError("curriculum must be an int, a (min_rows, max_rows) tuple or a callable(step) -> n_rows")
        if n_batches is not None and n_batches < 0:
            raise ValueError(f"n_batches must be >= 0 or None, got {n_batches}")
        self.batch_size = batch_size
        self.curriculum = curriculum
        self.seed = int(seed)
        self.max_features = max_features
        self.cap_features_by_rows = cap_features_by_rows
        self.start_step = int(start_step)
        self.rank = int(rank)
        self.n_batches = n_batches

    def _n_rows(self, sampler: PriorSampler, step: int) -> int:
        if isinstance(self.curriculum, int):
            return self.curriculum
        if isinstance(self.curriculum, tuple):
            low, high = self.curriculum
            return min(max(round(math.exp(sampler.rng.uniform(math.log(low), math.log(high)))), low), high)
        n_rows = int(self.curriculum(step))
        if n_rows < 3:
            raise ValueError(f"curriculum({step}) returned {n_rows}; need >= 3 rows")
        return n_rows

    def __iter__(self) -> Iterator[PriorBatch]:
        worker = get_worker_info()
        worker_id, n_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        worker_seed = np.random.SeedSequence([self.seed, self.rank, self.start_step, worker_id]).generate_state(1)[0]
        sampler = PriorSampler(self.config, seed=int(worker_seed))
        # With n_batches, the workers share the total round-robin so the DataLoader yields exactly n_batches.
        local_index = 0
        while True:
            step = self.start_step + local_index * n_workers + worker_id
            if self.n_batches is not None and step - self.start_step >= self.n_batches:
                return
            n_rows = self._n_rows(sampler, step)
            max_features = self.max_features
            if self.cap_features_by_rows:
                max_features = max_features_for_rows(n_rows, max_features)
            yield sampler.sample_batch(self.batch_size, n_rows, max_features=max_features)
            local_index += 1
