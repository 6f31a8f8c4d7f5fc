"""Training throughput: Lightning vs a plain PyTorch loop on the multi-task ranker.

    python bench/bench_training.py [--data data] [--epochs 2] [--repeats 3]

Both loops train the same ``MultiTaskRanker`` from the same initial weights on the same
batches (the ``IndexBatches`` loader of ``components.training``, same seed) with the same
optimiser (``RankerModule.configure_optimizers``) for the same number of steps, with the
same torch thread count; the script checks that they end with identical weights. Timings
cover the optimisation loop only (Lightning: from ``on_train_start`` to ``on_train_end``,
so Trainer construction and set-up are reported apart). Each variant runs ``--repeats``
times, interleaved; the median is printed (the machine may be shared).

Variants, to find where Lightning's time goes:

- ``platform``: the Trainer exactly as ``train_ranker`` builds it (no progress bar, no
  logger, no checkpointing, no per-step ``self.log``, deterministic);
- ``+progress bar``: the same with the TQDM bar on (rendered to /dev/null);
- ``+log every step``: ``self.log("loss", ...)`` on every training step;
- ``barebones=True``: Lightning's own minimal-overhead mode (no logging, summary or
  progress bar); if it is no faster than ``platform``, what is left is the loop machinery
  itself (hooks, closure, optimizer wrapper), a fixed cost per step;
- ``+per-sample loader``: a default ``DataLoader(batch_size, shuffle=True)``, i.e. one
  ``__getitem__`` per sample plus collate (plain loop with the same loader for reference);
- ``2 threads``: both loops with two intra-op threads instead of one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _machine import cpu_model  # bench/ is the script's directory
from torch.utils.data import DataLoader

from components.features import FeatureSpace
from components.io import read_dataset, write_dataset
from components.training import (
    TrainingArrays,
    _lightning_context,
    build_training_arrays,
    make_loader,
    split_by_day,
)
from components.world import generate_dataset
from models.ranker import MultiTaskRanker, RankerConfig, RankerModule, ranker_loss


def load_demo(data_dir: Path) -> dict[str, Any]:
    if (data_dir / "meta.json").exists():
        tables, meta = read_dataset(data_dir)
        return {"tables": tables, "source": f"{data_dir} ({meta.source}, {meta.preset})"}
    tables, meta = generate_dataset("demo", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tables, meta, tmp)
    return {"tables": tables, "source": "generated demo preset, seed 0"}


class _Timer(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.t0


class _NoLogModule(RankerModule):
    """``barebones=True`` forbids ``self.log``; keep the epoch loss without it."""

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(float(self._loss_sum) / max(self._loss_n, 1))


class _LoggingModule(RankerModule):
    """Adds the common per-step ``self.log`` call the platform's module avoids."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss, on_step=True, prog_bar=True)
        return loss


def fresh_net(config: RankerConfig, space: FeatureSpace, train: TrainingArrays) -> MultiTaskRanker:
    L.seed_everything(0, workers=True, verbose=False)
    net = config.create(space)
    net.init_output_bias(torch.from_numpy(train.labels.mean(axis=0)), float(train.log_play.mean()))
    return net


def plain_loop(
    net: MultiTaskRanker, config: RankerConfig, loader: DataLoader, epochs: int
) -> tuple[float, int]:
    module = RankerModule(net, config)  # only for the identical optimiser
    opt = module.configure_optimizers()
    weights = config.aspect_weight_tensor()
    net.train()
    steps = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for user_row, item_row, context, labels, log_play in loader:
            out = net(user_row, item_row, context)
            loss, _, _ = ranker_loss(out, labels, log_play, weights, config.play_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    return time.perf_counter() - t0, steps


def lightning_loop(
    net: MultiTaskRanker,
    config: RankerConfig,
    loader: DataLoader,
    epochs: int,
    progress_bar: bool = False,
    log_every_step: bool = False,
    barebones: bool = False,
) -> tuple[float, float, int]:
    cls = _LoggingModule if log_every_step else _NoLogModule if barebones else RankerModule
    module = cls(net, config)
    timer = _Timer()
    t0 = time.perf_counter()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    with (
        _lightning_context(True),
        contextlib.redirect_stderr(devnull),
        contextlib.redirect_stdout(devnull),
    ):
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            deterministic=True,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=None if barebones else 50,
            barebones=barebones,
            callbacks=[timer],
        )
        trainer.fit(module, train_dataloaders=loader)
    devnull.close()
    return timer.seconds, time.perf_counter() - t0, int(trainer.global_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="platform vs plain only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    demo = load_demo(args.data)
    tables = demo["tables"]
    config = RankerConfig()
    space = FeatureSpace.fit(tables["users"], tables["items"])
    split = split_by_day(tables["requests"], holdout_days=1)
    train = build_training_arrays(tables, space, split.train_request_ids)
    n, bs = len(train), config.batch_size
    print(
        f"machine: {cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"lightning {L.__version__}"
    )
    print(
        f"data: {demo['source']}; {n:,} training impressions, batch {bs}, "
        f"{args.epochs} epoch(s) = {args.epochs * -(-n // bs)} steps per run, "
        f"median of {args.repeats} interleaved runs"
    )

    def whole(seed: int = 0) -> DataLoader:
        return make_loader(train, bs, shuffle=True, seed=seed)

    def per_sample() -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(train.dataset(), batch_size=bs, shuffle=True, generator=g)

    Runner = Callable[[], tuple[float, int]]
    variants: dict[str, tuple[int, Runner]] = {}

    def add(name: str, threads: int, run: Runner) -> None:
        variants[name] = (threads, run)

    def plain(loader_fn: Callable[[], DataLoader]) -> Runner:
        return lambda: plain_loop(fresh_net(config, space, train), config, loader_fn(), args.epochs)

    def light(loader_fn: Callable[[], DataLoader], **kw: bool) -> Runner:
        def run() -> tuple[float, int]:
            net = fresh_net(config, space, train)
            seconds, total, steps = lightning_loop(net, config, loader_fn(), args.epochs, **kw)
            setup.append(total - seconds)
            return seconds, steps

        return run

    setup: list[float] = []
    add("plain loop", 1, plain(whole))
    add("lightning (platform)", 1, light(whole))
    if not args.quick:
        add("lightning +progress bar", 1, light(whole, progress_bar=True))
        add("lightning +log every step", 1, light(whole, log_every_step=True))
        add("lightning barebones=True", 1, light(whole, barebones=True))
        add("plain loop, per-sample loader", 1, plain(per_sample))
        add("lightning, per-sample loader", 1, light(per_sample))
        add("plain loop, 2 threads", 2, plain(whole))
        add("lightning (platform), 2 threads", 2, light(whole))

    times: dict[str, list[float]] = {name: [] for name in variants}
    steps: dict[str, int] = {}
    before = torch.get_num_threads()
    for _ in range(args.repeats):
        for name, (threads, run) in variants.items():
            torch.set_num_threads(threads)
            seconds, k = run()
            times[name].append(seconds)
            steps[name] = k
    torch.set_num_threads(before)

    # same model, same batches, same optimiser: the two loops must end identical
    torch.set_num_threads(1)
    net_a = fresh_net(config, space, train)
    plain_loop(net_a, config, whole(), 1)
    net_b = fresh_net(config, space, train)
    lightning_loop(net_b, config, whole(), 1)
    torch.set_num_threads(before)
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values(), strict=True)
    )

    base = n * args.epochs / statistics.median(times["plain loop"])
    print(f"{'variant':34s} {'threads':>7s} {'steps':>6s} {'samples/s':>11s} {'vs plain':>9s}")
    for name, (threads, _) in variants.items():
        rate = n * args.epochs / statistics.median(times[name])
        print(f"{name:34s} {threads:7d} {steps[name]:6d} {rate:11,.0f} {rate / base:9.2f}")
    plain_rate = base
    light_rate = n * args.epochs / statistics.median(times["lightning (platform)"])
    print(f"plain PyTorch loop:   {plain_rate:10,.0f} samples/s")
    print(f"Lightning (platform): {light_rate:10,.0f} samples/s")
    print(f"ratio Lightning / plain: {light_rate / plain_rate:.2f}")
    print(f"Trainer construction + fit set-up/tear-down: median {statistics.median(setup):.2f} s")
    print(f"max |weight difference| after 1 epoch, plain vs Lightning: {diff:.3g}")


if __name__ == "__main__":
    main()
