"""Pretraining extras: size curriculum, wall-clock budget, periodic evaluation, loss plots, and resuming checkpoints
written before these options existed."""

from __future__ import annotations

import csv
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autogluon_tfm.__main__ import main
from autogluon_tfm.checkpoints import load_network
from autogluon_tfm.pretrain import trainer
from autogluon_tfm.pretrain.evaluate import PretrainEvaluator, benchmark_loader, format_eval_table
from autogluon_tfm.pretrain.plots import plot_loss, smooth
from autogluon_tfm.pretrain.trainer import (
    REGRESSION_TARGET_CLAMP,
    PretrainConfig,
    PriorStream,
    _advance_bar,
    _lr_factor,
    _progress_bar,
    build_network,
    pretrain,
    size_limits,
    spread_class_ids,
    task_loss,
)
from autogluon_tfm.prior.sampler import PriorBatch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny(tmp_path: Path, name: str = "run", **changes) -> PretrainConfig:
    settings = dict(arch="tabicl", model="tabicl-tiny", prior="tabicl_mix", steps=3, batch_size=2, min_rows=24,
                    max_rows=40, max_features=4, num_workers=0, threads=1, checkpoint_every=1,
                    out=str(tmp_path / name))
    settings.update(changes)
    return PretrainConfig(**settings)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_curriculum_limits_grow_and_default_is_off(tmp_path):
    off = tiny(tmp_path, min_rows=64, max_rows=4096, max_features=50)
    assert size_limits(off, 0) == size_limits(off, 10**6) == (4096, 50)
    on = tiny(tmp_path, min_rows=64, max_rows=4096, max_features=50, curriculum_steps=100,
              curriculum_start_rows=256, curriculum_start_features=10)
    limits = [size_limits(on, step) for step in (0, 25, 50, 100, 500)]
    assert limits[0] == (256, 10) and limits[2] == (1024, 30)  # log-linear in rows, linear in features
    assert limits[-2] == limits[-1] == (4096, 50)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(limits))


def test_curriculum_bounds_the_drawn_tables(tmp_path):
    cfg = tiny(tmp_path, min_rows=24, max_rows=400, max_features=6, curriculum_steps=6, curriculum_start_rows=30,
               curriculum_start_features=2)
    for step, batch in enumerate(itertools.islice(iter(PriorStream(cfg, 0)), 8)):
        max_rows, max_features = size_limits(cfg, step)
        assert cfg.min_rows <= batch.n_rows <= max_rows and batch.X.shape[2] <= max_features
    assert size_limits(cfg, 0) == (30, 2)
    # A resumed stream follows the schedule from its own step.
    late = next(iter(PriorStream(cfg, 1000)))
    assert late.n_rows <= 400


def test_ranks_draw_different_tables_and_single_process_seeds_are_unchanged(tmp_path):
    cfg = tiny(tmp_path)
    default = next(iter(PriorStream(cfg, 0)))
    rank0 = next(iter(PriorStream(cfg, 0, rank=0, world_size=1)))
    assert torch.equal(default.X, rank0.X)
    first, second = (next(iter(PriorStream(cfg, 0, rank=r, world_size=2))) for r in (0, 1))
    assert first.X.shape != second.X.shape or not torch.equal(first.X, second.X)


def test_max_minutes_saves_and_stops_then_resumes(tmp_path):
    cfg = tiny(tmp_path, steps=10_000, checkpoint_every=10_000, max_minutes=0.001)  # 60 ms: a step or a few
    last = pretrain(cfg)
    step = torch.load(last, map_location="cpu", weights_only=True)["progress"]["step"]
    assert 1 <= step < 10_000
    assert [int(row["step"]) for row in read_csv(tmp_path / "run" / "log.csv")] == list(range(1, step + 1))
    resumed = pretrain(tiny(tmp_path, steps=step + 2))
    assert torch.load(resumed, map_location="cpu", weights_only=True)["progress"]["step"] == step + 2


def test_schedule_minutes_decays_the_rate_over_training_time_and_ends_the_run(tmp_path):
    # 0.6 s of training time, far fewer than the 10,000 steps: the time budget drives the cosine to 0. (Long
    # enough that a slow first step on a busy machine does not spend half of it.)
    cfg = tiny(tmp_path, steps=10_000, checkpoint_every=10_000, warmup_fraction=0.0, schedule_minutes=0.01)
    last = pretrain(cfg)
    progress = torch.load(last, map_location="cpu", weights_only=True)["progress"]
    assert 2 <= progress["step"] < 10_000 and progress["wall_time_s"] >= 0.6
    rates = [float(row["lr"]) for row in read_csv(tmp_path / "run" / "log.csv")]
    assert rates[-1] == 0.0 and rates[0] > 0.5 * cfg.lr  # decayed from near the peak to 0
    assert all(a >= b for a, b in itertools.pairwise(rates))
    # Resuming a run whose time schedule is spent trains no further.
    assert torch.load(pretrain(cfg), map_location="cpu", weights_only=True)["progress"]["step"] == progress["step"]
    with pytest.raises(ValueError, match="schedule_minutes"):
        pretrain(tiny(tmp_path, "bad", schedule_minutes=0))
    # The warmup ends after its share of the steps or of the time, whichever comes first.
    assert _lr_factor(10, 100_000, 2_000, time_fraction=0.01, warmup_time_fraction=0.02) == 0.5
    assert _lr_factor(10, 100_000, 2_000) == 11 / 2_000


def test_progress_bar_counts_training_seconds_under_a_time_schedule(tmp_path):
    # A time-scheduled run ends by time long before --steps: its bar's total is the schedule's seconds, not steps.
    timed = tiny(tmp_path, steps=100_000, schedule_minutes=2)
    bar = _progress_bar(timed, {"step": 7, "wall_time_s": 30.4}, disable=False)
    assert (bar.total, bar.n) == (120, 30)
    _advance_bar(bar, timed, {"step": 8, "wall_time_s": 95.6})
    assert bar.n == 96
    _advance_bar(bar, timed, {"step": 9, "wall_time_s": 500.0})  # never beyond the total
    assert bar.n == 120
    by_steps = tiny(tmp_path, steps=50)
    bar = _progress_bar(by_steps, {"step": 7, "wall_time_s": 30.4}, disable=False)
    assert (bar.total, bar.n) == (50, 7)
    _advance_bar(bar, by_steps, {"step": 8, "wall_time_s": 31.0})
    assert bar.n == 8


_MMAP_PROBE = """
import ctypes, sys
import numpy as np
from autogluon_tfm.pretrain.trainer import limit_heap_fragmentation

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "limited":
    assert limit_heap_fragmentation()
big = np.empty(8 << 20, np.uint8)
del big  # freeing an mmapped 8 MiB block makes glibc serve blocks below 8 MiB from the heap afterwards
before = libc.mallinfo2().hblkhd
block = np.empty(2 << 20, np.uint8)
print(libc.mallinfo2().hblkhd - before >= 2 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_pretraining_serves_large_blocks_by_mmap_so_memory_goes_back_to_the_os():
    def mmapped(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", _MMAP_PROBE, mode], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    # glibc's default: after a large free, a 2 MiB tensor comes from the (fragmenting) heap; limited: by mmap.
    assert mmapped("default") == "False"
    assert mmapped("limited") == "True"


def test_eval_every_with_a_custom_evaluator(tmp_path):
    calls = []

    def evaluator(net, step):
        calls.append((step, net.training))
        return [{"step": step, "dataset": "toy", "metric": "score", "value": float(step)}]

    pretrain(tiny(tmp_path, steps=5, eval_every=2), evaluator=evaluator)
    assert calls == [(2, True), (4, True), (5, True)]  # every 2 steps and at the end; training mode untouched
    rows = read_csv(tmp_path / "run" / "eval.csv")
    assert [(r["step"], r["dataset"], r["metric"]) for r in rows] == [
        ("2", "toy", "score"), ("4", "toy", "score"), ("5", "toy", "score")]


def test_default_evaluator_on_synthetic_and_real_tables(tmp_path, capsys):
    pretrain(tiny(tmp_path, steps=2, eval_every=2, eval_datasets=("iris",), eval_synthetic=4, eval_max_train=60,
                  eval_max_test=40))
    rows = read_csv(tmp_path / "run" / "eval.csv")
    metrics = {(r["dataset"], r["metric"]): float(r["value"]) for r in rows}
    assert set(metrics) == {("synthetic", "loss"), ("synthetic", "accuracy"), ("iris", "accuracy"),
                            ("iris", "log_loss")}
    assert 0.0 <= metrics[("iris", "accuracy")] <= 1.0 and math.isfinite(metrics[("synthetic", "loss")])
    captured = capsys.readouterr()
    assert "eval @ step 2" in captured.out + captured.err  # the table is printed


def test_evaluator_regression_and_table_format():
    from autogluon_tfm.pretrain.trainer import build_network

    net = build_network(PretrainConfig(arch="tabicl", model="tabicl-tiny", task="regression"))
    evaluator = PretrainEvaluator("tabicl", "regression", "tabicl_mix_regression", datasets=("diabetes",),
                                  synthetic_tables=2, synthetic_rows=48, synthetic_features=3, max_train=80,
                                  max_test=40)
    rows = evaluator(net, 7)
    assert {(r["dataset"], r["metric"]) for r in rows} == {("synthetic", "loss"), ("diabetes", "r2"),
                                                           ("diabetes", "rmse")}
    table = format_eval_table(rows)
    assert table.splitlines()[0] == "eval @ step 7" and "diabetes" in table and "rmse" in table


def test_benchmark_loader_error_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "benchmarks.datasets", None)  # as if the repository's benchmarks were absent
    with pytest.raises(ImportError, match="--eval-datasets none"):
        benchmark_loader("iris")


def test_plot_loss_writes_png_with_eval_panels(tmp_path):
    pretrain(tiny(tmp_path, steps=4, eval_every=2),
             evaluator=lambda net, step: [{"step": step, "dataset": "toy", "metric": "acc", "value": 0.5}])
    path = plot_loss(tmp_path / "run")
    assert path == tmp_path / "run" / "loss.png" and path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(FileNotFoundError):
        plot_loss(tmp_path / "missing")
    assert smooth(torch.tensor([1.0, 3.0, 5.0]).numpy(), 2).tolist() == [1.0, 2.0, 4.0]


def test_cli_options_and_plot_loss(tmp_path, capsys):
    """The CLI in-process (``main(argv)`` is what ``python -m autogluon_tfm`` runs; tests/test_cli.py covers the
    subprocess path)."""
    out = tmp_path / "cli"
    args = ["--model", "tabicl-tiny", "--num-workers", "0", "--batch-size", "2", "--min-rows", "24", "--max-rows",
            "64", "--max-features", "4", "--steps", "3", "--curriculum", "2", "--curriculum-start-rows", "30",
            "--max-minutes", "5", "--schedule-minutes", "9", "--eval-every", "3", "--eval-datasets", "none", "--eval-synthetic", "2"]
    main(["pretrain", *args, "--out", str(out)])
    config = json.loads((out / "pretrain_config.json").read_text())
    assert config["curriculum_steps"] == 2 and config["max_minutes"] == 5 and config["eval_datasets"] == []
    assert config["schedule_minutes"] == 9
    assert {r["dataset"] for r in read_csv(out / "eval.csv")} == {"synthetic"}
    main(["plot-loss", str(out)])
    assert (out / "loss.png").read_bytes()[:8] == PNG_MAGIC
    assert "loss.png" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="do not read NaN"):  # a configuration mistake is one line, no traceback
        main(["pretrain", *args, "--prior", "tabicl_mix_learnable_nan", "--out", str(tmp_path / "bad")])


def test_checkpoint_without_the_new_fields_resumes_and_loads(tmp_path):
    """Runs started before curriculum / DDP / eval existed have pretrain_config dicts without those fields."""
    last = pretrain(tiny(tmp_path, steps=2))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    new_fields = ("curriculum_steps", "curriculum_start_rows", "curriculum_start_features", "max_minutes",
                  "eval_every", "eval_datasets", "eval_synthetic", "eval_max_train", "eval_max_test")
    for name in new_fields:
        del ckpt["pretrain_config"][name]
    torch.save(ckpt, last)
    assert load_network(last).arch == "tabicl"
    resumed = pretrain(tiny(tmp_path, steps=3))
    assert torch.load(resumed, map_location="cpu", weights_only=True)["progress"]["step"] == 3
    assert load_network(resumed).arch == "tabicl"


def test_init_from_warm_starts_a_new_run_and_refuses_a_mismatched_network(tmp_path):
    source = pretrain(tiny(tmp_path, "source", steps=2))
    source_state = load_network(str(source)).state_dict()
    cold_state = load_network(str(pretrain(tiny(tmp_path, "cold", steps=1, seed=5)))).state_dict()
    trained = load_network(str(pretrain(tiny(tmp_path, "warm", steps=1, init_from=str(source))))).state_dict()
    # One step from the source stays near it; a cold start is far from it.
    distance = lambda state: sum((state[k] - source_state[k]).abs().sum().item() for k in source_state)  # noqa: E731
    assert distance(trained) < 0.1 * distance(cold_state)
    with pytest.raises(ValueError, match="does not fit this run's network"):
        pretrain(tiny(tmp_path, "bad", model="tabpfnv2-tiny", arch="tabpfn_v2", init_from=str(source)))
    with pytest.raises(ValueError, match="could not be loaded"):
        pretrain(tiny(tmp_path, "missing", init_from=str(tmp_path / "nope.ckpt")))


def test_init_from_a_shallower_network_grows_it_deeper_starting_from_the_same_function(tmp_path, monkeypatch):
    monkeypatch.setitem(trainer.MODEL_CONFIGS, "mitra-tiny-l3", dict(dim=16, n_layers=3, n_heads=2))
    monkeypatch.setitem(trainer.MODEL_PRESET_ARCH, "mitra-tiny-l3", "mitra")
    common = dict(arch="mitra", steps=1)
    source_path = pretrain(tiny(tmp_path, "source", model="mitra-tiny", **common))
    source = load_network(str(source_path))
    grown = build_network(tiny(tmp_path, "grown", model="mitra-tiny-l3", **common))
    trainer._warm_start(grown, str(source_path))
    generator = torch.Generator().manual_seed(0)
    X, y = torch.randn(2, 30, 4, generator=generator), torch.randint(0, 3, (2, 20), generator=generator).float()
    with torch.no_grad():
        torch.testing.assert_close(grown(X, y), source(X, y))  # the new layers 1-2 start as identity
    new_layer = grown.layers[2].across_rows
    assert new_layer.attn.out_proj.weight.abs().sum() == 0 and new_layer.linear2.weight.abs().sum() == 0
    assert new_layer.attn.q_proj.weight.abs().sum() > 0  # the rest of a new block keeps its fresh weights
    # Through pretrain: one step moves the zeroed outputs (the new blocks learn), the copied layer stays near.
    trained = load_network(str(pretrain(tiny(tmp_path, "run", model="mitra-tiny-l3", init_from=str(source_path),
                                             lr=1e-3, **common))))
    assert trained.layers[2].across_rows.linear2.weight.abs().sum() > 0
    assert torch.allclose(trained.layers[0].across_rows.attn.q_proj.weight, source.layers[0].across_rows.attn.q_proj.weight,
                          atol=1e-2)
    # A wider network is not a depth growth: still refused.
    monkeypatch.setitem(trainer.MODEL_CONFIGS, "mitra-wide", dict(dim=32, n_layers=3, n_heads=2))
    monkeypatch.setitem(trainer.MODEL_PRESET_ARCH, "mitra-wide", "mitra")
    with pytest.raises(ValueError, match="does not fit this run's network"):
        pretrain(tiny(tmp_path, "wide", model="mitra-wide", init_from=str(source_path), **common))


@pytest.mark.parametrize("arch", ["tabpfn_v2", "mitra"])
def test_init_from_a_classifier_warm_starts_a_regression_run_except_its_task_ends(tmp_path, arch):
    model = {"tabpfn_v2": "tabpfnv2-tiny", "mitra": "mitra-tiny"}[arch]
    common = dict(arch=arch, model=model, steps=1, lr=1e-6)
    source = load_network(str(pretrain(tiny(tmp_path, "source", **common)))).state_dict()
    regression = dict(common, task="regression", prior="tabicl_mix_regression")
    warm = load_network(str(pretrain(tiny(tmp_path, "warm", init_from=str(tmp_path / "source" / "last.ckpt"),
                                          **regression)))).state_dict()
    cold = load_network(str(pretrain(tiny(tmp_path, "cold", seed=7, **regression)))).state_dict()
    shared = [k for k in warm if k in source and source[k].shape == warm[k].shape]
    fresh = [k for k in warm if k not in shared]
    assert fresh and len(shared) >= 0.8 * len(warm)  # only the label embedding / head / borders are task-specific
    for name in shared:  # one step at lr 1e-6 from the classifier's weights
        assert torch.allclose(warm[name].float(), source[name].float(), atol=1e-4), name
    assert any(not torch.allclose(cold[k].float(), source[k].float(), atol=1e-2) for k in shared)


def test_regression_loss_targets_are_clamped_so_one_degenerate_table_cannot_dominate():
    # TabICL: z-scored targets and a pinball loss, so "10 training deviations out" is exactly the clamp.
    net = build_network(tiny(Path("unused"), task="regression", prior="tabicl_mix_regression"))
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(2, 12, 3, generator=generator)
    y = torch.randn(2, 12, generator=generator)
    batch = lambda y: PriorBatch(X=X, y=y, n_train=8, d=torch.tensor([3, 3]), n_classes=torch.zeros(2))  # noqa: E731
    far, at_clamp = y.clone(), y.clone()
    std = y[0, :8].std(unbiased=False)
    far[0, 10] = y[0, :8].mean() + 1e6 * std  # a test target a million training deviations out
    at_clamp[0, 10] = y[0, :8].mean() + REGRESSION_TARGET_CLAMP * std
    with torch.no_grad():
        loss_far = task_loss(net, batch(far), "cpu", "regression").item()
        loss_clamped = task_loss(net, batch(at_clamp), "cpu", "regression").item()
    assert math.isfinite(loss_far) and loss_far < 1e3
    assert loss_far == pytest.approx(loss_clamped, rel=1e-3)


def test_spread_class_ids_relabels_tables_to_random_distinct_ids():
    y = torch.tensor([[0, 1, 2, 1, 0, 2]] * 400, dtype=torch.float32)
    spread = spread_class_ids(y, 10, 1.0, torch.Generator().manual_seed(0))
    assert spread.dtype == y.dtype and spread.shape == y.shape
    for row in spread:  # the same partition of the rows, with three distinct ids
        assert row[0] == row[4] and row[1] == row[3] and row[2] == row[5] and len(set(row[:3].tolist())) == 3
    counts = torch.bincount(spread.long().flatten(), minlength=10)
    assert counts.min() > 0.6 * counts.float().mean()  # every output id is used, roughly equally often
    half = spread_class_ids(y, 10, 0.5, torch.Generator().manual_seed(1))
    unchanged = (half == y).all(dim=1).float().mean().item()
    assert 0.4 < unchanged < 0.65  # ~half keep their ids (plus the few identity draws among the rest)
    assert torch.equal(spread_class_ids(y, 10, 0.0), y)


def test_class_id_spread_option_trains_and_is_validated(tmp_path):
    last = pretrain(tiny(tmp_path, steps=2, class_id_spread=1.0))
    assert torch.load(last, map_location="cpu", weights_only=True)["pretrain_config"]["class_id_spread"] == 1.0
    with pytest.raises(ValueError, match="class_id_spread"):
        pretrain(tiny(tmp_path, "bad", class_id_spread=1.5))
