"""LoRA adapters (through ``peft``) on any network of :mod:`autogluon_tfm.nn`.

All three networks build attention from separate ``nn.Linear`` projections (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``) and their feed-forward blocks from ``linear1`` / ``linear2``, so peft's ``LoraModel`` can wrap them on the
plain ``nn.Module`` (no ``PeftModel`` / transformers config needed). peft matches a target name against the end of a
module's dotted name, so ``"linear1"`` wraps every ``...linear1`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["DEFAULT_LORA_TARGETS", "add_lora", "merge_lora"]

#: Attention projections and feed-forward layers shared by TabICL, TabPFNv2 and Mitra.
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2")

_ADAPTER_NAME = "default"


def add_lora(
    network: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
):
    """Wrap ``network``'s target ``nn.Linear`` layers with LoRA adapters, in place; freeze everything else.

    Returns peft's ``LoraModel`` tuner (needed by :func:`merge_lora`). Only the adapter weights (``lora_A`` /
    ``lora_B``) require gradients afterwards; ``lora_B`` starts at zero, so the wrapped network computes exactly what
    it computed before. Raises ``ValueError`` when no module matches ``target_modules``.
    """
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    targets = list(DEFAULT_LORA_TARGETS if target_modules is None else target_modules)
    if not targets or not all(isinstance(name, str) and name for name in targets):
        raise ValueError(f"lora_target_modules must be a non-empty list of module names, got {target_modules!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora_rank must be a positive integer, got {rank!r}.")
    if not alpha > 0:
        raise ValueError(f"lora_alpha must be > 0, got {alpha!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {dropout!r}.")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    try:
        return LoraModel(network, config, _ADAPTER_NAME)
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        linear_names = sorted({name.rsplit(".", 1)[-1] for name, m in network.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"LoRA target modules {targets} match no layer of {type(network).__name__}; its nn.Linear layers are "
            f"named {linear_names}. ({error})"
        ) from error


def merge_lora(tuner) -> nn.Module:
    """Fold the adapters into the base weights and remove the wrappers: returns the plain network (same object that
    was given to :func:`add_lora`), with each parameter's ``requires_grad`` as peft left it (frozen)."""
    return tuner.merge_and_unload()
