"""How well the agents' critics and actors rank held-out candidates: split vs joint critic.

    python bench/critic_quality.py --data-dir data --seeds 0,1 \
        --methods mmrf_da,mmrf --critics split,joint --agent-temperature 0.1

Each (method, critic, seed) is trained as ``relayrec experiment mmrf`` trains it, then
scored on the held-out day's logged candidates (shown items and logged non-impressions)
against the world's truth table. Columns, per-request rank correlations:

* ``critic``: the WatchTime critic ``q_0`` with the true affinity;
* ``r_hat``: its immediate head ``r̂_0`` with the true affinity (split critic only);
* ``actor``: the WatchTime actor ``a_0`` (the served score) with the true affinity;
* ``actor_play`` / ``actor_no_hate``: the actor with the true expected play and ``−P(hate)``;

and ``watch_s``, the true session watch time of one rolled-out day at the method's
temperature. The behaviour-cloning ranker is the reference row. Means over the seeds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from components.agents import request_tensors
from components.experiments import (
    ExperimentConfig,
    HeldOut,
    TrueCandidates,
    _row_rank_corr,
    held_out,
    method_labellers,
    train_method,
    true_candidates,
    true_metrics,
)
from components.features import FeatureSpace
from components.io import read_meta, read_table
from components.training import split_by_day
from components.world import ScoredRankingPolicy, World, WorldConfig
from models.mmrf import AgentsModule
from models.ranker import RankerConfig

COLUMNS = ("critic", "r_hat", "actor", "actor_play", "actor_no_hate", "watch_s")


@dataclass(frozen=True)
class Truth:
    """The held-out candidates and what the world knows about them."""

    held: HeldOut
    cands: TrueCandidates
    play: np.ndarray  # (R, C) true expected play (ms)
    hate: np.ndarray  # (R, C) true P(hate)

    @classmethod
    def of(cls, tables: dict[str, pd.DataFrame], holdout_ids: np.ndarray) -> Truth:
        held = held_out(tables, holdout_ids)
        cands = true_candidates(held, tables["truth"])
        t = tables["truth"].set_index(["request_id", "item_id"])
        key = pd.MultiIndex.from_arrays(
            [np.repeat(held.slates.request_id, cands.items.shape[1]), cands.items.ravel()]
        )

        def col(name: str) -> np.ndarray:
            return t[name].reindex(key).fillna(0.0).to_numpy().reshape(cands.items.shape)

        return cls(held, cands, col("expected_play_ms"), col("p_hate"))

    def corr(self, scores: np.ndarray, target: np.ndarray | None = None) -> float:
        """Mean per-request rank correlation with ``target`` (default: true affinity)."""
        y = self.cands.affinity if target is None else target
        return _row_rank_corr(scores, y, self.cands.mask)

    def critic_scores(self, module: AgentsModule, fs: FeatureSpace) -> dict[str, float]:
        """``critic`` and ``r_hat`` columns of a trained module."""
        s = self.held.slates
        x = request_tensors(fs, s.user_id, self.cands.items, s.hour, s.position, s.history)
        module.eval()
        with torch.inference_mode():
            out = {"critic": self.corr(module.critic(*x)[..., 0].numpy())}
            if module.critic.split:
                out["r_hat"] = self.corr(module.critic.parts(*x)[0][..., 0].numpy())
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default="mmrf_da,mmrf")
    p.add_argument("--critics", default="split,joint")
    p.add_argument("--agent-temperature", type=float, default=0.1)
    p.add_argument("--ranker-temperature", type=float, default=10.0)
    args = p.parse_args()

    meta = read_meta(args.data_dir)
    if meta.source != "world" or "truth" not in meta.tables:
        raise SystemExit(f"{args.data_dir} has no world truth table: this needs world data")
    tables = {t: read_table(args.data_dir, t) for t in meta.tables}
    world = World(WorldConfig.from_dict(meta.params["world"]), seed=meta.seed)
    split = split_by_day(tables["requests"], 1)
    truth = Truth.of(tables, np.asarray(split.holdout_request_ids))
    s, items = truth.held.slates, truth.cands.items
    base = ExperimentConfig(ranker=RankerConfig(temperature=args.ranker_temperature))
    base = replace(base, agents=replace(base.agents, temperature=args.agent_temperature))

    train_ids = np.asarray(split.train_request_ids)
    seeds = [int(x) for x in args.seeds.split(",")]
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        labellers = method_labellers(tables, tables["truth"], train_ids, seed)
        runs = [("bc", None)] + [
            (m, c) for m in args.methods.split(",") for c in args.critics.split(",")
        ]
        for method, critic in runs:
            t0 = time.perf_counter()
            if critic is None:
                model = train_method(method, tables, base, seed, labellers)
                row: dict[str, float] = {}
                scores = model.score(s.user_id, items, s.hour, s.position)
                name = method
            else:
                config = replace(base, agents=replace(base.agents, critic=critic))
                caught: list[AgentsModule] = []
                model = train_method(method, tables, config, seed, labellers, caught.append)
                row = truth.critic_scores(caught[0], model.feature_space)
                scores = model.score(s.user_id, items, s.hour, s.position, s.history)
                name = f"{method} ({critic} critic)"
            row["actor"] = truth.corr(scores)
            row["actor_play"] = truth.corr(scores, truth.play)
            row["actor_no_hate"] = truth.corr(scores, -truth.hate)
            policy = ScoredRankingPolicy(model.score, model.temperature, name=name)
            row["watch_s"] = true_metrics(world, policy, 1000 + seed, 1)["true_session_watch_s"]
            rows.setdefault(name, []).append(row)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in row.items())
            print(f"  seed {seed} {name}: {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"\n{args.data_dir}, seeds {seeds}: rank correlation with the truth; watch_s = true")
    print("session watch time (s), one rolled-out day; means over the seeds\n")
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, rs in rows.items():
        cells = []
        for c in COLUMNS:
            v = [r[c] for r in rs if c in r]
            fmt = "{:.0f}" if c == "watch_s" else "{:.3f}"
            cells.append(fmt.format(np.mean(v)) if v else "–")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
