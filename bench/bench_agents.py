"""Training throughput of the MMRF ranking agents: Lightning vs a plain PyTorch loop.

    python bench/bench_agents.py [--data data] [--epochs 2] [--repeats 3]

Both loops run the same ``AgentsModule`` update (critic TD/MC regression + actor DPG with
the behaviour-cloning term, Polyak target update) from the same initial weights on the same
batches of requests (training days of ``--data``, every shown item plus a 25 % share of the
logged non-impressions with MMRF-NS's constant rewards, so no simulator is needed) for the
same number of steps. Throughput is counted in requests and in (request, candidate) pairs
per second, the median of ``--repeats`` interleaved runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._machine import cpu_model  # noqa: E402
from components.agent_data import build_agent_data  # noqa: E402
from components.agents import (  # noqa: E402
    _non_impressions,
    _tensors,
    agent_tables,
    build_networks,
    with_variant,
)
from components.features import FeatureSpace  # noqa: E402
from components.training import IndexBatches, _lightning_context, split_by_day  # noqa: E402
from models.mmrf import AgentsConfig, AgentsModule  # noqa: E402


def _setup(data: str, config: AgentsConfig, seed: int):  # noqa: ANN202
    tables = agent_tables(data)
    ids = np.asarray(split_by_day(tables["requests"], 1).train_request_ids)
    fs = FeatureSpace.fit(tables["users"], tables["items"])
    extra = _non_impressions(tables, ids, config, None, np.random.default_rng(seed))
    d = build_agent_data(tables, fs, ids, config.gamma, extra)
    return fs, d


def _module(fs: FeatureSpace, d, config: AgentsConfig, seed: int) -> AgentsModule:  # noqa: ANN001
    torch.manual_seed(seed)
    actor, critic = build_networks(fs, config)
    m = AgentsModule(actor, critic, config, torch.from_numpy(d.reward_scale()), d.slate_size)
    m.set_data(_tensors(d))
    return m


def run_lightning(fs, d, config: AgentsConfig, epochs: int, seed: int) -> float:  # noqa: ANN001
    m = _module(fs, d, config, seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(len(d))),
        sampler=IndexBatches(len(d), config.batch_size, True, seed),
        batch_size=None,
        collate_fn=lambda b: b[0],
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    with _lightning_context(True):
        t0 = time.perf_counter()
        trainer.fit(m, train_dataloaders=loader)
        return time.perf_counter() - t0


def run_plain(fs, d, config: AgentsConfig, epochs: int, seed: int) -> float:  # noqa: ANN001
    m = _module(fs, d, config, seed)
    opt_c, opt_a = m.configure_optimizers()
    batches = IndexBatches(len(d), config.batch_size, True, seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in batches:
            critic_loss, actor_loss, _ = m.losses(idx)
            opt_c.zero_grad()
            opt_a.zero_grad()
            (critic_loss + actor_loss).backward()
            opt_c.step()
            opt_a.step()
            m._polyak()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = with_variant(AgentsConfig(), "mmrf_ns")
    fs, d = _setup(args.data, config, 0)
    pairs = int(d.mask.sum())
    print(f"machine: {cpu_model()}, torch threads {args.threads}")
    print(
        f"data: {len(d)} requests, {pairs} candidates ({pairs / len(d):.1f} per request), "
        f"batch {config.batch_size} requests, {args.epochs} epoch(s)"
    )
    times: dict[str, list[float]] = {"lightning": [], "plain": []}
    for r in range(args.repeats):
        times["plain"].append(run_plain(fs, d, config, args.epochs, r))
        times["lightning"].append(run_lightning(fs, d, config, args.epochs, r))
    for name, ts in times.items():
        t = statistics.median(ts)
        print(
            f"{name:>9}: {t:6.2f} s  {args.epochs * len(d) / t:9.0f} requests/s  "
            f"{args.epochs * pairs / t:9.0f} candidates/s"
        )
    ratio = statistics.median(times["plain"]) / statistics.median(times["lightning"])
    print(f"lightning / plain throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
