"""True session watch time of trained ranking methods at several policy temperatures.

    python bench/temperature_sweep.py --data-dir data --seed 0 \
        --methods bc,deepfm,mmrf,mmrf_da --ranker-temps 10,3,1,0.3,0.1 \
        --agent-temps 0.3,0.1,0.03

Each method is trained once (as ``relayrec experiment mmrf`` trains it) and then rolled out
in the data set's world at every temperature of its family: the supervised rankers score in
seconds of expected play, so their temperature must follow the world's play-time scale; the
agents score in learnt units. One table row per method, one column per temperature.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from components.experiments import (
    SUPERVISED,
    ExperimentConfig,
    method_labellers,
    train_method,
    true_metrics,
)
from components.io import read_meta, read_table
from components.training import split_by_day
from components.world import ScoredRankingPolicy, World, WorldConfig


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="bc,deepfm,mmrf,mmrf_da")
    p.add_argument("--ranker-temps", type=_floats, default=_floats("10,3,1,0.3,0.1"))
    p.add_argument("--agent-temps", type=_floats, default=_floats("0.3,0.1,0.03"))
    args = p.parse_args()

    meta = read_meta(args.data_dir)
    if meta.source != "world":
        raise SystemExit(f"{args.data_dir} holds {meta.source} data: a rollout needs world data")
    tables = {t: read_table(args.data_dir, t) for t in meta.tables}
    world = World(WorldConfig.from_dict(meta.params["world"]), seed=meta.seed)
    config = ExperimentConfig()
    train_ids = np.asarray(split_by_day(tables["requests"], config.holdout_days).train_request_ids)
    labeller = method_labellers(tables, tables.get("truth"), train_ids, args.seed)

    print(f"data: {args.data_dir} ({meta.source}, {meta.preset}), seed {args.seed}")
    print("true session watch time (s) by Plackett–Luce temperature T")
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        model = train_method(method, tables, config, args.seed, labeller)
        temps = args.ranker_temps if method in SUPERVISED else args.agent_temps
        cells = []
        for t in temps:
            policy = ScoredRankingPolicy(model.score, t, name=method)
            watch = true_metrics(world, policy, 1000 + args.seed, 1)["true_session_watch_s"]
            cells.append(f"T={t:g}: {watch:7.0f}")
        print(f"{method:>9}  " + "  ".join(cells) + f"   ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
