"""TabPFN v2-style per-feature transformer.

Every cell of a table is a token: features are grouped in consecutive pairs, each group of each row is embedded
from its train-normalised values and NaN indicators, plus a random (seeded) per-group "subspace" embedding that
tells the groups apart; the (label-encoded) target is one more token at the end of each row. Each block alternates
attention between the tokens of a row, attention between the cells of a column (test rows read the training rows
only, with the first head's keys/values: multi-query) and an MLP, all post-norm with non-affine LayerNorm and
without biases. The target token of every test row is decoded into 10 class logits or into the logits of a
bar distribution over ``num_buckets`` buckets whose edges are the ``borders`` buffer (regression).

The numbers follow the official ``tabpfn.architectures.tabpfn_v2`` module (tabpfn 8.x), so an official checkpoint
loaded by :mod:`autogluon_tfm.checkpoints.tabpfn_v2` gives the same outputs. Attention projections are separate
``nn.Linear`` layers (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) so that ``peft`` can wrap them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from autogluon_tfm.nn.layers import AttentionBlock, MultiheadAttention, check_protocol_inputs, mlp

# Values of the indicator channel that flags missing / infinite cells (and test-row targets) to the network.
NAN_INDICATOR = -2.0
POS_INF_INDICATOR = 2.0
NEG_INF_INDICATOR = 4.0


def default_borders(num_buckets: int) -> Tensor:
    """Bucket edges for a freshly initialised regression head: standard-normal quantiles of the standardised target.

    Official checkpoints replace them with their own ``criterion.borders``.
    """
    levels = torch.linspace(0.0, 1.0, num_buckets + 1, dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    return torch.special.ndtri(levels).float()


def _indicators(x: Tensor) -> Tensor:
    """-2 where NaN, 2 where +inf, 4 where -inf, 0 elsewhere."""
    inf = torch.isinf(x)
    return (
        torch.isnan(x) * NAN_INDICATOR + (inf & (x > 0)) * POS_INF_INDICATOR + (inf & (x < 0)) * NEG_INF_INDICATOR
    ).to(x.dtype)


def _impute_with_train_mean(x: Tensor, n_train: int) -> Tensor:
    """Replace NaN/inf cells (dim 1 = rows) by the mean of the finite training cells of their column (0 if none)."""
    finite = torch.isfinite(x)
    train_finite = finite[:, :n_train]
    total = torch.where(train_finite, x[:, :n_train], torch.zeros_like(x[:, :n_train])).sum(1, keepdim=True)
    mean = total / train_finite.sum(1, keepdim=True).clamp(min=1)
    return torch.where(finite, x, mean)


def _non_constant(x: Tensor) -> Tensor:
    """True for columns (dim 1 = rows) whose values are not all equal to the first row's (NaN never equals)."""
    return ~(x[:, 1:] == x[:, :1]).all(dim=1)


class _TabPFNBlock(nn.Module):
    """Attention between the tokens of each row, then between the cells of each column, then an MLP (post-norm)."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.feature_attn = MultiheadAttention(dim, num_heads, bias=False)
        self.feature_norm = nn.LayerNorm(dim, elementwise_affine=False)
        # Column attention + MLP with their two norms is exactly a post-norm transformer block.
        self.item_block = AttentionBlock(
            dim, num_heads, ff_dim, norm_first=False, ln_affine=False, attn_bias=False, ff_bias=False, dropout=dropout
        )
        for attn in (self.feature_attn, self.item_block.attn):
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                nn.init.xavier_uniform_(proj.weight)
        nn.init.zeros_(self.feature_attn.out_proj.weight)  # residual branches start as identity
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, n_train: int, token_padding_mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, C, E) with the first ``n_train`` rows for training; ``token_padding_mask`` (B, T, C)."""
        attended = self.feature_attn(x, x, key_padding_mask=token_padding_mask)
        x = self.feature_norm(x + self.dropout(attended))
        columns = x.transpose(1, 2)  # (B, C, T, E): every column is a sequence of cells
        columns = self.item_block(columns, n_keys=n_train, multiquery_from=n_train)
        return columns.transpose(1, 2)


class TabPFNv2(nn.Module):
    """TabPFN v2 network. ``forward(X (B,T,H), y_train (B,n)) -> (B, T-n, n_out)`` for the T-n test rows.

    Classification (``max_classes > 0``) returns ``max_classes`` logits (slice to the number of classes; ``y_train``
    holds class ids). Regression (``max_classes == 0``) returns ``num_buckets`` logits of a bar distribution over the
    standardised target with bucket edges ``self.borders`` (``num_buckets + 1``,).
    """

    arch = "tabpfn_v2"

    def __init__(
        self,
        max_classes: int = 10,
        num_buckets: int = 5000,
        embed_dim: int = 192,
        nhead: int = 6,
        num_blocks: int = 12,
        ff_factor: int = 4,
        features_per_group: int = 2,
        seed: int = 0,
        dropout: float = 0.0,
        recompute: bool = False,
    ):
        super().__init__()
        if max_classes < 0 or max_classes == 1:
            raise ValueError(f"max_classes must be 0 (regression) or >= 2, got {max_classes}")
        if max_classes == 0 and num_buckets < 1:
            raise ValueError("Regression (max_classes=0) needs num_buckets >= 1")
        if features_per_group < 1:
            raise ValueError(f"features_per_group must be >= 1, got {features_per_group}")
        if embed_dim % 4 != 0 or embed_dim % nhead != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by 4 and by nhead ({nhead})")
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.max_classes = max_classes
        self.num_buckets = num_buckets
        self.features_per_group = features_per_group
        self.seed = seed
        self.recompute = recompute
        ff_dim = embed_dim * ff_factor
        self.feature_embedder = nn.Linear(2 * features_per_group, embed_dim, bias=False)
        self.target_embedder = nn.Linear(2, embed_dim)
        self.column_embedder = nn.Linear(embed_dim // 4, embed_dim)
        self.blocks = nn.ModuleList(_TabPFNBlock(embed_dim, nhead, ff_dim, dropout) for _ in range(num_blocks))
        self.decoder = mlp(embed_dim, ff_dim, self.n_out)
        if max_classes == 0:
            self.register_buffer("borders", default_borders(num_buckets))

    @property
    def n_out(self) -> int:
        return self.max_classes if self.max_classes > 0 else self.num_buckets

    # ----------------------------------------------------------------------------------------------- encoders
    def _group(self, X: Tensor) -> Tensor:
        """(B, T, H) -> (B, T, G, F): consecutive features in groups of F, zero-padded at the end."""
        size = self.features_per_group
        X = nn.functional.pad(X, (0, -X.shape[-1] % size))
        return X.unflatten(-1, (-1, size))

    def _embed_features(self, X: Tensor, n_train: int) -> Tensor:
        """(B, T, H) -> (B, T, G, E). Statistics are per table and group: imputation and z-scoring from the training
        rows; which features count as constant (dropped) from all rows."""
        x = self._group(X).transpose(1, 2)  # (B, G, T, F): rows on dim 2 ...
        B, G, T, F = x.shape
        x = x.reshape(B * G, T, F)  # ... then dim 1 of a (tables*groups, rows, features) tensor
        # Constant features are removed from their group: the others move to the front, zeros fill the rest.
        keep = _non_constant(x)  # (BG, F)
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
        x = torch.gather(x, 2, order[:, None, :].expand(-1, T, -1))
        kept_slots = torch.arange(F, device=x.device)[None, :] < keep.sum(-1, keepdim=True)
        x = torch.where(kept_slots[:, None, :], x, torch.zeros_like(x))
        nan_ind = _indicators(x)
        x = _impute_with_train_mean(x, n_train)
        train = x[:, :n_train]
        mean = train.mean(1, keepdim=True)
        var = (train - mean).square().sum(1, keepdim=True) / max(n_train - 1, 1)
        std = var.sqrt() if n_train > 1 else torch.ones_like(var)
        std = torch.where(std == 0, torch.ones_like(std), std)
        x = ((x - mean) / (std + torch.finfo(std.dtype).eps)).clamp(-100, 100)
        # Scale each group as if all its features were informative: sqrt(F / #features that vary over all rows).
        used = _non_constant(x)
        n_used = used.sum(-1, keepdim=True).clamp(min=1)
        x = torch.where(used[:, None, :], x * (F / n_used[:, None, :]).sqrt(), torch.zeros_like(x))
        emb = self.feature_embedder(torch.cat([x, nan_ind], dim=-1).to(self.feature_embedder.weight.dtype))
        emb = emb.reshape(B, G, T, -1).transpose(1, 2)  # (B, T, G, E)
        return emb + self._column_embeddings(G, emb)[None, None]

    def _column_embeddings(self, n_groups: int, like: Tensor) -> Tensor:
        """(G, E) random per-group embeddings, identical for every row and every call.

        Drawn on the CPU in fp32 from a local generator seeded with ``seed`` (the global RNG is untouched), so the
        values do not depend on device or precision (the official module draws on the input's device and dtype;
        on CPU in fp32 both agree).
        """
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn((n_groups, self.column_embedder.in_features), generator=generator, dtype=torch.float32)
        noise = noise.to(device=like.device, dtype=self.column_embedder.weight.dtype)
        return self.column_embedder(noise).to(like.dtype)

    def _embed_targets(self, y_train: Tensor, n_rows: int) -> Tensor:
        """(B, n) -> (B, T, E): test rows are missing targets (train mean + NaN indicator); class ids are replaced
        by their dense rank among the training labels."""
        B, n = y_train.shape
        y = torch.cat([y_train, y_train.new_full((B, n_rows - n), float("nan"))], dim=1).unsqueeze(-1)  # (B, T, 1)
        nan_ind = _indicators(y)
        y = _impute_with_train_mean(y, n)
        if self.max_classes > 0:
            # rank = number of distinct training labels strictly below the value (test rows: below the train mean)
            y = torch.stack(
                [torch.searchsorted(torch.unique(y[b, :n, 0]), y[b, :, 0].contiguous()) for b in range(B)]
            ).to(y.dtype)[..., None]
        return self.target_embedder(torch.cat([y, nan_ind], dim=-1).to(self.target_embedder.weight.dtype))

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, X: Tensor, y_train: Tensor, d: Tensor | None = None) -> Tensor:
        """``X`` (B, T, H) train rows then test rows (NaN allowed), ``y_train`` (B, n) -> (B, T-n, n_out).

        ``d`` (B,) optional number of real features per table (the rest is zero padding, pretraining only): feature
        groups made only of padding are hidden from the row attention.
        """
        check_protocol_inputs(X, y_train)
        if X.shape[-1] == 0:
            raise ValueError("X needs at least one feature")
        if y_train.shape[1] == 0:
            raise ValueError("y_train needs at least one training row")
        B, T, H = X.shape
        n_train = y_train.shape[1]
        y_train = y_train.to(X.dtype)
        tokens = torch.cat(
            [self._embed_features(X, n_train), self._embed_targets(y_train, T)[:, :, None]], dim=2
        )  # (B, T, G+1, E): the target token is last
        padding_mask = None
        if d is not None and not bool((d >= H).all()):
            n_groups = tokens.shape[2] - 1
            group_start = torch.arange(n_groups, device=X.device) * self.features_per_group
            padded = group_start[None] >= d.to(X.device)[:, None]  # (B, G)
            padded = torch.cat([padded, padded.new_zeros(B, 1)], dim=1)  # the target token is always real
            padding_mask = padded[:, None, :].expand(B, T, -1)
        for block in self.blocks:
            if self.recompute and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, n_train, padding_mask, use_reentrant=False)
            else:
                tokens = block(tokens, n_train, padding_mask)
        return self.decoder(tokens[:, n_train:, -1])
