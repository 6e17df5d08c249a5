"""How a saved AutoGluon model keeps its network: inside the pickle, or by reference to the checkpoint on disk.

Small networks (the shipped weights, a few MB) and every finetuned network travel inside the saved model, so a
predictor loads anywhere. A large official checkpoint (TabICL's is ~110 MB, and every bag child would repeat it) is
stored by reference instead: the checkpoint name, its absolute path and a sha256 fingerprint. Loading finds the file
again (at the saved path, else by its name in the current local cache), checks the fingerprint and reloads the
network; a missing or changed file raises :class:`CheckpointReferenceError`, which says what to do.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MB = 1024**2
#: Default of ``ag.store_weights_max_mb``: networks up to this size are stored inside the saved model.
DEFAULT_STORE_WEIGHTS_MAX_MB = 50.0

# sha256 per (path, size, mtime_ns) of every file: a bag saves one child per fold, each naming the same checkpoint,
# and hashing a ~100 MB file takes a noticeable fraction of a second.
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


class CheckpointReferenceError(FileNotFoundError):
    """A model saved with its weights by reference cannot find that checkpoint (missing, or a different file)."""


@dataclass(frozen=True)
class WeightsReference:
    """What a saved model records instead of its network's weights."""

    #: ``checkpoint`` as the estimator got it ("default", a name, a path).
    checkpoint: str
    #: What it resolved to at fit time (``checkpoint_path_``: a path, a shipped name or an official file name).
    source: str
    #: Absolute path of the file (or Mitra directory) at save time.
    path: str
    #: sha256 of the file (of the sorted files and their relative names, for a directory).
    sha256: str
    #: Bytes on disk (all files of a directory).
    size_bytes: int
    #: Bytes of the network's tensors, which the saved model does not hold.
    network_bytes: int
    #: Why the weights were not stored, in terms of the ``ag.`` parameters (for the error message).
    policy: str = ""


def validate_store_weights(store_weights: Any, max_mb: Any) -> None:
    """Fail at fit time (not at save time, after the work is done) on bad ``ag.store_weights*`` values."""
    if not (isinstance(store_weights, bool) or store_weights == "auto"):  # 1 == True: demand a real bool
        raise ValueError(f"ag.store_weights must be 'auto', True or False, got {store_weights!r}.")
    if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or max_mb < 0:
        raise ValueError(f"ag.store_weights_max_mb must be a number >= 0 (megabytes), got {max_mb!r}.")


def network_nbytes(network: torch.nn.Module) -> int:
    """Bytes of the network's parameters and buffers, i.e. what pickling it adds to the saved model."""
    return int(sum(t.numel() * t.element_size() for t in network.state_dict().values()))


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(4 * MB), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def fingerprint(path: Path) -> tuple[str, int]:
    """(sha256, size in bytes) of a checkpoint file or directory."""
    path = Path(path)
    if path.is_file():
        return _sha256_file(path), _size(path)
    digest = hashlib.sha256()
    for file in _files(path):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + _sha256_file(file).encode())
    return digest.hexdigest(), _size(path)


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in _files(path))


def make_reference(estimator: Any, policy: str = "") -> WeightsReference | None:
    """A reference to the checkpoint file the estimator's network was loaded from, or None when there is no such
    file (a module passed as ``checkpoint``) or the network is not that file's (finetuned)."""
    from autogluon_tfm.checkpoints.io import find_checkpoint

    if getattr(estimator, "fine_tune_report_", None) is not None:
        return None  # finetuned state exists nowhere else: always stored
    if isinstance(getattr(estimator, "checkpoint", None), torch.nn.Module):
        return None
    source = getattr(estimator, "checkpoint_path_", None)
    network = getattr(estimator, "network_", None)
    if source is None or network is None:
        return None
    try:
        path = find_checkpoint(source).absolute()
    except (FileNotFoundError, OSError):
        return None  # the file is already gone: the weights in memory are the only copy
    sha256, size = fingerprint(path)
    return WeightsReference(
        checkpoint=str(estimator.checkpoint),
        source=str(source),
        path=str(path),
        sha256=sha256,
        size_bytes=size,
        network_bytes=network_nbytes(network),
        policy=policy,
    )


def _candidates(reference: WeightsReference, model: str, task: str) -> list[Path]:
    """Where the referenced checkpoint may be now: the saved path first, then wherever its name resolves in the
    current environment (e.g. another ``HF_HUB_CACHE``)."""
    from autogluon_tfm.checkpoints.io import find_checkpoint, list_shipped, resolve_checkpoint

    found: list[Path] = [Path(reference.path)]
    names = [reference.source, Path(reference.path).name]
    if reference.checkpoint == "default":
        # Official files of other architectures are found by "default" only (TabPFN's cache, Mitra directories).
        try:
            resolved = resolve_checkpoint(model, task, "default")
        except ValueError:
            resolved = None
        if resolved is not None and resolved not in list_shipped():  # shipped weights are never the same file
            names.append(resolved)
    for name in names:
        try:
            path = find_checkpoint(name).absolute()
        except (FileNotFoundError, OSError, ValueError):
            continue
        if path not in found:
            found.append(path)
    return found


def locate(reference: WeightsReference, model: str, task: str, owner: str) -> Path:
    """The checkpoint a saved model refers to, checked against its fingerprint; raises
    :class:`CheckpointReferenceError` naming the checkpoint, the expected path and the ways out."""
    others: list[str] = []
    for path in _candidates(reference, model, task):
        if not path.exists():
            continue
        # Size first: a cheap way to reject another version of the file without hashing it.
        if _size(path) == reference.size_bytes and fingerprint(path)[0] == reference.sha256:
            if str(path) != reference.path:
                logger.info("%s: referenced checkpoint %r found at %s", owner, reference.source, path)
            return path
        if str(path) != reference.path:
            others.append(str(path))
    if Path(reference.path).exists():
        problem = "the file there is a different checkpoint (its sha256 or size differs)"
    else:
        problem = "the file is missing"
    problem += (
        f"; also checked, but not the same file: {others}" if others else "; no file of that name in the local cache"
    )
    # A file name reads better than the full path, which the message gives anyway.
    name = Path(reference.path).name if Path(reference.source) == Path(reference.path) else reference.source
    raise CheckpointReferenceError(
        f"{owner} was saved with its {reference.network_bytes / MB:.1f} MB network stored by reference "
        f"({reference.policy}), not inside the saved model. It needs checkpoint {name!r} (requested as checkpoint={reference.checkpoint!r}; "
        f"sha256 {reference.sha256[:16]}..., {reference.size_bytes} bytes) at {reference.path}, but {problem}. "
        f"Put that exact file back at {reference.path}, or make it findable by name again (e.g. set HF_HUB_CACHE "
        f"to the cache that holds it); or refit with hyperparameter 'ag.store_weights': True to keep the weights "
        f"inside the saved model."
    )


def load_referenced_network(reference: WeightsReference, model: str, task: str, owner: str) -> torch.nn.Module:
    """The network of a reference, on CPU (AutoGluon moves the model to its device after loading), checked to be
    of ``model``'s architecture and ``task``."""
    from autogluon_tfm.checkpoints import check_network, load_network

    path = locate(reference, model, task, owner)
    network = load_network(path, device="cpu")
    check_network(network, model, task, source=f"checkpoint {str(path)!r}")
    return network


def store_by_reference(estimator: Any, store_weights: Any, max_mb: float) -> WeightsReference | None:
    """The reference to save instead of the network, or None to keep the weights in the saved model.

    ``store_weights``: True = always inside; False = by reference whenever the network is an unmodified checkpoint
    file; ``"auto"`` = by reference when, in addition, the network is larger than ``max_mb`` megabytes.
    """
    if store_weights is True or getattr(estimator, "network_", None) is None:
        return None
    size_mb = network_nbytes(estimator.network_) / MB
    if store_weights == "auto" and size_mb <= float(max_mb):
        return None
    policy = (
        f"ag.store_weights='auto' and {size_mb:.1f} MB > ag.store_weights_max_mb={max_mb}"
        if store_weights == "auto"
        else "ag.store_weights=False"
    )
    return make_reference(estimator, policy=policy)

