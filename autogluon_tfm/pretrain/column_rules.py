"""Column-identity warm-up: a short run on tables whose target is a rule of one or two particular columns.

Why: Mitra (Tab2D) embeds every cell with one shared map, and after its quantile transform every column has the same
marginal, so nothing but the context tells its columns apart. Pretrained on the SCM and tree priors alone, the small
network never learned to (``x0 > x1`` at chance in ``benchmarks/results/synthetic_probe.md``), although a fresh one
learns it from rule tables within a few hundred steps. A few hundred steps on these tables *before* the prior gives
the network that skill, and prior training afterwards keeps it (the same probe: 0.697 -> 0.278, dev log loss far
lower). The rules on their own make it overconfident on everything else: always follow with prior training.

Tables: 2-6 N(0, 1) columns (noise except the rule's). Classification: a binary label, half of the tables
``x_a > x_b`` for a random pair, the other half ``x_a > t`` with ``t ~ N(0, 0.5^2)``. Regression (the same idea for a
regression network): half ``y = x_a - x_b``, the other half ``y = +-x_a``, plus N(0, 0.1^2) noise; the targets are
scaled per table as the network is trained (:func:`~autogluon_tfm.nn.losses.scale_targets`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from autogluon_tfm.checkpoints import network_task
from autogluon_tfm.pretrain.trainer import task_loss
from autogluon_tfm.prior.sampler import PriorBatch

logger = logging.getLogger(__name__)


def column_rule_batch(
    generator: torch.Generator,
    n_tables: int = 16,
    n_train: int = 128,
    n_test: int = 64,
    n_columns: tuple[int, int] = (2, 6),
    comparison_share: float = 0.5,
    task: str = "classification",
) -> tuple[Tensor, Tensor]:
    """``X (n_tables, n_train + n_test, h)`` and targets ``y (n_tables, n_train + n_test)``, ``h`` drawn from
    ``n_columns`` (inclusive) for the batch. Classification: binary labels, ``comparison_share`` of the tables
    ``x_a > x_b``, the rest ``x_a > t``. Regression: unscaled float targets, ``comparison_share`` of the tables
    ``x_a - x_b``, the rest ``+-x_a``, plus N(0, 0.1^2) noise."""
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    low, high = n_columns
    if not 2 <= low <= high:
        raise ValueError(f"n_columns must satisfy 2 <= low <= high, got {n_columns}")
    width = low if low == high else int(torch.randint(low, high + 1, (1,), generator=generator))
    X = torch.randn(n_tables, n_train + n_test, width, generator=generator)
    pairs = torch.rand(n_tables, width, generator=generator).argsort(dim=1)[:, :2]
    tables = torch.arange(n_tables)
    first, second = X[tables, :, pairs[:, 0]], X[tables, :, pairs[:, 1]]
    if task == "regression":
        comparison = torch.rand(n_tables, 1, generator=generator) < comparison_share
        sign = torch.where(torch.rand(n_tables, 1, generator=generator) < 0.5, -1.0, 1.0)
        noise = 0.1 * torch.randn(first.shape, generator=generator)
        return X, torch.where(comparison, first - second, sign * first) + noise
    if comparison_share >= 1:
        return X, (first > second).long()
    threshold = torch.randn(n_tables, 1, generator=generator) * 0.5
    comparison = torch.rand(n_tables, 1, generator=generator) < comparison_share
    return X, torch.where(comparison, first > second, first > threshold).long()


def warm_up_columns(
    network: nn.Module,
    steps: int,
    lr: float = 3e-4,
    seed: int = 0,
    log_every: int = 100,
    n_tables: int = 16,
    n_train: int = 128,
    n_test: int = 64,
    **rule_options,
) -> list[tuple[int, float]]:
    """Train ``network`` (a classifier or a regressor, in place) for ``steps`` Adam steps on
    :func:`column_rule_batch` tables of its task (constant ``lr``, gradients clipped to norm 1; ``rule_options``: its
    ``n_columns`` / ``comparison_share``); leaves it in eval mode. The loss is pretraining's
    (:func:`~autogluon_tfm.pretrain.trainer.task_loss`: regression targets scaled per table as the network expects,
    its head's loss).

    Returns ``(step, smoothed loss)`` for steps 0, ``log_every``, ... and the last (exponential smoothing, 0.95).
    """
    task = network_task(network)
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    curve, smoothed = [], None
    for step in range(steps):
        X, y = column_rule_batch(generator, n_tables, n_train, n_test, task=task, **rule_options)
        n_classes = torch.full((n_tables,), 2 if task == "classification" else 0)
        batch = PriorBatch(X, y, n_train, d=torch.full((n_tables,), X.shape[2]), n_classes=n_classes)
        loss = task_loss(network, batch, "cpu", task)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        if step % log_every == 0 or step == steps - 1:
            curve.append((step, smoothed))
            logger.info("column-rule warm-up: step %d loss %.3f", step, smoothed)
    network.eval()
    return curve
