"""The world: a seeded ground-truth simulator of a short-video feed with a live-stream slot.

It makes the seed papers' problems real so that their methods have something to win, and
scores any policy by its *true* online value (a simulated A/B test) with
:meth:`World.rollout`. The generative model, equation by equation, is documented in
``docs/world.md`` and in the docstrings of the submodules:

* :mod:`components.world.population` — users, videos, live streams and their latent truth;
* :mod:`components.world.feedback` — correlated multi-aspect feedback and play time;
* :mod:`components.world.engine` — sessions through the funnel, state, leaving, retention,
  compute cost and the daily traffic curve;
* :mod:`components.world.policies` — the stochastic logging policy and reference policies;
* :mod:`components.world.dataset` — logs shaped into the contract tables.
"""

from components.world.config import PRESETS, WorldConfig, find_kuairand_dir
from components.world.dataset import generate_dataset
from components.world.engine import RolloutResult, World, traffic_curve
from components.world.policies import (
    FixedLivePolicy,
    FixedQuotaPolicy,
    LoggingPolicy,
    Observation,
    OracleRankingPolicy,
    Policy,
    ScoredRankingPolicy,
    UniformRankingPolicy,
)

__all__ = [
    "PRESETS",
    "FixedLivePolicy",
    "FixedQuotaPolicy",
    "LoggingPolicy",
    "Observation",
    "OracleRankingPolicy",
    "Policy",
    "RolloutResult",
    "ScoredRankingPolicy",
    "UniformRankingPolicy",
    "World",
    "WorldConfig",
    "find_kuairand_dir",
    "generate_dataset",
    "traffic_curve",
]
