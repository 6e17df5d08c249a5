"""Pretraining throughput of the model presets: tables per second for one optimizer step, fp32 vs bf16 autocast.

    python benchmarks/pretrain_throughput.py --threads 1 --out benchmarks/results/pretrain_throughput.md

Synthetic random inputs (the prior's cost is separate: it runs in DataLoader workers), 8 tables x 512 rows x 20
features, 350 of them training rows; the median of ``--repeats`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from autogluon_tfm.pretrain.trainer import MODEL_PRESET_ARCH, PretrainConfig, build_network, task_loss
from autogluon_tfm.prior.sampler import PriorBatch


def build_preset(model_name: str) -> torch.nn.Module:
    """The classification network of a pretraining preset (any architecture)."""
    return build_network(PretrainConfig(arch=MODEL_PRESET_ARCH[model_name], model=model_name))


def step_seconds(model_name: str, precision: str, repeats: int, shape: tuple[int, int, int], n_train: int) -> float:
    torch.manual_seed(0)
    net = build_preset(model_name).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    n_tables, n_rows, n_features = shape
    batch = PriorBatch(
        X=torch.randn(*shape),
        y=torch.randint(0, 5, (n_tables, n_rows)).float(),
        n_train=n_train,
        d=torch.full((n_tables,), n_features),
        n_classes=torch.full((n_tables,), 5),
    )
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = task_loss(net, batch, "cpu", "classification")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tabicl-small", "tabicl-tiny"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape, n_train = (8, 512, 20), 350
    rows = ["| model | parameters | precision | s / step | tables / s |", "|---|---:|---|---:|---:|"]
    for name in args.models:
        n_params = sum(p.numel() for p in build_preset(name).parameters())
        for precision in ("fp32", "bf16"):
            seconds = step_seconds(name, precision, args.repeats, shape, n_train)
            rows.append(f"| {name} | {n_params / 1e6:.2f}M | {precision} | {seconds:.3f} | {shape[0] / seconds:.1f} |")
            print(rows[-1], flush=True)
    header = (
        f"# Pretraining throughput\n\nOne AdamW step on {shape[0]} tables x {shape[1]} rows x {shape[2]} features "
        f"({n_train} training rows), CPU, {args.threads} thread(s), median of {args.repeats} steps.\n\n"
    )
    text = header + "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
