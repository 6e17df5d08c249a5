"""Random activation functions for the MLP structural causal model.

Each MLP layer gets a :class:`LayerActivation`: standardize every neuron over the rows, apply a random affine
rescaling ``exp(2a) * (x + b)`` with ``a, b ~ N(0, 1)`` (drawn once per layer), then a non-linearity drawn from
:data:`ACTIVATION_NAMES`. The set follows the TabICL appendix: the four TabPFN-v1 functions, fifteen more
(including non-monotone and discontinuous ones) and a GP-like random Fourier-series function, which is drawn
``random_function_weight`` (10) times more often than each fixed function because it stands for many shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from autogluon_tfm.prior.random_utils import PriorRandom

# exp() of a rescaled input overflows float32 above ~88; capping at 30 keeps later layers (and their variance)
# finite while the shape of the function on the bulk of the data is unchanged after standardization.
_EXP_INPUT_CAP = 30.0
_STD_EPS = 1e-6


def standardize_columns(x: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance per column (over rows, dim 0). Constant columns become all zeros."""
    mean = x.mean(dim=0, keepdim=True)
    std = x.std(dim=0, keepdim=True) if x.shape[0] > 1 else torch.ones_like(mean)
    return (x - mean) / (std + _STD_EPS)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _rbf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-x.square())


def _capped_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x.clamp(max=_EXP_INPUT_CAP))


def _sqrt_abs(x: torch.Tensor) -> torch.Tensor:
    return x.abs().sqrt()


def _unit_interval_indicator(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() <= 1.0).to(x.dtype)


def _square(x: torch.Tensor) -> torch.Tensor:
    return x.square()


FIXED_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "identity": _identity,
    "selu": F.selu,
    "silu": F.silu,
    "relu": F.relu,
    "softplus": F.softplus,
    "relu6": F.relu6,
    "hardtanh": F.hardtanh,
    "sign": _sign,
    "rbf": _rbf,
    "exp": _capped_exp,
    "sqrt_abs": _sqrt_abs,
    "unit_interval_indicator": _unit_interval_indicator,
    "sine": torch.sin,
    "square": _square,
    "abs": torch.abs,
}
RANDOM_FUNCTION = "random_function"
ACTIVATION_NAMES: tuple[str, ...] = (*FIXED_ACTIVATIONS, RANDOM_FUNCTION)


class RandomFourierFunction:
    """A GP-like random scalar function ``f(x) = sum_j z_j * w_j / ||w|| * sin(a_j x + b_j)``.

    ``a_j ~ U[0, n_frequencies]``, ``b_j ~ U[0, 2 pi]``, ``z_j ~ N(0, 1)`` and ``w_j = a_j ** -p`` with the decay
    power ``p`` log-uniform in ``[min_decay, max_decay]``: a large ``p`` gives smooth functions, a small one rough
    ones. For fixed ``(a, b, w)`` this is a Gaussian process with kernel ``phi(x)^T phi(x')`` (random Fourier
    features). One function is shared by all neurons of a layer.

    Evaluating ``n_frequencies`` sines per element would dominate the prior's cost, so ``f`` is tabulated on a
    uniform grid of ``grid_blocks**2`` points over the bulk of the input (within ``[-grid_radius, grid_radius]``)
    and linearly interpolated; the few elements outside the grid are evaluated exactly. With the default 16 384
    points on a range of 12, the grid step times the highest frequency is ~0.2 rad: interpolation error < 0.5 %
    of the highest-frequency terms, far below the SCM noise.
    """

    def __init__(
        self,
        rng: PriorRandom,
        n_frequencies: int = 256,
        min_decay: float = 0.7,
        max_decay: float = 3.0,
        grid_blocks: int = 128,
        grid_radius: float = 6.0,
    ):
        if n_frequencies < 1:
            raise ValueError(f"n_frequencies must be >= 1, got {n_frequencies}")
        if grid_blocks < 2 or grid_radius <= 0:
            raise ValueError("grid_blocks must be >= 2 and grid_radius > 0")
        self.frequencies = (rng.rand(n_frequencies) * n_frequencies).double()
        self.phases = (rng.rand(n_frequencies) * (2.0 * math.pi)).double()
        decay = rng.log_uniform(min_decay, max_decay)
        # A frequency of exactly 0 would give an infinite weight; the floor only matters with probability ~0.
        amplitudes = self.frequencies.clamp(min=1e-3).pow(-decay)
        amplitudes = amplitudes / amplitudes.norm()
        self.coefficients = amplitudes * rng.randn(n_frequencies).double()
        self.grid_blocks = grid_blocks
        self.grid_radius = grid_radius

    def evaluate_exactly(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """``f(x)`` for a 1-D tensor, one sine per element and frequency (chunked to bound memory)."""
        values = x.double()
        pieces = [
            torch.sin(part[:, None] * self.frequencies + self.phases) @ self.coefficients
            for part in values.split(chunk)
        ]
        return (torch.cat(pieces) if pieces else values.clone()).to(x.dtype)

    def evaluate_on_grid(self, start: float, step: float) -> torch.Tensor:
        """``f`` at ``start + k * step`` for ``k < grid_blocks**2``, in float64.

        Writing ``k = q * m + r`` (``m = grid_blocks``), ``sin(a x_k + b) = sin(A_q) cos(B_r) + cos(A_q) sin(B_r)``
        with ``A_q = a (start + q m step) + b`` and ``B_r = a r step``: the whole grid costs ``4 m`` sines per
        frequency plus two ``(m, n_freq) @ (n_freq, m)`` products instead of ``m**2`` sines per frequency.
        """
        blocks = self.grid_blocks
        coarse_angles = (start + step * blocks * torch.arange(blocks, dtype=torch.float64))[:, None] * self.frequencies
        coarse_angles = coarse_angles + self.phases
        fine_angles = (step * torch.arange(blocks, dtype=torch.float64))[:, None] * self.frequencies
        grid = (torch.sin(coarse_angles) * self.coefficients) @ torch.cos(fine_angles).T
        grid = grid + (torch.cos(coarse_angles) * self.coefficients) @ torch.sin(fine_angles).T
        return grid.reshape(-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1)
        n_points = self.grid_blocks**2
        low = max(float(flat.min()), -self.grid_radius)
        high = min(float(flat.max()), self.grid_radius)
        if flat.numel() <= self.grid_blocks or high <= low:
            return self.evaluate_exactly(flat).reshape(x.shape)
        step = (high - low) / (n_points - 1)
        grid_values = self.evaluate_on_grid(low, step).to(x.dtype)
        position = (flat - low) / step
        inside = (position >= 0) & (position <= n_points - 1)
        position = position.clamp(0, n_points - 1 - 1e-3)
        left = position.long()
        fraction = position - left
        result = grid_values[left] * (1 - fraction) + grid_values[left + 1] * fraction
        if not bool(inside.all()):
            outside = ~inside
            result[outside] = self.evaluate_exactly(flat[outside])
        return result.reshape(x.shape)


class LayerActivation:
    """Standardize each neuron, randomly rescale, then apply one named non-linearity (all drawn at construction)."""

    def __init__(self, name: str, rng: PriorRandom, n_frequencies: int = 256):
        if name not in ACTIVATION_NAMES:
            raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATION_NAMES}")
        self.name = name
        if name == RANDOM_FUNCTION:
            # The random function standardizes its own input, so a random rescaling would be undone: skip it.
            self.function: Callable[[torch.Tensor], torch.Tensor] = RandomFourierFunction(rng, n_frequencies)
            self.scale, self.shift = 1.0, 0.0
        else:
            self.function = FIXED_ACTIVATIONS[name]
            self.scale = math.exp(2.0 * float(rng.np.normal()))
            self.shift = float(rng.np.normal())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = standardize_columns(x)
        if self.name != RANDOM_FUNCTION:
            z = self.scale * (z + self.shift)
        return self.function(z)

    def __repr__(self) -> str:
        return f"LayerActivation({self.name}, scale={self.scale:.3g}, shift={self.shift:.3g})"


def activation_probabilities(random_function_weight: float = 10.0) -> np.ndarray:
    """Probabilities over :data:`ACTIVATION_NAMES`: 1 for each fixed activation, ``random_function_weight`` for the
    random function, normalized."""
    if random_function_weight < 0:
        raise ValueError(f"random_function_weight must be >= 0, got {random_function_weight}")
    weights = np.ones(len(ACTIVATION_NAMES))
    weights[ACTIVATION_NAMES.index(RANDOM_FUNCTION)] = random_function_weight
    return weights / weights.sum()


def sample_activation_name(rng: PriorRandom, random_function_weight: float = 10.0) -> str:
    probabilities = activation_probabilities(random_function_weight)
    return ACTIVATION_NAMES[int(rng.np.choice(len(ACTIVATION_NAMES), p=probabilities))]


def sample_layer_activations(
    rng: PriorRandom,
    n_layers: int,
    random_function_weight: float = 10.0,
    same_type_prob: float = 0.5,
    n_frequencies: int = 256,
) -> list[LayerActivation]:
    """One activation per layer: with probability ``same_type_prob`` all layers share one activation *type*
    (each with its own rescaling / random function), otherwise each layer draws its type independently."""
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    if rng.bernoulli(same_type_prob):
        shared_name = sample_activation_name(rng, random_function_weight)
        names = [shared_name] * n_layers
    else:
        names = [sample_activation_name(rng, random_function_weight) for _ in range(n_layers)]
    return [LayerActivation(name, rng, n_frequencies) for name in names]
