"""Speed and memory against the official implementations, on the same random full-size official-format checkpoint.

    OMP_NUM_THREADS=2 python -m benchmarks.speed --out benchmarks/results/speed.md --json benchmarks/results/speed.json

Each architecture gets one random checkpoint in its official format with the official full-size configuration
(tabicl v2 classifier ``.ckpt``; TabPFN v2 classifier ``.ckpt`` built by tabpfn's own v2 architecture code;
Mitra directory with ``config.json`` + ``model.safetensors``). Every (model, implementation, size) point runs in a
fresh subprocess that loads the checkpoint, fits on ``rows`` synthetic training rows (``features`` standard-normal features, 3 classes
from a random linear rule), predicts ``--n-test`` rows (timed: first predict), then another ``--n-test`` new rows
(timed: repeated predict; ours keeps a train cache between the two) and reports the process's peak RSS. Both
implementations use ``n_estimators`` members and the same ``random_state``; ours runs at its default precision
(``precision="auto"``) unless ``--precision`` says otherwise. Agreement columns compare the first predict's
probabilities with the official implementation's on the same point.

Official implementations: ``tabicl.TabICLClassifier`` (tabicl 2.1.1, CPU, its defaults), ``tabpfn.TabPFNClassifier``
(tabpfn 8.x with the v2 checkpoint) and AutoGluon's ``MitraClassifier`` (finetuning off). A point whose official
package is missing or fails records the error instead of numbers.

Small runs: ``--models tabicl --sizes 1000x10 --n-test 250``. ``--ours-only-sizes 100000x50`` adds points that run
our implementation alone (the official ones take hours there on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODELS = ("tabicl", "tabpfnv2", "mitra")
DEFAULT_SIZES = ("1000x10", "4000x50", "10000x100")
GB = 1024**3


# ------------------------------------------------------------------------------------------------ checkpoints
def _is_norm(name: str) -> bool:
    return "norm" in name or "ln" in name


def randomize_weights(
    module,
    seed: int,
    scale: float = 0.1,
    other_scale: float = 0.1,
    is_norm: Callable[[str], bool] = _is_norm,
    not_matrices: tuple[str, ...] = (),
) -> None:
    """Random weights of sensible scale: the official inits zero residual branches (every row would look alike).

    Matrices get ``noise / sqrt(fan_in)`` (except parameters whose name contains one of ``not_matrices``), norm
    parameters (``is_norm(name)``) ``1 + scale * noise`` (weights) or ``scale * noise`` (biases), everything else
    ``other_scale * noise``; RoPE frequencies are kept. Also used by ``tests/test_parity_tabicl.py``.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rope.freqs"):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2 and not any(part in name for part in not_matrices):
                p.copy_(noise / p.shape[-1] ** 0.5)
            elif is_norm(name):
                p.copy_(1.0 + scale * noise if name.endswith("weight") else scale * noise)
            else:
                p.copy_(other_scale * noise)


def make_checkpoint(model: str, directory: Path, seed: int = 0) -> Path:
    """A random full-size checkpoint of ``model`` in its official format under ``directory``."""
    import torch

    torch.manual_seed(seed)
    if model == "tabicl":
        from tabicl._model.tabicl import TabICL

        config = dict(  # tabicl-classifier-v2-20260212.ckpt (ARCHITECTURES.md 1.1)
            max_classes=10, embed_dim=128, col_num_blocks=3, col_nhead=8, col_num_inds=128, col_affine=False,
            col_feature_group="same", col_feature_group_size=3, col_target_aware=True,
            col_ssmax="qassmax-mlp-elementwise", row_num_blocks=3, row_nhead=8, row_num_cls=4, row_rope_base=100000,
            row_rope_interleaved=False, icl_num_blocks=12, icl_nhead=8, icl_ssmax="qassmax-mlp-elementwise",
            ff_factor=2, dropout=0.0, activation="gelu", norm_first=True, bias_free_ln=False,
        )
        net = TabICL(**config)
        randomize_weights(net, seed)
        path = directory / "tabicl-v2-random.ckpt"
        torch.save({"config": config, "state_dict": net.state_dict()}, path)
        return path
    if model == "tabpfnv2":
        from tabpfn.architectures import tabpfn_v2

        # The published v2 classifier sizes (ARCHITECTURES.md, TabPFN v2), built by tabpfn's own architecture code and
        # saved as {"state_dict", "config"} without "architecture_name": tabpfn then loads it as a v2 file with the
        # v2 inference defaults, and our loader reads the same file (single-file key layout).
        config = {
            "emsize": 192, "nhead": 6, "nlayers": 12, "nhid_factor": 4, "features_per_group": 2,
            "max_num_classes": 10, "num_buckets": 5000, "seed": 0, "feature_positional_embedding": "subspace",
            "multiquery_item_attention_for_test_set": True, "remove_duplicate_features": False,
            "max_num_features": 500, "dropout": 0.0, "recompute_layer": True,
        }
        parsed, _ = tabpfn_v2.parse_config(config)
        net = tabpfn_v2.get_architecture(parsed)
        randomize_weights(net, seed)
        path = directory / "tabpfn-v2-random.ckpt"
        torch.save({"config": config, "state_dict": net.state_dict()}, path)
        return path
    if model == "mitra":
        from autogluon_tfm.checkpoints.mitra import save_mitra_dir
        from autogluon_tfm.nn import Mitra

        net = Mitra()
        randomize_weights(net, seed)
        return save_mitra_dir(net, directory / "mitra-random")
    raise ValueError(f"Unknown model {model!r}; expected one of {MODELS}")


# ------------------------------------------------------------------------------------------------------ worker
def _table(n_rows: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    score = X @ rng.normal(size=n_features) / np.sqrt(n_features) + 0.3 * rng.normal(size=n_rows)
    y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    return X, y


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _official_estimator(model: str, checkpoint: str, n_estimators: int, seed: int):
    if model == "tabicl":
        from tabicl import TabICLClassifier

        return TabICLClassifier(model_path=checkpoint, device="cpu", n_estimators=n_estimators, random_state=seed)
    if model == "tabpfnv2":
        # tabpfn refuses > 1,000 training rows on CPU unless told otherwise (read when tabpfn is first imported).
        os.environ.setdefault("TABPFN_ALLOW_CPU_LARGE_DATASET", "1")
        from tabpfn import TabPFNClassifier

        return TabPFNClassifier(model_path=checkpoint, device="cpu", n_estimators=n_estimators, random_state=seed)
    from autogluon.tabular.models.mitra.sklearn_interface import MitraClassifier

    # hf_model: a local directory with config.json + model.safetensors (Tab2D.save_pretrained's layout).
    return MitraClassifier(hf_model=checkpoint, fine_tune=False, n_estimators=n_estimators, device="cpu", seed=seed,
                           verbose=False)


def worker(point: dict) -> dict:
    """Fit + predict + repeated predict of one point in this (fresh) process."""
    import torch

    torch.set_num_threads(point["threads"])
    X, y = _table(point["rows"] + 2 * point["n_test"], point["features"], seed=point["seed"])
    n, m = point["rows"], point["n_test"]
    if point["impl"] == "official":
        estimator = _official_estimator(point["model"], point["checkpoint"], point["n_estimators"], point["seed"])
    else:
        from autogluon_tfm.inference import TFMClassifier

        estimator = TFMClassifier(
            model=point["model"], checkpoint=point["checkpoint"], n_estimators=point["n_estimators"],
            device="cpu", precision=point["precision"], random_state=point["seed"],
        )
    result = {"rss_start_gb": _peak_rss_bytes() / GB}
    start = time.perf_counter()
    estimator.fit(X[:n], y[:n])
    result["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    proba = estimator.predict_proba(X[n : n + m])
    result["predict_s"] = time.perf_counter() - start
    if point["repeat"]:
        start = time.perf_counter()
        estimator.predict_proba(X[n + m :])
        result["repeat_predict_s"] = time.perf_counter() - start
    result["peak_rss_gb"] = _peak_rss_bytes() / GB
    result["precision"] = getattr(estimator, "precision_", "official default")
    np.save(point["proba_path"], proba)
    return result


def measure(point: dict, timeout: float) -> dict:
    """Run ``worker(point)`` in a subprocess (clean peak RSS); errors are recorded, not raised."""
    command = [sys.executable, "-m", "benchmarks.speed", "--worker", json.dumps(point)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**point, "error": f"timeout after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**point, "error": f"exit {done.returncode}: {tail[0][:200]}"}
    return {**point, **json.loads(lines[-1])}


# ------------------------------------------------------------------------------------------------------ report
def _agreement(results: list[dict]) -> None:
    """Adds argmax agreement and probability differences of ours against the official run of the same point."""
    official = {(r["model"], r["rows"], r["features"]): r for r in results if r["impl"] == "official"}
    for r in results:
        ref = official.get((r["model"], r["rows"], r["features"]))
        if r["impl"] != "ours" or ref is None or "error" in r or "error" in ref:
            continue
        ours, theirs = np.load(r["proba_path"]), np.load(ref["proba_path"])
        diff = np.abs(ours - theirs)
        r["argmax_agreement"] = float((ours.argmax(1) == theirs.argmax(1)).mean())
        r["mean_abs_diff"], r["max_abs_diff"] = float(diff.mean()), float(diff.max())
        r["speedup"] = (ref["fit_s"] + ref["predict_s"]) / (r["fit_s"] + r["predict_s"])


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_report(path: Path, results: list[dict], args: argparse.Namespace) -> None:
    header = (
        "| model | impl | rows x features | fit s | predict s | repeat predict s | fit+predict speedup | peak RSS GB "
        "| argmax agree | mean abs diff | max abs diff | precision |"
    )
    lines = [
        "# Speed and memory: ours vs the official implementations (same checkpoint)",
        "",
        f"Generated by `{args.command_line}` on {platform.node()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads={args.threads}); {args.n_estimators} members, {args.n_test} test "
        f"rows per predict, random full-size official-format checkpoints (see the module docstring).",
        "",
        "`repeat predict` = a second predict of new rows after the first (ours keeps a train-side cache); "
        "`speedup` = official (fit + predict) / ours (fit + predict); agreement = ours vs official on the first "
        "predict's rows.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in results:
        size = f"{r['rows']} x {r['features']}"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['impl']} | {size} | error: {r['error']} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['model']} | {r['impl']} | {size} | {_fmt(r['fit_s'])} | {_fmt(r['predict_s'])} | "
            f"{_fmt(r.get('repeat_predict_s'))} | {_fmt(r.get('speedup'))} | {_fmt(r['peak_rss_gb'])} | "
            f"{_fmt(r.get('argmax_agreement'), 3)} | {_fmt(r.get('mean_abs_diff'), 5)} | "
            f"{_fmt(r.get('max_abs_diff'), 5)} | {r.get('precision', '-')} |"
        )
    if args.notes:
        lines += ["", *args.notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------------------------- main
def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--impls", default="official,ours", help="official, ours or both")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="rows x features, comma-separated")
    parser.add_argument("--ours-only-sizes", default="100000x50", help="sizes run with our implementation alone")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-estimators", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="our precision: auto, fp32, bf16")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per point")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.md"))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--note", dest="notes", action="append", default=[], help="a line appended to the report")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command_line = "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    impls = [impl for impl in ("official", "ours") if impl in args.impls.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            checkpoint = str(make_checkpoint(model, Path(tmp)))
            plan = [(size, impl) for size in _sizes(args.sizes) for impl in impls]
            plan += [(size, "ours") for size in _sizes(args.ours_only_sizes) if "ours" in impls]
            for (rows, features), impl in plan:
                point = dict(
                    model=model, impl=impl, rows=rows, features=features, n_test=args.n_test,
                    n_estimators=args.n_estimators, precision=args.precision, threads=args.threads, seed=args.seed,
                    checkpoint=checkpoint, repeat=impl == "ours",
                    proba_path=str(Path(tmp) / f"{model}-{impl}-{rows}x{features}.npy"),
                )
                result = measure(point, args.timeout)
                print(json.dumps({k: v for k, v in result.items() if k not in ("checkpoint", "proba_path")}),
                      flush=True)
                results.append(result)
        _agreement(results)
    for r in results:
        r.pop("proba_path", None)
        r.pop("checkpoint", None)
    write_report(args.out, results, args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
