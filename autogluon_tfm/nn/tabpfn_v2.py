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

from dataclasses import dataclass

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


def _finite_train_mean(x: Tensor, n_train: int) -> Tensor:
    """Mean of the finite training cells of every column (dim 1 = rows), 0 where there are none: ``(N, 1, F)``."""
    train = x[:, :n_train]
    finite = torch.isfinite(train)
    total = torch.where(finite, train, torch.zeros_like(train)).sum(1, keepdim=True)
    return total / finite.sum(1, keepdim=True).clamp(min=1)


def _impute_with_train_mean(x: Tensor, n_train: int, mean: Tensor | None = None) -> Tensor:
    """Replace NaN/inf cells (dim 1 = rows) by the mean of the finite training cells of their column (0 if none)."""
    mean = _finite_train_mean(x, n_train) if mean is None else mean
    return torch.where(torch.isfinite(x), x, mean)


def _non_constant(x: Tensor) -> Tensor:
    """True for columns (dim 1 = rows) whose values are not all equal to the first row's (NaN never equals)."""
    return ~(x[:, 1:] == x[:, :1]).all(dim=1)



def _differs(x: Tensor, first: Tensor) -> Tensor:
    """(N, m, F) rows vs (N, F) reference row -> (N, F): some row differs (NaN differs from everything)."""
    return (x != first[:, None, :]).any(dim=1)


def _arrange(x: Tensor, keep: Tensor) -> Tensor:
    """Drop the features not in ``keep`` (BG, F) from their group: the kept ones move to the front (in order),
    zeros fill the rest."""
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    x = torch.gather(x, 2, order[:, None, :].expand(-1, x.shape[1], -1))
    kept_slots = torch.arange(x.shape[-1], device=x.device)[None, :] < keep.sum(-1, keepdim=True)
    return torch.where(kept_slots[:, None, :], x, torch.zeros_like(x))


def _train_mean_std(x: Tensor, n_train: int) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased, 1 where 0) standard deviation of the training rows, ``(N, 1, F)`` each."""
    train = x[:, :n_train]
    mean = train.mean(1, keepdim=True)
    var = (train - mean).square().sum(1, keepdim=True) / max(n_train - 1, 1)
    std = var.sqrt() if n_train > 1 else torch.ones_like(var)
    return mean, torch.where(std == 0, torch.ones_like(std), std)


def _standardise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return ((x - mean) / (std + torch.finfo(std.dtype).eps)).clamp(-100, 100)


def _scale_used(x: Tensor, used: Tensor) -> Tensor:
    """Scale each group as if all its features were informative: sqrt(F / #used), zero for the unused ones."""
    n_used = used.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(used[:, None, :], x * (x.shape[-1] / n_used[:, None, :]).sqrt(), torch.zeros_like(x))


@dataclass
class TabPFNv2TrainCache:
    """Everything test rows need from the training rows (see :meth:`TabPFNv2.build_train_cache`).

    ``kv``: per block, the first head's keys and values of the training rows' cells, ``(B*C, 1, n, head_dim)``
    each (test rows read only these: multi-query attention). The rest is the preprocessing state of the training
    rows: per table and feature group ``keep`` / ``used`` flags (B*G, F), imputation means and z-score statistics
    (B*G, 1, F), their first row raw and preprocessed (to tell whether test rows change which features count as
    constant), and the target token of test rows (B, 1, E). ``X_train`` / ``y_train`` serve the rare fallback.
    """

    X_train: Tensor
    y_train: Tensor
    keep: Tensor
    used: Tensor
    impute_mean: Tensor
    mean: Tensor
    std: Tensor
    first_raw: Tensor
    first_standardised: Tensor
    test_target_token: Tensor
    kv: list[tuple[Tensor, Tensor]]

    @property
    def nbytes(self) -> int:
        tensors = [self.X_train, self.y_train, self.keep, self.used, self.impute_mean, self.mean, self.std,
                   self.first_raw, self.first_standardised, self.test_target_token]
        tensors += [t for pair in self.kv for t in pair]
        return sum(t.numel() * t.element_size() for t in tensors)


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

    def _feature_stage(self, x: Tensor, token_padding_mask: Tensor | None = None) -> Tensor:
        """(B, T, C, E) -> (B, C, T, E): attention within every row, then every column as a sequence of cells."""
        attended = self.feature_attn(x, x, key_padding_mask=token_padding_mask)
        return self.feature_norm(x + self.dropout(attended)).transpose(1, 2)

    def forward(self, x: Tensor, n_train: int, token_padding_mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, C, E) with the first ``n_train`` rows for training; ``token_padding_mask`` (B, T, C)."""
        columns = self._feature_stage(x, token_padding_mask)
        columns = self.item_block(columns, n_keys=n_train, multiquery_from=n_train)
        return columns.transpose(1, 2)

    def forward_train(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Training rows alone (they never read test rows): ``forward(x, n_train=all)`` and the first head's
        keys/values of the column attention, which is all that test rows read of them."""
        columns = self._feature_stage(x)
        kv = self.item_block.cached_kv(columns, first_head_only=True)
        return self.item_block(columns).transpose(1, 2), kv

    def forward_test(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """Test rows ``x`` (B, m, C, E) against cached training-row keys/values (see :meth:`forward_train`)."""
        columns = self.item_block.forward_cached(self._feature_stage(x), *kv, first_head_only=True)
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
        x, B, G = self._grouped_rows(X)
        keep = _non_constant(x)  # (BG, F), over all rows
        x = _arrange(x, keep)
        nan_ind = _indicators(x)
        x = _impute_with_train_mean(x, n_train)
        mean, std = _train_mean_std(x, n_train)
        x = _standardise(x, mean, std)
        return self._embed_cells(_scale_used(x, _non_constant(x)), nan_ind, B, G)

    def _grouped_rows(self, X: Tensor) -> tuple[Tensor, int, int]:
        """(B, T, H) -> ((B*G, T, F) rows of every group of every table, B, G)."""
        x = self._group(X).transpose(1, 2)  # (B, G, T, F): rows on dim 2 ...
        B, G, T, F = x.shape
        return x.reshape(B * G, T, F), B, G  # ... then dim 1 of a (tables*groups, rows, features) tensor

    def _embed_cells(self, x: Tensor, nan_ind: Tensor, B: int, G: int) -> Tensor:
        """(B*G, T, F) preprocessed values and NaN indicators -> (B, T, G, E) cell tokens."""
        emb = self.feature_embedder(torch.cat([x, nan_ind], dim=-1).to(self.feature_embedder.weight.dtype))
        emb = emb.reshape(B, G, x.shape[1], -1).transpose(1, 2)  # (B, T, G, E)
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

    # ----------------------------------------------------------------------------------------------- train cache
    def build_kv_cache(self, X_train: Tensor, y_train: Tensor) -> TabPFNv2TrainCache:
        """Run the training rows ``X_train (B, n, H)`` once; :meth:`forward_with_kv_cache` then costs only test rows.

        Training rows never read test rows (the column attention gives them the training rows as keys), so their
        states are those of a full call. The one thing test rows can change is which features count as constant
        (official TabPFN checks all rows); :meth:`forward_with_kv_cache` detects that and then runs the full call.
        """
        if X_train.ndim != 3 or y_train.shape != X_train.shape[:2]:
            raise ValueError(f"Need X_train (B, n, H) and y_train (B, n); got {tuple(X_train.shape)} and "
                             f"{tuple(y_train.shape)}")
        B, n, _ = X_train.shape
        y_train = y_train.to(X_train.dtype)
        raw, _, G = self._grouped_rows(X_train)
        keep = _non_constant(raw)
        x = _arrange(raw, keep)
        nan_ind = _indicators(x)
        impute_mean = _finite_train_mean(x, n)
        x = _impute_with_train_mean(x, n, impute_mean)
        mean, std = _train_mean_std(x, n)
        x = _standardise(x, mean, std)
        used = _non_constant(x)
        targets = self._embed_targets(y_train, n + 1)  # the last row: the target token every test row gets
        tokens = torch.cat([self._embed_cells(_scale_used(x, used), nan_ind, B, G), targets[:, :n, None]], dim=2)
        kv = []
        for block in self.blocks:
            tokens, block_kv = block.forward_train(tokens)
            kv.append(block_kv)
        return TabPFNv2TrainCache(
            X_train=X_train, y_train=y_train, keep=keep, used=used, impute_mean=impute_mean, mean=mean, std=std,
            first_raw=raw[:, 0], first_standardised=x[:, 0], test_target_token=targets[:, n:], kv=kv,
        )

    def kv_cache_nbytes(self, n_tables: int, n_train: int, n_features: int) -> int:
        """fp32 bytes of :meth:`build_kv_cache`'s keys/values for ``n_tables`` tables of ``n_train`` x
        ``n_features`` (the estimators use the cache only when it fits their memory budget)."""
        tokens = -(-n_features // self.features_per_group) + 1
        head_dim = self.config["embed_dim"] // self.config["nhead"]
        return 4 * n_tables * n_train * tokens * 2 * head_dim * len(self.blocks)

    def forward_with_kv_cache(self, X_test: Tensor, cache: TabPFNv2TrainCache) -> Tensor:
        """(B, m, H) test rows -> (B, m, n_out): ``forward(cat(X_train, X_test), y_train)`` of the cached rows."""
        B, m, _ = X_test.shape
        if B != cache.X_train.shape[0] or X_test.shape[2] != cache.X_train.shape[2]:
            raise ValueError(f"X_test {tuple(X_test.shape)} does not match the cached training rows "
                             f"{tuple(cache.X_train.shape)}")
        raw, _, G = self._grouped_rows(X_test)
        if not torch.equal(cache.keep | _differs(raw, cache.first_raw), cache.keep):
            return self._full_call(X_test, cache)  # a feature constant over the training rows varies in X_test
        x = _arrange(raw, cache.keep)
        nan_ind = _indicators(x)
        x = _standardise(_impute_with_train_mean(x, 0, cache.impute_mean), cache.mean, cache.std)
        if not torch.equal(cache.used | _differs(x, cache.first_standardised), cache.used):
            return self._full_call(X_test, cache)
        cells = self._embed_cells(_scale_used(x, cache.used), nan_ind, B, G)
        target = cache.test_target_token[:, :, None].expand(B, m, 1, cells.shape[-1]).to(cells.dtype)
        tokens = torch.cat([cells, target], dim=2)
        for block, block_kv in zip(self.blocks, cache.kv):
            tokens = block.forward_test(tokens, block_kv)
        return self.decoder(tokens[:, :, -1])

    def _full_call(self, X_test: Tensor, cache: TabPFNv2TrainCache) -> Tensor:
        return self.forward(torch.cat([cache.X_train, X_test.to(cache.X_train.dtype)], dim=1), cache.y_train)

