"""Command line: ``python -m autogluon_tfm {pretrain,export,download} ...``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path


def _pretrain(args: argparse.Namespace) -> None:
    from autogluon_tfm.pretrain.trainer import MODEL_CONFIGS, MODEL_PRESET_ARCH, PretrainConfig, pretrain

    if args.model not in MODEL_CONFIGS:
        raise SystemExit(f"Unknown --model {args.model!r}; choose from {sorted(MODEL_CONFIGS)}")
    if args.arch is None:
        args.arch = MODEL_PRESET_ARCH[args.model]
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.train_fraction is not None:
        kwargs["train_fraction"] = tuple(args.train_fraction)
    cfg = PretrainConfig(**kwargs)
    path = pretrain(cfg)
    print(f"checkpoint: {path}")


def _export(args: argparse.Namespace) -> None:
    import torch

    from autogluon_tfm.checkpoints import SHIPPED_DIR, load_network, save_network

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    net = load_network(args.checkpoint)
    card = {
        "name": args.name,
        "source_checkpoint": str(args.checkpoint),
        "pretrain": ckpt.get("pretrain_config"),
        "progress": ckpt.get("progress"),
    }
    if args.card_extra:
        card.update(json.loads(Path(args.card_extra).read_text()))
    out = Path(args.out_dir) if args.out_dir else SHIPPED_DIR
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[args.dtype]
    path = save_network(net, out / f"{args.name}.safetensors", card=card, dtype=dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.json')}")


def _download(args: argparse.Namespace) -> None:
    from huggingface_hub import hf_hub_download

    from autogluon_tfm.checkpoints.io import OFFICIAL_FILES

    known = {fn: repo for files in OFFICIAL_FILES.values() for repo, fn in files}
    names = args.names or [files[0][1] for files in OFFICIAL_FILES.values()]
    for name in names:
        if name not in known:
            raise SystemExit(f"Unknown official file {name!r}; known: {sorted(known)}")
        print(hf_hub_download(repo_id=known[name], filename=name))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autogluon_tfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a network on the synthetic prior (resumes from <out>/last.ckpt)")
    p.add_argument("--arch", default=None, help="network architecture (default: the one of --model)")
    p.add_argument("--task", choices=["classification", "regression"], default=None)
    p.add_argument("--model", default="tabicl-small", help="network size preset")
    p.add_argument("--prior", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--min-rows", dest="min_rows", type=int, default=None)
    p.add_argument("--max-rows", dest="max_rows", type=int, default=None)
    p.add_argument("--max-features", dest="max_features", type=int, default=None)
    p.add_argument("--train-fraction", dest="train_fraction", type=float, nargs=2, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--num-workers", dest="num_workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=None)
    p.add_argument("--out", default=None)
    p.set_defaults(func=_pretrain)

    e = sub.add_parser("export", help="turn a pretraining checkpoint into shipped safetensors weights + card")
    e.add_argument("checkpoint")
    e.add_argument("--name", required=True)
    e.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    e.add_argument("--out-dir", dest="out_dir", default=None)
    e.add_argument("--card-extra", dest="card_extra", default=None, help="JSON file merged into the card")
    e.set_defaults(func=_export)

    d = sub.add_parser("download", help="download official checkpoints into the Hugging Face cache (needs internet)")
    d.add_argument("names", nargs="*")
    d.set_defaults(func=_download)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
