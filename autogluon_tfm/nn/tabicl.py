"""TabICL: column-wise set transformer -> row-wise transformer with CLS tokens and RoPE -> in-context learner.

Constructor arguments are those of the official ``tabicl`` 2.x ``TabICL`` module, so an official checkpoint's
``config`` builds this network directly (v1/v1.1 and v2 flags, classification and 999-quantile regression).
Module names follow the official state dict except that attention projections are separate ``nn.Linear`` layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def embed_labels(encoder: nn.Module, max_classes: int, y_train: Tensor) -> Tensor:
    """Class ids through ``OneHotLinear`` (``max_classes > 0``) or scalar targets through ``Linear(1, dim)``."""
    return encoder(y_train) if max_classes > 0 else encoder(y_train.unsqueeze(-1))


def _mean(passes: list[Tensor]) -> Tensor:
    """Average of the label passes of the column embedding (the one pass itself when there is only one)."""
    return passes[0] if len(passes) == 1 else sum(passes) / len(passes)


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
        return embed_labels(self.y_encoder, self.max_classes, y_train)

    def target_embeddings(self, y_train: Tensor) -> list[Tensor | None]:
        """Label embeddings of the training cells, one per set-transformer pass: ``[None]`` if not target-aware.

        More classes than ``max_classes`` (hierarchical classification) cannot be one-hot encoded: as in the official
        TabICL 2.x, labels are split into mixed-radix digits (each < ``max_classes``), the set transformer runs once
        per digit and the passes are averaged.
        """
        if not self.target_aware:
            return [None]
        if self.max_classes > 0 and y_train.numel() and int(y_train.max()) + 1 > self.max_classes:
            bases = mixed_radix_bases(int(y_train.max()) + 1, self.max_classes)
            return [self.embed_target(digit.to(y_train.dtype)) for digit in mixed_radix_digits(y_train, bases)]
        return [self.embed_target(y_train)]

    def _cells(self, X: Tensor) -> Tensor:
        """(B, T, H) -> (B*G, T, s): one sequence of cells per column (group)."""
        return self.group_features(X).transpose(1, 2).flatten(0, 1)

    def _affine(self, cells: Tensor, src: Tensor) -> Tensor:
        return cells * self.ln_w(self.out_w(src)) + self.ln_b(self.out_b(src)) if self.affine else src

    def _embed_columns(self, cells: Tensor, y_emb: Tensor | None, n_train: int, recompute: bool) -> Tensor:
        """``cells`` (N, T, s) for N columns -> (N, T, E) before the affine output map."""
        src = self.in_linear(cells)
        if y_emb is not None:
            src = torch.cat([src[:, :n_train] + y_emb, src[:, n_train:]], dim=1)
        for block in self.tf_col.blocks:
            if recompute and torch.is_grad_enabled():
                src = checkpoint(block, src, n_train, use_reentrant=False)
            else:
                src = block(src, n_train)
        return src

    def forward(self, X: Tensor, y_train: Tensor, col_chunk: int | None = None, recompute: bool = False) -> Tensor:
        """(B, T, H) -> (B, T, G, E) embeddings of the feature tokens (CLS tokens are added by the row stage)."""
        B, T = X.shape[:2]
        n_train = y_train.shape[1]
        cells = self._cells(X)  # (B*G, T, s)
        G = cells.shape[0] // B
        y_embs = [None if y is None else y.repeat_interleave(G, dim=0) for y in self.target_embeddings(y_train)]

        def embed(idx: Tensor) -> Tensor:
            passes = [self._embed_columns(cells[idx], None if y is None else y[idx], n_train, recompute) for y in y_embs]
            src = _mean(passes)
            return self._affine(cells[idx], src)

        all_idx = torch.arange(B * G, device=X.device)
        out = run_in_chunks(embed, all_idx, col_chunk)
        return out.reshape(B, G, T, -1).transpose(1, 2)

    def fit_summaries(
        self, X_train: Tensor, y_train: Tensor, col_chunk: int | None = None
    ) -> tuple[list[list[Tensor]], Tensor]:
        """Training rows only: the inducing-point summaries of every block (per label pass) and the train embeddings.

        The summaries are all a test row needs from the training rows in this stage (a test cell only reads them), so
        :meth:`embed_with_summaries` embeds any later test rows exactly as :meth:`forward` would. Returns
        ``(summaries[pass][block] (B*G, I, E), embeddings (B, n, G, E))``.
        """
        B, n = X_train.shape[:2]
        cells = self._cells(X_train)
        G = cells.shape[0] // B
        y_embs = [None if y is None else y.repeat_interleave(G, dim=0) for y in self.target_embeddings(y_train)]
        summaries: list[list[list[Tensor]]] = [[[] for _ in self.tf_col.blocks] for _ in y_embs]
        outputs = None  # filled chunk by chunk: no second copy of the largest tensor of this stage
        for idx in torch.arange(B * G, device=X_train.device).split(col_chunk or B * G):
            passes = []
            for k, y_emb in enumerate(y_embs):
                src = self.in_linear(cells[idx])
                if y_emb is not None:
                    src = src + y_emb[idx]
                for b, block in enumerate(self.tf_col.blocks):
                    summary = block.summarize(src)  # all rows are training rows
                    summaries[k][b].append(summary)
                    src = block.read(src, summary)
                passes.append(src)
            src = self._affine(cells[idx], _mean(passes))
            if outputs is None:
                outputs = src.new_empty(B * G, n, src.shape[-1])
            outputs[idx] = src
        joined = [[torch.cat(parts) for parts in per_pass] for per_pass in summaries]
        return joined, outputs.reshape(B, G, n, -1).transpose(1, 2)

    def embed_with_summaries(self, X: Tensor, summaries: list[list[Tensor]], col_chunk: int | None = None) -> Tensor:
        """(B, m, H) rows that are not training rows -> (B, m, G, E), reading the cached summaries."""
        B, m = X.shape[:2]
        cells = self._cells(X)
        G = cells.shape[0] // B

        def embed(idx: Tensor) -> Tensor:
            passes = []
            for per_pass in summaries:
                src = self.in_linear(cells[idx])
                for block, summary in zip(self.tf_col.blocks, per_pass):
                    src = block.read(src, summary[idx])
                passes.append(src)
            src = _mean(passes)
            return self._affine(cells[idx], src)

        out = run_in_chunks(embed, torch.arange(B * G, device=X.device), col_chunk)
        return out.reshape(B, G, m, -1).transpose(1, 2)


def mixed_radix_bases(n_classes: int, max_classes: int) -> list[int]:
    """Balanced bases ``[k_0, ..., k_{D-1}]``, each ``<= max_classes``, whose product covers ``n_classes``.

    Follows tabicl 2.x: ``D = ceil(log n / log max)`` digits of ``k = ceil(n ** (1/D))`` values, then digits are
    widened left to right (one step each) until the product reaches ``n_classes``.
    """
    if n_classes <= max_classes:
        return [n_classes]
    n_digits = math.ceil(math.log(n_classes) / math.log(max_classes))
    bases = [min(math.ceil(n_classes ** (1.0 / n_digits)), max_classes)] * n_digits
    product = math.prod(bases)
    for i in range(n_digits):
        if product >= n_classes:
            break
        if bases[i] < max_classes:
            product = product // bases[i] * (bases[i] + 1)
            bases[i] += 1
    return bases


def mixed_radix_digits(labels: Tensor, bases: list[int]) -> list[Tensor]:
    """Digits of integer ``labels`` in the mixed radix ``bases`` (most significant first)."""
    labels = labels.long()
    return [(labels // math.prod(bases[i + 1 :])) % base for i, base in enumerate(bases)]


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
        if d is None:
            # Chunks over the row axis: only one chunk of ``emb`` is ever copied into the (rows, tokens, E) layout.
            step = T if row_chunk is None else max(1, row_chunk // B)
            parts = [self._rows(emb[:, i : i + step].reshape(-1, G, E), None, recompute) for i in range(0, T, step)]
            return torch.cat([part.reshape(B, -1, part.shape[-1]) for part in parts], dim=1)
        else:
            tokens = emb.reshape(B * T, G, E)
            pos = torch.arange(self.num_cls + G, device=emb.device)
            mask = (pos[None] >= (d[:, None] + self.num_cls)).repeat_interleave(T, dim=0)  # (B*T, C+G)
            return self._rows(tokens, mask, recompute).reshape(B, T, -1)


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

    def embed_labels(self, y_train: Tensor) -> Tensor:
        return embed_labels(self.y_encoder, self.max_classes, y_train)

    def _head(self, x: Tensor) -> Tensor:
        if self.norm_first:
            x = self.ln(x)
        return self.decoder(x)

    def forward(self, R: Tensor, y_train: Tensor, recompute: bool = False) -> Tensor:
        """(B, T, D) row vectors, (B, n) labels -> (B, T-n, out_dim) for the test rows."""
        n = y_train.shape[1]
        x = torch.cat([R[:, :n] + self.embed_labels(y_train), R[:, n:]], dim=1)
        for block in self.tf_icl.blocks:
            if recompute and torch.is_grad_enabled():
                x = checkpoint(block, x, None, n, use_reentrant=False)
            else:
                x = block(x, n_keys=n)
        return self._head(x[:, n:])

    def train_states(self, R_train: Tensor, y_train: Tensor) -> list[Tensor]:
        """The training rows' input to every block, (B, n, D) each: all that test rows read in this stage.

        Training rows attend to training rows only, so these states do not depend on any test row.
        """
        x = R_train + self.embed_labels(y_train)
        states = []
        *body, _ = self.tf_icl.blocks
        for block in body:
            states.append(x)
            x = block(x)  # every row is a training row: plain self-attention = attention to the first n rows
        states.append(x)  # the last block's output on training rows is never used
        return states

    def predict_from_states(self, R_test: Tensor, states: list[Tensor]) -> Tensor:
        """(B, m, D) test rows -> (B, m, out_dim), attending to the cached training-row states of each block."""
        x = R_test
        for block, train in zip(self.tf_icl.blocks, states):
            x = block(x, key_value=train)
        return self._head(x)


@dataclass
class TabICLTrainCache:
    """Everything test rows need from the training rows (see :meth:`TabICL.build_train_cache`).

    Attributes:
        n_train: number of training rows.
        col_summaries: per label pass, per column block: the inducing-point summaries, (B*G, num_inds, E).
        R_train: training rows' representations before the label embedding, (B, n, C*E).
        icl_states: per ICL block: the training rows' input (labels embedded), (B, n, C*E); None when only the
            column and row stages are cached (e.g. hierarchical classification, where each tree node labels the
            rows differently).
    """

    n_train: int
    col_summaries: list[list[Tensor]]
    R_train: Tensor
    icl_states: list[Tensor] | None

    @property
    def nbytes(self) -> int:
        tensors = [t for per_pass in self.col_summaries for t in per_pass] + [self.R_train, *(self.icl_states or [])]
        return sum(t.numel() * t.element_size() for t in tensors)


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
        R = self.encode_rows(X, y_train, d=d, col_chunk=col_chunk, row_chunk=row_chunk)
        return self.icl_predictor(R, y_train, recompute=self.recompute and self.training)

    def encode_rows(
        self, X: Tensor, y_train: Tensor, d: Tensor | None = None,
        col_chunk: int | None = None, row_chunk: int | None = None,
    ) -> Tensor:
        """Column and row stages: (B, T, H) -> row representations (B, T, C*E), before any label enters the ICL.

        Labels above ``max_classes`` use the mixed-radix column embedding (see ``ColEmbedding.target_embeddings``), so
        hierarchical classification encodes the rows once and runs only :meth:`icl` per tree node.
        """
        recompute = self.recompute and self.training
        emb = self.col_embedder(X, y_train, col_chunk=col_chunk, recompute=recompute)
        if d is not None:  # padded features contribute nothing
            valid = torch.arange(X.shape[-1], device=X.device)[None] < d[:, None]
            emb = emb * valid[:, None, :, None].to(emb.dtype)
        return self.row_interactor(emb, d=d, row_chunk=row_chunk, recompute=recompute)

    def icl(self, R: Tensor, y_train: Tensor) -> Tensor:
        """In-context learning on row representations: (B, T, C*E), labels (B, n) -> (B, T-n, n_out)."""
        return self.icl_predictor(R, y_train, recompute=self.recompute and self.training)

    def icl_train_states(self, R_train: Tensor, y_train: Tensor) -> list[Tensor]:
        """The ICL stage's training-row states (labels embedded), (B, n, C*E) per block, for :meth:`icl_from_states`.

        Hierarchical classification keeps them per tree node, whose rows and labels differ from the full table's.
        """
        return self.icl_predictor.train_states(R_train, y_train)

    def icl_from_states(self, R_test: Tensor, states: list[Tensor]) -> Tensor:
        """(B, m, C*E) test rows -> (B, m, n_out): :meth:`icl` of ``cat(R_train, R_test)`` from its train states."""
        return self.icl_predictor.predict_from_states(R_test, states)

    def build_train_cache(
        self,
        X_train: Tensor,
        y_train: Tensor,
        with_icl: bool = True,
        col_chunk: int | None = None,
        row_chunk: int | None = None,
    ) -> TabICLTrainCache:
        """Run the training rows alone once; :meth:`forward_with_cache` then costs only the test rows.

        Exact because test rows never influence training rows: inducing points and ICL keys read training rows
        only, and every other operation is row-wise. ``with_icl=False`` stops after the row stage (enough for
        :meth:`encode_test_rows`; the ICL states depend on the labels).
        """
        check_protocol_inputs(X_train, y_train)
        if X_train.shape[1] != y_train.shape[1]:
            raise ValueError(f"X_train has {X_train.shape[1]} rows but y_train {y_train.shape[1]} labels")
        summaries, emb = self.col_embedder.fit_summaries(X_train, y_train, col_chunk=col_chunk)
        R_train = self.row_interactor(emb, row_chunk=row_chunk)
        del emb
        states = self.icl_predictor.train_states(R_train, y_train) if with_icl else None
        return TabICLTrainCache(X_train.shape[1], summaries, R_train, states)

    def encode_test_rows(
        self, X_test: Tensor, cache: TabICLTrainCache, col_chunk: int | None = None, row_chunk: int | None = None
    ) -> Tensor:
        """(B, m, H) test rows -> (B, m, C*E), as :meth:`encode_rows` would give them next to the training rows."""
        emb = self.col_embedder.embed_with_summaries(X_test, cache.col_summaries, col_chunk=col_chunk)
        return self.row_interactor(emb, row_chunk=row_chunk)

    def forward_with_cache(
        self, X_test: Tensor, cache: TabICLTrainCache, col_chunk: int | None = None, row_chunk: int | None = None
    ) -> Tensor:
        """(B, m, H) test rows -> (B, m, n_out): ``forward(cat(X_train, X_test), y_train)`` for the cached rows."""
        if cache.icl_states is None:
            raise ValueError("This cache holds no ICL states; build it with with_icl=True")
        R_test = self.encode_test_rows(X_test, cache, col_chunk=col_chunk, row_chunk=row_chunk)
        return self.icl_predictor.predict_from_states(R_test, cache.icl_states)
