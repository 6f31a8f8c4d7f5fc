"""The per-item session credit (``components.agent_data.fit_session_credit``,
``with_session_credit``, ``AgentsConfig.session_credit``): exact recovery of a known linear
future, the hand-computed reward change, and its place in agent training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from components.agent_data import (
    AGENTS,
    CREDIT_FEATURES,
    AgentData,
    SessionCredit,
    credit_features,
    fit_session_credit,
    with_session_credit,
)
from components.agents import train_agents, with_variant
from components.features import item_durations_s
from models.mmrf import AgentsConfig

A = len(AGENTS)


def _data(n: int = 400, k: int = 2, extra: int = 1, seed: int = 0) -> tuple[AgentData, np.ndarray]:
    """Random transitions of 20 users, ``k`` shown + ``extra`` candidates, and durations."""
    rng = np.random.default_rng(seed)
    c = k + extra
    rewards = rng.random((n, c, A)).astype(np.float32)
    rewards[..., 0] *= 30.0  # play seconds
    duration = rng.uniform(10.0, 60.0, (n, c))
    shown = np.zeros((n, c), dtype=bool)
    shown[:, :k] = True
    data = AgentData(
        request_id=np.arange(n),
        user_id=rng.integers(0, 20, n),
        user_row=np.zeros(n, dtype=np.int64),
        context=rng.standard_normal((n, 3)).astype(np.float32),
        history=rng.standard_normal((n, 6)).astype(np.float32),
        items=np.zeros((n, c), dtype=np.int64),
        item_row=np.zeros((n, c), dtype=np.int64),
        mask=np.ones((n, c), dtype=bool),
        shown=shown,
        rewards=rewards,
        propensity=np.ones((n, c), dtype=np.float32),
        next_index=np.full(n, -1),
        continues=np.zeros(n, dtype=np.float32),
        returns=np.zeros((n, A), dtype=np.float32),
        slate_size=k,
    )
    return data, duration


def test_credit_features_are_watch_fraction_then_auxiliary_rewards() -> None:
    rewards = np.array(
        [[12.0, 1, 0, 0, 1, -1, 1], [80.0, 0, 1, 0, 0, 0, 0], [9.0, 0, 0, 0, 0, 0, 0]]
    )
    phi = credit_features(rewards, np.array([24.0, 20.0, np.nan]))
    assert len(CREDIT_FEATURES) == phi.shape[1] == A
    # 80 / 20 = 4 is clipped to 2; an unknown duration gives a fraction of 0
    np.testing.assert_allclose(phi[:, 0], [0.5, 2.0, 0.0])
    np.testing.assert_array_equal(phi[:, 1:], rewards[:, 1:])


def test_fit_recovers_a_known_linear_future_despite_user_effects() -> None:
    data, duration = _data()
    # users who like more also stay longer anyway: a pooled fit would credit the likes
    level = np.random.default_rng(9).random(20)[data.user_id]
    rewards = data.rewards.copy()
    rewards[..., 2] += level[:, None]
    data = replace(data, rewards=rewards)
    w = np.array([20.0, -3.0, 50.0, 40.0, 35.0, 120.0, 5.0])
    phi = credit_features(data.rewards, duration)
    g = (phi[:, :2] @ w).sum(axis=1) + 800.0 * level + 7.0 * data.context[:, 1]
    returns = data.returns.copy()
    returns[:, 0] = g
    x = np.concatenate([phi[:, :2].sum(axis=1), data.context, data.history, np.ones((400, 1))], 1)
    pooled = np.linalg.lstsq(x, g, rcond=None)[0][:A]
    assert abs(pooled[2] - w[2]) > 50.0
    fit = fit_session_credit(replace(data, returns=returns), duration)
    np.testing.assert_allclose(fit.weights, w, rtol=1e-3, atol=1e-2)
    assert fit.r2 == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(fit.mean, phi[:, :2].reshape(-1, A).mean(axis=0), rtol=1e-9)
    # the non-shown candidate (column 2) played no part: changing it changes nothing
    rewards = data.rewards.copy()
    rewards[:, 2] += 5.0
    same = fit_session_credit(replace(data, returns=returns, rewards=rewards), duration)
    np.testing.assert_allclose(same.weights, fit.weights, rtol=1e-9)


def test_with_session_credit_hand_computed() -> None:
    data, _ = _data(n=1, k=2, extra=1)
    rewards = np.zeros((1, 3, A), dtype=np.float32)
    rewards[0, :, 0] = [10.0, 0.0, 5.0]  # watch fractions 1, 0 and 0.5 of 10 s videos
    rewards[0, :, 2] = [1.0, 0.0, 0.0]  # a like on the first
    mask = np.array([[True, True, False]])
    data = replace(data, rewards=rewards, mask=mask)
    weights = np.zeros(A)
    weights[0], weights[2] = 10.0, 4.0
    mean = np.zeros(A)
    mean[0] = 0.5
    credit = SessionCredit(weights=weights, mean=mean, r2=0.5)
    out = with_session_credit(data, credit, np.full((1, 3), 10.0), weight=2.0, gamma=0.5)
    # λ·γ·w·(φ − φ̄): first 1·(10·0.5 + 4·1) = 9, second 1·(10·(−0.5)) = −5, third masked
    np.testing.assert_allclose(out.rewards[0, :, 0], [19.0, -5.0, 5.0])
    np.testing.assert_array_equal(out.rewards[..., 1:], rewards[..., 1:])
    assert data.rewards[0, 0, 0] == 10.0  # the input is not changed


def test_item_durations_in_seconds_unknown_as_nan() -> None:
    items = pd.DataFrame({"item_id": [3, 5, 7], "video_duration": [15_000.0, 0.0, np.nan]})
    np.testing.assert_allclose(item_durations_s(items).loc[[3, 5, 7]], [15.0, np.nan, np.nan])


def test_credit_leaves_the_mean_shown_reward_of_the_fitted_data_unchanged() -> None:
    # Σ over shown items of w·(φ_i − φ̄) = 0 when φ̄ is their own mean
    data, duration = _data()
    returns = data.returns.copy()
    returns[:, 0] = np.random.default_rng(3).normal(100.0, 30.0, len(data))
    data = replace(data, returns=returns)
    fit = fit_session_credit(data, duration)
    out = with_session_credit(data, fit, duration, weight=1.5, gamma=0.9)
    before, after = data.rewards[..., 0][data.shown], out.rewards[..., 0][data.shown]
    assert after.mean() == pytest.approx(before.mean(), abs=1e-3)
    assert np.abs(after - before).max() > 1.0  # but each item moved


def test_config_refuses_a_negative_credit() -> None:
    with pytest.raises(ValueError, match="session_credit"):
        AgentsConfig(session_credit=-0.5)


def test_training_with_credit_records_the_fit_and_changes_the_agents() -> None:
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=0)
    small = with_variant(
        AgentsConfig(epochs=1, rounds=1, dim=8, heads=2, hidden=16, batch_size=256), "mmrf_da"
    )
    plain = train_agents(tables, small, seed=0, threads=1)
    credited = train_agents(tables, replace(small, session_credit=1.0), seed=0, threads=1)
    assert "session_credit" not in plain.metrics
    fit = credited.metrics["session_credit"]
    assert list(fit["weights"]) == list(CREDIT_FEATURES)
    assert all(np.isfinite(v) for v in fit["weights"].values())
    assert any(
        not np.array_equal(v.numpy(), credited.state_dict[k].numpy())
        for k, v in plain.state_dict.items()
    )


def test_each_round_credits_its_non_impressions_with_the_fit_of_the_log() -> None:
    from components.agent_data import build_agent_data
    from components.agents import _SessionCreditor
    from components.features import FeatureSpace
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=0)
    fs = FeatureSpace.fit(tables["users"], tables["items"])
    ids = tables["requests"]["request_id"].to_numpy()[:300]
    config = AgentsConfig(session_credit=2.0, gamma=0.8)
    base = build_agent_data(tables, fs, ids, config.gamma)
    creditor = _SessionCreditor.fit(base, tables["items"], config)
    ni = tables["non_impressions"]
    extra = ni[ni["request_id"].isin(ids)][["request_id", "item_id"]].head(200).copy()
    for j, agent in enumerate(AGENTS):
        extra[agent] = 30.0 if j == 0 else 0.1
    data = build_agent_data(tables, fs, ids, config.gamma, extra)
    out = creditor.apply(data)
    assert creditor.credit is not None
    dur = tables["items"].set_index("item_id")["video_duration"].to_numpy() / 1000.0
    phi = credit_features(data.rewards, dur[data.items])
    expected = data.rewards[..., 0] + 2.0 * 0.8 * creditor.credit(phi) * data.mask
    np.testing.assert_allclose(out.rewards[..., 0], expected, rtol=1e-5, atol=1e-4)
    extra_cells = data.mask & ~data.shown
    assert extra_cells.sum() == 200
    assert not np.allclose(out.rewards[..., 0][extra_cells], 30.0)  # the round is credited
