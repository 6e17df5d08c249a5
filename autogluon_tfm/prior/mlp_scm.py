"""MLP structural causal model (TabPFN-v1 style, with the TabICL activation set).

A random MLP maps root causes to neurons: ``Linear(causes -> hidden)`` followed by ``n_layers - 1`` blocks of
``[random activation, Linear(hidden -> hidden), Gaussian noise]``. Every neuron is a variable of the causal graph.

* causal mode: features and target are randomly chosen intermediate neurons (the target may be the last neuron,
  an "effect"), so features can be causes, effects or siblings of the target;
* non-causal mode: the features are the causes and the target is one extra output block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from autogluon_tfm.prior.activations import LayerActivation, sample_layer_activations
from autogluon_tfm.prior.causes import sample_causes
from autogluon_tfm.prior.config import PriorConfig
from autogluon_tfm.prior.random_utils import PriorRandom


@dataclass(frozen=True)
class MLPSCMParams:
    """Hyper-parameters of one MLP-SCM dataset (drawn by :func:`sample_mlp_scm_params`)."""

    n_causes: int
    n_layers: int
    hidden_dim: int
    init_std: float
    noise_std: float
    per_neuron_noise: bool
    block_dropout: bool
    weight_dropout: float
    causal: bool
    target_is_effect: bool
    features_in_clique: bool
    sort_features: bool
    cause_sampling: str
    random_cause_moments: bool


def sample_mlp_scm_params(rng: PriorRandom, n_features: int, config: PriorConfig) -> MLPSCMParams:
    """Draw the MLP-SCM hyper-parameters of one dataset with ``n_features`` features."""
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    causal = rng.bernoulli(config.causal_prob)
    n_layers = int(rng.log_scaled_truncated_normal(*config.num_layers_mean, lower_bound=2, round_to_int=True))
    hidden_dim = int(
        rng.log_scaled_truncated_normal(*config.hidden_dim_mean, lower_bound=config.min_hidden_dim, round_to_int=True)
    )
    hidden_dim = min(hidden_dim, config.max_hidden_dim)
    if causal:
        # Features and target are drawn among the neurons: make sure there are enough of them (even with 1 block).
        hidden_dim = max(hidden_dim, 2 * n_features + 1)
        n_causes = int(rng.log_scaled_truncated_normal(*config.num_causes_mean, lower_bound=1, round_to_int=True))
    else:
        n_causes = n_features
    weight_dropout_a, weight_dropout_b = rng.uniform(0.1, 5.0), rng.uniform(0.1, 5.0)
    return MLPSCMParams(
        n_causes=n_causes,
        n_layers=min(n_layers, config.max_layers),
        hidden_dim=hidden_dim,
        init_std=rng.log_scaled_truncated_normal(*config.init_std_mean),
        noise_std=rng.log_scaled_truncated_normal(*config.noise_std_mean),
        per_neuron_noise=rng.bernoulli(0.5),
        block_dropout=rng.bernoulli(config.block_dropout_prob),
        weight_dropout=min(config.max_weight_dropout * float(rng.np.beta(weight_dropout_a, weight_dropout_b)), 0.99),
        causal=causal,
        target_is_effect=rng.bernoulli(0.5),
        features_in_clique=rng.bernoulli(0.5),
        sort_features=rng.bernoulli(0.5),
        cause_sampling=config.cause_samplings[rng.integer(0, len(config.cause_samplings) - 1)],
        random_cause_moments=rng.bernoulli(0.5),
    )


def _random_weight(rng: PriorRandom, n_out: int, n_in: int, params: MLPSCMParams, is_first_layer: bool) -> torch.Tensor:
    """A sparse random weight matrix whose std is rescaled so that sparsity does not shrink activations."""
    if params.block_dropout:
        # Block-diagonal sparsity: a few independent groups of neurons (rows/columns beyond the last full block
        # stay zero, i.e. those neurons only carry bias + noise).
        n_blocks = rng.integer(1, math.ceil(math.sqrt(min(n_out, n_in))))
        block_out, block_in = n_out // n_blocks, n_in // n_blocks
        row_block = torch.arange(n_out) // max(block_out, 1)
        column_block = torch.arange(n_in) // max(block_in, 1)
        mask = (row_block[:, None] == column_block[None, :]) & (row_block[:, None] < n_blocks)
        keep_fraction = max(float(mask.sum()) / mask.numel(), 1e-6)
        return rng.randn(n_out, n_in) * (params.init_std / math.sqrt(keep_fraction)) * mask
    dropout = 0.0 if is_first_layer else params.weight_dropout
    weight = rng.randn(n_out, n_in) * (params.init_std / math.sqrt(1.0 - dropout))
    if dropout > 0:
        weight = weight * (rng.rand(n_out, n_in) >= dropout)
    return weight


def _random_bias(rng: PriorRandom, n_out: int, n_in: int) -> torch.Tensor:
    # Same scale as torch's default Linear bias: small compared to the weights' contribution.
    bound = 1.0 / math.sqrt(n_in)
    return (rng.rand(n_out) * 2.0 - 1.0) * bound


def _noise_std(rng: PriorRandom, n_out: int, params: MLPSCMParams) -> torch.Tensor | float:
    if params.per_neuron_noise:
        return (rng.randn(n_out) * params.noise_std).abs()
    return params.noise_std


class MLPSCM:
    """One randomly drawn MLP SCM; :meth:`generate` draws a table of i.i.d. rows from it."""

    def __init__(self, rng: PriorRandom, n_features: int, params: MLPSCMParams, config: PriorConfig):
        self.n_features = n_features
        self.params = params
        widths = [params.hidden_dim] * params.n_layers + ([] if params.causal else [1])
        self.first_weight = _random_weight(rng, widths[0], params.n_causes, params, is_first_layer=True)
        self.first_bias = _random_bias(rng, widths[0], params.n_causes)
        self.activations: list[LayerActivation] = sample_layer_activations(
            rng, len(widths) - 1, config.random_function_weight, config.same_activation_prob, config.n_frequencies
        )
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]] = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(
                (
                    _random_weight(rng, n_out, n_in, params, is_first_layer=False),
                    _random_bias(rng, n_out, n_in),
                    _noise_std(rng, n_out, params),
                )
            )

    def _select_neurons(self, rng: PriorRandom, n_neurons: int) -> tuple[torch.Tensor, int]:
        """Indices of the feature neurons and of the target neuron among ``n_neurons`` candidates."""
        n_features, params = self.n_features, self.params
        last_neuron = n_neurons - 1
        # With an "effect" target the last neuron is the target, so it is excluded from the feature pool.
        pool_size = n_neurons - 1 if params.target_is_effect else n_neurons
        n_needed = n_features + (0 if params.target_is_effect else 1)
        if params.features_in_clique:
            # A contiguous block of neurons: features that are densely connected with each other and the target.
            start = rng.integer(0, pool_size - n_needed)
            chosen = start + rng.randperm(n_needed)
        else:
            chosen = rng.randperm(pool_size)[:n_needed]
        if params.target_is_effect:
            feature_indices, target_index = chosen, last_neuron
        else:
            feature_indices, target_index = chosen[1:], int(chosen[0])
        if params.sort_features:
            feature_indices = feature_indices.sort().values
        return feature_indices, target_index

    @torch.no_grad()
    def generate(self, rng: PriorRandom, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``X (n_rows, n_features)`` and ``y (n_rows,)`` as float32 (may contain inf/nan: caller checks)."""
        params = self.params
        causes = sample_causes(rng, n_rows, params.n_causes, params.cause_sampling, params.random_cause_moments)
        hidden = torch.addmm(self.first_bias, causes, self.first_weight.T)
        block_outputs = []
        for activation, (weight, bias, noise_std) in zip(self.activations, self.blocks):
            hidden = torch.addmm(bias, activation(hidden), weight.T)
            hidden = hidden + rng.randn(*hidden.shape) * noise_std
            block_outputs.append(hidden)
        if not params.causal:
            return causes, block_outputs[-1][:, 0]
        neurons = torch.cat(block_outputs, dim=1)
        feature_indices, target_index = self._select_neurons(rng, neurons.shape[1])
        return neurons[:, feature_indices], neurons[:, target_index]


def generate_mlp_scm_table(
    rng: PriorRandom, n_rows: int, n_features: int, config: PriorConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw hyper-parameters and a random MLP SCM, then ``n_rows`` rows of ``(X, y)`` from it."""
    params = sample_mlp_scm_params(rng, n_features, config)
    return MLPSCM(rng, n_features, params, config).generate(rng, n_rows)
