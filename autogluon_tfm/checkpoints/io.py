"""Loading and saving networks in the official formats and the project's own safetensors format."""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from autogluon_tfm.checkpoints.mitra import OFFICIAL_REPOS as OFFICIAL_MITRA_REPOS
from autogluon_tfm.checkpoints.mitra import cached_mitra_dir, is_mitra_dir, load_mitra_dir
from autogluon_tfm.checkpoints.tabpfn_v2 import (
    OFFICIAL_TABPFN_V2_FILES,
    find_cached_tabpfn_v2_file,
    is_tabpfn_v2_checkpoint,
    tabpfn_v2_from_checkpoint,
)
from autogluon_tfm.nn import ARCHITECTURES

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"

# Official files, newest first; the first one present in the local cache wins for checkpoint="default".
OFFICIAL_FILES: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("tabicl", "classification"): [
        ("jingang/TabICL", "tabicl-classifier-v2-20260212.ckpt"),
        ("jingang/TabICL", "tabicl-classifier-v1.1-20250506.ckpt"),
        ("jingang/TabICL", "tabicl-classifier-v1-20250208.ckpt"),
        ("jingang/TabICL-clf", "tabicl-classifier-v1.1-0506.ckpt"),
        ("jingang/TabICL-clf", "tabicl-classifier-v1-0208.ckpt"),
        ("jingang/TabICL-clf", "tabicl-classifier.ckpt"),
    ],
    ("tabicl", "regression"): [("jingang/TabICL", "tabicl-regressor-v2-20260212.ckpt")],
}

# The project's shipped weights per (architecture, task).
SHIPPED_DEFAULTS: dict[tuple[str, str], str] = {
    ("tabicl", "classification"): "tabicl-clf-small",
    ("tabicl", "regression"): "tabicl-reg-small",
    ("tabpfn_v2", "classification"): "tabpfnv2-clf-small",
    ("tabpfn_v2", "regression"): "tabpfnv2-reg-small",
    ("mitra", "classification"): "mitra-clf-small",
    ("mitra", "regression"): "mitra-reg-small",
}

# Estimator / AutoGluon ``model=`` names -> network architectures (``arch`` of the networks, keys of
# ``nn.ARCHITECTURES``). The one place where user-facing model names meet architecture names.
MODEL_ARCHITECTURES: dict[str, str] = {"tabicl": "tabicl", "tabpfnv2": "tabpfn_v2", "mitra": "mitra"}
# Spellings also accepted for ``model=`` (architecture names and common variants).
_MODEL_ALIASES: dict[str, str] = {"tabpfn_v2": "tabpfnv2", "tabpfn-v2": "tabpfnv2", "tabpfn": "tabpfnv2"}
TASKS = ("classification", "regression")

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tabicl": dict(
        embed_dim=16, col_num_blocks=1, col_nhead=2, col_num_inds=4, row_num_blocks=2, row_nhead=2, row_num_cls=2,
        icl_num_blocks=1, icl_nhead=2, ff_factor=2, num_quantiles=9,
    ),
    "tabpfn_v2": dict(embed_dim=16, nhead=2, num_blocks=2, ff_factor=2, num_buckets=32),
    "mitra": dict(dim=16, n_layers=2, n_heads=2),
}

# How each architecture's constructor spells "this is a regression network".
REGRESSION_OVERRIDES: dict[str, dict[str, Any]] = {
    "tabicl": dict(max_classes=0),
    "tabpfn_v2": dict(max_classes=0),
    "mitra": dict(task="regression", dim_output=1),
}


def list_shipped() -> list[str]:
    """Names of the weights shipped inside the package."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors"))


def _cached_official_file(repo_id: str, filename: str) -> Path | None:
    """Path of an official file already in the local Hugging Face cache, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    # Read the cache location at call time so HF_HUB_CACHE set after import is honoured.
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    found = try_to_load_from_cache(repo_id=repo_id, filename=filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


class CheckpointMismatchError(ValueError):
    """The network of a checkpoint is not of the requested model (architecture) or task."""


def model_architecture(model: str) -> str:
    """Network architecture of an estimator ``model`` name: ``"tabicl"`` -> ``"tabicl"``, ``"tabpfnv2"`` ->
    ``"tabpfn_v2"``, ``"mitra"`` -> ``"mitra"`` (case-insensitive; architecture names are accepted too)."""
    if not isinstance(model, str):
        raise ValueError(f"model must be a string, one of {sorted(MODEL_ARCHITECTURES)}; got {model!r}")
    name = model.strip().lower()
    name = _MODEL_ALIASES.get(name, name)
    if name not in MODEL_ARCHITECTURES:
        raise ValueError(f"Unknown model {model!r}; expected one of {sorted(MODEL_ARCHITECTURES)}")
    return MODEL_ARCHITECTURES[name]


def _model_name(arch: str) -> str:
    return next(name for name, a in MODEL_ARCHITECTURES.items() if a == arch)


def network_task(net: nn.Module) -> str:
    """``"classification"`` for a network with class logits (``max_classes > 0``), else ``"regression"``."""
    return "classification" if int(getattr(net, "max_classes", 0) or 0) > 0 else "regression"


def check_network(net: nn.Module, model: str, task: str, source: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` (a ``ValueError``) unless ``net`` is a ``task`` network of ``model``'s
    architecture.

    Networks whose ``arch`` is not one of the project's architectures (test stand-ins following the network
    protocol) are only checked for the task.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    expected_arch = model_architecture(model)
    arch = getattr(net, "arch", None)
    if arch in ARCHITECTURES and arch != expected_arch:
        raise CheckpointMismatchError(
            f"The network from {source} is a {_model_name(arch)!r} network, but model={model!r} was requested; "
            f"pass a {_model_name(expected_arch)!r} checkpoint or set model={_model_name(arch)!r}."
        )
    actual_task = network_task(net)
    if actual_task != task:
        role = {"classification": "classifier", "regression": "regressor"}
        raise CheckpointMismatchError(
            f"The network from {source} is a {actual_task} network "
            f"(max_classes={int(getattr(net, 'max_classes', 0) or 0)}), not a {role[task]}; "
            f"use a {task} checkpoint (TFM{'Classifier' if actual_task == 'classification' else 'Regressor'} "
            f"is the estimator for this one)."
        )


def _cached_official_default(arch: str, task: str) -> Path | None:
    """The newest official checkpoint of ``arch`` for ``task`` already on disk (never downloads)."""
    if arch == "tabicl":
        for repo_id, filename in OFFICIAL_FILES.get((arch, task), []):
            path = _cached_official_file(repo_id, filename)
            if path is not None:
                return path
    elif arch == "tabpfn_v2":
        for _, filename in OFFICIAL_TABPFN_V2_FILES.get(task, []):
            path = find_cached_tabpfn_v2_file(filename)
            if path is not None:
                return path
    elif arch == "mitra" and task in OFFICIAL_MITRA_REPOS:
        return cached_mitra_dir(OFFICIAL_MITRA_REPOS[task])
    return None


def resolve_checkpoint(model: str = "tabicl", task: str = "classification", checkpoint: str = "default") -> str:
    """Turn ``checkpoint`` into something :func:`load_network` accepts, logging which weights are used.

    ``model`` is an estimator model name (``"tabicl"``, ``"tabpfnv2"``, ``"mitra"``, see :func:`model_architecture`).
    ``"default"`` picks an official checkpoint already in the local cache, else the project's shipped weights for
    that model and task, else raises a ``ValueError`` saying to pass ``checkpoint=<path>``.
    """
    arch = model_architecture(model)
    if task not in TASKS:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if checkpoint != "default":
        return str(checkpoint)
    name = _model_name(arch)
    path = _cached_official_default(arch, task)
    if path is not None:
        logger.info("Using official %s %s checkpoint from the local cache: %s", name, task, path)
        return str(path)
    shipped = SHIPPED_DEFAULTS.get((arch, task))
    if shipped is None or not (SHIPPED_DIR / f"{shipped}.safetensors").exists():
        raise ValueError(
            f"No shipped weights for {name} {task} yet, and no official {name} {task} checkpoint in the local cache; "
            f"pass checkpoint=<path to a checkpoint file or directory>. Shipped weights: {list_shipped()}"
        )
    logger.info("Using shipped %s %s weights %r (no official checkpoint in the local cache)", name, task, shipped)
    warning = shipped_card(shipped).get("warning")
    if warning:
        logger.warning("Shipped weights %r: %s", shipped, warning)
    return shipped


def shipped_card(name: str) -> dict[str, Any]:
    """The JSON card of shipped weights ``name`` (empty if it has none)."""
    card = SHIPPED_DIR / f"{name}.json"
    return json.loads(card.read_text()) if card.exists() else {}


def _build(arch: str, config: dict[str, Any]) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    dropped = sorted(set(config) - accepted)
    if dropped:  # e.g. `zero_init` written by newer official trainers
        logger.debug("Ignoring config keys %s unknown to %s", dropped, cls.__name__)
    return cls(**{k: v for k, v in config.items() if k in accepted})


def _split_packed_attention(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official packed ``attn.in_proj_{weight,bias}`` -> our ``attn.{q,k,v}_proj.{weight,bias}``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(("in_proj_weight", "in_proj_bias")):
            prefix, kind = key.rsplit(".", 1)
            suffix = "weight" if kind == "in_proj_weight" else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{suffix}"] = part.clone()
        else:
            out[key] = value
    return out


def _load_official(path: Path) -> nn.Module:
    """An official ``.ckpt`` (loaded once, never unpickling code): TabPFN v2 if it looks like one, else tabicl."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if is_tabpfn_v2_checkpoint(ckpt):
        return tabpfn_v2_from_checkpoint(ckpt)
    if isinstance(ckpt, dict) and ckpt.get("arch") in ARCHITECTURES and "pretrain_config" in ckpt:
        # The project's own pretraining checkpoint (pretrain/trainer.py): any architecture, our key names.
        net = _build(ckpt["arch"], dict(ckpt["config"]))
        net.load_state_dict(ckpt["state_dict"], strict=True)
        return net
    return _load_official_tabicl(path, ckpt)


def _load_official_tabicl(path: Path, ckpt: Any) -> nn.Module:
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a tabicl checkpoint (expected a dict with 'config' and 'state_dict')")
    net = _build("tabicl", dict(ckpt["config"]))
    net.load_state_dict(_split_packed_attention(ckpt["state_dict"]), strict=True)
    return net


def _load_safetensors(path: Path) -> nn.Module:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "arch" not in meta or "config" not in meta:
        raise ValueError(f"{path} lacks the 'arch'/'config' metadata of autogluon-tfm weights")
    net = _build(meta["arch"], json.loads(meta["config"]))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    net.load_state_dict(state, strict=True)
    # Inference settings the weights were measured best with (e.g. max_classes_per_call); estimators read them for
    # their "auto" defaults.
    card = path.with_suffix(".json")
    net.inference_defaults = dict(json.loads(card.read_text()).get("inference_defaults", {})) if card.exists() else {}
    return net


def _find(path_or_name: str | Path) -> Path:
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    name = str(path_or_name)
    shipped = SHIPPED_DIR / (name if name.endswith(".safetensors") else f"{name}.safetensors")
    if shipped.exists():
        return shipped
    for files in OFFICIAL_FILES.values():
        for repo_id, filename in files:
            if filename == name:
                cached = _cached_official_file(repo_id, filename)
                if cached is not None:
                    return cached
                raise FileNotFoundError(
                    f"Official checkpoint {name!r} is not in the local Hugging Face cache and autogluon-tfm never "
                    f"downloads implicitly. Run `python -m autogluon_tfm download {name}` where you have internet, "
                    f"or pass the file's path."
                )
    raise FileNotFoundError(
        f"Checkpoint {name!r} not found: not a file, not a shipped name ({list_shipped()}), not an official file name."
    )


def find_checkpoint(path_or_name: str | Path) -> Path:
    """The file (or Mitra directory) :func:`load_network` would read for ``path_or_name``: a path, a shipped weights
    name or an official file name in the local cache. Raises ``FileNotFoundError`` (never downloads)."""
    return _find(path_or_name)


def load_network(path_or_name: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a network in eval mode from a path, a shipped weights name or a cached official file name."""
    path = _find(path_or_name)
    if path.is_dir():
        if not is_mitra_dir(path):
            raise ValueError(f"{path} is a directory but not an official Mitra one; pass the checkpoint file inside it")
        net = load_mitra_dir(path)
    elif path.suffix == ".safetensors":
        net = _load_safetensors(path)
    else:
        net = _load_official(path)
    return net.to(device).eval()


def save_network(
    net: nn.Module, path: str | Path, card: dict[str, Any] | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Save in the project's format: ``path`` (.safetensors, config in metadata) plus a JSON card beside it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    config = json.dumps(net.config, sort_keys=True)
    save_file(state, str(path), metadata={"arch": net.arch, "config": config, "format": "autogluon-tfm/1"})
    card = dict(card or {})
    card.setdefault("arch", net.arch)
    card.setdefault("config", net.config)
    card.setdefault("n_parameters", sum(v.numel() for v in net.state_dict().values()))
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path


def make_tiny_network(arch: str = "tabicl", task: str = "classification", seed: int = 0) -> nn.Module:
    """A randomly initialised tiny network for fast tests (eval mode, CPU)."""
    config = dict(TINY_CONFIGS[arch])
    if task == "regression":
        config.update(REGRESSION_OVERRIDES[arch])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _build(arch, config)
        for p in net.parameters():  # official init zeroes residual branches; tests want a non-trivial function
            if p.requires_grad and p.dim() >= 1 and bool((p == 0).all()):
                nn.init.normal_(p, std=0.05)
    return net.eval()
