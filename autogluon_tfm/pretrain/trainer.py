"""Pretraining loop: synthetic tables from a prior -> the head's loss on the test rows of every table.

Classification: cross-entropy over the class logits. Regression, by head: pinball loss over TabICL's quantiles,
cross-entropy over the buckets of TabPFN v2's bar distribution, squared error of Mitra's point prediction; targets
are scaled by the training rows of each table exactly as the estimators scale them at inference.

Resumable: ``<out>/last.ckpt`` holds model, optimizer, scheduler, step, data counters and wall time, written every
``checkpoint_every`` steps and at the end. A later run with the same ``out`` continues from it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
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
    "tabicl-tiny": dict(
        embed_dim=16, col_num_blocks=1, col_nhead=2, col_num_inds=4, row_num_blocks=2, row_nhead=2, row_num_cls=2,
        icl_num_blocks=1, icl_nhead=2, ff_factor=2,
    ),
    # Attention over every cell: the cost grows with rows x features, so these stay narrower than tabicl-small.
    "tabpfnv2-small": dict(embed_dim=48, nhead=4, num_blocks=4, ff_factor=2, num_buckets=1000),
    "tabpfnv2-tiny": dict(embed_dim=16, nhead=2, num_blocks=1, ff_factor=2, num_buckets=32),
    "mitra-small": dict(dim=48, n_layers=2, n_heads=4),
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


class PriorStream(IterableDataset):
    """Endless batches from a prior, with a size curriculum; each DataLoader worker draws from its own seed."""

    def __init__(self, cfg: PretrainConfig, start_step: int):
        self.cfg = cfg
        self.start_step = start_step

    def __iter__(self):
        from autogluon_tfm.prior import PriorSampler

        cfg = self.cfg
        info = get_worker_info()
        worker = 0 if info is None else info.id
        seed = [cfg.seed, self.start_step, worker]
        torch.set_num_threads(1)
        sampler = PriorSampler(cfg.prior, seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
        rng = np.random.default_rng(seed)
        while True:
            n_rows = int(round(math.exp(rng.uniform(math.log(cfg.min_rows), math.log(cfg.max_rows)))))
            n_features = int(rng.integers(cfg.min_features, cfg.max_features + 1))
            n_train = int(n_rows * rng.uniform(*cfg.train_fraction))
            n_train = min(max(n_train, 2), n_rows - 1)
            yield sampler.sample_batch(
                cfg.batch_size, n_rows, n_features=n_features, max_features=n_features, n_train=n_train
            )


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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


def task_loss(net: torch.nn.Module, batch: Any, device: str, task: str) -> torch.Tensor:
    """Forward one prior batch through ``net`` and return the loss on its test rows."""
    X = batch.X.to(device)
    y = batch.y.to(device)
    n = batch.n_train
    # Networks that support it get the real feature counts so zero padding is masked (grouped TabICL does not).
    kwargs = {"d": batch.d.to(device)} if getattr(net, "arch", "") in ("tabpfn_v2", "mitra") else {}
    if task == "classification":
        return classification_loss(net(X, y[:, :n], **kwargs), y[:, n:])
    y = scale_targets(y, n, getattr(net, "regression_target_scaling", "zscore"))
    return regression_loss(net, net(X, y[:, :n], **kwargs), y[:, n:])


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) pretraining; returns the path of the last checkpoint."""
    from autogluon_tfm.prior import get_prior_config

    prior_task = get_prior_config(cfg.prior).task
    if prior_task != cfg.task:
        raise ValueError(f"Prior {cfg.prior!r} generates {prior_task} tables but task={cfg.task!r}; pick a matching prior.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net = build_network(cfg).to(cfg.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg.steps, warmup))
    state = {"step": 0, "tables_seen": 0, "wall_time_s": 0.0}
    last = out / "last.ckpt"
    if last.exists():
        ckpt = torch.load(last, map_location=cfg.device, weights_only=True)
        net.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        state = dict(ckpt["progress"])
        logger.info("Resumed from %s at step %d", last, state["step"])
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if state["step"] >= cfg.steps:
        return last

    loader = DataLoader(
        PriorStream(cfg, state["step"]), batch_size=None, num_workers=cfg.num_workers,
        prefetch_factor=4 if cfg.num_workers > 0 else None, persistent_workers=False,
    )
    log_path = out / "log.csv"
    if log_path.exists():  # drop rows logged after the checkpoint we resumed from (they will be redone)
        lines = log_path.read_text().splitlines()
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= state["step"]]
        log_path.write_text("\n".join(kept) + "\n")
    new_log = not log_path.exists()
    log_file = log_path.open("a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "loss", "lr", "tables_seen", "wall_time_s", "n_rows", "n_features"])
    net.train()
    autocast = torch.autocast(
        device_type="cuda" if "cuda" in cfg.device else "cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"
    )
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="pretrain", dynamic_ncols=True)
    t_last = time.time()
    ema_loss = None
    try:
        for batch in loader:
            X = batch.X
            with autocast:
                loss = task_loss(net, batch, cfg.device, cfg.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            now = time.time()
            state["wall_time_s"] += now - t_last
            t_last = now
            state["step"] += 1
            state["tables_seen"] += X.shape[0]
            value = loss.item()
            ema_loss = value if ema_loss is None else 0.98 * ema_loss + 0.02 * value
            log.writerow([state["step"], f"{value:.5f}", f"{scheduler.get_last_lr()[0]:.3e}", state["tables_seen"],
                          f"{state['wall_time_s']:.1f}", X.shape[1], X.shape[2]])
            bar.update(1)
            bar.set_postfix(loss=f"{ema_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
            if state["step"] % cfg.checkpoint_every == 0 or state["step"] >= cfg.steps:
                log_file.flush()
                _save(last, net, optimizer, scheduler, state, cfg)
            if state["step"] >= cfg.steps:
                break
    finally:
        bar.close()
        log_file.close()
    return last


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
