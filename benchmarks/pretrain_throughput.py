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

from autogluon_tfm.nn import TabICL
from autogluon_tfm.nn.losses import classification_loss
from autogluon_tfm.pretrain.trainer import MODEL_CONFIGS


def step_seconds(model_name: str, precision: str, repeats: int, shape: tuple[int, int, int], n_train: int) -> float:
    torch.manual_seed(0)
    net = TabICL(**MODEL_CONFIGS[model_name]).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    X = torch.randn(*shape)
    y = torch.randint(0, 5, shape[:2]).float()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = net(X, y[:, :n_train])
        loss = classification_loss(logits, y[:, n_train:])
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
        n_params = sum(p.numel() for p in TabICL(**MODEL_CONFIGS[name]).parameters())
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
