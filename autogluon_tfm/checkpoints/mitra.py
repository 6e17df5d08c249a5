"""Official Mitra checkpoints: a directory with ``config.json`` + ``model.safetensors`` (AutoGluon ``Tab2D``).

The official format is what ``Tab2D.save_pretrained`` writes and ``Tab2D.from_pretrained`` reads (the Hugging Face
repos ``autogluon/mitra-classifier`` and ``autogluon/mitra-regressor``). Loading translates the official state-dict
names to ours and loads strictly; :func:`save_mitra_dir` writes our network back in the official format so that
AutoGluon's own Mitra can use it. Nothing here downloads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors.torch import load_file, save_file

from autogluon_tfm.nn.mitra import Mitra

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OFFICIAL_REPOS = {"classification": "autogluon/mitra-classifier", "regression": "autogluon/mitra-regressor"}
_CONFIG_KEYS = ("dim", "dim_output", "n_layers", "n_heads", "task")

# Official per-layer module names -> ours ("<block>.<module>"; each official layer is two pre-norm blocks).
_LAYER_MODULES = {
    "layer_norm1": "across_rows.norm1",
    "attention1": "across_rows.attn",
    "layer_norm2": "across_rows.norm2",
    "linear1": "across_rows.linear1",
    "linear2": "across_rows.linear2",
    "layer_norm3": "across_features.norm1",
    "attention2": "across_features.attn",
    "layer_norm4": "across_features.norm2",
    "linear3": "across_features.linear1",
    "linear4": "across_features.linear2",
}
_ATTENTION_PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
_TOP_LEVEL = {
    "x_embedding.x_embedding.weight": "x_embedding.weight",
    "x_embedding.x_embedding.bias": "x_embedding.bias",
    "y_embedding.y_embedding.weight": "y_embedding.weight",
    "y_embedding.y_embedding.bias": "y_embedding.bias",
    "y_embedding.y_mask.weight": "y_mask",
    "final_layer_norm.weight": "final_norm.weight",
    "final_layer_norm.bias": "final_norm.bias",
    "final_layer.weight": "head.weight",
    "final_layer.bias": "head.bias",
}
_TOP_LEVEL_INVERSE = {ours: official for official, ours in _TOP_LEVEL.items()}
_LAYER_MODULES_INVERSE = {ours: official for official, ours in _LAYER_MODULES.items()}
_ATTENTION_PROJECTIONS_INVERSE = {ours: official for official, ours in _ATTENTION_PROJECTIONS.items()}
_OUR_LAYER_KEY = re.compile(
    r"^layers\.(\d+)\.(across_(?:rows|features)\.(?:norm[12]|attn|linear[12]))\.(?:(q_proj|k_proj|v_proj|out_proj)\.)?"
    r"(weight|bias)$"
)
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(layer_norm[1-4]|attention[12]|linear[1-4])\.(?:([qkvo])\.)?(weight|bias)$")


def official_to_ours(key: str) -> str:
    """Translate one official ``Tab2D`` state-dict key to the name used by :class:`~autogluon_tfm.nn.mitra.Mitra`."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    match = _LAYER_KEY.match(key)
    if match is None:
        raise ValueError(f"Unexpected key {key!r} in an official Mitra state dict")
    index, module, projection, kind = match.groups()
    if module.startswith("attention") != (projection is not None):
        raise ValueError(f"Unexpected key {key!r} in an official Mitra state dict")
    ours = f"layers.{index}.{_LAYER_MODULES[module]}"
    if projection is not None:
        ours += f".{_ATTENTION_PROJECTIONS[projection]}"
    return f"{ours}.{kind}"


def ours_to_official(key: str) -> str:
    """Inverse of :func:`official_to_ours`."""
    if key in _TOP_LEVEL_INVERSE:
        return _TOP_LEVEL_INVERSE[key]
    match = _OUR_LAYER_KEY.match(key)
    if match is None:
        raise ValueError(f"Unexpected key {key!r} in a Mitra state dict")
    index, module, projection, kind = match.groups()
    official = f"layers.{index}.{_LAYER_MODULES_INVERSE[module]}"
    if projection is not None:
        official += f".{_ATTENTION_PROJECTIONS_INVERSE[projection]}"
    return f"{official}.{kind}"


def is_mitra_dir(path: str | Path) -> bool:
    """True for a directory holding an official Mitra checkpoint (``config.json`` + ``model.safetensors``)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def config_from_official(official: dict) -> dict:
    """Official ``config.json`` -> :class:`Mitra` constructor kwargs (the task name is lower-cased)."""
    missing = [k for k in _CONFIG_KEYS if k not in official]
    if missing:
        raise ValueError(f"Mitra config.json lacks {missing}; expected the keys {list(_CONFIG_KEYS)}")
    config = {k: official[k] for k in _CONFIG_KEYS}
    config["task"] = str(config["task"]).lower()
    return config


def load_mitra_dir(path: str | Path) -> Mitra:
    """Build a :class:`Mitra` from an official directory and load its weights strictly (CPU, eval mode)."""
    path = Path(path)
    if not is_mitra_dir(path):
        raise ValueError(f"{path} is not an official Mitra directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    official_config = json.loads((path / CONFIG_FILE).read_text())
    net = Mitra(**config_from_official(official_config))
    official_state = load_file(str(path / WEIGHTS_FILE), device="cpu")
    state = {official_to_ours(k): v.float() for k, v in official_state.items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def save_mitra_dir(net: Mitra, path: str | Path) -> Path:
    """Write ``net`` in the official format (loadable by AutoGluon's ``Tab2D.from_pretrained(path)``)."""
    if getattr(net, "arch", None) != "mitra":
        raise ValueError(f"Expected a Mitra network, got {type(net).__name__}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {ours_to_official(k): v.detach().cpu().float().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
    config = {k: net.config[k] for k in _CONFIG_KEYS}
    config["task"] = config["task"].upper()  # the official loader looks the task up by its enum name
    (path / CONFIG_FILE).write_text(json.dumps(config))
    return path


def cached_mitra_dir(repo_id: str, cache_dir: str | Path | None = None) -> Path | None:
    """Snapshot directory of an official Mitra repo already in the local Hugging Face cache (no network access)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    found = [try_to_load_from_cache(repo_id=repo_id, filename=f, cache_dir=cache_dir) for f in (CONFIG_FILE, WEIGHTS_FILE)]
    if not all(isinstance(f, str) for f in found):
        return None
    config_dir, weights_dir = (Path(f).parent for f in found)
    # Both files must come from the same snapshot; symlinks into blobs/ are fine, the snapshot folder is the unit.
    return config_dir if config_dir == weights_dir else None

