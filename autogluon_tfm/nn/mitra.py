"""Mitra: a Tab2D network with 2D attention over the cells of a table.

Every cell becomes a token: its feature value is replaced by its quantile rank among the training rows of its column
(standardised with training statistics) and embedded by a linear map; each row gets one extra label token in
front (the embedded class or target for training rows, a learned "unknown" token for test rows). Each layer then
attends across rows (within one token column, every row reads the training rows only) and across the tokens of a
row, both pre-norm. The output of the label token of a test row is the prediction.

Constructor arguments are the fields of the official ``config.json`` (``dim``, ``dim_output``, ``n_layers``,
``n_heads``, ``task``), so an official directory builds this network directly; :mod:`autogluon_tfm.checkpoints.mitra`
translates the official state-dict names to ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from autogluon_tfm.nn.layers import AttentionBlock, check_protocol_inputs

TASKS = ("classification", "regression")
# Quantile levels 1/1000 .. 999/1000, built exactly like the official model (float32 arange / 1000).
_N_QUANTILE_LEVELS = 999


def quantile_embedding(X: Tensor, n_train: int) -> Tensor:
    """Replace every value by its standardised quantile rank among the training rows of its column.

    ``X`` (B, T, H) -> (B, T, H) float32. Ranks come from ``torch.bucketize(x, quantiles)`` (``right=False``) against
    999 linearly interpolated quantiles of the first ``n_train`` rows, divided by ``n_train``; mean and population
    variance are those of the training rows. Columns constant on the training rows become 0. ``X`` must be finite
    (impute NaN before calling), as in the official preprocessing.
    """
    X = X.float()
    return _apply_quantiles(X, _quantile_state(X[:, :n_train]))


class _QuantileState(NamedTuple):
    """What the quantile embedding keeps of a table's training rows."""

    boundaries: Tensor  # (B, H, 999): each column's quantiles, sorted
    mean: Tensor  # (B, 1, H): mean quantile rank of the training rows
    var: Tensor  # (B, 1, H): population variance of those ranks (0: constant column)
    n_train: int


def _quantile_ranks(X: Tensor, boundaries: Tensor, n_train: int) -> Tensor:
    # searchsorted(right=False) on the column's quantiles == the official per-column bucketize.
    ranks = torch.searchsorted(boundaries, X.transpose(1, 2).contiguous(), right=False)  # (B, H, T)
    return ranks.transpose(1, 2).float() / n_train  # (B, T, H)


def _quantile_state(support: Tensor) -> _QuantileState:
    """Training rows ``(B, n, H)`` -> their quantiles and rank statistics."""
    levels = torch.arange(1, _N_QUANTILE_LEVELS + 1, dtype=torch.float32, device=support.device) / 1000
    boundaries = torch.quantile(support, q=levels, dim=1).permute(1, 2, 0).contiguous()
    n_train = support.shape[1]
    ranks = _quantile_ranks(support, boundaries, n_train)
    mean = ranks.sum(dim=1, keepdim=True) / n_train
    var = ((ranks - mean) ** 2).sum(dim=1, keepdim=True) / n_train
    return _QuantileState(boundaries, mean, var, n_train)


def _apply_quantiles(X: Tensor, state: _QuantileState) -> Tensor:
    """Any rows ``X`` (B, m, H) -> their standardised quantile ranks among the training rows of ``state``."""
    ranks = _quantile_ranks(X, state.boundaries, state.n_train)
    return ((ranks - state.mean) / state.var.sqrt()).masked_fill(state.var == 0, 0.0)


@dataclass
class MitraTrainCache:
    """Everything test rows need from the training rows (see :meth:`Mitra.build_kv_cache`): the quantile state and,
    per layer, the keys and values of the training rows in the attention across rows, ``(B*F, heads, n, dim/heads)``
    each (F = features + the label token)."""

    quantiles: _QuantileState
    kv: list[tuple[Tensor, Tensor]]

    @property
    def nbytes(self) -> int:
        tensors = [self.quantiles.boundaries, self.quantiles.mean, self.quantiles.var]
        tensors += [t for pair in self.kv for t in pair]
        return sum(t.numel() * t.element_size() for t in tensors)


class MitraLayer(nn.Module):
    """One Tab2D layer: attention across rows (per token column), then attention across the tokens of each row."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        # Official Tab2D uses PyTorch's default init everywhere (no zeroed residual branches).
        self.across_rows = AttentionBlock(dim, n_heads, 4 * dim, norm_first=True, zero_init=False)
        self.across_features = AttentionBlock(dim, n_heads, 4 * dim, norm_first=True, zero_init=False)

    def forward(
        self,
        x: Tensor,
        n_train: int,
        token_padding_mask: Tensor | None = None,
        col_chunk: int | None = None,
        row_chunk: int | None = None,
    ) -> Tensor:
        """``x`` (B, T, F, dim) with the training rows first; ``token_padding_mask`` (B, F), True = padded token."""
        n_rows, n_tokens = x.shape[1], x.shape[2]
        # Across rows: every token column is an independent sequence; all rows attend to the training rows only.
        cols = x.transpose(1, 2)  # (B, F, T, dim)
        col_step = col_chunk or n_tokens
        cols = torch.cat(
            [self.across_rows(part, n_keys=n_train) for part in cols.split(col_step, dim=1)], dim=1
        )
        x = cols.transpose(1, 2)  # (B, T, F, dim)
        # Across features: every row is an independent sequence of its label token and feature tokens.
        row_step = row_chunk or n_rows
        parts = []
        for start in range(0, n_rows, row_step):
            part = x[:, start : start + row_step]
            mask = None
            if token_padding_mask is not None:
                mask = token_padding_mask[:, None, :].expand(-1, part.shape[1], -1)
            parts.append(self.across_features(part, key_padding_mask=mask))
        return torch.cat(parts, dim=1)

    def forward_train(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Training rows alone (they attend to training rows only): ``forward(x, n_train=all)`` and their keys and
        values in the attention across rows, which is all that test rows read of them."""
        kv = self.across_rows.cached_kv(x.transpose(1, 2))
        return self(x, x.shape[1]), kv

    def forward_test(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """Test rows ``x`` (B, m, F, dim) against cached training-row keys/values (see :meth:`forward_train`)."""
        x = self.across_rows.forward_cached(x.transpose(1, 2), *kv).transpose(1, 2)
        return self.across_features(x)


class Mitra(nn.Module):
    """Mitra (Tab2D) network. ``forward(X (B,T,H), y_train (B,n)) -> (B, T-n, n_out)`` for the T-n test rows.

    Classification: ``n_out == dim_output`` (10) logits, class ids ``0..dim_output-1`` in ``y_train``; the caller
    slices to its number of classes. Regression (``task="regression"``, ``max_classes == 0``): ``n_out == 1``, a point
    prediction in the scale of ``y_train``; the official weights were trained on min-max scaled targets
    (``(y - min) / (max - min)`` over the training rows, see :attr:`regression_target_scaling`).
    """

    arch = "mitra"
    regression_target_scaling = "minmax"
    # Each cell is embedded by its quantile rank within its column and no column has a position, so reordering the
    # columns or mapping them through increasing functions leaves the output unchanged (up to the quantile
    # interpolation of test values): the estimators need no feature-order or normalisation members for it.
    ignores_column_order_and_scale = True

    def __init__(
        self,
        dim: int = 512,
        dim_output: int = 10,
        n_layers: int = 12,
        n_heads: int = 4,
        task: str = "classification",
        recompute: bool = False,
    ):
        super().__init__()
        task = str(task).lower()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} (any case), got {task!r}")
        if task == "regression" and dim_output != 1:
            raise ValueError(f"Regression needs dim_output=1 (a scalar head), got {dim_output}")
        if task == "classification" and dim_output < 2:
            raise ValueError(f"Classification needs dim_output >= 2 classes, got {dim_output}")
        self.config = dict(dim=dim, dim_output=dim_output, n_layers=n_layers, n_heads=n_heads, task=task,
                           recompute=recompute)
        self.task = task
        self.max_classes = dim_output if task == "classification" else 0
        self.recompute = recompute
        self.x_embedding = nn.Linear(1, dim)
        if task == "classification":
            self.y_embedding: nn.Module = nn.Embedding(dim_output, dim)
        else:
            self.y_embedding = nn.Linear(1, dim)
        # Label token of test rows (their label is what the network predicts).
        self.y_mask = nn.Parameter(torch.empty(1, dim))
        self.layers = nn.ModuleList(MitraLayer(dim, n_heads) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, dim_output)
        # As the official init: unit-normal cell and label embeddings, PyTorch defaults elsewhere.
        for tensor in (self.x_embedding.weight, self.x_embedding.bias, self.y_embedding.weight, self.y_mask):
            nn.init.normal_(tensor, mean=0.0, std=1.0)

    @property
    def n_out(self) -> int:
        return self.config["dim_output"]

    def _embed_labels(self, y_train: Tensor, n_test: int) -> Tensor:
        """(B, n) -> (B, n + n_test, 1, dim): label tokens of the training rows, then the test rows' mask token."""
        B = y_train.shape[0]
        if self.task == "classification":
            support = self.y_embedding(y_train.long())
        else:
            support = self.y_embedding(y_train.float().unsqueeze(-1))
        query = self.y_mask.expand(B, n_test, -1).to(support.dtype)
        return torch.cat([support, query], dim=1).unsqueeze(2)

    def forward(
        self,
        X: Tensor,
        y_train: Tensor,
        d: Tensor | None = None,
        col_chunk: int | None = None,
        row_chunk: int | None = None,
    ) -> Tensor:
        """``d`` (B,): number of real features per table, the rest zero padding (pretraining batches).

        ``col_chunk`` / ``row_chunk`` bound peak memory by processing that many token columns / rows at a time.
        """
        check_protocol_inputs(X, y_train)
        n_train = y_train.shape[1]
        if n_train < 1:
            raise ValueError("Mitra needs at least one training row")
        B, T, H = X.shape
        token_padding_mask = None
        if d is not None and not bool((d == H).all()):
            # Token 0 is the label token; feature token j+1 is padding when j >= d. Padded tokens are never keys in
            # the across-features attention, and the across-rows attention never mixes columns, so real tokens see
            # exactly what they would see without the padding.
            feature_pos = torch.arange(H, device=X.device)
            padded = feature_pos[None] >= d[:, None].to(X.device)
            token_padding_mask = torch.cat([torch.zeros_like(padded[:, :1]), padded], dim=1)  # (B, H+1)
        cells = self.x_embedding(quantile_embedding(X, n_train).unsqueeze(-1))  # (B, T, H, dim)
        labels = self._embed_labels(y_train, T - n_train).to(cells.dtype)  # (B, T, 1, dim)
        x = torch.cat([labels, cells], dim=2)  # label token first
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, n_train, token_padding_mask, col_chunk, row_chunk, use_reentrant=False)
            else:
                x = layer(x, n_train, token_padding_mask, col_chunk, row_chunk)
        return self.head(self.final_norm(x[:, n_train:, 0]))

    # ----------------------------------------------------------------------------------------------- train cache
    def build_kv_cache(self, X_train: Tensor, y_train: Tensor) -> MitraTrainCache:
        """Run the training rows ``X_train (B, n, H)`` once; :meth:`forward_with_kv_cache` then costs only test rows.

        Exact: training rows never read test rows, and the quantile embedding takes its statistics from the
        training rows only.
        """
        if X_train.ndim != 3 or y_train.shape != X_train.shape[:2]:
            raise ValueError(f"Need X_train (B, n, H) and y_train (B, n); got {tuple(X_train.shape)} and "
                             f"{tuple(y_train.shape)}")
        quantiles = _quantile_state(X_train.float())
        cells = self.x_embedding(_apply_quantiles(X_train.float(), quantiles).unsqueeze(-1))
        x = torch.cat([self._embed_labels(y_train, 0).to(cells.dtype), cells], dim=2)
        kv = []
        for layer in self.layers:
            x, layer_kv = layer.forward_train(x)
            kv.append(layer_kv)
        return MitraTrainCache(quantiles=quantiles, kv=kv)

    def kv_cache_nbytes(self, n_tables: int, n_train: int, n_features: int) -> int:
        """fp32 bytes of :meth:`build_kv_cache`'s keys/values for ``n_tables`` tables of ``n_train`` x
        ``n_features``: every head's, 2 x dim per token and layer, more than a whole-table call's activations for
        the full-size network (the estimators use the cache only when it fits their memory budget)."""
        return 4 * n_tables * n_train * (n_features + 1) * 2 * self.config["dim"] * len(self.layers)

    def forward_with_kv_cache(self, X_test: Tensor, cache: MitraTrainCache) -> Tensor:
        """(B, m, H) test rows -> (B, m, n_out): ``forward(cat(X_train, X_test), y_train)`` of the cached rows."""
        B, m, H = X_test.shape
        if cache.quantiles.boundaries.shape[:2] != (B, H):
            raise ValueError(f"X_test {tuple(X_test.shape)} does not match the cached training rows "
                             f"({tuple(cache.quantiles.boundaries.shape[:2])} tables x features)")
        cells = self.x_embedding(_apply_quantiles(X_test.float(), cache.quantiles).unsqueeze(-1))
        labels = self.y_mask.expand(B, m, -1).to(cells.dtype).unsqueeze(2)
        x = torch.cat([labels, cells], dim=2)
        for layer, layer_kv in zip(self.layers, cache.kv):
            x = layer.forward_test(x, layer_kv)
        return self.head(self.final_norm(x[:, :, 0]))

