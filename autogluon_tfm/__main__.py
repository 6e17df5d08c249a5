"""Command line: ``python -m autogluon_tfm {pretrain,warm-up-columns,export,plot-loss,download} ...``."""

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
    if args.eval_datasets is not None:
        names = [name for value in args.eval_datasets for name in value.split(",") if name]
        kwargs["eval_datasets"] = () if names == ["none"] else tuple(names)
    cfg = PretrainConfig(**kwargs)
    try:
        path = pretrain(cfg)
    except ValueError as error:  # configuration mistakes: one line, not a traceback
        raise SystemExit(f"error: {error}") from error
    print(f"checkpoint: {path}")


def _warm_up_columns(args: argparse.Namespace) -> None:
    import torch

    from autogluon_tfm.checkpoints import load_network, save_network
    from autogluon_tfm.pretrain.column_rules import warm_up_columns

    torch.set_num_threads(args.threads)
    net = load_network(args.init_from)
    try:
        curve = warm_up_columns(net, args.steps, lr=args.lr, seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    card = {"source": f"column-rule warm-up of {args.init_from}", "steps": args.steps, "lr": args.lr,
            "seed": args.seed, "loss_curve": curve}
    path = save_network(net, args.out, card=card)
    print(f"wrote {path}: continue with `pretrain --init-from {path}` on a prior")


def _plot_loss(args: argparse.Namespace) -> None:
    from autogluon_tfm.pretrain.plots import plot_loss

    print(f"wrote {plot_loss(args.run_dir, out=args.out, window=args.window)}")


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
    p.add_argument("--min-features", dest="min_features", type=int, default=None)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None)
    p.add_argument(
        "--curriculum", dest="curriculum_steps", type=int, default=None, metavar="STEPS",
        help="grow the largest table from --curriculum-start-rows (default --min-rows) to --max-rows rows over the "
        "first STEPS steps (default 0: no curriculum, sizes log-uniform in [min-rows, max-rows] throughout)",
    )
    p.add_argument("--curriculum-start-rows", dest="curriculum_start_rows", type=int, default=None)
    p.add_argument(
        "--curriculum-start-features", dest="curriculum_start_features", type=int, default=None,
        help="with --curriculum, also grow the largest feature count from this to --max-features",
    )
    p.add_argument(
        "--max-minutes", dest="max_minutes", type=float, default=None,
        help="wall-clock budget of this invocation: save a checkpoint and exit cleanly when it is spent",
    )
    p.add_argument(
        "--schedule-minutes", dest="schedule_minutes", type=float, default=None, metavar="M",
        help="cosine learning-rate schedule over M minutes of training time (summed over resumes) as well as over "
        "--steps, whichever is spent faster; the run ends when either is (for machines shared with other jobs)",
    )
    p.add_argument(
        "--eval-every", dest="eval_every", type=int, default=None, metavar="N",
        help="every N steps evaluate on real dev datasets and held-out synthetic tables; appends to <out>/eval.csv",
    )
    p.add_argument(
        "--eval-datasets", dest="eval_datasets", nargs="+", default=None,
        help="benchmark dev datasets for --eval-every (default breast_cancer wine iris / diabetes; 'none': only "
        "synthetic tables); needs the repository's benchmarks package (run from the repository root)",
    )
    p.add_argument("--eval-synthetic", dest="eval_synthetic", type=int, default=None, help="held-out synthetic tables")
    p.add_argument("--eval-max-train", dest="eval_max_train", type=int, default=None)
    p.add_argument("--eval-max-test", dest="eval_max_test", type=int, default=None)
    p.add_argument(
        "--init-from", dest="init_from", default=None, metavar="CHECKPOINT",
        help="warm start a new run from these weights (a shipped name such as tabicl-clf-small, or a checkpoint "
        "path); ignored when <out>/last.ckpt exists",
    )
    p.add_argument(
        "--class-id-spread", dest="class_id_spread", type=float, default=None, metavar="P",
        help="classification: with probability P relabel a table's k classes to k random ids of the network's "
        "outputs, so that every output id is trained (default 0)",
    )
    p.set_defaults(func=_pretrain)

    w = sub.add_parser(
        "warm-up-columns",
        help="train a network briefly on tables whose target is a rule of particular columns (pretrain/column_rules.py)",
    )
    w.add_argument("--init-from", dest="init_from", required=True, help="a shipped name or a checkpoint path")
    w.add_argument("--steps", type=int, default=500)
    w.add_argument("--lr", type=float, default=3e-4)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--out", required=True, help="a .safetensors path for the warmed-up weights")
    w.set_defaults(func=_warm_up_columns)

    pl = sub.add_parser("plot-loss", help="plot <run>/log.csv (and eval.csv) into <run>/loss.png")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default <run_dir>/loss.png)")
    pl.add_argument("--window", type=int, default=None, help="smoothing window in steps (default: steps / 50)")
    pl.set_defaults(func=_plot_loss)

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
