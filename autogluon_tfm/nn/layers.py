"""The one shared layer library of the project's networks.

Attention always goes through ``torch.nn.functional.scaled_dot_product_attention`` and every projection is a plain
``nn.Linear`` (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``linear1``, ``linear2``) so that ``peft`` can wrap
them for LoRA. Official checkpoints that pack the input projection (``in_proj_weight``) are split on load by
:mod:`autogluon_tfm.checkpoints`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SSMAX_KINDS = ("none", "ssmax", "ssmax-mlp", "ssmax-mlp-elementwise", "qassmax-mlp", "qassmax-mlp-elementwise")


def _log_n(n_keys: int, like: Tensor) -> Tensor:
    return torch.full((1, 1), math.log(max(n_keys, 1)), device=like.device, dtype=like.dtype)


class ScalableSoftmax(nn.Module):
    """Scalable-softmax query scaling (SSMax and its MLP / query-aware variants of TabICLv2).

    Multiplies the per-head queries by a function of ``log(n_keys)`` so that attention stays sharp when the number of
    keys (training rows) grows far beyond what was seen in pretraining.
    """

    def __init__(self, kind: str, num_heads: int, head_dim: int, n_hidden: int = 64):
        super().__init__()
        if kind not in SSMAX_KINDS or kind == "none":
            raise ValueError(f"Unknown SSMax variant {kind!r}; expected one of {SSMAX_KINDS[1:]}")
        self.kind = kind
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.elementwise = kind.endswith("elementwise")
        per_head = head_dim if self.elementwise else 1
        if kind == "ssmax":
            self.scales = nn.Parameter(torch.ones(num_heads))
        elif kind.startswith("ssmax-mlp"):
            self.mlp = nn.Sequential(nn.Linear(1, n_hidden), nn.GELU(), nn.Linear(n_hidden, num_heads * per_head))
        else:  # query-aware
            self.base_mlp = nn.Sequential(nn.Linear(1, n_hidden), nn.GELU(), nn.Linear(n_hidden, num_heads * per_head))
            self.query_mlp = nn.Sequential(nn.Linear(head_dim, n_hidden), nn.GELU(), nn.Linear(n_hidden, per_head))
            nn.init.zeros_(self.query_mlp[-1].weight)
            nn.init.zeros_(self.query_mlp[-1].bias)

    def forward(self, q: Tensor, n_keys: int) -> Tensor:
        """``q``: (N, heads, L, head_dim)."""
        log_n = _log_n(n_keys, q)
        per_head = self.head_dim if self.elementwise else 1
        if self.kind == "ssmax":
            return q * (self.scales.view(1, -1, 1, 1) * log_n.view(1, 1, 1, 1))
        if self.kind.startswith("ssmax-mlp"):
            return q * self.mlp(log_n).view(1, self.num_heads, 1, per_head)
        base = self.base_mlp(log_n).view(1, self.num_heads, 1, per_head)
        return q * (base * (1 + torch.tanh(self.query_mlp(q))))


def make_ssmax(kind: str | bool | None, num_heads: int, dim: int) -> ScalableSoftmax | None:
    """``True`` means the TabICLv2 default (query-aware, elementwise); ``False``/``None``/``"none"`` means off."""
    if kind is True:
        kind = "qassmax-mlp-elementwise"
    if kind in (False, None, "none"):
        return None
    return ScalableSoftmax(kind, num_heads, dim // num_heads)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over a token axis, either interleaved pairs (TabICL v1) or half-split (v2).

    ``freqs`` is a frozen ``nn.Parameter`` (not a buffer) because official checkpoints store it in the state dict.
    """

    def __init__(self, head_dim: int, base: float = 100000.0, interleaved: bool = False):
        super().__init__()
        freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)
        self.interleaved = interleaved

    def forward(self, x: Tensor) -> Tensor:
        """Rotate ``x`` of shape (..., L, head_dim) by token positions 0..L-1 (computed in fp32).

        Each pair ``(a, b)`` (interleaved: neighbours; half-split: ``i`` and ``i + head_dim/2``) becomes
        ``(a cos - b sin, b cos + a sin)``, written into one output with fused multiply-adds: no rotated copy of
        ``x`` and no concatenation (5x faster than the textbook form on CPU, where the row stage is memory-bound).
        """
        length = x.shape[-2]
        angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * self.freqs.float()[None]
        cos, sin = angles.cos(), angles.sin()  # (L, head_dim / 2)
        xf = x.float()
        half = xf.shape[-1] // 2
        a, b = (xf[..., 0::2], xf[..., 1::2]) if self.interleaved else (xf[..., :half], xf[..., half:])
        if torch.is_grad_enabled() and xf.requires_grad:  # autograd has no out= kernels: the functional form
            pair = (a * cos - b * sin, b * cos + a * sin)
            return (torch.stack(pair, -1).flatten(-2) if self.interleaved else torch.cat(pair, -1)).to(x.dtype)
        out = torch.empty_like(xf)
        out_a, out_b = (out[..., 0::2], out[..., 1::2]) if self.interleaved else (out[..., :half], out[..., half:])
        torch.mul(a, cos, out=out_a)
        out_a.addcmul_(b, sin, value=-1)
        torch.mul(b, cos, out=out_b)
        out_b.addcmul_(a, sin)
        return out.to(x.dtype)


class MultiheadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections over any number of leading batch dimensions."""

    def __init__(self, dim: int, num_heads: int, bias: bool = True, ssmax: str | bool | None = None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.ssmax_layer = make_ssmax(ssmax, num_heads, dim)

    def forward(
        self,
        query: Tensor,
        key_value: Tensor,
        rope: RotaryEmbedding | None = None,
        key_padding_mask: Tensor | None = None,
        multiquery_from: int | None = None,
    ) -> Tensor:
        """``query`` (..., Lq, dim), ``key_value`` (..., Lk, dim); ``key_padding_mask`` (..., Lk), True = ignore.

        ``query`` may have fewer leading dimensions than ``key_value`` (e.g. shared inducing points): it is projected
        once and broadcast. With ``multiquery_from=m`` the queries at positions ``>= m`` attend with the first head's
        keys/values, shared by all heads (multi-query attention of TabPFN v2's test rows); queries before ``m`` use
        every head's own keys/values.
        """
        batch_shape = key_value.shape[:-2]
        n_queries, n_keys = query.shape[-2], key_value.shape[-2]
        q = self.q_proj(query).expand(*batch_shape, n_queries, self.dim)
        q = q.reshape(-1, n_queries, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.project_kv(key_value)
        if rope is not None:
            q, k = rope(q), rope(k)
        if self.ssmax_layer is not None:
            q = self.ssmax_layer(q, n_keys)
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask.reshape(-1, 1, 1, n_keys)
        if multiquery_from is None or multiquery_from >= n_queries:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif multiquery_from <= 0:
            out = self._first_head_kv_attention(q, k, v, mask)
        else:
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(q[:, :, :multiquery_from], k, v, attn_mask=mask),
                    self._first_head_kv_attention(q[:, :, multiquery_from:], k, v, mask),
                ],
                dim=2,
            )
        out = out.transpose(1, 2).reshape(*batch_shape, n_queries, self.dim)
        return self.out_proj(out)

    def project_kv(self, key_value: Tensor) -> tuple[Tensor, Tensor]:
        """``key_value`` (..., Lk, dim) -> keys and values ``(N, num_heads, Lk, head_dim)`` each, N = the product of
        the leading dimensions: what a train cache keeps so that later queries skip these projections."""
        n_keys = key_value.shape[-2]
        k = self.k_proj(key_value).reshape(-1, n_keys, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(key_value).reshape(-1, n_keys, self.num_heads, self.head_dim).transpose(1, 2)
        return k, v

    def first_head_kv(self, key_value: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`project_kv` of the first head only, ``(N, 1, Lk, head_dim)`` each: all that multi-query readers
        (:meth:`attend_kv` with ``first_head_only``) need, a ``num_heads``-th of the full keys/values."""
        return tuple(t[:, :1].contiguous() for t in self.project_kv(key_value))

    def attend_kv(self, query: Tensor, k: Tensor, v: Tensor, first_head_only: bool = False) -> Tensor:
        """``forward(query, key_value)`` from keys/values precomputed by :meth:`project_kv` (``first_head_only``:
        by :meth:`first_head_kv`, as ``forward(..., multiquery_from=0)``). No rope or padding mask."""
        batch_shape, n_queries = query.shape[:-2], query.shape[-2]
        q = self.q_proj(query).reshape(-1, n_queries, self.num_heads, self.head_dim).transpose(1, 2)
        if self.ssmax_layer is not None:
            q = self.ssmax_layer(q, k.shape[-2])
        if first_head_only:
            out = self._first_head_kv_attention(q, k, v, None)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(*batch_shape, n_queries, self.dim))

    @staticmethod
    def _first_head_kv_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """All query heads attend to head 0's keys/values: the heads are folded into the query axis of one head."""
        n, heads, length, head_dim = q.shape
        folded = q.reshape(n, 1, heads * length, head_dim)
        out = F.scaled_dot_product_attention(folded, k[:, :1], v[:, :1], attn_mask=mask)
        return out.reshape(n, heads, length, head_dim)


class AttentionBlock(nn.Module):
    """Transformer block: attention then feed-forward, each residual, with pre-norm or post-norm.

    ``forward(x)`` is self-attention; ``forward(x, key_value)`` is cross-attention (the same ``norm1`` normalises
    queries and keys, as in TabICL); ``forward(x, n_keys=n)`` lets every token attend only to the first ``n`` tokens
    (in-context learning: all rows attend to the training rows); ``multiquery_from`` is passed to the attention
    (tokens from that position on read the first head's keys/values only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ff_dim: int,
        norm_first: bool = True,
        ln_bias: bool = True,
        ln_affine: bool = True,
        attn_bias: bool = True,
        ff_bias: bool = True,
        ssmax: str | bool | None = None,
        dropout: float = 0.0,
        zero_init: bool = True,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiheadAttention(dim, num_heads, bias=attn_bias, ssmax=ssmax)
        self.linear1 = nn.Linear(dim, ff_dim, bias=ff_bias)
        self.linear2 = nn.Linear(ff_dim, dim, bias=ff_bias)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=ln_affine, bias=ln_bias and ln_affine)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=ln_affine, bias=ln_bias and ln_affine)
        self.dropout = nn.Dropout(dropout)
        if zero_init:  # residual branches start as identity
            for layer in (self.attn.out_proj, self.linear2):
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def _ff(self, x: Tensor) -> Tensor:
        return self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(x)))))

    def forward(
        self,
        x: Tensor,
        key_value: Tensor | None = None,
        n_keys: int | None = None,
        rope: RotaryEmbedding | None = None,
        key_padding_mask: Tensor | None = None,
        multiquery_from: int | None = None,
    ) -> Tensor:
        attn_kwargs = dict(rope=rope, key_padding_mask=key_padding_mask, multiquery_from=multiquery_from)
        if self.norm_first:
            xn = self.norm1(x)
            if key_value is not None:
                kvn = self.norm1(key_value)
            else:
                kvn = xn if n_keys is None else xn[..., :n_keys, :]
            x = x + self.dropout(self.attn(xn, kvn, **attn_kwargs))
            return x + self._ff(self.norm2(x))
        if key_value is None:
            key_value = x if n_keys is None else x[..., :n_keys, :]
        x = self.norm1(x + self.dropout(self.attn(x, key_value, **attn_kwargs)))
        return self.norm2(x + self._ff(x))

    def cached_kv(self, key_value: Tensor, first_head_only: bool = False) -> tuple[Tensor, Tensor]:
        """Keys/values of ``key_value`` (e.g. a table's training rows) for :meth:`forward_cached`, normalised as
        :meth:`forward` normalises them."""
        source = self.norm1(key_value) if self.norm_first else key_value
        return self.attn.first_head_kv(source) if first_head_only else self.attn.project_kv(source)

    def forward_cached(self, x: Tensor, k: Tensor, v: Tensor, first_head_only: bool = False) -> Tensor:
        """``forward(x, key_value)`` (``multiquery_from=0`` with ``first_head_only``) from :meth:`cached_kv`."""
        if self.norm_first:
            x = x + self.dropout(self.attn.attend_kv(self.norm1(x), k, v, first_head_only))
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self.dropout(self.attn.attend_kv(x, k, v, first_head_only)))
        return self.norm2(x + self._ff(x))


class InducedSetAttentionBlock(nn.Module):
    """ISAB (Set Transformer): inducing points summarise the training rows, then every row reads the summary.

    Cost is linear in the number of rows, and test rows never influence the summary.
    """

    def __init__(self, dim: int, num_heads: int, ff_dim: int, num_inds: int, ssmax=None, **block_kwargs):
        super().__init__()
        self.multihead_attn1 = AttentionBlock(dim, num_heads, ff_dim, ssmax=ssmax, **block_kwargs)
        self.multihead_attn2 = AttentionBlock(dim, num_heads, ff_dim, **block_kwargs)
        self.ind_vectors = nn.Parameter(torch.empty(num_inds, dim))
        nn.init.trunc_normal_(self.ind_vectors, std=0.02)

    def summarize(self, x_train: Tensor) -> Tensor:
        """Training rows (..., n, dim) -> the inducing points' summary (..., num_inds, dim)."""
        return self.multihead_attn1(self.ind_vectors, key_value=x_train)

    def read(self, x: Tensor, summary: Tensor) -> Tensor:
        """Every row of ``x`` (..., T, dim) reads ``summary``."""
        return self.multihead_attn2(x, key_value=summary)

    def forward(self, x: Tensor, n_train: int) -> Tensor:
        """``x`` (..., T, dim); inducing points attend to the first ``n_train`` rows only."""
        return self.read(x, self.summarize(x[..., :n_train, :]))


class OneHotLinear(nn.Linear):
    """Linear layer on one-hot class ids, computed as a table lookup (same weights as ``Linear(num_classes, dim)``)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__(num_classes, dim)
        self.num_classes = num_classes

    def forward(self, labels: Tensor) -> Tensor:
        return F.embedding(labels.long(), self.weight.t()) + self.bias


def mlp(in_dim: int, hidden_dim: int, out_dim: int, bias: bool = True) -> nn.Sequential:
    """Two-layer GELU MLP (the decoder head shape shared by the architectures)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=bias), nn.GELU(), nn.Linear(hidden_dim, out_dim, bias=bias))


def check_protocol_inputs(X: Tensor, y_train: Tensor) -> None:
    """Validate the inputs of the network protocol: ``X (B, T, H)`` and ``y_train (B, n)`` with ``n <= T``."""
    if X.dim() != 3 or y_train.dim() != 2 or y_train.shape[0] != X.shape[0] or y_train.shape[1] > X.shape[1]:
        raise ValueError(f"Expected X (B,T,H) and y_train (B,n<=T); got {tuple(X.shape)} and {tuple(y_train.shape)}")


def run_in_chunks(fn, x: Tensor, chunk_size: int | None, dim: int = 0) -> Tensor:
    """Apply ``fn`` to slices of ``x`` along ``dim`` and concatenate: bounds peak memory of independent work."""
    if chunk_size is None or x.shape[dim] <= chunk_size:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk_size, dim=dim)], dim=dim)
