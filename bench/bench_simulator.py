"""Feedback-simulator throughput: fitting, request states and labelling on the demo data.

    python bench/bench_simulator.py [--data data] [--epochs 10] [--repeats 1]

Fits ``components.simulator.fit_simulator`` with the default ``SimulatorConfig`` (or
``--epochs``) on every day but the last (``split_by_day(requests, 1)``) and prints the
Lightning fit's training impressions per second (impressions × epochs / seconds in
``trainer.fit``), the whole call's time, the time to compute every request's recurrent
state (one GRU pass over all users), and the (request, item) pairs per second of
``label_non_impressions`` with ``share = 0.25`` on the held-out day. With ``--repeats`` > 1
the median is printed (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _machine import cpu_model  # bench/ is the script's directory

from components.io import read_dataset
from components.simulator import (
    TrainedSimulator,
    build_sequences,
    compute_states,
    fit_simulator,
    label_non_impressions,
)
from components.training import split_by_day
from components.world import generate_dataset
from models.simulator import SimulatorConfig


def load_demo(data_dir: Path) -> tuple[dict[str, Any], str]:
    if (data_dir / "meta.json").exists():
        tables, meta = read_dataset(data_dir)
        return tables, f"{data_dir} ({meta.source}, {meta.preset})"
    tables, _ = generate_dataset("demo", seed=0)
    return tables, "generated demo preset, seed 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data", type=Path)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    tables, source = load_demo(args.data)
    config = SimulatorConfig()
    epochs = args.epochs or config.epochs
    split = split_by_day(tables["requests"], holdout_days=1)
    print(
        f"machine: {cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"lightning {L.__version__}"
    )
    print(
        f"data: {source}; {len(tables['requests']):,} requests, "
        f"{len(tables['impressions']):,} impressions, {tables['users'].shape[0]:,} users; "
        f"{epochs} epoch(s), {config.users_per_batch} users per batch, "
        f"median of {args.repeats} run(s)"
    )

    fits: list[tuple[float, float, TrainedSimulator]] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sim = fit_simulator(
            tables, config, seed=0, request_ids=split.train_request_ids, max_epochs=epochs
        )
        fits.append((time.perf_counter() - t0, sim.metrics["fit_seconds"], sim))
    total = statistics.median(f[0] for f in fits)
    fit_s = statistics.median(f[1] for f in fits)
    sim = fits[0][2]
    n = sim.metrics["n_train_impressions"]
    print(f"fit:    {n:,} training impressions × {epochs} epochs, {sim.metrics['steps']} steps")
    print(f"        trainer.fit {fit_s:6.1f} s   {n * epochs / fit_s:10,.0f} impressions/s")
    print(f"        whole call  {total:6.1f} s   (sequences, feature space, final pass)")

    seq = build_sequences(tables, sim.feature_space)
    t0 = time.perf_counter()
    compute_states(sim.model, seq)
    states_s = time.perf_counter() - t0
    print(f"states: {len(seq.request_id):,} requests of {seq.n_users:,} users in {states_s:.2f} s")

    timings = []
    for _ in range(args.repeats):
        fresh = TrainedSimulator(sim.state_dict, sim.config, sim.feature_space, sim.metrics)
        t0 = time.perf_counter()
        out = label_non_impressions(
            fresh, tables, 0.25, seed=0, request_ids=split.holdout_request_ids
        )
        timings.append(time.perf_counter() - t0)
    label_s = statistics.median(timings)
    print(
        f"label:  {len(out):,} non-impressions (share 0.25, held-out day) in {label_s:.2f} s "
        f"(states included)   {len(out) / label_s:10,.0f} pairs/s"
    )


if __name__ == "__main__":
    main()
