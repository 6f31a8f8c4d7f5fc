"""Logged requests as the ranking agents' transitions (MMRF, TSCAC and their ablations).

One row per logged request ``t`` of a session::

    state      s_t   = (user row, context_features(hour, position), history_features(history))
    candidates C_t   = the K shown items (logged order) + sampled non-impressions, padded
    rewards    r_t,i = per agent and candidate: logged feedback for shown items, a simulated
                       (or constant) reward for a labelled non-impression, none otherwise
    next       s_t+1 = the session's next request (index into the same arrays, −1 if none)
    continues  c_t   = requests.session_continues (0 when the user left after t)
    return     G_t+1 = Σ_k≥1 γ^(k−1) R_t+k, R = a request's summed shown rewards per agent

The agents (``AGENTS``) are the WatchTime agent (reward: play seconds) and one per auxiliary
aspect; the Hate agent's reward is ``−is_hate`` so that every agent maximises its reward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from components.features import (
    FeatureSpace,
    context_features,
    history_features,
    session_history,
    watch_fraction,
)
from components.io import DataError

AGENTS: tuple[str, ...] = (
    "watch_time",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_hate",
    "long_view",
)
"""Agent 0 is the WatchTime (main) agent; the others are the auxiliary aspect agents."""

REWARD_SIGN = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0], dtype=np.float32)
"""Multiplies each agent's logged aspect into its reward (a hate is a negative reward)."""

NON_IMPRESSION_MODES = ("simulated", "none", "negative")
"""How non-impressions enter: labelled by the feedback simulator (MMRF), left out (MMRF-DA),
or given a constant negative reward (MMRF-NS)."""


@dataclass(frozen=True, eq=False)
class AgentData:
    """Transitions of the ranking agents (module docstring), as numpy arrays.

    ``C`` candidate columns per request: the ``K`` shown items first (``shown``), then the
    labelled non-impressions; every unmasked candidate has a reward.
    ``rewards`` are raw (seconds for WatchTime, 0/1 or a probability for aspects, signed by
    ``REWARD_SIGN``); ``returns`` the discounted rewards of the following requests.
    """

    request_id: np.ndarray  # (N,)
    user_id: np.ndarray  # (N,)
    user_row: np.ndarray  # (N,)
    context: np.ndarray  # (N, 3) float32
    history: np.ndarray  # (N, 6) float32, history_features
    items: np.ndarray  # (N, C) item ids
    item_row: np.ndarray  # (N, C)
    mask: np.ndarray  # (N, C) bool
    shown: np.ndarray  # (N, C) bool
    rewards: np.ndarray  # (N, C, A) float32
    propensity: np.ndarray  # (N, C) float32, logged position-wise propensity (1 if not shown)
    next_index: np.ndarray  # (N,) int64, −1 if none
    continues: np.ndarray  # (N,) float32
    returns: np.ndarray  # (N, A) float32
    slate_size: int

    def __len__(self) -> int:
        return len(self.request_id)

    def reward_scale(self) -> np.ndarray:
        """Per-agent scale: the standard deviation of the shown items' rewards (≥ 1e-3), so
        every critic learns targets of order one."""
        r = self.rewards[self.shown]
        return np.maximum(r.std(axis=0), 1e-3).astype(np.float32)


def shown_rewards(impressions: pd.DataFrame) -> np.ndarray:
    """``(n, A)`` rewards of logged impressions in ``AGENTS`` order (play in seconds)."""
    cols = [impressions["play_time_ms"].to_numpy(np.float64) / 1000.0]
    cols += [impressions[a].to_numpy(np.float64) for a in AGENTS[1:]]
    return (np.stack(cols, axis=1) * REWARD_SIGN).astype(np.float32)


def negative_rewards(impressions: pd.DataFrame, scale: float = 1.0) -> np.ndarray:
    """MMRF-NS's constant reward for a non-impression: ``−scale`` times each agent's mean
    shown reward magnitude (a non-shown item counts as worse than an average shown one)."""
    return (-scale * np.abs(shown_rewards(impressions).mean(axis=0))).astype(np.float32)


def _discounted_returns(
    per_request: np.ndarray, next_index: np.ndarray, position: np.ndarray, gamma: float
) -> np.ndarray:
    """``G_t+1 = R_t+1 + γ·G_t+2`` along ``next_index`` chains, computed from the last request
    of each session backwards (positions descending)."""
    g = np.zeros_like(per_request)
    for p in np.unique(position)[::-1]:
        rows = np.flatnonzero((position == p) & (next_index >= 0))
        nxt = next_index[rows]
        g[rows] = per_request[nxt] + gamma * g[nxt]
    return g


def build_agent_data(
    tables: Mapping[str, pd.DataFrame],
    feature_space: FeatureSpace,
    request_ids: np.ndarray,
    gamma: float,
    extra: pd.DataFrame | None = None,
) -> AgentData:
    """Transitions of the requests ``request_ids`` (module docstring).

    ``extra``: labelled non-impressions, columns ``request_id``, ``item_id`` and one reward
    column per agent (``AGENTS``, already signed); ``None`` keeps the shown items only.
    """
    for name in ("requests", "impressions"):
        if name not in tables:
            raise DataError(f"agent training needs the {name!r} table; the data set lacks it")
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"the discount gamma must be in [0, 1), got {gamma}")
    req_all = tables["requests"]
    req = req_all.set_index("request_id").loc[np.asarray(request_ids)].reset_index()
    n = len(req)
    imp = tables["impressions"]
    imp = imp[imp["request_id"].isin(req["request_id"])]
    imp = imp.sort_values(["request_id", "position"], kind="stable")
    sizes = imp.groupby("request_id").size()
    k = int(sizes.max()) if len(sizes) else 0
    if len(sizes) != n or (sizes != k).any():
        raise DataError(
            f"every request needs the same number of impressions (slate size); got "
            f"{sizes.min() if len(sizes) else 0}..{k} over {len(sizes)} of {n} requests"
        )
    row_of = pd.Series(np.arange(n), index=req["request_id"].to_numpy())
    imp_rows = row_of.loc[imp["request_id"].to_numpy()].to_numpy()
    order = np.argsort(imp_rows, kind="stable")
    shown_items = imp["item_id"].to_numpy(np.int64)[order].reshape(n, k)
    shown_r = shown_rewards(imp.iloc[order]).reshape(n, k, len(AGENTS))
    shown_p = imp["propensity"].to_numpy(np.float32)[order].reshape(n, k)

    n_extra = np.zeros(n, dtype=np.int64)
    if extra is not None and len(extra):
        extra = extra[extra["request_id"].isin(row_of.index)]
        e_rows = row_of.loc[extra["request_id"].to_numpy()].to_numpy()
        e_order = np.argsort(e_rows, kind="stable")
        e_rows = e_rows[e_order]
        n_extra = np.bincount(e_rows, minlength=n)
    width = k + int(n_extra.max(initial=0))
    items = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=bool)
    rewards = np.zeros((n, width, len(AGENTS)), dtype=np.float32)
    propensity = np.ones((n, width), dtype=np.float32)
    items[:, :k], mask[:, :k], rewards[:, :k], propensity[:, :k] = (
        shown_items,
        True,
        shown_r,
        shown_p,
    )
    if n_extra.any():
        starts = np.concatenate([[0], np.cumsum(n_extra)[:-1]])
        col = k + np.arange(len(e_rows)) - starts[e_rows]
        items[e_rows, col] = extra["item_id"].to_numpy(np.int64)[e_order]
        mask[e_rows, col] = True
        rewards[e_rows, col] = extra[list(AGENTS)].to_numpy(np.float32)[e_order]
    items = np.where(mask, items, items[:, :1])  # pad with a real item (masked out)
    shown = np.zeros_like(mask)
    shown[:, :k] = True

    # next request of the same session within the chosen requests
    key = pd.MultiIndex.from_arrays([req["session_id"], req["position_in_session"]])
    nxt_key = pd.MultiIndex.from_arrays([req["session_id"], req["position_in_session"] + 1])
    next_index = pd.Series(np.arange(n), index=key).reindex(nxt_key).to_numpy()
    next_index = np.where(np.isnan(next_index), -1, next_index).astype(np.int64)
    continues = req["session_continues"].to_numpy(np.float32)
    next_index = np.where(continues > 0, next_index, -1)
    per_request = shown_r.sum(axis=1)
    returns = _discounted_returns(
        per_request, next_index, req["position_in_session"].to_numpy(), gamma
    )
    history = session_history(req_all, tables["impressions"]).loc[req["request_id"]].to_numpy()
    user_id = req["user_id"].to_numpy(np.int64)
    return AgentData(
        request_id=req["request_id"].to_numpy(np.int64),
        user_id=user_id,
        user_row=feature_space.user_rows(user_id),
        context=context_features(req["hour"].to_numpy(), req["position_in_session"].to_numpy()),
        history=history_features(history),
        items=items,
        item_row=feature_space.item_rows(items),
        mask=mask,
        shown=shown,
        rewards=rewards,
        propensity=propensity,
        next_index=next_index,
        continues=continues,
        returns=returns.astype(np.float32),
        slate_size=k,
    )


CREDIT_FEATURES: tuple[str, ...] = ("watch_fraction", *AGENTS[1:])
"""An item's feedback as the session-credit regression reads it (:func:`credit_features`)."""


def credit_features(rewards: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """``φ (..., F)``: the watch fraction ``play / duration`` (``features.watch_fraction``,
    clipped to [0, 2]), then the auxiliary agents' signed rewards (``CREDIT_FEATURES``);
    ``rewards (..., A)`` in ``AGENTS`` order, ``duration_s`` the shape of ``rewards[..., 0]``."""
    frac = np.clip(watch_fraction(rewards[..., 0], duration_s), 0.0, 2.0)
    return np.concatenate([frac[..., None], rewards[..., 1:]], axis=-1).astype(np.float64)


@dataclass(frozen=True)
class SessionCredit:
    """What an item's feedback does to the rest of the session, ``c_i = w·(φ_i − φ̄)``.

    ``weights (F,)`` are seconds of discounted future watch time per unit of each feature of
    one shown item; ``mean (F,)`` is ``φ̄`` over the shown items, so an average item gets
    no credit; ``r2`` is the within-user share of the future's variance the fit explains.
    """

    weights: np.ndarray
    mean: np.ndarray
    r2: float

    def __call__(self, phi: np.ndarray) -> np.ndarray:
        return (phi - self.mean) @ self.weights

    def to_dict(self) -> dict[str, object]:
        return {
            "weights": dict(zip(CREDIT_FEATURES, self.weights.round(4).tolist(), strict=True)),
            "r2": round(self.r2, 4),
        }


def _demean_by(groups: np.ndarray, x: np.ndarray) -> np.ndarray:
    codes, inverse = np.unique(groups, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(codes)).astype(np.float64)
    sums = np.zeros((len(codes), x.shape[1]))
    np.add.at(sums, inverse, x)
    return x - (sums / counts[:, None])[inverse]


def fit_session_credit(data: AgentData, duration_s: np.ndarray) -> SessionCredit:
    r"""Least squares of the WatchTime agent's future on a request's shown feedback.

    The world decides whether the user stays, and how tired they get, from the slate's
    feedback (watch fraction, interactions, hates); none of it reaches an item's own reward,
    and the shared future of a request (:func:`models.mmrf.continuation_targets`) is the
    same for every candidate, so it cannot rank them. Within each user (user means removed,
    which takes out how long a user stays anyway)::

        G_t+1,0 = Σ_{i shown at t} w·φ_i + β·[context_t ; history_t] + u_user + ε

    and ``w`` is an item's share of the future. ``duration_s`` is ``(N, C)`` like
    ``data.items``. Fitted on shown items only: it is their future that was logged.
    """
    phi = credit_features(data.rewards, duration_s)
    shown_sum = (phi * data.shown[..., None]).sum(axis=1)
    x = np.concatenate([shown_sum, data.context, data.history], axis=1).astype(np.float64)
    y = data.returns[:, :1].astype(np.float64)
    xd, yd = _demean_by(data.user_id, x), _demean_by(data.user_id, y)[:, 0]
    coef, *_ = np.linalg.lstsq(xd, yd, rcond=None)
    resid = yd - xd @ coef
    total = float((yd**2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 0.0
    n_f = len(CREDIT_FEATURES)
    return SessionCredit(weights=coef[:n_f], mean=phi[data.shown].mean(axis=0), r2=r2)


def with_session_credit(
    data: AgentData, credit: SessionCredit, duration_s: np.ndarray, weight: float, gamma: float
) -> AgentData:
    """``data`` with the WatchTime reward of every candidate raised by ``λ·γ·c_i``
    (``weight`` = λ): an item is credited now for the future its feedback buys, discounted
    like the next request. Simulated non-impressions are credited from their simulated
    feedback; MMRF-NS's constant rewards get one constant credit (a watch fraction of 0 and
    the negative aspect rewards), so they stay one constant per agent.

    Only rewards change: the Monte-Carlo returns stay as logged, while the bootstrapped
    value of the next request is learnt on credited rewards; the gap is the same for every
    candidate of a request, so it does not change how they rank."""
    phi = credit_features(data.rewards, duration_s)
    rewards = data.rewards.copy()
    rewards[..., 0] += (weight * gamma * credit(phi) * data.mask).astype(np.float32)
    return replace(data, rewards=rewards)
