"""Peak memory of one in-context fit + prediction, against the AutoGluon adapters' memory estimates.

    OMP_NUM_THREADS=1 python benchmarks/memory.py --json /tmp/memory.json --out benchmarks/results/memory.md

Every grid point runs in a fresh subprocess: imports (torch, autogluon_tfm, AutoGluon), build or load the network,
then ``TFMClassifier(model=arch, checkpoint=network, n_estimators=8).fit(X, y).predict_proba(X_test)`` on a random
binary table (``--test-rows`` test rows). Reported per point:

- ``peak``: the process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) at the end: what an AutoGluon
  worker process would need (the estimate is compared with this);
- ``base``: the RSS right after imports + network load; ``fit+predict`` = ``peak - base``, the working memory of
  the fit and the prediction alone;
- on a CUDA machine (``--device cuda``), ``torch.cuda.max_memory_allocated`` of fit + prediction (network
  included), compared with ``_estimate_gpu_memory_usage_static``.

Networks: ``full`` = the official full-size configuration of each architecture (the default constructor arguments of
``autogluon_tfm.nn.TabICL`` / ``TabPFNv2`` / ``Mitra``) with random weights, passed as ``checkpoint=`` (memory does
not depend on the weight values); ``1-block`` = the same widths with one block per transformer stack, a stand-in
for points where the full network takes minutes on CPU (inference frees each block's activations before the next,
so the working memory is close to the full network's; its ``peak`` is reported plus the weights it lacks);
``shipped`` = ``checkpoint="default"`` (the project's small shipped weights; only TabICL has them so far).
Estimates come from ``TabICLModel`` / ``TabPFNv2Model`` / ``MitraModel._estimate_memory_usage_static`` with the
test rows as ``X_val`` and ``hyperparameters={"n_estimators": 8}``; they always assume the full-size network.

The whole grid takes ~8 minutes on one CPU thread. A point whose estimate exceeds ``--memory-share`` of the memory
available at that moment is skipped (other jobs may share the machine); ``--points`` re-measures chosen points into
an existing ``--json`` file, and ``--from-json`` re-renders the report without measuring (e.g. after recalibrating
the estimate's constants).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MB = 1024**2

ARCH_CLASSES = {"tabicl": "TabICL", "tabpfnv2": "TabPFNv2", "mitra": "Mitra"}
NETWORKS = ("full", "1-block", "shipped")
AG_MODELS = {"tabicl": "TabICLModel", "tabpfnv2": "TabPFNv2Model", "mitra": "MitraModel"}

# (arch, network, rows, features). "full" = official configuration (random weights); "1-block" = official widths
# with one block per transformer stack, for points whose full-depth run takes minutes on CPU (see the docstring);
# "shipped" = checkpoint="default". Points whose estimate exceeds half the available memory are skipped.
DEFAULT_GRID: list[tuple[str, str, int, int]] = [
    *[("tabicl", "full", rows, features) for rows in (500, 2000) for features in (10, 50)],
    ("tabicl", "1-block", 500, 50),  # depth check: the same point as the full network above
    ("tabicl", "1-block", 8000, 10),
    ("tabicl", "1-block", 8000, 50),
    ("tabpfnv2", "full", 500, 10),  # depth check: the same point as the first one-block point below
    *[("tabpfnv2", "1-block", rows, features) for rows in (500, 2000) for features in (10, 50)],
    ("mitra", "1-block", 500, 10),
    ("mitra", "1-block", 500, 25),
    ("mitra", "1-block", 500, 50),
    ("mitra", "1-block", 2000, 10),
    ("mitra", "1-block", 2000, 50),
    ("tabicl", "shipped", 500, 10),
    ("tabicl", "shipped", 2000, 50),
]


def _current_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc``; falls back to the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


# Constructor arguments that keep an official configuration's widths but leave one block per transformer stack.
ONE_BLOCK = {
    "tabicl": {"col_num_blocks": 1, "row_num_blocks": 1, "icl_num_blocks": 1},
    "tabpfnv2": {"num_blocks": 1},
    "mitra": {"n_layers": 1},
}


def _network(arch: str, kind: str):
    """The network to pass as ``checkpoint=``: ``"full"`` = the official configuration with random weights,
    ``"1-block"`` = the same widths with one block per transformer stack, ``"shipped"`` = ``"default"``."""
    if kind == "shipped":
        return "default"
    import torch

    import autogluon_tfm.nn as nn_module

    torch.manual_seed(0)
    return getattr(nn_module, ARCH_CLASSES[arch])(**(ONE_BLOCK[arch] if kind == "1-block" else {})).eval()


def _network_bytes(network) -> int:
    return sum(t.numel() * t.element_size() for t in network.state_dict().values())


def _table(n_rows: int, n_features: int, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, n_features)).astype(np.float64)
    y = (X[:, 0] + 0.5 * rng.standard_normal(n_rows) > 0).astype(int)
    return pd.DataFrame(X, columns=[f"f{j}" for j in range(n_features)]), y


def estimate_bytes(arch: str, n_rows: int, n_features: int, n_test: int, n_estimators: int, gpu: bool = False) -> int:
    """The AutoGluon adapter's static estimate (RAM, or VRAM with ``gpu=True``) for a float table of this shape,
    with the ``n_test`` prediction rows passed as ``X_val`` (as AutoGluon's per-fit check does)."""
    import autogluon_tfm.autogluon as ag_models

    model_cls = getattr(ag_models, AG_MODELS[arch])
    X, _ = _table(n_rows + n_test, n_features, seed=0)
    kwargs = dict(X=X.iloc[:n_rows], X_val=X.iloc[n_rows:], hyperparameters={"n_estimators": n_estimators})
    if gpu:
        return int(model_cls._estimate_gpu_memory_usage_static(**kwargs))
    return int(model_cls._estimate_memory_usage_static(**kwargs))


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def worker(arch: str, kind: str, n_rows: int, n_features: int, n_test: int, n_estimators: int, device: str) -> dict:
    """One measurement in this (fresh) process; returns the result as a dict."""
    import torch

    import autogluon_tfm  # noqa: F401 - imports what an AutoGluon worker has loaded (registers the models)
    from autogluon_tfm import TFMClassifier

    torch.set_num_threads(max(int(os.environ.get("OMP_NUM_THREADS", "1")), 1))
    network = _network(arch, kind)
    if device == "cuda" and not isinstance(network, str):
        network = network.to("cuda")
    X, y = _table(n_rows + n_test, n_features, seed=1)
    X_train, y_train, X_test = X.iloc[:n_rows], y[:n_rows], X.iloc[n_rows:]
    base_rss = _current_rss_bytes()
    base_peak = _peak_rss_bytes()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    estimator = TFMClassifier(model=arch, checkpoint=network, n_estimators=n_estimators, device=device)
    proba = estimator.fit(X_train, y_train).predict_proba(X_test)
    seconds = time.perf_counter() - start
    assert proba.shape == (n_test, 2)
    result = {
        "arch": arch,
        "network": kind,
        "rows": n_rows,
        "features": n_features,
        "test_rows": n_test,
        "n_estimators": n_estimators,
        "device": device,
        "seconds": seconds,
        "base_rss": base_rss,
        "base_peak": base_peak,
        "peak_rss": _peak_rss_bytes(),
        "network_bytes": _network_bytes(estimator.network_),
        # What the official full-depth network adds on top of this one (0 unless kind == "1-block").
        "missing_network_bytes": _network_bytes(_network(arch, "full")) - _network_bytes(estimator.network_)
        if kind == "1-block"
        else 0,
    }
    if cuda:
        torch.cuda.synchronize()
        result["cuda_base"] = int(cuda_base)
        result["cuda_peak"] = int(torch.cuda.max_memory_allocated())
    return result


def measure(arch: str, kind: str, n_rows: int, n_features: int, n_test: int, n_estimators: int, device: str) -> dict:
    """Run :func:`worker` in a fresh Python process (so the peak RSS is this point's alone)."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        json.dumps([arch, kind, n_rows, n_features, n_test, n_estimators, device]),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{arch}/{kind} {n_rows}x{n_features} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def full_depth_peak(result: dict) -> int:
    """Peak RSS of the point, plus the weights a "1-block" stand-in lacks (its working memory is that of the full
    network: inference frees each block's activations before the next block)."""
    return result["peak_rss"] + result.get("missing_network_bytes", 0)


def table_rows(results: list[dict]) -> list[str]:
    cuda = any("cuda_peak" in result for result in results)
    header = (
        "| arch | network | rows | features | s | base MB | fit+predict MB | peak MB | estimate MB | estimate / peak |"
    )
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if cuda:
        header += " GPU peak MB | GPU estimate MB | GPU estimate / peak |"
        rule += "---:|---:|---:|"
    lines = [header, rule]
    for r in results:
        if r.get("skipped"):
            lines.append(f"| {r['arch']} | {r['network']} | {r['rows']} | {r['features']} | skipped: {r['skipped']} |")
            continue
        args = (r["arch"], r["rows"], r["features"], r["test_rows"], r["n_estimators"])
        estimate, peak = estimate_bytes(*args), full_depth_peak(r)
        star = "*" if r.get("missing_network_bytes") else ""
        line = (
            f"| {r['arch']} | {r['network']} | {r['rows']} | {r['features']} | {r['seconds']:.1f} | "
            f"{r['base_rss'] / MB:.0f} | {(r['peak_rss'] - r['base_rss']) / MB:.0f} | {peak / MB:.0f}{star} | "
            f"{estimate / MB:.0f} | {estimate / peak:.2f} |"
        )
        if cuda:
            if "cuda_peak" in r:
                gpu_estimate = estimate_bytes(*args, gpu=True)
                gpu_peak = r["cuda_peak"] + r.get("missing_network_bytes", 0)
                line += f" {gpu_peak / MB:.0f} | {gpu_estimate / MB:.0f} | {gpu_estimate / gpu_peak:.2f} |"
            else:
                line += " | | |"
        lines.append(line)
    return lines


def constants_rows() -> list[str]:
    """The memory-model constants of each AutoGluon adapter (what the estimate is made of)."""
    import autogluon_tfm.autogluon as ag_models
    from autogluon_tfm.autogluon.base import TFMBaseModel

    lines = [
        "| model | network MB | embedding dim | vectors / token | features / token | extra tokens / row | "
        "bytes / token |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, name in AG_MODELS.items():
        model_cls = getattr(ag_models, name)
        per_token = model_cls.activation_vectors_per_token * model_cls.embedding_dim_estimate * 4
        lines.append(
            f"| {name} ({arch}) | {model_cls.network_bytes_estimate / MB:.0f} | {model_cls.embedding_dim_estimate} | "
            f"{model_cls.activation_vectors_per_token:g} | {model_cls.features_per_token} | "
            f"{model_cls.extra_tokens_per_row} | {per_token:,.0f} |"
        )
    lines += [
        "",
        f"Shared: overhead {TFMBaseModel._MEMORY_OVERHEAD_BYTES / MB:.0f} MB, safety factor "
        f"{TFMBaseModel._MEMORY_SAFETY_FACTOR:g} on activations, CUDA context (VRAM estimate) "
        f"{TFMBaseModel._CUDA_CONTEXT_BYTES / MB:.0f} MB, test rows without `X_val` = "
        f"{TFMBaseModel._ESTIMATE_TEST_ROW_SHARE:g} x training rows.",
    ]
    return lines


def _sorted(results: list[dict]) -> list[dict]:
    order = {point: index for index, point in enumerate(DEFAULT_GRID)}
    return sorted(results, key=lambda result: order.get(_key(result), len(order)))


def write_report(path: Path, results: list[dict], args: argparse.Namespace) -> None:
    import torch

    lines = [
        "# Memory: peak RSS of one fit + predict_proba vs the AutoGluon memory estimate",
        "",
        "Produced by `benchmarks/memory.py` (method in its docstring): one fresh process per point, "
        f"`TFMClassifier(model=arch, checkpoint=network, n_estimators={args.n_estimators})` fit on `rows` x "
        f"`features` random floats (binary target), `predict_proba` on {args.test_rows} test rows; device "
        f"{args.device}, torch {torch.__version__}, {platform.machine()}, "
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`.",
        "",
        "- `base`: RSS after the imports (torch, autogluon_tfm, AutoGluon) and building / loading the network;",
        "- `fit+predict`: peak RSS minus `base` (the working memory of the fit and the prediction);",
        "- `peak`: peak RSS of the process (`ru_maxrss`): what the estimate has to cover. `*`: a `1-block` point, "
        "plus the weights of the full-depth network it stands in for;",
        "- `estimate`: `<Model>._estimate_memory_usage_static(X=train, X_val=test, hyperparameters={'n_estimators': "
        f"{args.n_estimators}}})`; it always assumes the official full-size network.",
        "",
        "Networks: `full` = the official full-size configuration with random weights; `1-block` = the same widths "
        "with one block per transformer stack, standing in for the full network where that takes minutes per point "
        "on CPU (inference frees each block's activations before the next block, so the working memory is nearly "
        'that of the full network; see the depth checks below); `shipped` = `checkpoint="default"` (the small '
        "shipped TabICL weights).",
        "",
        *table_rows(_sorted(results)),
        "",
        "## Memory model",
        "",
        "`RAM = overhead + network + 4 x DataFrame + 1.25 x activations (+ finetuning)`, with "
        "`activations = members per call x (train + test rows) x tokens per row x bytes per token`, "
        "`members per call = min(batch_size, ceil(n_estimators / len(norm_methods)))` (4 by default), "
        "`tokens per row = ceil(features / features per token) + extra tokens`, "
        "`bytes per token = vectors per token x embedding dim x 4`. "
        "`VRAM = CUDA context + network + 1.25 x activations (+ finetuning)`; a GPU fit leaves the activations out "
        "of the RAM estimate. Finetuning adds 5 network copies (trained copy, gradients, two AdamW moments, best "
        "weights) and one 1,024-row step whose activations are kept for the backward pass in every per-token block "
        "(not measured yet).",
        "",
        *constants_rows(),
        "",
        "## Notes",
        "",
        "- Fixed costs: the process baseline is ~390-420 MB before the network (imports); the first fit adds "
        "~150-300 MB whatever the data (lazy imports, thread pools, allocator caches). Both are in the overhead.",
        "- Vectors per token, from `fit+predict` minus ~250 MB of fixed cost divided by the tokens of one call: "
        "TabICL 11-13 per cell (full network), TabPFNv2 8-10.5, Mitra 11-12.7 (growing slightly with size); the "
        "constants round these up.",
        "- Depth checks (same point, full vs 1-block `fit+predict`): TabPFNv2 500 x 10 and Mitra 500 x 10 agree "
        "within 5% (Mitra: 1,288 vs 1,228 MB, measured once outside the grid: the full-depth Mitra point alone "
        "takes ~5 minutes on this CPU); TabICL's one-block stand-in needs ~17% less than the full network "
        "(500 x 50 in the table), which the safety factor covers at its 8,000-row point.",
        "- Repeated runs vary by up to ~10% (other jobs shared the machine; e.g. TabICL full 2000 x 50 peaked at "
        "4,187 MB in an earlier run, 500 x 10 at 1,078 MB).",
        "- Skipped points: the grid skips a point whose estimate exceeds 60% of the memory available at that "
        "moment (other jobs were running); skipped points can be re-measured later with "
        "`--points ARCH:NETWORK:ROWS:FEATURES --json FILE`.",
        "- `shipped`: the estimate assumes the official full-size network, so for the small shipped TabICL weights "
        "it is 2.5-4x the measured peak.",
        "- GPU: on a CUDA machine `--device cuda` adds `torch.cuda.max_memory_allocated` and the VRAM estimate "
        "(not run yet: no GPU here).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _parse_point(text: str) -> tuple[str, str, str, str]:
    parts = text.split(":")
    if len(parts) != 4 or parts[0] not in ARCH_CLASSES or parts[1] not in NETWORKS:
        raise SystemExit(f"--points takes ARCH:NETWORK:ROWS:FEATURES, got {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def _key(result: dict) -> tuple:
    return result["arch"], result["network"], result["rows"], result["features"]


def run_grid(args: argparse.Namespace) -> list[dict]:
    grid = DEFAULT_GRID
    results = []
    if args.points:
        grid = [(arch, kind, int(rows), int(features)) for arch, kind, rows, features in map(_parse_point, args.points)]
        if args.json and Path(args.json).exists():
            results = json.loads(Path(args.json).read_text())
    for arch, kind, n_rows, n_features in grid:
        if arch not in args.archs or kind not in args.networks:
            continue
        if args.max_rows is not None and n_rows > args.max_rows:
            continue
        point = dict(arch=arch, network=kind, rows=n_rows, features=n_features)
        estimate = estimate_bytes(arch, n_rows, n_features, args.test_rows, args.n_estimators)
        available = _available_memory_bytes()
        if available is not None and estimate > args.memory_share * available:
            skipped = f"estimate {estimate / MB:.0f} MB > {args.memory_share:.0%} of {available / MB:.0f} MB available"
            if not any(_key(old) == _key(point) for old in results):
                results.append({**point, "skipped": skipped})
            print(f"{arch:9s} {kind:8s} {n_rows:6d} x {n_features:3d}: skipped ({skipped})", flush=True)
            continue
        r = measure(arch, kind, n_rows, n_features, args.test_rows, args.n_estimators, args.device)
        same = [i for i, old in enumerate(results) if _key(old) == _key(r)]
        if same:
            results[same[0]] = r
        else:
            results.append(r)
        print(
            f"{arch:9s} {kind:8s} {n_rows:6d} x {n_features:3d}: {r['seconds']:6.1f} s, "
            f"peak {full_depth_peak(r) / MB:7.0f} MB (base {r['base_rss'] / MB:.0f} MB), "
            f"estimate {estimate / MB:.0f} MB",
            flush=True,
        )
        if args.json:  # keep what is measured so far
            Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--archs", nargs="+", default=list(ARCH_CLASSES), choices=list(ARCH_CLASSES))
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--max-rows", type=int, default=None, help="skip grid points with more training rows")
    parser.add_argument(
        "--points",
        nargs="+",
        default=None,
        help="measure only these grid points, ARCH:NETWORK:ROWS:FEATURES (e.g. mitra:1-block:2000:10); with --json, "
        "they replace the same points of an existing file (e.g. points skipped for lack of free memory)",
    )
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--n-estimators", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    parser.add_argument("--from-json", default=None, help="re-render the report from a --json file, measuring nothing")
    parser.add_argument(
        "--memory-share",
        type=float,
        default=0.6,
        help="skip a point whose estimate exceeds this share of the available memory (other jobs may be running)",
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*json.loads(args.worker))))
        return
    if args.from_json:  # re-render a report from raw results (e.g. after recalibrating the estimate)
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = run_grid(args)
    print("\n".join(table_rows(_sorted(results))))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.out:
        write_report(Path(args.out), results, args)


if __name__ == "__main__":
    main()
