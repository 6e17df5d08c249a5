"""Shared test helpers (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Architectures of ``make_tiny_network`` and the estimators' ``model=`` name of each.
ARCHS = ("tabicl", "tabpfn_v2", "mitra")
MODEL_NAMES = {"tabicl": "tabicl", "tabpfn_v2": "tabpfnv2", "mitra": "mitra"}


def subprocess_env() -> dict[str, str]:
    """Environment for a fresh Python process that imports the repository's package, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"  # a saved predictor must not need the network
    return env


def state_of(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a network's state dict."""
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def assert_same_state(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def record_finetune(monkeypatch) -> dict:
    """Make the estimators' finetuning calls record what they get: the returned dict holds the ``data`` and
    ``config`` of the latest call (the calls still run)."""
    import autogluon_tfm.finetune as finetune_module

    seen: dict = {}
    original = finetune_module.finetune

    def recording_finetune(network, data, config, **kwargs):
        seen["data"], seen["config"] = data, config
        return original(network, data, config, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune", recording_finetune)
    return seen


class ScriptedValidation:
    """Wraps finetuning data (any task): steps and loss come from it, validation losses follow a script, and every
    validation pass records the weights it saw."""

    has_validation = True

    def __init__(self, data, losses):
        self.data = data
        self.losses = list(losses)
        self.seen_states: list[dict[str, torch.Tensor]] = []

    def sample_step(self, rng, rows_per_step, query_fraction):
        return self.data.sample_step(rng, rows_per_step, query_fraction)

    def loss(self, outputs, batch):
        return self.data.loss(outputs, batch)

    def validation_loss(self, network, device, autocast_dtype=None):
        self.seen_states.append(state_of(network))
        return self.losses[len(self.seen_states) - 1]


def fit_in_context_and_finetuned(estimator_cls, arch: str, network: torch.nn.Module, X, y, learning_rate: float,
                                 steps: int = 40, **params):
    """The same estimator (one member, no feature shuffling) fitted in context only and with exactly ``steps`` full
    finetuning steps (no early stopping); checks that the given network is left untouched."""
    pretrained = state_of(network)
    common = dict(model=MODEL_NAMES[arch], checkpoint=network, n_estimators=1, feat_shuffle="none", device="cpu",
                  random_state=0, **params)
    icl = estimator_cls(**common).fit(X, y)
    tuned = estimator_cls(**common, fine_tune="full", fine_tune_steps=steps, learning_rate=learning_rate,
                          validation_fraction=0.0).fit(X, y)
    assert tuned.fine_tune_report_.steps_run == steps and tuned.fine_tune_report_.best_step == steps
    assert_same_state(state_of(network), pretrained)  # the user's module is untouched
    assert tuned.network_ is not network
    return icl, tuned
