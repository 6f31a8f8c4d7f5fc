"""Configuration of the world: sizes, funnel, costs and the constants of its equations.

Every constant of the generative model in :mod:`components.world` lives here with its
meaning, so that a run's ``params.yaml`` can record and change it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, int]] = {
    # ~2k requests: unit tests
    "tiny": {"n_users": 150, "n_videos": 400, "n_live": 10, "days": 3},
    # >= 1,000 users, >= 20,000 requests, >= 100,000 impressions: the default data set
    "demo": {"n_users": 1000, "n_videos": 3000, "n_live": 40, "days": 3},
    # ~1M impressions: benchmarks
    "large": {"n_users": 7000, "n_videos": 6000, "n_live": 80, "days": 3},
}


@dataclass(frozen=True)
class FeedbackParams:
    """Constants of the per-impression feedback model (see ``components.world.feedback``).

    Each binary aspect k has ``P(y_k = 1 | e) = σ(bias_k + slope_k·e + item_k)`` given the
    engagement ``e = a + noise_scale·ε``; watch fraction and play time follow the watch model.
    """

    noise_scale: float = 0.8
    click_bias: float = -1.8
    like_bias: float = -5.0
    comment_bias: float = -6.4
    follow_bias: float = -6.3
    forward_bias: float = -6.8
    hate_bias: float = -5.6
    like_slope: float = 1.2
    comment_slope: float = 1.2
    follow_slope: float = 1.0
    forward_slope: float = 1.0
    hate_slope: float = -0.8
    bait_click: float = 0.8
    bait_hate: float = 1.6
    watch_bias: float = -2.0
    watch_slope: float = 0.9
    watch_bait: float = 0.8
    watch_duration: float = -0.35
    watch_comment: float = 1.0
    watch_like: float = 0.7
    watch_noise: float = 0.7
    watch_cap: float = 1.5
    long_view_ms: float = 18_000.0


@dataclass(frozen=True)
class SessionParams:
    """Within-session user state, leaving and next-day return (``components.world.engine``)."""

    interest_weight: float = 0.6
    interest_decay: float = 0.7
    fatigue_step: float = 0.05
    fatigue_bait: float = 0.08
    fatigue_hate: float = 0.3
    fatigue_relief: float = 0.08
    leave_bias: float = -3.0
    leave_activity: float = -0.6
    leave_fatigue: float = 1.0
    leave_watch: float = -1.0
    leave_interactions: float = -0.5
    leave_hate: float = 0.8
    leave_live_annoy: float = 0.9
    max_requests: int = 30
    return_bias: float = -0.2
    return_activity: float = 0.8
    return_watch: float = 0.4
    return_live_annoy: float = -1.5
    return_hate: float = -3.0
    idle_return_bias: float = -0.8
    seconds_between_requests: float = 4.0


@dataclass(frozen=True)
class LiveParams:
    """Live streams: heavy-tailed per-user value and a cost for the uninterested (SL-MGAC)."""

    affinity_mu: float = -1.6
    affinity_sigma: float = 1.6
    streamer_boost: float = 0.8
    enter_bias: float = -1.0
    enter_match: float = 0.5
    watch_minutes: float = 3.0
    watch_sigma: float = 0.7
    max_watch_minutes: float = 60.0
    skip_seconds: float = 3.0
    history_days: int = 21
    history_daily_offers: float = 1.5
    log_bias: float = -1.4
    log_history: float = 0.35


@dataclass(frozen=True)
class FunnelParams:
    """Recall pool, stage quotas (buckets), stage costs and the logging policy's noise."""

    pool_size: int = 150
    slate_size: int = 6
    match_buckets: tuple[int, ...] = (40, 60, 90, 120)
    pre_buckets: tuple[int, ...] = (12, 18, 24, 36)
    cost_match: float = 0.01  # per pool item scored by matching
    cost_pre: float = 0.05  # per matched item scored by pre-ranking
    cost_rank: float = 0.5  # per pre-ranked item scored by ranking
    match_noise: float = 2.5
    pre_noise: float = 1.2
    rank_noise: float = 0.35
    production_taste_share: float = 1.0
    rank_bait_bias: float = 0.15
    rank_temperature: float = 0.5
    rank_explore_top: int = 12  # the logging ranker samples among its top-n candidates
    quota_depth_pref: float = 0.6
    quota_peak_penalty: float = 1.2
    random_share: float = 0.05
    non_impressions_per_request: int = 10


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world; with a seed it defines a data set exactly."""

    n_users: int = 1200
    n_videos: int = 3000
    n_live: int = 40
    days: int = 5
    dim: int = 8
    affinity_scale: float = 3.0
    quality_scale: float = 0.4
    feedback: FeedbackParams = field(default_factory=FeedbackParams)
    session: SessionParams = field(default_factory=SessionParams)
    live: LiveParams = field(default_factory=LiveParams)
    funnel: FunnelParams = field(default_factory=FunnelParams)

    def __post_init__(self) -> None:
        f = self.funnel
        checks = [
            (self.n_users >= 2, f"n_users must be >= 2, got {self.n_users}"),
            (self.days >= 1, f"days must be >= 1, got {self.days}"),
            (self.n_live >= 1, f"n_live must be >= 1, got {self.n_live}"),
            (
                self.n_videos >= f.pool_size,
                f"n_videos ({self.n_videos}) must be >= pool_size ({f.pool_size}): "
                "a recall pool draws distinct videos",
            ),
            (
                max(f.match_buckets) <= f.pool_size,
                f"match buckets {f.match_buckets} must not exceed pool_size {f.pool_size}",
            ),
            (
                max(f.pre_buckets) <= min(f.match_buckets),
                f"pre-ranking buckets {f.pre_buckets} must be <= every matching bucket "
                f"{f.match_buckets} so that q_pre <= q_match always holds",
            ),
            (
                min(f.pre_buckets) > f.slate_size,
                f"pre-ranking buckets {f.pre_buckets} must exceed slate_size {f.slate_size} "
                "so that some ranked candidates are not shown",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> WorldConfig:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    def with_overrides(self, overrides: Mapping[str, Any]) -> WorldConfig:
        """This config with ``{"part.field": value}`` (``funnel.rank_noise``) or
        ``{"field": value}`` (``days``) changed; a value given as text is converted to the
        field's type. Unknown keys raise ``ValueError`` naming the known ones."""
        config = self
        for key, value in overrides.items():
            part, _, name = key.rpartition(".")
            if part and part not in _PARTS:
                raise ValueError(f"unknown world section {part!r} in {key!r}; known: {_PARTS}")
            target = getattr(config, part) if part else config
            known = {f.name: f for f in fields(target)}
            if name not in known or name in _PARTS:
                raise ValueError(
                    f"unknown world parameter {key!r}; {part or 'WorldConfig'} has "
                    f"{sorted(n for n in known if n not in _PARTS)}"
                )
            current = getattr(target, name)
            if isinstance(value, str) and not isinstance(current, str):
                if isinstance(current, tuple):
                    raise ValueError(f"{key!r} is a tuple; it cannot be set from the command line")
                value = type(current)(float(value)) if isinstance(current, int) else float(value)
            changed = replace(target, **{name: value})
            config = replace(config, **{part: changed}) if part else changed
        return config

    def with_sizes(self, **sizes: int) -> WorldConfig:
        return replace(self, **sizes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        """Inverse of :meth:`to_dict` (as saved in a data set's ``meta.json``)."""
        parts = {
            "feedback": FeedbackParams,
            "session": SessionParams,
            "live": LiveParams,
            "funnel": FunnelParams,
        }
        kwargs = dict(d)
        for key, part in parts.items():
            if key in kwargs:
                values = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs[key].items()}
                kwargs[key] = part(**values)
        return cls(**kwargs)


_PARTS = ("feedback", "session", "live", "funnel")


def find_kuairand_dir() -> Path | None:
    """Where real KuaiRand feature files are, if anywhere.

    ``RELAYREC_KUAIRAND_DIR`` wins (set it to an empty string to force synthetic features);
    otherwise ``../shared/data/kuairand`` next to the repository.
    """
    env = os.environ.get("RELAYREC_KUAIRAND_DIR")
    if env is not None:
        return Path(env) if env and Path(env).is_dir() else None
    here = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kuairand"
    return here.resolve() if here.is_dir() else None
