"""The world behaves as designed: deterministic, consistent logs, exact propensities and
probabilities, and the effects the seed systems need (DESIGN.md §5)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from components.schema import FEEDBACK_FLAGS, SPECS
from components.world import (
    FixedLivePolicy,
    FixedQuotaPolicy,
    LoggingPolicy,
    OracleRankingPolicy,
    World,
    WorldConfig,
    generate_dataset,
)
from components.world.config import FeedbackParams
from components.world.feedback import ItemTraits, exact_probabilities, sample_feedback
from components.world.policies import plackett_luce


@pytest.fixture(scope="module")
def tiny() -> tuple[dict[str, pd.DataFrame], object]:
    return generate_dataset("tiny", seed=3)


@pytest.fixture(scope="module")
def demo_world() -> World:
    return World(WorldConfig.from_preset("demo"), seed=0)


def test_same_seed_same_tables_and_other_seed_differs(tiny) -> None:
    tables, meta = tiny
    again, meta2 = generate_dataset("tiny", seed=3)
    assert meta == meta2
    assert tables.keys() == again.keys()
    for name in tables:
        pd.testing.assert_frame_equal(tables[name], again[name])
    other, _ = generate_dataset("tiny", seed=4)
    assert not other["impressions"].equals(tables["impressions"])


def test_tables_follow_the_contract(tiny) -> None:
    tables, meta = tiny
    assert set(meta.tables) == set(tables)
    for name, df in tables.items():
        missing = set(SPECS[name].column_names) - set(df.columns)
        assert not missing, f"{name} lacks {missing}"
        assert len(df) > 0
    imp = tables["impressions"]
    assert imp["propensity"].between(0, 1, inclusive="right").all()
    assert (imp.groupby("request_id").size() == meta.slate_size).all()
    for flag in FEEDBACK_FLAGS:
        assert set(imp[flag].unique()) <= {0, 1}
    req = tables["requests"]
    assert (req["q_pre"] <= req["q_match"]).all()
    assert set(imp["request_id"]) == set(req["request_id"])
    assert tables["users"]["live_watch_3w"].ge(0).all()
    # long_view is KuaiRand's rule: play >= min(duration, 18 s)
    rule = imp["play_time_ms"] >= np.minimum(imp["duration_ms"], 18_000)
    assert (imp["long_view"] == rule.astype(int)).all()


def test_pools_rebuild_every_stage(tiny) -> None:
    """The pool's stage marks agree with the logged quotas and the shown slate."""
    tables, meta = tiny
    pools = tables["pools"].set_index("request_id")
    req = tables["requests"].set_index("request_id")
    stage = np.stack(pools["stage"].to_numpy())
    items = np.stack(pools["item_ids"].to_numpy())
    assert all(len(set(row)) == len(row) for row in items[:200])  # distinct recall pool
    np.testing.assert_array_equal((stage >= 1).sum(1), req.loc[pools.index, "q_match"])
    np.testing.assert_array_equal((stage >= 2).sum(1), req.loc[pools.index, "q_pre"])
    np.testing.assert_array_equal((stage == 3).sum(1), meta.slate_size)
    shown = tables["impressions"].groupby("request_id")["item_id"].apply(set)
    for rid in pools.index[:300]:
        row = pools.loc[rid]
        assert set(np.asarray(row["item_ids"])[np.asarray(row["stage"]) == 3]) == shown[rid]
    # matching keeps the top q_match by its logged score
    m = np.stack(pools["match_score"].to_numpy())
    q = req.loc[pools.index, "q_match"].to_numpy()
    kth = -np.sort(-m, axis=1)[np.arange(len(m)), q - 1]
    np.testing.assert_array_equal((m >= kth[:, None]).sum(1), q)


def test_random_slice_propensities_are_uniform(tiny) -> None:
    """On the uniformly random slice, P(position k) = 1/(q_pre − k) exactly."""
    tables, _ = tiny
    req = tables["requests"]
    rand = req.loc[req["is_random"] == 1, ["request_id", "q_pre"]]
    assert 0 < len(rand) < 0.15 * len(req)
    imp = tables["impressions"].merge(rand, on="request_id")
    np.testing.assert_allclose(imp["propensity"], 1.0 / (imp["q_pre"] - imp["position"]))


def test_plackett_luce_propensities_by_hand_and_by_enumeration() -> None:
    # weights 1, 2, 3 (T = 1): P(slate = (2, 1)) = 3/6 · 2/3
    scores = np.log(np.array([[1.0, 2.0, 3.0]]))
    mask = np.ones_like(scores, dtype=bool)
    rng = np.random.default_rng(0)
    slates, props = plackett_luce(
        np.repeat(scores, 60_000, 0), np.repeat(mask, 60_000, 0), 2, 1.0, rng
    )
    exact = {}
    for a, b in itertools.permutations(range(3), 2):
        exact[(a, b)] = (a + 1) / 6 * (b + 1) / (6 - (a + 1))
    assert sum(exact.values()) == pytest.approx(1.0)
    for (a, b), p in exact.items():
        hit = (slates[:, 0] == a) & (slates[:, 1] == b)
        assert hit.mean() == pytest.approx(p, abs=0.01)
        np.testing.assert_allclose(props[hit].prod(1), p)
    # a masked column is never drawn
    mask2 = np.array([[True, False, True]])
    s2, _ = plackett_luce(np.repeat(scores, 500, 0), np.repeat(mask2, 500, 0), 2, 1.0, rng)
    assert not (s2 == 1).any()


def test_exact_probabilities_match_monte_carlo() -> None:
    """Two implementations of the feedback model agree: quadrature vs sampling."""
    params = FeedbackParams()
    n = 400_000
    affinity = np.full(n, 1.3)
    traits = ItemTraits(
        bait=np.full(n, 1.0),
        appeal=np.tile([0.5, 0.8, 0.0, -0.2], (n, 1)),
        duration_ms=np.full(n, 40_000.0),
    )
    fb = sample_feedback(affinity, traits, params, np.random.default_rng(1))
    one = ItemTraits(
        bait=traits.bait[:1], appeal=traits.appeal[:1], duration_ms=traits.duration_ms[:1]
    )
    exact = exact_probabilities(affinity[:1], one, params, nodes=40)
    for aspect in ("click", "like", "comment", "follow", "forward", "hate", "long_view"):
        p = exact[aspect][0]
        se = np.sqrt(p * (1 - p) / n)
        assert getattr(fb, aspect).mean() == pytest.approx(p, abs=5 * se + 1e-4), aspect
    assert fb.play_ms.mean() == pytest.approx(exact["play_ms"][0], rel=0.01)
    # the default quadrature is as good as the fine one
    coarse = exact_probabilities(affinity[:1], one, params)
    for k, v in exact.items():
        assert coarse[k][0] == pytest.approx(v[0], rel=2e-3)


def test_comment_goes_with_longer_watching(tiny) -> None:
    """The collaborative relation MMRF relies on is in the logs."""
    imp = tiny[0]["impressions"]
    frac = imp["play_time_ms"] / imp["duration_ms"]
    assert frac[imp["is_comment"] == 1].mean() > 1.3 * frac[imp["is_comment"] == 0].mean()


def test_truth_table_is_the_bayes_optimal_predictor(tiny) -> None:
    tables, _ = tiny
    imp = tables["impressions"].merge(tables["truth"], on=["request_id", "item_id"])
    assert len(imp) == len(tables["impressions"])
    # calibrated: mean predicted ≈ observed rate
    assert imp["p_click"].mean() == pytest.approx(imp["is_click"].mean(), abs=0.01)
    assert imp["expected_play_ms"].mean() == pytest.approx(imp["play_time_ms"].mean(), rel=0.03)


def test_world_without_kuairand_features() -> None:
    world = World(WorldConfig.from_preset("tiny"), seed=0, kuairand_dir=None)
    assert world.pop.feature_source == "synthetic"
    summary = world.rollout(LoggingPolicy(), seed=0, days=1).summary()
    assert summary["session_watch_time_s"] > 0


def test_oracle_affinity_ranking_beats_logging(demo_world: World) -> None:
    gaps = []
    for seed in (1, 2):
        log = demo_world.rollout(LoggingPolicy(), seed=seed, days=2).summary()
        orc = demo_world.rollout(OracleRankingPolicy(), seed=seed, days=2).summary()
        gaps.append(orc["session_watch_time_s"] / log["session_watch_time_s"])
    assert min(gaps) > 1.2, gaps


def test_live_injection_helps_the_top_group_and_costs_the_bottom(demo_world: World) -> None:
    users = demo_world.pop.users
    q25, q75 = np.quantile(users["live_watch_3w"], [0.25, 0.75])
    out = {}
    for rate in (0.0, 1.0):
        s = demo_world.rollout(FixedLivePolicy(rate), seed=5, days=2).sessions
        top, bottom = s[s["live_watch_3w"] > q75], s[s["live_watch_3w"] <= q25]
        out[rate] = (top["live_s"].mean(), bottom["app_s"].mean(), bottom["return_p"].mean())
    assert out[1.0][0] > out[0.0][0] + 60  # top group: minutes more live watching
    assert out[1.0][1] < 0.95 * out[0.0][1]  # bottom group: less time in the app
    assert out[1.0][2] < out[0.0][2]  # bottom group: lower next-day return


def test_deeper_quotas_diminishing_returns_linear_cost(demo_world: World) -> None:
    f = demo_world.config.funnel
    levels = list(zip(f.match_buckets, f.pre_buckets, strict=True))
    value, cost = [], []
    for qm, qp in levels:
        s = demo_world.rollout(FixedQuotaPolicy(qm, qp), seed=9, days=2).summary()
        value.append(s["session_watch_time_s"] / s["depth"])  # watch time per request
        cost.append(s["compute_cost_per_request"])
        assert cost[-1] == pytest.approx(
            f.cost_match * f.pool_size + f.cost_pre * qm + f.cost_rank * qp
        )
    gain_per_cost = np.diff(value) / np.diff(cost)
    assert value[-1] > value[0]
    assert gain_per_cost[0] > gain_per_cost[-1]


def test_bad_configs_are_refused_with_the_rule() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        WorldConfig(n_videos=50)
    with pytest.raises(ValueError, match="unknown preset"):
        WorldConfig.from_preset("huge")
    with pytest.raises(ValueError, match="live injection rate"):
        FixedLivePolicy(1.5)


def test_world_overrides_change_one_parameter_and_refuse_unknown_ones() -> None:
    base = WorldConfig.from_preset("tiny")
    changed = base.with_overrides({"funnel.rank_noise": "1.5", "days": "2"})
    assert (changed.funnel.rank_noise, changed.days) == (1.5, 2)
    assert isinstance(changed.days, int)
    assert changed.with_overrides({"funnel.rank_noise": 0.35, "days": base.days}) == base
    for bad in ({"funnel.nope": 1}, {"nope.rank_noise": 1}, {"funnel": 1}):
        with pytest.raises(ValueError, match="unknown world"):
            base.with_overrides(bad)
    with pytest.raises(ValueError, match="tuple"):
        base.with_overrides({"funnel.pre_buckets": "12"})


def test_quality_scale_scales_item_quality_and_nothing_else() -> None:
    """``q_i ~ N(0, σ_q²)`` from the same draws: tripling ``quality_scale`` triples every
    quality and leaves every other latent (drawn from the same generator) unchanged."""
    base = World(WorldConfig.from_preset("tiny"), seed=0, kuairand_dir=None)
    config = WorldConfig.from_preset("tiny").with_overrides({"quality_scale": "1.2"})
    assert config.quality_scale == pytest.approx(1.2)
    strong = World(config, seed=0, kuairand_dir=None)
    np.testing.assert_allclose(strong.pop.quality, 3.0 * base.pop.quality, rtol=1e-12)
    for name in ("user_pref", "video_vec", "bait", "appeal", "live_affinity"):
        np.testing.assert_array_equal(getattr(strong.pop, name), getattr(base.pop, name))
    assert 0.3 < base.pop.quality.std() < 0.5  # the default σ_q = 0.4


def test_production_taste_share_sets_what_the_logging_ranker_knows() -> None:
    """Share 1 (default): the production models know the user's whole static taste. Share 0:
    only the part the user features explain, so their ranking scores (noise-free) are the
    affinity computed with that part."""
    full = World(WorldConfig.from_preset("tiny"), seed=0, kuairand_dir=None)
    np.testing.assert_array_equal(full.pop.production_pref, full.pop.user_pref)
    config = WorldConfig.from_preset("tiny").with_overrides(
        {"funnel.production_taste_share": 0.0, "funnel.rank_noise": 0.0}
    )
    blind = World(config, seed=0, kuairand_dir=None)
    # the same users and the same true taste: only the production model's view changes
    np.testing.assert_array_equal(blind.pop.user_pref, full.pop.user_pref)
    cos = np.sum(blind.pop.production_pref * blind.pop.user_pref, axis=1)
    assert 0.2 < cos.mean() < 0.95  # partly, not wholly, the true taste
    users, items = np.arange(4), np.tile(np.arange(10), (4, 1))
    rng = np.random.default_rng(0)
    scores = blind.production_scores("rank", users, items, rng)
    bait = config.funnel.rank_bait_bias * blind.pop.bait[items]
    want = (
        config.affinity_scale
        * np.einsum("bd,bnd->bn", blind.pop.production_pref[users], blind.pop.video_vec[items])
        + blind.pop.quality[items]
        + bait
    )
    np.testing.assert_allclose(scores, want)
