"""Finetuning loop for in-context tabular networks (full or LoRA), with early stopping on a validation loss.

Each step samples one in-context task from the training rows (about ``rows_per_step`` rows, split into context and
query), runs the network in training mode and minimises the query rows' loss with AdamW, linear warm-up then cosine
decay, and gradient clipping. The validation loss (the data's: log loss for classification, the regression head's
loss for regression) is measured before the first step and every ``eval_every`` steps; the best weights seen (the
pretrained ones included) are restored at the end, so finetuning never returns weights that are worse on validation
than the pretrained ones.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from autogluon_tfm.finetune.data import FinetuneData
from autogluon_tfm.finetune.lora import DEFAULT_LORA_TARGETS, add_lora, merge_lora

__all__ = ["FINETUNE_MODES", "FinetuneConfig", "FinetuneReport", "finetune"]

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "lora")
# learning_rate="auto" of the estimators. Shipped (small, CPU-pretrained) weights: the best peak learning rate of
# benchmarks/finetune_lr_sweep.py (full finetuning, all three networks, 5 dev datasets: results/finetune_lr_sweep*.md).
# Any other checkpoint (official full-size weights): 1e-4, not yet measured here (no official weights offline).
SHIPPED_WEIGHTS_LEARNING_RATE = 5e-4
# LoRA on the shipped weights: the adapters start at zero and need a larger step (finetune_lr_sweep_lora.md).
SHIPPED_WEIGHTS_LORA_LEARNING_RATE = 2e-3
OTHER_WEIGHTS_LEARNING_RATE = 1e-4
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune`.

    Attributes:
        mode: ``"full"`` (every parameter trains) or ``"lora"`` (only LoRA adapters train).
        max_steps: gradient steps at most (one sampled task per step); 0 returns the network unchanged.
        learning_rate: peak AdamW learning rate (reached after warm-up).
        weight_decay: AdamW weight decay.
        warmup_fraction: share of ``max_steps`` with a linear warm-up; cosine decay to 0 afterwards.
        grad_clip: maximum global gradient norm (``None`` = no clipping).
        rows_per_step: rows drawn per step (context + query); all training rows when there are fewer.
        query_fraction: share of a step's rows that are query rows (their loss is minimised).
        eval_every: steps between validation passes (one also runs before the first step and after the last).
        patience: stop after this many validation passes without an improvement larger than ``min_delta``.
        min_delta: smallest decrease of the validation loss that counts as an improvement.
        time_limit: seconds for the whole call (``None`` = no limit); a step that would not finish in time is skipped,
            and the warm-up + cosine schedule is shortened to the steps the limit affords.
        lora_rank / lora_alpha / lora_dropout / lora_target_modules: LoRA settings (``mode="lora"`` only).
        merge_lora: fold the trained adapters into the weights and return the plain network (else keep the wrappers).
    """

    mode: str = "full"
    max_steps: int = 200
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float | None = 1.0
    rows_per_step: int = 1024
    query_fraction: float = 0.25
    eval_every: int = 5
    patience: int = 16
    min_delta: float = 1e-4
    time_limit: float | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    merge_lora: bool = True

    def __post_init__(self) -> None:
        if self.mode not in FINETUNE_MODES:
            raise ValueError(f"Unknown finetuning mode {self.mode!r}; expected one of {FINETUNE_MODES}.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, (int, np.integer)) or self.max_steps < 0:
            raise ValueError(f"max_steps must be a non-negative integer, got {self.max_steps!r}.")
        for name in ("rows_per_step", "eval_every", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if isinstance(self.learning_rate, bool) or not (isinstance(self.learning_rate, Real) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}.")
        if not 0 < self.query_fraction < 1:
            raise ValueError(f"query_fraction must be in (0, 1), got {self.query_fraction!r}.")
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta!r}.")
        if self.time_limit is not None and not self.time_limit >= 0:
            raise ValueError(f"time_limit must be >= 0 seconds or None, got {self.time_limit!r}.")


@dataclass
class FinetuneReport:
    """What happened in :func:`finetune` (no tensors: cheap to keep on a fitted estimator).

    ``initial_loss`` / ``best_loss`` are validation losses (``None`` without validation; log loss for
    classification, the head's loss in the scaled target space for regression); ``best_step`` is the step
    whose weights were returned (0 = the pretrained weights); ``history`` holds one ``(step, mean training loss since
    the previous pass, validation loss, seconds since start)`` tuple per validation pass.
    """

    mode: str
    steps_run: int = 0
    best_step: int = 0
    initial_loss: float | None = None
    best_loss: float | None = None
    stop_reason: str = ""
    seconds: float = 0.0
    n_trainable_parameters: int = 0
    history: list[tuple[int, float | None, float, float]] = field(default_factory=list)


def _autocast_dtype(precision: str) -> torch.dtype | None:
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {tuple(_AUTOCAST_DTYPES)}.")
    return _AUTOCAST_DTYPES[precision]


def _lr_factor(step: int, max_steps: int, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0 at ``max_steps`` (``step`` counts from 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(max_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# Steps after which a time-limited run re-plans its schedule: the first step is slow (allocations, warm caches).
_HORIZON_PLAN_STEPS = (1, 3)


def _plan_horizon(
    horizon: dict[str, int], config: FinetuneConfig, step: int, elapsed: float, step_seconds: float,
    eval_seconds: float,
) -> None:
    """Shrink ``horizon["steps"]`` to the number of steps the remaining time affords (never below ``step + 1``)."""
    per_step = step_seconds + (eval_seconds / config.eval_every if eval_seconds else 0.0)
    affordable = step + int(max(config.time_limit - elapsed, 0.0) / max(per_step, 1e-9))
    planned = max(step + 1, min(config.max_steps, affordable))
    if planned < horizon["steps"]:
        logger.info(
            "Finetuning: the time limit affords about %d of %d steps; the learning-rate schedule is planned for %d",
            affordable, config.max_steps, planned,
        )
        horizon["steps"] = planned


def finetune(
    network: nn.Module,
    data: FinetuneData,
    config: FinetuneConfig | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seed: int | None = 0,
    verbose: bool = False,
) -> tuple[nn.Module, FinetuneReport]:
    """Finetune a copy of ``network`` on the tasks of ``data``; ``network`` itself is never modified.

    Returns ``(finetuned network in eval mode on device, report)``. With validation (``data.has_validation``) the
    returned weights are those of the best validation pass, the pretrained ones included; without it, those after the
    last step. ``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 uses a gradient scaler).
    """
    config = config or FinetuneConfig()
    device = torch.device(device)
    autocast_dtype = _autocast_dtype(precision)
    # Adapter initialisation and dropout draw from torch's global RNG: seed it for reproducible runs, but restore the
    # caller's RNG state afterwards.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        return _finetune(network, data, config, device, precision, autocast_dtype, seed, verbose)


def _finetune(
    network: nn.Module,
    data: FinetuneData,
    config: FinetuneConfig,
    device: torch.device,
    precision: str,
    autocast_dtype: torch.dtype | None,
    seed: int | None,
    verbose: bool,
) -> tuple[nn.Module, FinetuneReport]:
    start = time.monotonic()
    report = FinetuneReport(mode=config.mode)

    net = copy.deepcopy(network).to(device)
    tuner = None
    if config.mode == "lora":
        requires_grad_before = {name: p.requires_grad for name, p in net.named_parameters()}
        tuner = add_lora(net, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    trainable = {name: p for name, p in net.named_parameters() if p.requires_grad}
    report.n_trainable_parameters = sum(p.numel() for p in trainable.values())
    if not trainable:
        raise ValueError(f"{type(network).__name__} has no trainable parameters.")

    def evaluate() -> float:
        return data.validation_loss(net, device, autocast_dtype)

    def snapshot() -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}

    logger.info(
        "Finetuning (%s) %s: up to %d steps of %d rows, lr=%.3g, %d trainable parameters, device=%s, precision=%s%s",
        config.mode,
        type(network).__name__,
        config.max_steps,
        config.rows_per_step,
        config.learning_rate,
        report.n_trainable_parameters,
        device,
        precision,
        f", time limit {config.time_limit:.1f}s" if config.time_limit is not None else "",
    )
    best_state = None
    eval_seconds = 0.0
    if data.has_validation:
        eval_start = time.monotonic()
        report.initial_loss = report.best_loss = evaluate()
        eval_seconds = time.monotonic() - eval_start
        report.history.append((0, None, report.initial_loss, time.monotonic() - start))
        best_state = snapshot()
        logger.info("Finetuning: validation loss before the first step %.5f", report.initial_loss)

    params = list(trainable.values())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    # The schedule's horizon: max_steps, or fewer when the time limit cannot afford them (planned after the first
    # steps are timed), so that a time-limited fit still warms up and decays instead of stopping mid warm-up.
    horizon = {"steps": config.max_steps}

    def lr_factor(step: int) -> float:
        warmup_steps = max(1, int(round(config.warmup_fraction * horizon["steps"])))
        return _lr_factor(step, horizon["steps"], warmup_steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
    rng = np.random.default_rng(seed)
    evals_without_improvement = 0
    train_losses: list[float] = []
    step_seconds = 0.0
    report.stop_reason = f"reached max_steps={config.max_steps}"

    with tqdm(total=config.max_steps, desc=f"finetune ({config.mode})", disable=not verbose, leave=False) as progress:
        for step in range(1, config.max_steps + 1):
            evaluates = data.has_validation and (step % config.eval_every == 0 or step == horizon["steps"])
            if config.time_limit is not None:
                expected = step_seconds + (eval_seconds if evaluates else 0.0)
                if time.monotonic() - start + expected > config.time_limit:
                    report.stop_reason = f"time limit of {config.time_limit:.1f}s"
                    break
            step_start = time.monotonic()
            net.train()
            batch = data.sample_step(rng, config.rows_per_step, config.query_fraction).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                outputs = net(batch.X, batch.y_context)
            loss = data.loss(outputs, batch)
            if not torch.isfinite(loss):
                report.stop_reason = f"non-finite training loss at step {step}"
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            report.steps_run = step
            train_losses.append(float(loss.detach()))
            step_seconds = time.monotonic() - step_start
            if config.time_limit is not None and step in _HORIZON_PLAN_STEPS:
                _plan_horizon(horizon, config, step, time.monotonic() - start, step_seconds, eval_seconds)
            progress.update(1)
            # A horizon shortened for the time limit has decayed the learning rate to 0: later steps cannot learn.
            schedule_done = step >= horizon["steps"] and horizon["steps"] < config.max_steps
            if not evaluates:
                progress.set_postfix(train_loss=f"{train_losses[-1]:.4f}", refresh=False)
                if schedule_done:
                    report.stop_reason = f"time limit of {config.time_limit:.1f}s (its {step}-step schedule finished)"
                    break
                continue

            eval_start = time.monotonic()
            val_loss = evaluate()
            eval_seconds = time.monotonic() - eval_start
            mean_train_loss = float(np.mean(train_losses)) if train_losses else None
            train_losses.clear()
            report.history.append((step, mean_train_loss, val_loss, time.monotonic() - start))
            if val_loss < report.best_loss - config.min_delta:
                report.best_loss, report.best_step = val_loss, step
                best_state = snapshot()
                evals_without_improvement = 0
                logger.info("Finetuning step %d: validation loss improved to %.5f", step, val_loss)
            else:
                evals_without_improvement += 1
            progress.set_postfix(val_loss=f"{val_loss:.4f}", best=f"{report.best_loss:.4f}", refresh=False)
            if evals_without_improvement >= config.patience:
                report.stop_reason = f"no improvement in {config.patience} validation passes (early stopping)"
                break
            if schedule_done:
                report.stop_reason = f"time limit of {config.time_limit:.1f}s (its {step}-step schedule finished)"
                break

    if best_state is not None:
        with torch.no_grad():
            for name, value in best_state.items():
                trainable[name].copy_(value.to(trainable[name].device))
    else:
        report.best_step = report.steps_run
    if tuner is not None and config.merge_lora:
        net = merge_lora(tuner)
        for name, p in net.named_parameters():
            p.requires_grad_(requires_grad_before.get(name, p.requires_grad))
    net.eval()
    report.seconds = time.monotonic() - start
    logger.info(
        "Finetuning stopped after %d steps (%s) in %.1fs; kept the weights of step %d%s",
        report.steps_run,
        report.stop_reason,
        report.seconds,
        report.best_step,
        (
            f" (validation loss {report.initial_loss:.5f} -> {report.best_loss:.5f})"
            if report.best_loss is not None
            else ""
        ),
    )
    return net, report
