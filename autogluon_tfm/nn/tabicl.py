"""TabICL: column-wise set transformer -> row-wise transformer with CLS tokens and RoPE -> in-context learner.

Constructor arguments are those of the official ``tabicl`` 2.x ``TabICL`` module, so an official checkpoint's
``config`` builds this network directly (v1/v1.1 and v2 flags, classification and 999-quantile regression).
Module names follow the official state dict except that attention projections are separate ``nn.Linear`` layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from autogluon_tfm.nn.layers import (
    AttentionBlock,
    InducedSetAttentionBlock,
    OneHotLinear,
    RotaryEmbedding,
    check_protocol_inputs,
    mlp,
    run_in_chunks,
)


def _blocks(n: int, dim: int, heads: int, ff_dim: int, **kwargs) -> nn.ModuleList:
    return nn.ModuleList(AttentionBlock(dim, heads, ff_dim, **kwargs) for _ in range(n))


class _Stack(nn.Module):
    """Holds ``blocks`` (and an optional ``rope``) so state-dict names match the official ``tf_row``/``tf_icl``."""

    def __init__(self, blocks: nn.ModuleList, rope: RotaryEmbedding | None = None):
        super().__init__()
        self.blocks = blocks
        self.rope = rope


class ColEmbedding(nn.Module):
    """Embeds every cell from the distribution of its column (or column group) with a set transformer.

    The set transformer's inducing points read the training rows only, so the embedding of a column is fitted on the
    training data and applied to every row. With ``target_aware`` the training labels are added to the cells first.
    """

    def __init__(
        self,
        embed_dim: int,
        num_blocks: int,
        num_heads: int,
        ff_dim: int,
        num_inds: int,
        affine: bool,
        feature_group: bool | str,
        feature_group_size: int,
        target_aware: bool,
        max_classes: int,
        ssmax: Any,
        block_kwargs: dict,
    ):
        super().__init__()
        self.feature_group = "same" if feature_group is True else feature_group
        self.feature_group_size = feature_group_size
        self.target_aware = target_aware
        self.max_classes = max_classes
        self.affine = affine
        self.in_linear = nn.Linear(feature_group_size if self.feature_group else 1, embed_dim)
        self.tf_col = nn.Module()
        self.tf_col.blocks = nn.ModuleList(
            InducedSetAttentionBlock(embed_dim, num_heads, ff_dim, num_inds, ssmax=ssmax, **block_kwargs)
            for _ in range(num_blocks)
        )
        if target_aware:
            self.y_encoder = OneHotLinear(max_classes, embed_dim) if max_classes > 0 else nn.Linear(1, embed_dim)
        if affine:
            ln_kwargs = dict(bias=block_kwargs.get("ln_bias", True))
            self.out_w = nn.Linear(embed_dim, embed_dim)
            self.ln_w = nn.LayerNorm(embed_dim, **ln_kwargs)
            self.out_b = nn.Linear(embed_dim, embed_dim)
            self.ln_b = nn.LayerNorm(embed_dim, **ln_kwargs)

    def group_features(self, X: Tensor) -> Tensor:
        """(B, T, H) -> (B, T, G, s): each token sees a small group of features (TabICLv2)."""
        if not self.feature_group:
            return X.unsqueeze(-1)
        size = self.feature_group_size
        H = X.shape[-1]
        if self.feature_group == "same":  # group j = features j+1, j+2, j+4, ... (mod H)
            idx = torch.arange(H, device=X.device)
            return torch.stack([X[..., (idx + 2**i) % H] for i in range(size)], dim=-1)
        X = F.pad(X, (0, (size - H % size) % size))
        return X.unflatten(-1, (-1, size))

    def embed_target(self, y_train: Tensor) -> Tensor:
        return self.y_encoder(y_train) if self.max_classes > 0 else self.y_encoder(y_train.unsqueeze(-1))

    def _embed_columns(self, cells: Tensor, y_emb: Tensor | None, n_train: int, recompute: bool) -> Tensor:
        """``cells`` (N, T, s) for N columns -> (N, T, E)."""
        src = self.in_linear(cells)
        if y_emb is not None:
            src = torch.cat([src[:, :n_train] + y_emb, src[:, n_train:]], dim=1)
        for block in self.tf_col.blocks:
            if recompute and torch.is_grad_enabled():
                src = checkpoint(block, src, n_train, use_reentrant=False)
            else:
                src = block(src, n_train)
        if self.affine:
            src = cells * self.ln_w(self.out_w(src)) + self.ln_b(self.out_b(src))
        return src

    def forward(self, X: Tensor, y_train: Tensor, col_chunk: int | None = None, recompute: bool = False) -> Tensor:
        """(B, T, H) -> (B, T, G, E) embeddings of the feature tokens (CLS tokens are added by the row stage)."""
        B, T = X.shape[:2]
        n_train = y_train.shape[1]
        cells = self.group_features(X).transpose(1, 2)  # (B, G, T, s)
        G = cells.shape[1]
        cells = cells.reshape(B * G, T, -1)
        y_emb = None
        if self.target_aware:
            y_emb = self.embed_target(y_train).repeat_interleave(G, dim=0)  # (B*G, n, E)

        def embed(idx: Tensor) -> Tensor:
            return self._embed_columns(cells[idx], None if y_emb is None else y_emb[idx], n_train, recompute)

        all_idx = torch.arange(B * G, device=X.device)
        out = run_in_chunks(embed, all_idx, col_chunk)
        return out.reshape(B, G, T, -1).transpose(1, 2)


class RowInteraction(nn.Module):
    """Mixes the feature tokens of each row with a transformer (RoPE over token positions); CLS outputs = row vector."""

    def __init__(
        self,
        embed_dim: int,
        num_blocks: int,
        num_heads: int,
        ff_dim: int,
        num_cls: int,
        rope_base: float,
        rope_interleaved: bool,
        block_kwargs: dict,
    ):
        super().__init__()
        self.num_cls = num_cls
        rope = RotaryEmbedding(embed_dim // num_heads, base=rope_base, interleaved=rope_interleaved)
        self.tf_row = _Stack(_blocks(num_blocks, embed_dim, num_heads, ff_dim, **block_kwargs), rope)
        self.cls_tokens = nn.Parameter(torch.empty(num_cls, embed_dim))
        nn.init.trunc_normal_(self.cls_tokens, std=0.02)
        ln_bias = block_kwargs.get("ln_bias", True)
        self.out_ln = nn.LayerNorm(embed_dim, bias=ln_bias) if block_kwargs.get("norm_first", True) else nn.Identity()

    def _rows(self, tokens: Tensor, key_padding_mask: Tensor | None, recompute: bool) -> Tensor:
        """``tokens`` (N, G, E) feature tokens of N rows -> (N, C*E)."""
        cls = self.cls_tokens.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = torch.cat([cls, tokens], dim=1)
        rope = self.tf_row.rope
        *body, last = self.tf_row.blocks
        for block in body:
            if recompute and torch.is_grad_enabled():
                x = checkpoint(block, x, None, None, rope, key_padding_mask, use_reentrant=False)
            else:
                x = block(x, rope=rope, key_padding_mask=key_padding_mask)
        # Only the CLS outputs of the last block are used: query with them alone.
        cls_out = last(x[:, : self.num_cls], key_value=x, rope=rope, key_padding_mask=key_padding_mask)
        return self.out_ln(cls_out).flatten(-2)

    def forward(
        self, emb: Tensor, d: Tensor | None = None, row_chunk: int | None = None, recompute: bool = False
    ) -> Tensor:
        """(B, T, G, E) -> (B, T, C*E). ``d`` (B,) masks padded feature tokens beyond ``d`` (pretraining)."""
        B, T, G, E = emb.shape
        tokens = emb.reshape(B * T, G, E)
        if d is None:
            out = run_in_chunks(lambda t: self._rows(t, None, recompute), tokens, row_chunk)
        else:
            pos = torch.arange(self.num_cls + G, device=emb.device)
            mask = (pos[None] >= (d[:, None] + self.num_cls)).repeat_interleave(T, dim=0)  # (B*T, C+G)
            out = self._rows(tokens, mask, recompute)
        return out.reshape(B, T, -1)


class ICLearning(nn.Module):
    """Dataset-level in-context learning: every row attends to the label-embedded training rows only."""

    def __init__(
        self, dim: int, num_blocks: int, num_heads: int, ff_dim: int, max_classes: int, out_dim: int,
        ssmax: Any, block_kwargs: dict,
    ):
        super().__init__()
        self.max_classes = max_classes
        self.tf_icl = _Stack(_blocks(num_blocks, dim, num_heads, ff_dim, ssmax=ssmax, **block_kwargs))
        self.norm_first = block_kwargs.get("norm_first", True)
        if self.norm_first:
            self.ln = nn.LayerNorm(dim, bias=block_kwargs.get("ln_bias", True))
        self.y_encoder = OneHotLinear(max_classes, dim) if max_classes > 0 else nn.Linear(1, dim)
        self.decoder = mlp(dim, 2 * dim, out_dim)

    def forward(self, R: Tensor, y_train: Tensor, recompute: bool = False) -> Tensor:
        """(B, T, D) row vectors, (B, n) labels -> (B, T-n, out_dim) for the test rows."""
        n = y_train.shape[1]
        y_emb = self.y_encoder(y_train) if self.max_classes > 0 else self.y_encoder(y_train.unsqueeze(-1))
        x = torch.cat([R[:, :n] + y_emb, R[:, n:]], dim=1)
        for block in self.tf_icl.blocks:
            if recompute and torch.is_grad_enabled():
                x = checkpoint(block, x, None, n, use_reentrant=False)
            else:
                x = block(x, n_keys=n)
        x = x[:, n:]
        if self.norm_first:
            x = self.ln(x)
        return self.decoder(x)


class TabICL(nn.Module):
    """TabICL network. ``forward(X (B,T,H), y_train (B,n)) -> (B, T-n, n_out)`` for the T-n test rows.

    Classification returns ``max_classes`` logits (slice to the number of classes); regression (``max_classes=0``)
    returns ``num_quantiles`` quantiles of the standardised target at levels ``linspace(0, 1, q+2)[1:-1]``.
    """

    arch = "tabicl"

    def __init__(
        self,
        max_classes: int = 10,
        num_quantiles: int = 999,
        embed_dim: int = 128,
        col_num_blocks: int = 3,
        col_nhead: int = 8,
        col_num_inds: int = 128,
        col_affine: bool = False,
        col_feature_group: bool | str = "same",
        col_feature_group_size: int = 3,
        col_target_aware: bool = True,
        col_ssmax: bool | str = "qassmax-mlp-elementwise",
        row_num_blocks: int = 3,
        row_nhead: int = 8,
        row_num_cls: int = 4,
        row_rope_base: float = 100000,
        row_rope_interleaved: bool = False,
        icl_num_blocks: int = 12,
        icl_nhead: int = 8,
        icl_ssmax: bool | str = "qassmax-mlp-elementwise",
        ff_factor: int = 2,
        dropout: float = 0.0,
        activation: str = "gelu",
        norm_first: bool = True,
        bias_free_ln: bool = False,
        recompute: bool = False,
    ):
        super().__init__()
        if activation != "gelu":
            raise ValueError(f"Only activation='gelu' is supported, got {activation!r}")
        if max_classes == 0 and num_quantiles <= 0:
            raise ValueError("Regression (max_classes=0) needs num_quantiles > 0")
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.max_classes = max_classes
        self.num_quantiles = num_quantiles
        self.recompute = recompute
        self.feature_grouped = bool(col_feature_group)
        out_dim = max_classes if max_classes > 0 else num_quantiles
        block_kwargs = dict(norm_first=norm_first, ln_bias=not bias_free_ln, dropout=dropout)
        self.col_embedder = ColEmbedding(
            embed_dim, col_num_blocks, col_nhead, embed_dim * ff_factor, col_num_inds, col_affine,
            col_feature_group, col_feature_group_size, col_target_aware, max_classes, col_ssmax, block_kwargs,
        )
        self.row_interactor = RowInteraction(
            embed_dim, row_num_blocks, row_nhead, embed_dim * ff_factor, row_num_cls, row_rope_base,
            row_rope_interleaved, block_kwargs,
        )
        icl_dim = embed_dim * row_num_cls
        self.icl_predictor = ICLearning(
            icl_dim, icl_num_blocks, icl_nhead, icl_dim * ff_factor, max_classes, out_dim, icl_ssmax, block_kwargs
        )

    @property
    def n_out(self) -> int:
        return self.max_classes if self.max_classes > 0 else self.num_quantiles

    def forward(
        self,
        X: Tensor,
        y_train: Tensor,
        d: Tensor | None = None,
        col_chunk: int | None = None,
        row_chunk: int | None = None,
    ) -> Tensor:
        check_protocol_inputs(X, y_train)
        if d is not None and bool((d == X.shape[-1]).all()):
            d = None
        if d is not None and self.feature_grouped:
            raise ValueError("Per-table feature counts `d` need col_feature_group=False; pad batches to equal widths")
        recompute = self.recompute and self.training
        emb = self.col_embedder(X, y_train, col_chunk=col_chunk, recompute=recompute)
        if d is not None:  # padded features contribute nothing
            valid = torch.arange(X.shape[-1], device=X.device)[None] < d[:, None]
            emb = emb * valid[:, None, :, None].to(emb.dtype)
        R = self.row_interactor(emb, d=d, row_chunk=row_chunk, recompute=recompute)
        return self.icl_predictor(R, y_train, recompute=recompute)
