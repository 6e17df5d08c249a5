"""Batches of synthetic tables for pretraining (contract 3 of the team contracts)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autogluon_tfm.prior.config import MITRA_TREE_FAMILIES, PriorConfig, get_prior_config
from autogluon_tfm.prior.filters import learnability_gain, regression_learnability_gain
from autogluon_tfm.prior.mitra_trees import generate_mitra_tree_table
from autogluon_tfm.prior.mlp_scm import generate_mlp_scm_table
from autogluon_tfm.prior.random_utils import PriorRandom
from autogluon_tfm.prior.reg2cls import ProcessedTable, postprocess_table
from autogluon_tfm.prior.tree_scm import generate_tree_scm_table

MLP_SCM = "mlp_scm"
TREE_SCM = "tree_scm"
# Every generator kind a table can come from (MITRA_TREE_FAMILIES: mitra_dt, mitra_et, mitra_rf, mitra_gb, mitra_dsrf).
KINDS: tuple[str, ...] = (MLP_SCM, TREE_SCM, *MITRA_TREE_FAMILIES)


@dataclass
class PriorBatch:
    """A batch of ``B`` synthetic tables sharing the number of rows ``T`` and of train rows ``n_train``.

    ``X (B, T, H)`` float32: table ``i`` has ``d[i]`` real features, columns ``d[i]:`` are exactly zero.
    ``y (B, T)`` float32: class ids ``0..n_classes[i]-1`` (every class occurs in ``y[i, :n_train]``) for
    classification, standardized targets for regression (``n_classes`` is then 0).
    Rows ``:n_train`` are the context (train) part, rows ``n_train:`` the query (test) part.
    """

    X: torch.Tensor
    y: torch.Tensor
    n_train: int
    d: torch.Tensor
    n_classes: torch.Tensor
    kinds: tuple[str, ...] = ()  # which generator produced each table (one of KINDS), for logging

    @property
    def batch_size(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[1])

    def to(self, device: str | torch.device, non_blocking: bool = False) -> PriorBatch:
        """A copy with all tensors on ``device``."""
        return PriorBatch(
            X=self.X.to(device, non_blocking=non_blocking),
            y=self.y.to(device, non_blocking=non_blocking),
            n_train=self.n_train,
            d=self.d.to(device, non_blocking=non_blocking),
            n_classes=self.n_classes.to(device, non_blocking=non_blocking),
            kinds=self.kinds,
        )

    def pin_memory(self) -> PriorBatch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return PriorBatch(
            self.X.pin_memory(),
            self.y.pin_memory(),
            self.n_train,
            self.d.pin_memory(),
            self.n_classes.pin_memory(),
            self.kinds,
        )


def sample_n_train(rng: PriorRandom, n_rows: int, train_fraction: tuple[float, float]) -> int:
    """``int(n_rows * U(low, high))`` clamped so that there are >= 2 train rows and >= 1 test row."""
    return min(max(int(n_rows * rng.uniform(*train_fraction)), 2), n_rows - 1)


class PriorSampler:
    """Draws batches of synthetic tables from a :class:`PriorConfig` (or a named config, see ``PRIOR_CONFIGS``).

    All randomness comes from ``seed``: two samplers with the same config and seed produce the same sequence of
    batches, whatever the global torch / numpy state.
    """

    def __init__(self, config: PriorConfig | str = "tabicl_mix", seed: int = 0):
        self.config = get_prior_config(config)
        self.seed = int(seed)
        self.rng = PriorRandom(self.seed)

    def __repr__(self) -> str:
        return f"PriorSampler(config={self.config.name!r}, task={self.config.task!r}, seed={self.seed})"

    def sample_n_classes(self) -> int:
        """Classification: with probability ``multiclass_prob`` U{2..max_classes}, otherwise 2. Regression: 0."""
        config = self.config
        if config.task == "regression":
            return 0
        if self.rng.bernoulli(config.multiclass_prob):
            return self.rng.integer(2, config.max_classes)
        return 2

    def sample_kind(self) -> str:
        """Mitra tree family with ``p_mitra_tree`` (uniform over ``mitra_tree_families``), else the XGBoost tree SCM
        with ``p_tree``, else the MLP SCM."""
        config = self.config
        # p_mitra_tree == 0 (every older config) draws nothing extra, so their table sequence is unchanged.
        if config.p_mitra_tree > 0 and self.rng.bernoulli(config.p_mitra_tree):
            families = config.mitra_tree_families
            return families[self.rng.integer(0, len(families) - 1)]
        return TREE_SCM if self.rng.bernoulli(config.p_tree) else MLP_SCM

    def sample_table(self, kind: str, n_rows: int, n_train: int, n_features: int, n_classes: int) -> ProcessedTable:
        """One post-processed table from generator ``kind``; SCMs are redrawn until the table is usable."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        for _ in range(self.config.max_attempts):
            if kind == TREE_SCM:
                X, y = generate_tree_scm_table(self.rng, n_rows, n_features, self.config)
            elif kind == MLP_SCM:
                X, y = generate_mlp_scm_table(self.rng, n_rows, n_features, self.config)
            else:
                X, y = generate_mitra_tree_table(self.rng, n_rows, n_features, self.config, kind)
            table = postprocess_table(X, y, n_train, n_classes, self.rng, self.config)
            if table is not None and self._learnable(table, n_train):
                return table
        raise RuntimeError(
            f"{kind} produced no usable table in {self.config.max_attempts} attempts "
            f"(n_rows={n_rows}, n_train={n_train}, n_features={n_features}, n_classes={n_classes})"
        )

    def _learnable(self, table: ProcessedTable, n_train: int) -> bool:
        threshold = self.config.min_learnability_gain
        if threshold is None or self.rng.bernoulli(self.config.keep_unlearnable_prob):
            return True
        gain = learnability_gain if self.config.task == "classification" else regression_learnability_gain
        return gain(table.X, table.y, n_train, seed=self.rng.child_seed() % 2**31) >= threshold

    @torch.no_grad()
    def sample_batch(
        self,
        batch_size: int,
        n_rows: int,
        n_features: int | None = None,
        max_features: int = 100,
        n_train: int | None = None,
    ) -> PriorBatch:
        """Draw ``batch_size`` tables of ``n_rows`` rows.

        ``n_features``: features drawn for every table (constant ones are then removed, so ``d <= n_features``);
        ``None`` draws U{min_features..max_features} per table. ``n_train``: train rows shared by the batch;
        ``None`` draws ``int(n_rows * U(train_fraction))``.
        """
        config = self.config
        min_train_rows = 2 if config.task == "classification" else 1
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n_rows < min_train_rows + 1:
            raise ValueError(f"n_rows must be >= {min_train_rows + 1}, got {n_rows}")
        if max_features < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        if n_features is not None and not 1 <= n_features <= max_features:
            raise ValueError(f"n_features must be in [1, max_features={max_features}], got {n_features}")
        if n_train is None:
            n_train = sample_n_train(self.rng, n_rows, config.train_fraction)
        elif not min_train_rows <= n_train < n_rows:
            raise ValueError(f"n_train must be in [{min_train_rows}, n_rows={n_rows}), got {n_train}")

        tables: list[ProcessedTable] = []
        kinds: list[str] = []
        for _ in range(batch_size):
            kind = self.sample_kind()
            table_features = n_features or self.rng.integer(min(config.min_features, max_features), max_features)
            table_classes = self.sample_n_classes()
            if table_classes:
                table_classes = min(table_classes, n_train)
            tables.append(self.sample_table(kind, n_rows, n_train, table_features, table_classes))
            kinds.append(kind)

        d = torch.tensor([table.X.shape[1] for table in tables], dtype=torch.long)
        width = max_features if config.pad_to_max_features else int(d.max())
        X = torch.zeros(batch_size, n_rows, width)
        for i, table in enumerate(tables):
            X[i, :, : table.X.shape[1]] = table.X
        return PriorBatch(
            X=X,
            y=torch.stack([table.y for table in tables]),
            n_train=n_train,
            d=d,
            n_classes=torch.tensor([table.n_classes for table in tables], dtype=torch.long),
            kinds=tuple(kinds),
        )
