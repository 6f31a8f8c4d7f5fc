"""Policies the world can run: the stochastic logging policy and reference policies.

A policy makes every decision of one request (DESIGN.md §1) for a batch of requests at once:

1. ``allocate``  — stage quotas ``(q_match, q_pre)`` from the buckets (MaRCA's decision);
2. ``match_scores`` / ``prerank_scores`` — scores over the pool / the matched items; each stage
   keeps its top-``q`` (UNEX-RL's matching and pre-ranking agents);
3. ``rank`` — the slate of K items with position-wise propensities (MMRF's ranking agents);
4. ``live`` — inject the live candidate or not, with its propensity (SL-MGAC's decision).

The base class is the platform's *logging policy*: the production models of the simulated
platform, i.e. noisy estimates of the user's static preference that ignore the session state
and over-rate clickbait, sampled with Plackett–Luce at ranking. A subclass overrides only the
decisions it makes; every other decision stays the logging policy's.

Scores are higher-is-better; ranking samples
``P(i at k | earlier) = exp(s_i/T) / Σ_{j not yet placed} exp(s_j/T)`` (Plackett–Luce) and
``T = 0`` means a deterministic top-K with propensity 1.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import expit

if TYPE_CHECKING:
    from components.world.engine import World


@dataclass(frozen=True)
class Observation:
    """What a policy sees for a batch of B requests at one step.

    ``truth`` returns the current true affinity ``a`` (B, n) of given item ids; it exists for
    oracle and reference policies only — a learned policy must never call it.
    """

    user_id: np.ndarray
    day: int
    hour: np.ndarray
    position: np.ndarray
    history: np.ndarray  # (B, 6) the session so far, components.features.HISTORY_COLUMNS
    live_watch_3w: np.ndarray
    hour_load: np.ndarray
    truth: Callable[[np.ndarray], np.ndarray]

    @property
    def size(self) -> int:
        return len(self.user_id)


@dataclass(frozen=True)
class QuotaDecision:
    q_match: np.ndarray
    q_pre: np.ndarray
    propensity: np.ndarray


@dataclass(frozen=True)
class SlateDecision:
    slate: np.ndarray  # (B, K) column indices into the candidate matrix
    propensity: np.ndarray  # (B, K) position-wise
    scores: np.ndarray  # (B, n) the scores the slate was drawn from
    is_random: np.ndarray  # (B,) uniformly random exposure


@dataclass(frozen=True)
class LiveDecision:
    inject: np.ndarray
    propensity: np.ndarray  # probability of the action taken


def plackett_luce(
    scores: np.ndarray,
    mask: np.ndarray,
    k: int,
    temperature: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw K distinct columns per row without replacement and their position-wise propensity.

    Gumbel-top-k draws exactly from Plackett–Luce; the propensity at position k is
    ``exp(s_i/T)/Σ_{j remaining} exp(s_j/T)`` over valid (``mask``) columns not yet placed.
    """
    if np.any(mask.sum(axis=1) < k):
        raise ValueError(f"every row needs at least {k} valid candidates to fill a slate")
    if temperature <= 0:
        masked = np.where(mask, scores, -np.inf)
        slate = np.argsort(-masked, axis=1, kind="stable")[:, :k]
        return slate, np.ones(slate.shape)
    logits = np.where(mask, scores / temperature, -np.inf)
    gumbel = rng.gumbel(size=scores.shape)
    slate = np.argsort(-(logits + gumbel), axis=1, kind="stable")[:, :k]
    rows = np.arange(len(scores))
    shift = np.max(logits, axis=1, keepdims=True)
    remaining = np.where(mask, np.exp(logits - shift), 0.0)
    propensity = np.empty(slate.shape)
    for pos in range(k):  # sum what is left at each position: no cancellation error
        chosen = remaining[rows, slate[:, pos]]
        propensity[:, pos] = chosen / remaining.sum(axis=1)
        remaining[rows, slate[:, pos]] = 0.0
    return slate, np.clip(propensity, 1e-12, 1.0)


def sample_levels(logits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample one level per row from softmax(logits); return levels and their probability."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    u = rng.random((len(p), 1))
    level = np.minimum((u > np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)
    return level, p[np.arange(len(p)), level]


class Policy:
    """The logging policy; subclasses override the decisions they make."""

    name = "logging"
    rank_temperature: float | None = None  # None: the world's logging temperature
    explore_top: int | None = None  # None: the world's logging value; 0: all candidates
    random_share: float | None = None  # None: the world's uniformly random slice share

    def allocate(self, obs: Observation, world: World, rng: np.random.Generator) -> QuotaDecision:
        """Quota levels from ``softmax(depth_pref·j − peak_penalty·(load−1)·j)`` per stage."""
        f = world.config.funnel
        qm_level, qm_p = sample_levels(_depth_logits(len(f.match_buckets), obs, f), rng)
        qp_level, qp_p = sample_levels(_depth_logits(len(f.pre_buckets), obs, f), rng)
        return QuotaDecision(
            q_match=np.asarray(f.match_buckets)[qm_level],
            q_pre=np.asarray(f.pre_buckets)[qp_level],
            propensity=qm_p * qp_p,
        )

    def match_scores(
        self, obs: Observation, items: np.ndarray, world: World, rng: np.random.Generator
    ) -> np.ndarray:
        return world.production_scores("match", obs.user_id, items, rng)

    def prerank_scores(
        self, obs: Observation, items: np.ndarray, world: World, rng: np.random.Generator
    ) -> np.ndarray:
        return world.production_scores("pre", obs.user_id, items, rng)

    def rank_scores(
        self, obs: Observation, items: np.ndarray, world: World, rng: np.random.Generator
    ) -> np.ndarray:
        return world.production_scores("rank", obs.user_id, items, rng)

    def rank(
        self,
        obs: Observation,
        items: np.ndarray,
        mask: np.ndarray,
        world: World,
        rng: np.random.Generator,
    ) -> SlateDecision:
        """Plackett–Luce over ``rank_scores`` restricted to the top ``explore_top`` candidates;
        on a ``random_share`` slice, uniformly random over all candidates."""
        f = world.config.funnel
        scores = self.rank_scores(obs, items, world, rng)
        share = f.random_share if self.random_share is None else self.random_share
        is_random = rng.random(obs.size) < share
        top = f.rank_explore_top if self.explore_top is None else self.explore_top
        if top:
            order = np.argsort(-np.where(mask, scores, -np.inf), axis=1, kind="stable")
            in_top = np.zeros_like(mask)
            np.put_along_axis(in_top, order[:, :top], True, axis=1)
            mask = mask & (in_top | is_random[:, None])
        scores = np.where(is_random[:, None], 0.0, scores)
        temperature = f.rank_temperature if self.rank_temperature is None else self.rank_temperature
        if temperature <= 0 and is_random.any():
            raise ValueError("a deterministic ranking policy cannot have a random slice")
        slate, propensity = plackett_luce(scores, mask, f.slate_size, max(temperature, 0.0), rng)
        return SlateDecision(slate, propensity, scores, is_random)

    def live(
        self, obs: Observation, live_items: np.ndarray, world: World, rng: np.random.Generator
    ) -> LiveDecision:
        """Inject with ``p = σ(b + c·log(1 + live_watch_3w/60))``."""
        lp = world.config.live
        p = expit(lp.log_bias + lp.log_history * np.log1p(obs.live_watch_3w / 60.0))
        inject = rng.random(obs.size) < p
        return LiveDecision(inject, np.where(inject, p, 1.0 - p))


def _depth_logits(n_levels: int, obs: Observation, f: object) -> np.ndarray:
    j = np.arange(n_levels)[None, :]
    load = obs.hour_load[:, None]
    return f.quota_depth_pref * j - f.quota_peak_penalty * (load - 1.0) * j


LoggingPolicy = Policy


class OracleRankingPolicy(Policy):
    """Ranks by the true current affinity ``a`` (session state included), deterministic top-K.

    Clickbait is not part of ``a``, so the oracle is not lured by it: it shows what the user
    truly likes now. A reference upper line for ranking, never a deployable policy.
    """

    name = "oracle_affinity"
    rank_temperature = 0.0
    random_share = 0.0
    explore_top = 0

    def rank_scores(
        self, obs: Observation, items: np.ndarray, world: World, rng: np.random.Generator
    ) -> np.ndarray:
        return obs.truth(items)


class UniformRankingPolicy(Policy):
    """Uniformly random slate from the pre-ranked candidates."""

    name = "uniform"
    random_share = 1.0
    explore_top = 0


class FixedQuotaPolicy(Policy):
    """Always the same quota levels (MaRCA's static baseline)."""

    def __init__(self, q_match: int, q_pre: int) -> None:
        self.q_match, self.q_pre = q_match, q_pre
        self.name = f"fixed_quota_{q_match}_{q_pre}"

    def allocate(self, obs: Observation, world: World, rng: np.random.Generator) -> QuotaDecision:
        ones = np.ones(obs.size, dtype=np.int64)
        return QuotaDecision(ones * self.q_match, ones * self.q_pre, np.ones(obs.size))


class FixedLivePolicy(Policy):
    """Inject the live candidate with a fixed probability for every request."""

    def __init__(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"live injection rate must be in [0, 1], got {rate}")
        self.rate = rate
        self.name = f"live_rate_{rate:g}"

    def live(
        self, obs: Observation, live_items: np.ndarray, world: World, rng: np.random.Generator
    ) -> LiveDecision:
        inject = rng.random(obs.size) < self.rate
        return LiveDecision(inject, np.where(inject, self.rate, 1.0 - self.rate))


def accepts_history(score: Callable[..., np.ndarray]) -> bool:
    """Whether a scoring function takes the session history (a ``history`` parameter)."""
    try:
        return "history" in inspect.signature(score).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def call_score(
    score: Callable[..., np.ndarray],
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    hour: np.ndarray,
    position: np.ndarray,
    history: np.ndarray | None,
) -> np.ndarray:
    """``score(user_ids, item_ids, hour, position[, history=...])``: the history (``(B, 6)``,
    ``components.features.HISTORY_COLUMNS``) goes only to functions that declare it."""
    if history is not None and accepts_history(score):
        return np.asarray(score(user_ids, item_ids, hour, position, history=history), float)
    return np.asarray(score(user_ids, item_ids, hour, position), dtype=float)


class ScoredRankingPolicy(Policy):
    """Ranks with any scoring function (e.g. a trained model), Plackett–Luce at ``temperature``.

    ``score(user_ids (B,), item_ids (B, n), hour (B,), position (B,)[, history=(B, 6)]) ->
    (B, n)``: a function with a ``history`` parameter also gets the session so far
    (``Observation.history``). Every other decision stays the logging policy's. This is how a
    trained ranker is A/B-tested in the world.
    """

    random_share = 0.0
    explore_top = 0

    def __init__(
        self,
        score: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
        temperature: float,
        name: str = "scored",
    ) -> None:
        self._score = score
        self.rank_temperature = temperature
        self.name = name

    def rank_scores(
        self, obs: Observation, items: np.ndarray, world: World, rng: np.random.Generator
    ) -> np.ndarray:
        return call_score(self._score, obs.user_id, items, obs.hour, obs.position, obs.history)
