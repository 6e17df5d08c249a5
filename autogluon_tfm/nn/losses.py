"""Training losses of the network heads, shared by pretraining and finetuning.

Classification: cross-entropy over the class logits. Regression, by head: pinball loss over TabICL's quantiles,
cross-entropy over the buckets of TabPFN v2's bar distribution, squared error of Mitra's point prediction. Targets
are scaled by each table's training rows (:func:`scale_targets`), as the estimators scale them at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["classification_loss", "regression_loss", "scale_targets"]


def classification_loss(logits: torch.Tensor, y_test: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over all ``max_classes`` outputs on the test rows."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y_test.long().reshape(-1))


def scale_targets(y: torch.Tensor, n_train: int, method: str) -> torch.Tensor:
    """Scale every table's regression target ``y (B, T)`` by statistics of its training rows, as the estimators
    do at inference: ``"zscore"`` (TabICL, TabPFN v2) or ``"minmax"`` (Mitra)."""
    train = y[:, :n_train]
    if method == "minmax":
        low = train.min(dim=1, keepdim=True).values
        span = train.max(dim=1, keepdim=True).values - low
        return (y - low) / span.clamp_min(1e-6)
    mean = train.mean(dim=1, keepdim=True)
    std = train.std(dim=1, keepdim=True, unbiased=False)
    return (y - mean) / std.clamp_min(1e-6)


def regression_loss(net: torch.nn.Module, output: torch.Tensor, y_test: torch.Tensor) -> torch.Tensor:
    """The loss of ``net``'s regression head on the test rows (``output (B, m, n_out)``, scaled ``y_test (B, m)``)."""
    output = output.float()
    borders = getattr(net, "borders", None)
    if borders is not None:  # bar distribution: cross-entropy over the bucket holding the target
        inner = borders[1:-1].to(y_test.device)
        bucket = torch.searchsorted(inner, y_test.contiguous(), right=True)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), bucket.reshape(-1))
    n_quantiles = int(getattr(net, "num_quantiles", 0) or 0)
    if n_quantiles and output.shape[-1] == n_quantiles:  # pinball loss averaged over the quantile levels
        levels = torch.arange(1, n_quantiles + 1, device=output.device, dtype=output.dtype) / (n_quantiles + 1)
        error = y_test[..., None] - output
        return torch.maximum(levels * error, (levels - 1) * error).mean()
    return F.mse_loss(output[..., 0], y_test)
