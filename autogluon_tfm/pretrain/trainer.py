"""Pretraining loop: synthetic tables from a prior -> the head's loss on the test rows of every table.

Classification: cross-entropy over the class logits. Regression, by head: pinball loss over TabICL's quantiles,
cross-entropy over the buckets of TabPFN v2's bar distribution, squared error of Mitra's point prediction; targets
are scaled by the training rows of each table exactly as the estimators scale them at inference.

Resumable: ``<out>/last.ckpt`` holds model, optimizer, scheduler, step, data counters and wall time, written every
``checkpoint_every`` steps, at the end and when the ``max_minutes`` budget runs out. A later run with the same
``out`` continues from it.

Optional, all off by default so that existing runs resume identically: a curriculum that grows the largest table
(rows, features) over the first ``curriculum_steps`` steps; ``torchrun`` data parallelism (each rank its own prior
stream, gradients all-reduced, rank 0 alone writes); periodic evaluation (``eval_every``, see ``evaluate.py``).
See ``autogluon_tfm/pretrain/README.md`` for the protocol around runs.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from autogluon_tfm.checkpoints.io import REGRESSION_OVERRIDES, model_architecture
from autogluon_tfm.nn import ARCHITECTURES
from autogluon_tfm.nn.losses import classification_loss, regression_loss, scale_targets

logger = logging.getLogger(__name__)

# Network configurations sized for pretraining on the hardware we have (see benchmarks/results for throughput).
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # ~0.66M parameters: ~6 tables/s (8 x 512 rows x 20 features) on one CPU core in fp32.
    "tabicl-small": dict(
        embed_dim=32, col_num_blocks=1, col_nhead=4, col_num_inds=16, row_num_blocks=2, row_nhead=4, row_num_cls=4,
        icl_num_blocks=4, icl_nhead=4, ff_factor=2,
    ),
    # tabicl-small with twice the ICL blocks: grown from tabicl-small weights with --init-from (see _grow_depth).
    "tabicl-small-icl8": dict(
        embed_dim=32, col_num_blocks=1, col_nhead=4, col_num_inds=16, row_num_blocks=2, row_nhead=4, row_num_cls=4,
        icl_num_blocks=8, icl_nhead=4, ff_factor=2,
    ),
    "tabicl-tiny": dict(
        embed_dim=16, col_num_blocks=1, col_nhead=2, col_num_inds=4, row_num_blocks=2, row_nhead=2, row_num_cls=2,
        icl_num_blocks=1, icl_nhead=2, ff_factor=2,
    ),
    # Attention over every cell: the cost grows with rows x features, so these stay narrower than tabicl-small.
    "tabpfnv2-small": dict(embed_dim=48, nhead=4, num_blocks=4, ff_factor=2, num_buckets=1000),
    "tabpfnv2-tiny": dict(embed_dim=16, nhead=2, num_blocks=1, ff_factor=2, num_buckets=32),
    "mitra-small": dict(dim=48, n_layers=2, n_heads=4),
    # mitra-small twice as deep: grown from mitra-small weights with --init-from (new layers start as identity).
    "mitra-small-l4": dict(dim=48, n_layers=4, n_heads=4),
    "mitra-tiny": dict(dim=16, n_layers=1, n_heads=2),
}

# Which ``nn.ARCHITECTURES`` entry each preset builds (the part of the name before the size).
MODEL_PRESET_ARCH = {name: model_architecture(name.split("-")[0]) for name in MODEL_CONFIGS}


@dataclass
class PretrainConfig:
    arch: str = "tabicl"
    model: str = "tabicl-small"
    prior: str = "tabicl_mix"
    task: str = "classification"
    steps: int = 1000
    batch_size: int = 8  # tables per step
    min_rows: int = 256
    max_rows: int = 1024
    min_features: int = 2
    max_features: int = 30
    train_fraction: tuple[float, float] = (0.3, 0.9)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.02
    grad_clip: float = 1.0
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    device: str = "cpu"
    threads: int = 1
    num_workers: int = 1
    seed: int = 0
    checkpoint_every: int = 50
    out: str = "runs/tabicl-small"
    extra: dict[str, Any] = field(default_factory=dict)
    # ---- added later; the defaults keep older runs (whose checkpoints lack these fields) exactly as they were.
    # Curriculum: over the first curriculum_steps steps the largest table grows log-linearly from
    # curriculum_start_rows (0: min_rows) to max_rows rows and linearly from curriculum_start_features
    # (0: no feature curriculum) to max_features features. 0 steps: sizes log-uniform in the full range throughout.
    curriculum_steps: int = 0
    curriculum_start_rows: int = 0
    curriculum_start_features: int = 0
    # Wall-clock budget of this invocation in minutes: save a checkpoint and stop cleanly when it is spent.
    max_minutes: float | None = None
    # Every eval_every steps (0: never), evaluate on eval_datasets (None: evaluate.DEFAULT_EVAL_DATASETS; empty:
    # none) and eval_synthetic held-out synthetic tables; print a table and append to <out>/eval.csv.
    eval_every: int = 0
    eval_datasets: tuple[str, ...] | None = None
    eval_synthetic: int = 16
    eval_max_train: int = 512
    eval_max_test: int = 512
    # Warm start (a fresh run only): weights from a shipped name or a checkpoint path that ``load_network`` reads,
    # with a new optimizer and schedule. Lets a later session continue from the shipped weights when the run
    # directory of the run that made them is gone (runs/ is not kept between machines).
    init_from: str | None = None
    # Classification: with this probability a table's class ids 0..k-1 are relabelled to k random distinct ids of
    # the network's max_classes outputs. Without it an id is trained only on tables with more classes than it, so
    # on a 10-class network the high ids see few tables. (A 1,700-step warm start with 0.5 did not change the
    # shipped TabICL's 10-way accuracy; its many-class weakness is not the ids, see pretrain/README.md.)
    class_id_spread: float = 0.0
    # Cosine learning-rate schedule over this much training time (minutes, summed over resumed invocations,
    # evaluation excluded) as well as over ``steps``: the schedule follows whichever budget is spent faster, and
    # the run ends when either is. On a shared CPU the step rate varies several-fold with the other jobs, so a
    # step count chosen in advance either ends the schedule early or stops a time-boxed run at a high rate.
    schedule_minutes: float | None = None


def _time_fraction(cfg: PretrainConfig, state: dict[str, Any]) -> float:
    """Share of ``schedule_minutes`` spent (0 without one)."""
    if cfg.schedule_minutes is None:
        return 0.0
    return state["wall_time_s"] / (60.0 * cfg.schedule_minutes)


# glibc's mallopt parameter number of M_MMAP_THRESHOLD, and the threshold pretraining sets.
_M_MMAP_THRESHOLD = -3
HEAP_MMAP_THRESHOLD = 1 << 20


def limit_heap_fragmentation() -> bool:
    """Serve CPU allocations of >= 1 MiB by mmap, so freed tensors go back to the OS (glibc only; else a no-op).

    Every step draws a new table shape, so activation sizes keep changing. glibc raises its mmap threshold after
    each large free (up to 32 MiB) and then serves such tensors from the heap, which fragments: a TabICL-small run
    at 128-2,048 rows grew from 4.7 to 13.7 GB resident in 45 minutes and was OOM-killed on a 24 GB machine, while
    the same run with the fixed 1 MiB threshold stayed at 1-2 GB. The setting is process-wide and stays after
    ``pretrain`` returns (forked DataLoader workers inherit it). Returns whether the threshold was set.
    """
    name = ctypes.util.find_library("c")
    if os.name != "posix" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl, macOS libSystem has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))


def _progress_bar(cfg: PretrainConfig, state: dict[str, Any], disable: bool) -> tqdm:
    """Steps out of ``steps``; with a time schedule, training seconds out of ``schedule_minutes`` instead.

    A time-scheduled run (``--steps 100000 --schedule-minutes 80``) ends by time long before its step bound, so a
    bar over steps would show a meaningless total and ETA.
    """
    if cfg.schedule_minutes is None:
        return tqdm(total=cfg.steps, initial=state["step"], desc="pretrain", dynamic_ncols=True, disable=disable)
    total = round(60.0 * cfg.schedule_minutes)
    return tqdm(
        total=total, initial=min(round(state["wall_time_s"]), total), desc="pretrain (training s)", unit="s",
        dynamic_ncols=True, disable=disable,
    )


def _advance_bar(bar: tqdm, cfg: PretrainConfig, state: dict[str, Any]) -> None:
    if cfg.schedule_minutes is None:
        bar.update(1)
    else:
        bar.update(max(0, min(round(state["wall_time_s"]), bar.total) - bar.n))


def size_limits(cfg: PretrainConfig, step: int) -> tuple[int, int]:
    """``(largest n_rows, largest n_features)`` a batch may draw at ``step`` under the curriculum."""
    if cfg.curriculum_steps <= 0:
        return cfg.max_rows, cfg.max_features
    progress = min(1.0, step / cfg.curriculum_steps)
    start_rows = cfg.curriculum_start_rows or cfg.min_rows
    rows = math.exp(math.log(start_rows) + progress * (math.log(cfg.max_rows) - math.log(start_rows)))
    start_features = cfg.curriculum_start_features or cfg.max_features
    features = start_features + progress * (cfg.max_features - start_features)
    max_rows = min(max(round(rows), cfg.min_rows), cfg.max_rows)
    return max_rows, min(max(round(features), cfg.min_features), cfg.max_features)


class PriorStream(IterableDataset):
    """Endless batches from a prior, with a size curriculum; each DataLoader worker (and each distributed rank)
    draws from its own seed.

    Worker ``w`` of ``k`` yields the batches of global steps ``start_step + i * k + w`` (the DataLoader's round-robin
    order), which is the step the curriculum sees.
    """

    def __init__(self, cfg: PretrainConfig, start_step: int, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        from autogluon_tfm.prior import PriorSampler
        from autogluon_tfm.prior.dataset import max_features_for_rows

        cfg = self.cfg
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        seed = [cfg.seed, self.start_step, worker]
        if self.world_size > 1:  # single-process runs keep their original seeds (resume compatibility)
            seed.append(self.rank)
        torch.set_num_threads(1)
        sampler = PriorSampler(cfg.prior, seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
        rng = np.random.default_rng(seed)
        local_index = 0
        while True:
            # The same draws with or without a curriculum: only their upper bounds move.
            max_rows, max_features = size_limits(cfg, self.start_step + local_index * n_workers + worker)
            n_rows = int(round(math.exp(rng.uniform(math.log(cfg.min_rows), math.log(max_rows)))))
            if cfg.curriculum_steps > 0:  # long tables get fewer features (bounded memory), as in TabICL
                max_features = max(cfg.min_features, max_features_for_rows(n_rows, max_features))
            n_features = int(rng.integers(cfg.min_features, max_features + 1))
            n_train = int(n_rows * rng.uniform(*cfg.train_fraction))
            n_train = min(max(n_train, 2), n_rows - 1)
            local_index += 1
            yield sampler.sample_batch(
                cfg.batch_size, n_rows, n_features=n_features, max_features=n_features, n_train=n_train
            )


def _lr_factor(
    step: int, total: int, warmup: int, time_fraction: float = 0.0, warmup_time_fraction: float = 0.0
) -> float:
    """Linear warmup over ``warmup`` steps (or ``warmup_time_fraction`` of the time budget, whichever ends first),
    then a cosine decay to 0 over the steps or the time, whichever is further along."""
    warmed = (step + 1) / warmup
    if warmup_time_fraction > 0:
        warmed = max(warmed, time_fraction / warmup_time_fraction)
    if warmed < 1:
        return warmed
    progress = max((step - warmup) / max(1, total - warmup), time_fraction)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def build_network(cfg: PretrainConfig) -> torch.nn.Module:
    if cfg.model not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model preset {cfg.model!r}; choose from {sorted(MODEL_CONFIGS)}")
    if MODEL_PRESET_ARCH[cfg.model] != cfg.arch:
        raise ValueError(
            f"Model preset {cfg.model!r} builds a {MODEL_PRESET_ARCH[cfg.model]!r} network, not arch={cfg.arch!r}; "
            f"pass a matching --arch / --model pair."
        )
    if cfg.task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {cfg.task!r}")
    config = dict(MODEL_CONFIGS[cfg.model])
    if cfg.task == "regression":
        config.update(REGRESSION_OVERRIDES[cfg.arch])
    return ARCHITECTURES[cfg.arch](**config)


def spread_class_ids(
    y: torch.Tensor, max_classes: int, prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Relabel, with probability ``prob`` per table, the class ids of ``y (B, T)`` through a random permutation of
    ``0..max_classes-1``: a k-class table then uses k random distinct output ids instead of ``0..k-1``. The
    partition of the rows into classes is unchanged."""
    if prob <= 0:
        return y
    n_tables = y.shape[0]
    perms = torch.argsort(torch.rand(n_tables, max_classes, generator=generator), dim=1)
    keep = torch.rand(n_tables, generator=generator) >= prob
    perms[keep] = torch.arange(max_classes)
    return torch.gather(perms, 1, y.long()).to(y.dtype)


def task_loss(
    net: torch.nn.Module,
    batch: Any,
    device: str,
    task: str,
    class_id_spread: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Forward one prior batch through ``net`` and return the loss on its test rows."""
    X = batch.X.to(device)
    y = batch.y
    if task == "classification":
        y = spread_class_ids(y, net.max_classes, class_id_spread, generator)
    y = y.to(device)
    n = batch.n_train
    # Networks that support it get the real feature counts so zero padding is masked (grouped TabICL does not).
    kwargs = {"d": batch.d.to(device)} if getattr(net, "arch", "") in ("tabpfn_v2", "mitra") else {}
    if task == "classification":
        return classification_loss(net(X, y[:, :n], **kwargs), y[:, n:])
    y = scale_targets(y, n, getattr(net, "regression_target_scaling", "zscore"))
    # A rare prior table has near-constant training targets and a far test target (1 in ~2,400 tables of
    # tabicl_mix_regression scales to |y| > 100, up to 16,000): clamp the loss targets so such a table cannot dominate
    # a squared-error step. Typical scaled test targets stay within +-10 (99.9% quantile ~9).
    y = torch.cat([y[:, :n], y[:, n:].clamp(-REGRESSION_TARGET_CLAMP, REGRESSION_TARGET_CLAMP)], dim=1)
    return regression_loss(net, net(X, y[:, :n], **kwargs), y[:, n:])


# Bound of the scaled regression targets of the test rows in the pretraining loss (see task_loss).
REGRESSION_TARGET_CLAMP = 10.0

# Architectures whose networks read NaN cells (TabPFN v2 embeds NaN indicators); the others need imputed input.
NAN_ARCHITECTURES = ("tabpfn_v2",)


def check_config(cfg: PretrainConfig) -> None:
    """Fail early, before any file is written, on settings that cannot work."""
    from autogluon_tfm.prior import get_prior_config

    prior = get_prior_config(cfg.prior)
    if prior.task != cfg.task:
        raise ValueError(f"Prior {cfg.prior!r} generates {prior.task} tables but task={cfg.task!r}; pick a matching prior.")
    if prior.nan_prob > 0 and cfg.arch not in NAN_ARCHITECTURES:
        raise ValueError(
            f"Prior {cfg.prior!r} has missing values, but {cfg.arch} networks do not read NaN "
            f"(only {', '.join(NAN_ARCHITECTURES)} do); pick a prior without NaN."
        )
    if not 3 <= cfg.min_rows <= cfg.max_rows or not 1 <= cfg.min_features <= cfg.max_features:
        raise ValueError("need 3 <= min_rows <= max_rows and 1 <= min_features <= max_features")
    if cfg.curriculum_steps < 0 or cfg.eval_every < 0 or cfg.eval_synthetic < 0:
        raise ValueError("curriculum_steps, eval_every and eval_synthetic must be >= 0")
    if cfg.curriculum_start_rows and not cfg.min_rows <= cfg.curriculum_start_rows <= cfg.max_rows:
        raise ValueError(f"curriculum_start_rows must be in [min_rows, max_rows], got {cfg.curriculum_start_rows}")
    if cfg.curriculum_start_features and not cfg.min_features <= cfg.curriculum_start_features <= cfg.max_features:
        raise ValueError("curriculum_start_features must be in [min_features, max_features]")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ValueError(f"max_minutes must be > 0, got {cfg.max_minutes}")
    if cfg.schedule_minutes is not None and cfg.schedule_minutes <= 0:
        raise ValueError(f"schedule_minutes must be > 0, got {cfg.schedule_minutes}")
    if not 0.0 <= cfg.class_id_spread <= 1.0:
        raise ValueError(f"class_id_spread must be in [0, 1], got {cfg.class_id_spread}")


def _grow_depth(net: torch.nn.Module, source_state: dict[str, torch.Tensor], source: str) -> bool:
    """Warm-start a deeper network of the same width from ``source_state``; False when ``net`` is not one.

    A pure depth growth: every source tensor exists in ``net`` with its shape, and every tensor ``net`` has beyond
    them belongs to a transformer block (``AttentionBlock``) that the source lacks entirely, such as layers 2-3 of a
    4-layer Mitra grown from a 2-layer one. The new blocks keep their fresh weights, but their residual outputs
    (attention output projection, second feed-forward layer) start at zero, so with pre-norm blocks the grown
    network computes exactly what the source did and training departs from the source's function instead of from
    noise (zero-initialised residual branches, as in the ``AttentionBlock(zero_init=True)`` default).
    """
    from autogluon_tfm.nn.layers import AttentionBlock

    own = net.state_dict()
    if set(source_state) == set(own) or not set(source_state) < set(own):
        return False
    if any(own[name].shape != tensor.shape for name, tensor in source_state.items()):
        return False
    new_blocks = [
        (prefix, block) for prefix, block in net.named_modules()
        if isinstance(block, AttentionBlock) and not any(f"{prefix}.{name}" in source_state for name in block.state_dict())
    ]
    in_new_blocks = {f"{prefix}.{name}" for prefix, block in new_blocks for name in block.state_dict()}
    if set(own) - set(source_state) != in_new_blocks or not all(block.norm_first for _, block in new_blocks):
        return False
    net.load_state_dict(source_state, strict=False)
    with torch.no_grad():
        for _, block in new_blocks:
            for layer in (block.attn.out_proj, block.linear2):
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()
    logger.info(
        "Depth growth from %s: copied %d tensors; %d new transformer blocks start as identity (%s)",
        source, len(source_state), len(new_blocks), ", ".join(prefix for prefix, _ in new_blocks),
    )
    return True


def _warm_start(net: torch.nn.Module, source: str) -> None:
    """Copy the weights of ``source`` (shipped name or checkpoint path) into ``net``.

    Same architecture and task: every tensor must match (strict), unless ``net`` is the source grown deeper (see
    ``_grow_depth``: the extra blocks start as identity). Same architecture, other task (a classifier's
    weights for a regression run, or back): every tensor whose name and shape match is copied and the task-specific
    ones (label embedding, output head, bucket borders) keep their fresh initialisation. Measured on tables
    y = Xw + noise: a TabPFN v2 regression net warm-started from ``tabpfnv2-clf-small`` reached 0.05 of the target
    variance in 300 steps, one from scratch stayed at 1.00 (Mitra: 0.35 vs 0.98); the classifier's weights already
    hold the in-context machinery (attention from test rows to training rows) that regression needs.
    """
    from autogluon_tfm.checkpoints import load_network

    try:
        source_net = load_network(source)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ValueError(f"init_from={source!r} could not be loaded: {error}") from error
    mismatch = ValueError(
        f"init_from={source!r} does not fit this run's network ({getattr(source_net, 'arch', '?')} "
        f"{_task_of(source_net)} -> {getattr(net, 'arch', '?')} {_task_of(net)}); use the --model preset the "
        "checkpoint was trained with."
    )
    if getattr(source_net, "arch", None) != getattr(net, "arch", None):
        raise mismatch
    if _task_of(source_net) == _task_of(net):
        if _grow_depth(net, source_net.state_dict(), source):
            return
        try:
            net.load_state_dict(source_net.state_dict())  # strict: same names and shapes (dtypes are converted)
        except RuntimeError as error:
            raise ValueError(f"{mismatch} {str(error).splitlines()[0]}") from error
        logger.info("Warm start from %s (weights only; new optimizer and schedule)", source)
        return
    own = net.state_dict()
    copied = {k: v for k, v in source_net.state_dict().items() if k in own and own[k].shape == v.shape}
    fresh = [k for k in own if k not in copied]
    # Only the task-specific ends may differ; a network of another size shares almost nothing and is a mistake.
    if len(copied) < 0.8 * len(own):
        raise ValueError(f"{mismatch} Only {len(copied)} of {len(own)} tensors match.")
    net.load_state_dict(copied, strict=False)
    logger.info(
        "Cross-task warm start from %s (%s -> %s): copied %d of %d tensors; freshly initialised: %s",
        source, _task_of(source_net), _task_of(net), len(copied), len(own), ", ".join(fresh),
    )


def _task_of(net: torch.nn.Module) -> str:
    return "classification" if getattr(net, "max_classes", 0) else "regression"


def default_evaluator(cfg: PretrainConfig, device: str) -> Callable[[torch.nn.Module, int], list[dict[str, Any]]]:
    """The evaluator ``eval_every`` uses unless ``pretrain`` is given one."""
    from autogluon_tfm.pretrain.evaluate import PretrainEvaluator

    return PretrainEvaluator(
        model=cfg.model.split("-")[0], task=cfg.task, prior=cfg.prior, datasets=cfg.eval_datasets,
        synthetic_tables=cfg.eval_synthetic, synthetic_features=min(cfg.max_features, 10),
        synthetic_rows=min(max(cfg.min_rows, 256), cfg.max_rows), max_train=cfg.eval_max_train,
        max_test=cfg.eval_max_test, device=device, seed=cfg.seed,
    )


def _init_distributed(cfg: PretrainConfig) -> tuple[int, int, str, bool]:
    """``(rank, world_size, device, created)``: joins the process group ``torchrun`` describes (WORLD_SIZE > 1),
    gloo on CPU and NCCL on CUDA (one GPU per local rank); ``created`` if this call initialised it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, cfg.device, False
    import torch.distributed as dist

    device = cfg.device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, created


def _all_reduce_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients over the ranks in one collective. A parameter unused on some rank (e.g. a head the
    batch did not need) gets a zero gradient everywhere rather than None, so every rank's optimizer steps alike."""
    import torch.distributed as dist

    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([param.grad.reshape(-1) for param in params])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for param in params:
        param.grad.copy_(flat[offset : offset + param.numel()].view_as(param.grad))
        offset += param.numel()


def _truncate_csv(path: Path, step: int) -> None:
    """Drop the rows of a step-indexed CSV logged after ``step`` (a resumed run redoes them)."""
    if path.exists():
        lines = path.read_text().splitlines()
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
        path.write_text("\n".join(kept) + "\n")


def pretrain(
    cfg: PretrainConfig, evaluator: Callable[[torch.nn.Module, int], list[dict[str, Any]]] | None = None
) -> Path:
    """Run (or resume) pretraining; returns the path of the last checkpoint.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs this with the same ``cfg``. ``evaluator(net, step)``
    replaces the default evaluation of ``cfg.eval_every`` (rows ``{"step", "dataset", "metric", "value"}``).
    """
    return _pretrain(cfg, evaluator)[0]


def _pretrain(
    cfg: PretrainConfig, evaluator: Callable[[torch.nn.Module, int], list[dict[str, Any]]] | None = None
) -> tuple[Path, torch.nn.Module]:
    """:func:`pretrain`, also returning the trained network (tests compare the ranks' weights)."""
    check_config(cfg)
    started = time.time()
    rank, world_size, device, created_group = _init_distributed(cfg)
    distributed = world_size > 1
    is_main = rank == 0
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    limit_heap_fragmentation()
    torch.manual_seed(cfg.seed)
    net = build_network(cfg).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
    state = {"step": 0, "tables_seen": 0, "wall_time_s": 0.0}
    time_warmup = cfg.warmup_fraction if cfg.schedule_minutes is not None else 0.0
    # The lambda reads `state` when called, so it sees the resumed progress too.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, cfg.steps, warmup, _time_fraction(cfg, state), time_warmup)
    )
    last = out / "last.ckpt"
    if distributed:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has created the output directory; nobody writes last.ckpt before everyone read it
    if last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=True)
        net.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        state = dict(ckpt["progress"])
        logger.info("Resumed from %s at step %d", last, state["step"])
    elif cfg.init_from:
        _warm_start(net, cfg.init_from)
    if distributed:
        for tensor in net.state_dict().values():  # identical start on every rank, whatever each one loaded
            dist.broadcast(tensor, src=0)
    if is_main:
        (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if state["step"] >= cfg.steps or _time_fraction(cfg, state) >= 1:
        return _finish(last, net, distributed, created_group)
    if cfg.eval_every and evaluator is None and is_main:
        evaluator = default_evaluator(cfg, device)

    loader = DataLoader(
        PriorStream(cfg, state["step"], rank=rank, world_size=world_size), batch_size=None,
        num_workers=cfg.num_workers, prefetch_factor=4 if cfg.num_workers > 0 else None, persistent_workers=False,
    )
    log_path, eval_path = out / "log.csv", out / "eval.csv"
    log_file = None
    if is_main:
        _truncate_csv(log_path, state["step"])  # rows logged after the checkpoint we resumed from are redone
        _truncate_csv(eval_path, state["step"])
        new_log = not log_path.exists()
        log_file = log_path.open("a", newline="")
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "lr", "tables_seen", "wall_time_s", "n_rows", "n_features"])
    net.train()
    params = [param for param in net.parameters() if param.requires_grad]
    autocast = torch.autocast(
        device_type="cuda" if "cuda" in device else "cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"
    )
    bar = _progress_bar(cfg, state, disable=not is_main)
    t_last = time.time()
    t_progress = t_last
    ema_loss = None
    budget_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    try:
        for batch in loader:
            X = batch.X
            # Seeded by (seed, step), so a resumed run relabels the same tables the same way.
            spread_rng = (
                torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["step"]) if cfg.class_id_spread > 0 else None
            )
            with autocast:
                loss = task_loss(net, batch, device, cfg.task, cfg.class_id_spread, spread_rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            out_of_time = budget_s is not None and time.time() - started >= budget_s
            value = loss.item()
            measured = time.time()  # training time runs from one step's measurement to the next
            step_wall_time = state["wall_time_s"] + measured - t_last
            if distributed:
                _all_reduce_gradients(params, world_size)
                # One small collective: the mean loss for the log, a stop vote (any rank out of time stops all),
                # and the mean training time, so that a time schedule gives every rank the same rate.
                shared = torch.tensor([value, float(out_of_time), step_wall_time], dtype=torch.float64)
                dist.all_reduce(shared)
                value, out_of_time = float(shared[0]) / world_size, bool(shared[1] > 0)
                step_wall_time = float(shared[2]) / world_size
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            now = time.time()
            state["wall_time_s"] = step_wall_time
            t_last = measured
            state["step"] += 1
            state["tables_seen"] += X.shape[0] * world_size
            scheduler.step()  # after the progress update: the next step's rate reads the time spent so far
            ema_loss = value if ema_loss is None else 0.98 * ema_loss + 0.02 * value
            schedule_spent = _time_fraction(cfg, state) >= 1  # the same on every rank (shared training time)
            done = state["step"] >= cfg.steps or out_of_time or schedule_spent
            if is_main:
                log.writerow([state["step"], f"{value:.5f}", f"{scheduler.get_last_lr()[0]:.3e}", state["tables_seen"],
                              f"{state['wall_time_s']:.1f}", X.shape[1], X.shape[2]])
                _advance_bar(bar, cfg, state)
                bar.set_postfix(
                    step=state["step"], loss=f"{ema_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}", refresh=False
                )
                if now - t_progress >= 60 or done:  # plain lines for logs of non-interactive (GPU, batch) jobs
                    t_progress = now
                    logger.info(
                        "step %d/%d loss %.4f (ema %.4f) lr %.2e tables %d elapsed %.1f min", state["step"],
                        cfg.steps, value, ema_loss, scheduler.get_last_lr()[0], state["tables_seen"],
                        (now - started) / 60,
                    )
                if state["step"] % cfg.checkpoint_every == 0 or done:
                    log_file.flush()
                    _save(last, net, optimizer, scheduler, state, cfg)
                if cfg.eval_every and (state["step"] % cfg.eval_every == 0 or done):
                    from autogluon_tfm.pretrain.evaluate import append_eval_csv, format_eval_table

                    rows = evaluator(net, state["step"])
                    append_eval_csv(eval_path, rows)
                    tqdm.write(format_eval_table(rows))
                    t_last = time.time()  # evaluation time is not training time
            if out_of_time and is_main:
                logger.info("max_minutes=%s reached at step %d: checkpoint saved, stopping", cfg.max_minutes,
                            state["step"])
            elif schedule_spent and is_main:
                logger.info("schedule_minutes=%s of training spent at step %d: schedule done, checkpoint saved",
                            cfg.schedule_minutes, state["step"])
            if done:
                break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    return _finish(last, net, distributed, created_group)


def _finish(last: Path, net: torch.nn.Module, distributed: bool, created_group: bool) -> tuple[Path, torch.nn.Module]:
    if distributed:
        import torch.distributed as dist

        dist.barrier()  # the other ranks return only once rank 0 has written the checkpoint
        if created_group:
            dist.destroy_process_group()
    return last, net


def _save(path: Path, net, optimizer, scheduler, progress: dict, cfg: PretrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "config": net.config,
            "arch": net.arch,
            "state_dict": net.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(),
            "progress": progress,
            "pretrain_config": asdict(cfg),
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a killed session never leaves a half-written checkpoint
