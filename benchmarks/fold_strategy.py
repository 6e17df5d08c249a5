"""Bagged fits of the TFM adapters with sequential vs parallel (ray) fold fitting: wall time, peak memory, scores.

    OMP_NUM_THREADS=1 python -m benchmarks.fold_strategy --datasets credit_approval pima_diabetes image_segment \\
        --models TABICL --repeats 3 --out benchmarks/results/fold_strategy.md

Every run is one fresh Python process (so ray's start-up, imports and memory are counted as a user would pay them):
``TabularPredictor.fit(train, hyperparameters={MODEL: {"n_estimators": N, "ag_args_ensemble":
{"fold_fitting_strategy": S}}}, num_bag_folds=K, num_bag_sets=1, fit_weighted_ensemble=False)`` on 75 % of a
development dataset (rows shuffled by the seed, at most ``--max-rows`` rows), then ``predict_proba`` on the other
25 %. The models keep their other defaults (``refit_folds=True``: the folds only give out-of-fold predictions, one
model refit on all rows is served). Runs alternate between the strategies, so slow drift of background load hits
both alike. Reported per run:

- ``fit s`` / ``predict s``: wall time of ``fit`` (ray start-up included for ``parallel_local``) and of
  ``predict_proba`` on the test rows;
- ``peak PSS MB``: the peak, over the run, of the summed proportional set size (shared pages split between the
  processes that map them, so torch's libraries are not counted once per ray worker) of the process and all its
  descendants (ray's GCS, raylet and fold workers), sampled every ``--sample-every`` seconds;
- ``val``: the bag's out-of-fold score (``score_val``), ``test``: the score on the test rows (AutoGluon's default
  metric: accuracy / root mean squared error, higher is better as AutoGluon reports it).

``--ray-init`` adds one process that only starts ray as AutoGluon does and runs one trivial remote task: the fixed
price of ``parallel_local`` in a fresh process. ``--checkpoint full-random`` uses a randomly initialised network of
the official full size (TabICL: 27.6 M parameters) saved in the official format, to measure what loading a large
checkpoint in every fold worker costs without needing the official file (scores are then meaningless).
``--num-gpus 1`` runs the folds on a GPU (parallel folds then share it, AutoGluon gives each 1/k of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ("credit_approval", "pima_diabetes", "image_segment")
STRATEGIES = ("sequential_local", "parallel_local")
RESULT_PREFIX = "FOLD_STRATEGY_RESULT "


# ------------------------------------------------------------------------------------------------- one run (child)
def _full_random_checkpoint(model: str, task: str, folder: Path) -> str:
    """A randomly initialised official-size network saved in the official tabicl ``.ckpt`` layout (tabicl only),
    else in the project's safetensors format."""
    import torch

    from autogluon_tfm.checkpoints import save_network
    from autogluon_tfm.checkpoints.io import REGRESSION_OVERRIDES, model_architecture
    from autogluon_tfm.nn import ARCHITECTURES

    arch = model_architecture(model.lower())
    config = dict(REGRESSION_OVERRIDES[arch]) if task == "regression" else {}
    torch.manual_seed(0)
    network = ARCHITECTURES[arch](**config)  # the constructor defaults are the official full-size configuration
    if arch == "tabicl":
        path = folder / f"full-random-{task}.ckpt"
        torch.save({"config": dict(network.config), "state_dict": network.state_dict()}, path)
        return str(path)
    return str(save_network(network, folder / f"full-random-{arch}-{task}.safetensors"))


def run_once(spec: dict[str, Any]) -> dict[str, Any]:
    """One bagged fit + prediction as described in the module docstring; returns the measurements."""
    import numpy as np
    from autogluon.tabular import TabularPredictor

    import autogluon_tfm  # noqa: F401  (registers TABICL / TABPFNV2 / MITRA)
    from benchmarks.datasets import load_dataset

    X, y, task = load_dataset(spec["dataset"], seed=spec["seed"])
    n = min(len(X), spec["max_rows"])
    frame = X.iloc[:n].copy()
    frame["__label__"] = np.asarray(y)[:n]
    n_train = int(round(0.75 * n))
    train, test = frame.iloc[:n_train], frame.iloc[n_train:].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as folder:
        params: dict[str, Any] = {
            "n_estimators": spec["n_estimators"],
            "ag_args_ensemble": {"fold_fitting_strategy": spec["strategy"]},
        }
        if spec["checkpoint"] == "full-random":
            params["checkpoint"] = _full_random_checkpoint(
                spec["model"], "regression" if task == "regression" else "classification", Path(folder)
            )
        elif spec["checkpoint"] != "default":
            params["checkpoint"] = spec["checkpoint"]
        predictor = TabularPredictor(label="__label__", path=str(Path(folder) / "ag"), verbosity=spec["verbosity"])
        start = time.perf_counter()
        predictor.fit(
            train,
            hyperparameters={spec["model"]: params},
            num_bag_folds=spec["folds"],
            num_bag_sets=1,
            fit_weighted_ensemble=False,
            num_cpus=spec["num_cpus"],
            num_gpus=spec["num_gpus"],
        )
        fit_s = time.perf_counter() - start
        names = predictor.model_names()
        if len(names) != 1:
            raise RuntimeError(f"expected one bagged model, got {names} (did the fit fail? rerun with --verbosity 2)")
        start = time.perf_counter()
        X_test = test.drop(columns="__label__")
        predictor.predict(X_test) if task == "regression" else predictor.predict_proba(X_test)
        predict_s = time.perf_counter() - start
        leaderboard = predictor.leaderboard(test, silent=True)
        ray_used = "ray" in sys.modules and bool(sys.modules["ray"].is_initialized())
    return {
        **spec,
        "task": task,
        "n_train": n_train,
        "n_test": len(test),
        "n_features": X.shape[1],
        "fit_s": fit_s,
        "predict_s": predict_s,
        "score_val": float(leaderboard["score_val"].iloc[0]),
        "score_test": float(leaderboard["score_test"].iloc[0]),
        "metric": predictor.eval_metric.name,
        "ray_used": ray_used,
        "ok": True,
    }


def ray_init_once(num_cpus: int) -> dict[str, Any]:
    """Start ray as AutoGluon's ParallelLocalFoldFittingStrategy does, run one trivial task, stop it."""
    import logging

    start = time.perf_counter()
    import ray

    import_s = time.perf_counter() - start
    start = time.perf_counter()
    ray.init(log_to_driver=False, logging_level=logging.ERROR, num_cpus=num_cpus)
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    ray.get(ray.remote(lambda: 1).remote())
    first_task_s = time.perf_counter() - start
    start = time.perf_counter()
    ray.shutdown()
    return {"ray_import_s": import_s, "ray_init_s": init_s, "first_task_s": first_task_s,
            "shutdown_s": time.perf_counter() - start, "ok": True}


# ------------------------------------------------------------------------------------------ orchestration (parent)
def _tree_pss_bytes(root: Any) -> int:
    import psutil

    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        try:
            info = process.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            continue  # a worker that just exited
    return total


def measure(child_args: list[str], sample_every: float, timeout: float) -> dict[str, Any]:
    """Run ``python -m benchmarks.fold_strategy <child_args>`` and sample its process tree's memory meanwhile."""
    import psutil

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fold_strategy", *child_args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not stop.is_set():
            peak = max(peak, _tree_pss_bytes(root))
            stop.wait(sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        stderr += f"\n(timed out after {timeout:.0f} s)"
    stop.set()
    sampler.join()
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        return {"ok": False, "error": stderr.strip().splitlines()[-1] if stderr.strip() else f"rc={process.returncode}",
                "stderr": stderr[-4000:], "peak_pss_mb": peak / 1024**2}
    return {**json.loads(lines[-1][len(RESULT_PREFIX):]), "peak_pss_mb": peak / 1024**2}


def _fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(results: list[dict[str, Any]], ray_init: list[dict[str, Any]], args: argparse.Namespace,
           environment: dict[str, Any]) -> str:
    lines = [
        "# Fold fitting strategy: sequential_local vs parallel_local (ray)",
        "",
        f"Produced by `python -m benchmarks.fold_strategy {' '.join(args.argv)}` (method in the script's docstring).",
        "",
        f"Machine: {environment['cpus']} logical CPUs ({environment['physical_cpus']} physical), "
        f"{environment['memory_gb']:.0f} GB RAM, load average {environment['load_before']} before the runs and "
        f"{environment['load_after']} after; {environment['gpu']}; torch {environment['torch']}, "
        f"autogluon {environment['autogluon']}, ray {environment['ray']}; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '<unset>')}.",
        f"Setting: {args.folds}-fold bagging, num_cpus={args.num_cpus}, num_gpus={args.num_gpus}, "
        f"n_estimators={args.n_estimators}, checkpoint={args.checkpoint!r}, at most {args.max_rows} rows "
        f"(75 % train / 25 % test), {args.repeats} repeat(s) per cell; cells show the median (min-max) over repeats.",
        "",
        "| dataset | model | rows x feats | strategy | fit s | predict s | peak PSS MB | val | test | ok |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault((result["dataset"], result["model"], result["strategy"]), []).append(result)
    for (dataset, model, strategy), runs in groups.items():
        good = [r for r in runs if r.get("ok")]
        shape = f"{good[0]['n_train']} x {good[0]['n_features']}" if good else "-"
        lines.append(
            f"| {dataset} | {model} | {shape} | {strategy} | {_fmt([r['fit_s'] for r in good])} | "
            f"{_fmt([r['predict_s'] for r in good], 2)} | {_fmt([r['peak_pss_mb'] for r in good], 0)} | "
            f"{_fmt([r['score_val'] for r in good], 4)} | {_fmt([r['score_test'] for r in good], 4)} | "
            f"{len(good)}/{len(runs)} |"
        )
    failures = [r for r in results if not r.get("ok")]
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['dataset']} / {r['model']} / {r['strategy']}: {r.get('error')}" for r in failures]
    # Per dataset and model: parallel / sequential ratio of the median fit times.
    lines += ["", "Fit time of parallel_local relative to sequential_local (median over repeats):", ""]
    for dataset, model in dict.fromkeys((d, m) for d, m, _ in groups):
        seq = [r["fit_s"] for r in groups.get((dataset, model, "sequential_local"), []) if r.get("ok")]
        par = [r["fit_s"] for r in groups.get((dataset, model, "parallel_local"), []) if r.get("ok")]
        if seq and par:
            lines.append(f"- {dataset} / {model}: {statistics.median(par) / statistics.median(seq):.2f}x")
    if ray_init:
        good = [r for r in ray_init if r.get("ok")]
        lines += [
            "",
            f"Ray's fixed price in a fresh process ({len(good)} run(s), median): import "
            f"{_fmt([r['ray_import_s'] for r in good], 2)} s, `ray.init` {_fmt([r['ray_init_s'] for r in good], 2)} s, "
            f"first remote task {_fmt([r['first_task_s'] for r in good], 2)} s, shutdown "
            f"{_fmt([r['shutdown_s'] for r in good], 2)} s; peak PSS of ray's processes "
            f"{_fmt([r['peak_pss_mb'] for r in good], 0)} MB.",
        ]
    return "\n".join(lines) + "\n"


def _environment() -> dict[str, Any]:
    import autogluon.tabular
    import psutil
    import torch
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return {
        "cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gb": psutil.virtual_memory().total / 1e9,
        "gpu": gpu,
        "torch": torch.__version__,
        "autogluon": autogluon.tabular.__version__,
        "ray": ray_version,
        "load_before": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    parser.add_argument("--models", nargs="+", default=["TABICL"], help="AutoGluon keys, e.g. TABICL TABPFNV2")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--max-rows", type=int, default=2000)
    parser.add_argument("--n-estimators", type=int, default=8)
    parser.add_argument("--checkpoint", default="default", help='"default", "full-random" or a path')
    parser.add_argument("--num-cpus", default="auto", help='"auto" or an int')
    parser.add_argument("--num-gpus", default="0", help='"auto" or a number (0 = CPU only)')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray-init", type=int, default=1, help="processes that measure ray start-up alone (0: none)")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--verbosity", type=int, default=0, help="AutoGluon verbosity of the runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/fold_strategy.md")
    parser.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_ray-init", dest="_ray_init_cpus", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _number(value: str) -> int | float | str:
    if value == "auto":
        return value
    return float(value) if "." in value else int(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._run is not None:  # child: one run, result on stdout
        print(RESULT_PREFIX + json.dumps(run_once(json.loads(args._run))), flush=True)
        return 0
    if args._ray_init_cpus is not None:
        print(RESULT_PREFIX + json.dumps(ray_init_once(args._ray_init_cpus)), flush=True)
        return 0
    environment = _environment()
    num_cpus = _number(args.num_cpus)
    results: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for dataset in args.datasets:
            for model in args.models:
                # Alternate the order per repeat so that neither strategy always runs first.
                strategies = args.strategies if repeat % 2 == 0 else list(reversed(args.strategies))
                for strategy in strategies:
                    spec = {
                        "dataset": dataset, "model": model, "strategy": strategy, "repeat": repeat,
                        "seed": args.seed, "folds": args.folds, "max_rows": args.max_rows,
                        "n_estimators": args.n_estimators, "checkpoint": args.checkpoint, "num_cpus": num_cpus,
                        "num_gpus": _number(args.num_gpus), "verbosity": args.verbosity,
                    }
                    result = {**spec, **measure(["--_run", json.dumps(spec)], args.sample_every, args.timeout)}
                    results.append(result)
                    status = (
                        f"fit {result['fit_s']:.1f} s, predict {result['predict_s']:.2f} s, "
                        f"peak {result['peak_pss_mb']:.0f} MB, val {result['score_val']:.4f}"
                        if result.get("ok") else f"FAILED: {result.get('error')}"
                    )
                    print(f"[{repeat}] {dataset} {model} {strategy}: {status}", flush=True)
    ray_cpus = num_cpus if isinstance(num_cpus, int) else os.cpu_count() or 1
    ray_init = [measure(["--_ray-init", str(ray_cpus)], args.sample_every, 300) for _ in range(args.ray_init)]
    for result in ray_init:
        print("ray start-up:", {k: v for k, v in result.items() if k != "stderr"}, flush=True)
    environment["load_after"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    text = report(results, ray_init, args, environment)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": environment, "results": results, "ray_init": ray_init},
                                        indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
