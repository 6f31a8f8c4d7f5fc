"""World data sets: simulate the logging policy and shape the logs into the contract tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.io import DatasetMeta
from components.schema import SPECS
from components.world.config import WorldConfig
from components.world.engine import World


def generate_dataset(
    preset: str = "demo",
    seed: int = 0,
    kuairand_dir: Path | str | None = "auto",
    config: WorldConfig | None = None,
) -> tuple[dict[str, pd.DataFrame], DatasetMeta]:
    """Make the data set of ``preset`` (or ``config``) from ``seed``, deterministically.

    User and video features are sampled from the real KuaiRand-Pure tables when
    ``kuairand_dir`` (default: found automatically) holds them, else synthesised.
    """
    config = config or WorldConfig.from_preset(preset)
    world = World(config, seed=seed, kuairand_dir=kuairand_dir)
    raw, _ = world.generate()
    tables = shape_tables(world, raw)
    meta = DatasetMeta(
        source="world",
        seed=seed,
        preset=preset if config == WorldConfig.from_preset(preset) else "custom",
        slate_size=config.funnel.slate_size,
        tables=tuple(tables),
        params={
            "world": config.to_dict(),
            "feature_source": world.pop.feature_source,
            "capabilities": {"funnel": True, "live": True, "random_exposure": True},
        },
        notes=(f"user and video features: {world.pop.feature_source}",),
    )
    return tables, meta


def shape_tables(world: World, raw: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Raw simulator logs → the contract tables, with dtypes and column order of the specs."""
    requests = raw["requests"]
    traffic = requests.groupby(["day", "hour"])["request_id"].transform("size")
    requests = requests.assign(traffic=traffic.astype(np.int64))
    sessions = (
        requests.groupby("session_id")
        .agg(user_id=("user_id", "first"), day=("day", "first"), n_requests=("request_id", "size"))
        .reset_index()
    )
    start = requests[requests["position_in_session"] == 0].set_index("session_id")["hour"]
    sessions["start_hour"] = sessions["session_id"].map(start).astype(np.int64)
    returned = world.last_sessions.set_index("session_id")["returned_next_day"]
    sessions["returned_next_day"] = sessions["session_id"].map(returned).astype(np.int64)
    pools = raw["pools"].assign(
        match_score=[r.astype(np.float32) for r in raw["pools"]["match_score"]],
        pre_score=[r.astype(np.float32) for r in raw["pools"]["pre_score"]],
    )
    tables = {
        "users": world.pop.users,
        "items": world.pop.items,
        "sessions": sessions,
        "requests": requests,
        "impressions": raw["impressions"],
        "non_impressions": raw["non_impressions"],
        "pools": pools,
        "truth": raw["truth"],
    }
    return {name: _conform(df, name) for name, df in tables.items()}


def _conform(df: pd.DataFrame, name: str) -> pd.DataFrame:
    spec = SPECS[name]
    extra = [c for c in df.columns if c not in spec.column_names]
    out = df.loc[:, [*spec.column_names, *extra]].copy()
    for col in spec.columns:
        if col.kind == "int" and not col.nullable:
            out[col.name] = out[col.name].astype(np.int64)
        elif col.kind == "int":
            out[col.name] = out[col.name].astype("Int64")
        elif col.kind == "float":
            out[col.name] = out[col.name].astype(np.float64)
        elif col.kind == "str":
            out[col.name] = out[col.name].astype("str") if not col.nullable else out[col.name]
    return out.reset_index(drop=True)
