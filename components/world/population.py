"""Users, videos and live streams: observable features and the latent truth behind them.

Features follow KuaiRand's schema. When the real KuaiRand-Pure feature tables are present,
users and videos are sampled from them (rows drawn without replacement while they last);
otherwise features are synthesised with the same columns and similar marginals.

Latent variables (never written to the data set; they are the ground truth):

* user preference ``u ∈ R^d``, unit norm: ``u ∝ A·x̃_u + 0.7·z_u``, with ``x̃_u`` the
  standardised numeric user features, ``A`` a fixed random projection and ``z_u ~ N(0, I)``
  — so the features carry part, not all, of the preference;
* user activity ``act_u`` from ``user_active_degree`` plus noise; it raises session length and
  next-day return;
* live affinity ``ℓ_u = exp(μ + σ·z + b·is_live_streamer)`` — log-normal, heavy-tailed;
* video vector ``v_i ∝ 0.8·E[tag_i] + 0.6·z_i`` (unit norm), quality ``q_i ~ N(0, σ_q²)``
  (``σ_q = quality_scale``, 0.4 by default),
  per-aspect appeal (like, comment, follow, forward) ``~ N(0, 0.5²)``, and clickbait
  ``b_i``: 15 % of videos have ``b_i ~ U(0.8, 1.6)``, which lifts immediate clicks and
  watching but also hate and fatigue (the trap that separates greedy from long-term ranking);
* live stream vectors ``w_j`` uniform on the unit sphere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.schema import ONEHOT_FEATURES
from components.world.config import WorldConfig

ACTIVITY = {
    "full_active": 1.0,
    "high_active": 0.5,
    "middle_active": 0.0,
    "30day_retention": -0.2,
    "2_14_day_new": -0.3,
    "low_active": -0.5,
    "day_new": -0.5,
    "single_low_active": -0.8,
    "UNKNOWN": -0.3,
}
FOLLOW_RANGES = (
    "0",
    "(0,10]",
    "(10,50]",
    "(50,100]",
    "(100,150]",
    "(150,250]",
    "(250,500]",
    "500+",
)
REGISTER_RANGES = (
    "8-14",
    "15-30",
    "31-60",
    "61-90",
    "91-180",
    "181-365",
    "366-730",
    "730+",
)
MIN_DURATION_MS = 5_000.0
MAX_DURATION_MS = 300_000.0


@dataclass(frozen=True)
class Population:
    """Observable tables plus the latent arrays, aligned by row (row i = user/item id i)."""

    users: pd.DataFrame
    items: pd.DataFrame
    user_pref: np.ndarray  # (n_users, d)
    production_pref: np.ndarray  # (n_users, d): the taste the production models know
    activity: np.ndarray  # (n_users,)
    live_affinity: np.ndarray  # (n_users,)
    video_vec: np.ndarray  # (n_videos, d)
    quality: np.ndarray  # (n_videos,)
    bait: np.ndarray  # (n_videos,)
    appeal: np.ndarray  # (n_videos, 4): like, comment, follow, forward
    duration_ms: np.ndarray  # (n_videos,)
    live_vec: np.ndarray  # (n_live, d)
    feature_source: str

    @property
    def n_videos(self) -> int:
        return len(self.duration_ms)

    @property
    def live_item_ids(self) -> np.ndarray:
        return np.arange(self.n_videos, self.n_videos + len(self.live_vec))


def _load_features(kuairand_dir: Path | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    if kuairand_dir is None:
        return None, None
    users_path = kuairand_dir / "user_features_pure.csv"
    videos_path = kuairand_dir / "video_features_basic_pure.csv"
    users = pd.read_csv(users_path) if users_path.exists() else None
    videos = pd.read_csv(videos_path) if videos_path.exists() else None
    return users, videos


def _take_rows(table: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    idx = rng.choice(len(table), size=n, replace=n > len(table))
    return table.iloc[idx].reset_index(drop=True)


def _synthetic_users(n: int, rng: np.random.Generator) -> pd.DataFrame:
    degrees = np.array(list(ACTIVITY))
    p = np.array([0.66, 0.22, 0.08, 0.001, 0.023, 0.011, 0.001, 0.003, 0.001])
    df = pd.DataFrame(
        {
            "user_active_degree": rng.choice(degrees, size=n, p=p / p.sum()),
            "is_live_streamer": (rng.random(n) < 0.22).astype(np.int64),
            "is_video_author": (rng.random(n) < 0.4).astype(np.int64),
            "follow_user_num_range": rng.choice(np.array(FOLLOW_RANGES), size=n),
            "register_days_range": rng.choice(np.array(REGISTER_RANGES), size=n),
        }
    )
    for j, name in enumerate(ONEHOT_FEATURES):
        cardinality = 2 if j >= 12 else int(rng.integers(3, 40))
        df[name] = rng.integers(0, cardinality, size=n).astype(np.float64)
    return df


def _clean_users(raw: pd.DataFrame) -> pd.DataFrame:
    """KuaiRand user rows → contract columns; -124 in is_live_streamer read as 'no'."""
    df = pd.DataFrame(
        {
            "user_active_degree": raw["user_active_degree"].fillna("UNKNOWN").astype(str),
            "is_live_streamer": (raw["is_live_streamer"] == 1).astype(np.int64),
            "is_video_author": (raw["is_video_author"] == 1).astype(np.int64),
            "follow_user_num_range": raw["follow_user_num_range"].fillna("UNKNOWN").astype(str),
            "register_days_range": raw["register_days_range"].fillna("UNKNOWN").astype(str),
        }
    )
    for name in ONEHOT_FEATURES:
        df[name] = pd.to_numeric(raw[name], errors="coerce").astype(np.float64)
    return df


def _synthetic_videos(n: int, rng: np.random.Generator) -> pd.DataFrame:
    n_tags = 60
    first = rng.integers(1, n_tags, size=n)
    second = rng.integers(1, n_tags, size=n)
    tags = np.where(
        rng.random(n) < 0.3,
        [f"{a},{b}" for a, b in zip(first, second, strict=True)],
        first.astype(str),
    )
    return pd.DataFrame(
        {
            "author_id": rng.integers(1, 9_000_000, size=n),
            "video_type": np.where(rng.random(n) < 0.01, "AD", "NORMAL"),
            "video_duration": np.exp(rng.normal(np.log(60_000), 0.9, size=n)),
            "music_type": rng.choice(np.array([4.0, 9.0, 11.0, np.nan]), size=n),
            "tag": tags,
        }
    )


def _clean_videos(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "author_id": raw["author_id"].astype(np.int64),
            "video_type": raw["video_type"].fillna("UNKNOWN").astype(str),
            "video_duration": raw["video_duration"].astype(np.float64),
            "music_type": raw["music_type"].astype(np.float64),
            "tag": raw["tag"].astype(object).where(raw["tag"].notna(), None),
        }
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(x, nan=0.0)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _user_feature_matrix(users: pd.DataFrame) -> np.ndarray:
    follow = users["follow_user_num_range"].map({r: i for i, r in enumerate(FOLLOW_RANGES)})
    register = users["register_days_range"].map({r: i for i, r in enumerate(REGISTER_RANGES)})
    cols = [users[name].to_numpy(np.float64) for name in ONEHOT_FEATURES]
    cols += [
        users["is_live_streamer"].to_numpy(np.float64),
        users["is_video_author"].to_numpy(np.float64),
        follow.to_numpy(np.float64),
        register.to_numpy(np.float64),
    ]
    x = np.stack(cols, axis=1)
    # wide-range count-like features (onehot_feat3 etc.) on a log scale
    x = np.sign(x) * np.log1p(np.abs(np.nan_to_num(x, nan=0.0)))
    return _standardise(x)


def _first_tag(tag: pd.Series) -> np.ndarray:
    first = tag.fillna("0").astype(str).str.split(",").str[0]
    return pd.to_numeric(first, errors="coerce").fillna(0).astype(np.int64).to_numpy()


def build_population(
    config: WorldConfig, rng: np.random.Generator, kuairand_dir: Path | None
) -> Population:
    """Draw users, videos, live streams and their latent truth (see module docstring)."""
    d = config.dim
    real_users, real_videos = _load_features(kuairand_dir)
    if real_users is not None:
        users = _clean_users(_take_rows(real_users, config.n_users, rng))
    else:
        users = _synthetic_users(config.n_users, rng)
    if real_videos is not None:
        usable = real_videos[real_videos["video_duration"].notna()]
        videos = _clean_videos(_take_rows(usable, config.n_videos, rng))
    else:
        videos = _synthetic_videos(config.n_videos, rng)
    source = "kuairand" if real_users is not None and real_videos is not None else "synthetic"

    # --- latent user truth ---------------------------------------------------------------
    x = _user_feature_matrix(users)
    projection = rng.normal(0.0, 1.0 / np.sqrt(x.shape[1]), size=(x.shape[1], d))
    explained = x @ projection
    idiosyncratic = 0.7 * rng.normal(size=(config.n_users, d))
    user_pref = explained + idiosyncratic
    production_pref = explained + config.funnel.production_taste_share * idiosyncratic
    activity = users["user_active_degree"].map(ACTIVITY).fillna(-0.3).to_numpy(np.float64)
    activity = activity + 0.3 * rng.normal(size=config.n_users)
    lp = config.live
    live_affinity = np.exp(
        lp.affinity_mu
        + lp.affinity_sigma * rng.normal(size=config.n_users)
        + lp.streamer_boost * users["is_live_streamer"].to_numpy(np.float64)
    )

    # --- latent video truth --------------------------------------------------------------
    tags = _first_tag(videos["tag"])
    tag_emb = rng.normal(size=(int(tags.max()) + 1, d))
    video_vec = 0.8 * tag_emb[tags] + 0.6 * rng.normal(size=(config.n_videos, d))
    quality = rng.normal(0.0, config.quality_scale, size=config.n_videos)
    bait = np.where(rng.random(config.n_videos) < 0.15, rng.uniform(0.8, 1.6, config.n_videos), 0.0)
    appeal = rng.normal(0.0, 0.5, size=(config.n_videos, 4))
    duration_ms = np.clip(
        videos["video_duration"].to_numpy(np.float64), MIN_DURATION_MS, MAX_DURATION_MS
    )
    live_vec = _unit(rng.normal(size=(config.n_live, d)))
    user_pref, video_vec = _unit(user_pref), _unit(video_vec)
    production_pref = _unit(production_pref)

    # --- observable tables ---------------------------------------------------------------
    users.insert(0, "user_id", np.arange(config.n_users, dtype=np.int64))
    users["live_watch_3w"] = _live_history(live_affinity, activity, config, rng)
    n_items = config.n_videos + config.n_live
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items, dtype=np.int64),
            "is_live": np.r_[np.zeros(config.n_videos), np.ones(config.n_live)].astype(np.int64),
            "author_id": np.r_[
                videos["author_id"].to_numpy(np.int64), rng.integers(1, 9_000_000, config.n_live)
            ],
            "video_duration": np.r_[duration_ms, np.zeros(config.n_live)],
            "video_type": np.r_[videos["video_type"].to_numpy(str), np.full(config.n_live, "LIVE")],
            "music_type": np.r_[
                videos["music_type"].to_numpy(np.float64), np.full(config.n_live, np.nan)
            ],
            "tag": list(videos["tag"]) + [None] * config.n_live,
        }
    )
    return Population(
        users=users,
        items=items,
        user_pref=user_pref,
        production_pref=production_pref,
        activity=activity,
        live_affinity=live_affinity,
        video_vec=video_vec,
        quality=quality,
        bait=bait,
        appeal=appeal,
        duration_ms=duration_ms,
        live_vec=live_vec,
        feature_source=source,
    )


def _live_history(
    live_affinity: np.ndarray, activity: np.ndarray, config: WorldConfig, rng: np.random.Generator
) -> np.ndarray:
    """Seconds of live streams watched in the 3 weeks before the log (heavy-tailed, many 0).

    ``N_u ~ Poisson(days·offers·σ(act_u)·p_enter_u)`` live visits, each lasting
    ``60·watch_minutes·ℓ_u·LogNormal(0, watch_sigma)`` seconds (capped).
    """
    lp = config.live
    p_enter = 1.0 / (1.0 + np.exp(-(lp.enter_bias + np.log(live_affinity))))
    active = 1.0 / (1.0 + np.exp(-activity))
    visits = rng.poisson(lp.history_days * lp.history_daily_offers * active * p_enter)
    owner = np.repeat(np.arange(len(visits)), visits)
    minutes = np.minimum(
        lp.watch_minutes
        * live_affinity[owner]
        * rng.lognormal(0.0, lp.watch_sigma, size=len(owner)),
        lp.max_watch_minutes,
    )
    return np.bincount(owner, weights=60.0 * minutes, minlength=len(visits)).astype(np.float64)
