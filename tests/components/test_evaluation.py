"""NCIS, GAUC and Plackett–Luce slate propensities against hand-computed values and brute force.

Each estimator is checked on an example small enough to compute by hand (the arithmetic is in
the comments), against a plain Python-loop implementation on random data, and on its limits
(on-policy weights, binding cap, ties, the ``T → 0`` ranking).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from components.evaluation import (
    ASPECTS,
    auc,
    gauc,
    ncis,
    per_aspect_ncis,
    slate_propensities,
)
from components.world.policies import plackett_luce

# --------------------------------------------------------------------------------------------
# brute-force references


def ncis_loop(rewards, target, behavior, cap):
    """NCIS value and ESS with a plain loop."""
    num = den = sq = 0.0
    for r, p, b in zip(rewards, target, behavior, strict=True):
        w = min(cap, p / b)
        num += w * r
        den += w
        sq += w * w
    return num / den, den * den / sq


def bootstrap_loop(rewards, target, behavior, cap, n_boot, seed, groups=None, alpha=0.05):
    """Percentile interval with the same draws as ``ncis`` (one chunk: small inputs)."""
    rewards, target, behavior = map(np.asarray, (rewards, target, behavior))
    labels = np.arange(len(rewards)) if groups is None else np.asarray(groups)
    uniq = list(dict.fromkeys(labels.tolist()))  # order of first appearance, like factorize
    members = [np.flatnonzero(labels == g) for g in uniq]
    draws = np.random.default_rng(seed).integers(0, len(uniq), size=(n_boot, len(uniq)))
    values = []
    for draw in draws:
        rows = np.concatenate([members[g] for g in draw])
        values.append(ncis_loop(rewards[rows], target[rows], behavior[rows], cap)[0])
    return np.quantile(values, [alpha / 2, 1 - alpha / 2])


def random_logs(n, seed=0):
    rng = np.random.default_rng(seed)
    behavior = rng.uniform(0.01, 1.0, n)
    target = rng.uniform(0.0, 1.0, n)
    rewards = rng.binomial(1, 0.3, n) * rng.exponential(2.0, n)
    return rewards, target, behavior


def pairwise_auc(labels, scores):
    """Fraction of (positive, negative) pairs ordered correctly, ties ½."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return total / (len(pos) * len(neg))


# --------------------------------------------------------------------------------------------
# NCIS


def test_ncis_hand_example():
    # ratios π/β = 0.5/0.25, 0.2/0.4, 0.9/0.3, 0.1/0.5 = 2, 0.5, 3, 0.2
    # cap 2.5 clips the third: w = 2, 0.5, 2.5, 0.2; Σw = 5.2
    # Σ w·r = 2·1 + 0.5·0 + 2.5·2 + 0.2·4 = 2 + 0 + 5 + 0.8 = 7.8  →  V = 7.8 / 5.2 = 1.5
    # Σ w² = 4 + 0.25 + 6.25 + 0.04 = 10.54  →  ESS = 5.2² / 10.54 = 27.04 / 10.54
    res = ncis([1.0, 0.0, 2.0, 4.0], [0.5, 0.2, 0.9, 0.1], [0.25, 0.4, 0.3, 0.5], cap=2.5)
    assert res.value == pytest.approx(1.5, rel=1e-12)
    assert res.ess == pytest.approx(27.04 / 10.54, rel=1e-12)
    assert res.n == 4 and res.n_groups == 4
    assert res.capped_share == 0.25  # one ratio of four (3 > 2.5)
    assert res.cap == 2.5
    assert res.ci_low <= res.value <= res.ci_high


def test_ncis_matches_loop_on_random_data():
    rewards, target, behavior = random_logs(60, seed=3)
    res = ncis(rewards, target, behavior, cap=5.0, n_boot=200, seed=11)
    value, ess = ncis_loop(rewards, target, behavior, 5.0)
    assert res.value == pytest.approx(value, rel=1e-12)
    assert res.ess == pytest.approx(ess, rel=1e-12)
    assert res.capped_share == pytest.approx(np.mean(target / behavior > 5.0))
    lo, hi = bootstrap_loop(rewards, target, behavior, 5.0, 200, seed=11)
    assert (res.ci_low, res.ci_high) == pytest.approx((lo, hi), rel=1e-10)


def test_cluster_bootstrap_matches_loop():
    rewards, target, behavior = random_logs(50, seed=4)
    groups = np.repeat([7, 3, 9, 1, 5, 2, 8, 6, 4, 0], 5)
    res = ncis(rewards, target, behavior, cap=3.0, n_boot=150, seed=2, groups=groups)
    assert res.n_groups == 10
    assert res.value == pytest.approx(ncis_loop(rewards, target, behavior, 3.0)[0], rel=1e-12)
    lo, hi = bootstrap_loop(rewards, target, behavior, 3.0, 150, seed=2, groups=groups)
    assert (res.ci_low, res.ci_high) == pytest.approx((lo, hi), rel=1e-10)


def test_on_policy_is_plain_mean_with_full_ess():
    rewards, _, behavior = random_logs(500, seed=5)
    res = ncis(rewards, behavior, behavior, cap=1.0, n_boot=100)
    assert res.value == pytest.approx(rewards.mean(), rel=1e-12)
    assert res.ess == pytest.approx(500.0, rel=1e-12)
    assert res.capped_share == 0.0  # ratio 1 is not above cap 1


def test_cap_binding_everywhere_gives_plain_mean():
    rewards = np.array([3.0, 1.0, 0.0, 2.0])
    # ratios 4, 5, 2.5, 9 all exceed the cap 0.5: every weight is 0.5 → mean = 6/4
    res = ncis(rewards, [0.8, 0.5, 0.5, 0.9], [0.2, 0.1, 0.2, 0.1], cap=0.5, n_boot=50)
    assert res.value == pytest.approx(1.5)
    assert res.ess == pytest.approx(4.0)
    assert res.capped_share == 1.0


def test_zero_rewards_give_zero():
    _, target, behavior = random_logs(30, seed=6)
    res = ncis(np.zeros(30), target, behavior, n_boot=50)
    assert res.value == 0.0 and res.ci_low == 0.0 and res.ci_high == 0.0


def test_single_row_and_single_group():
    one = ncis([2.5], [0.3], [0.6], n_boot=20)
    assert (one.value, one.ess, one.n, one.ci_low, one.ci_high) == (2.5, 1.0, 1, 2.5, 2.5)
    # a single cluster: every resample is the whole data set, the interval collapses
    rewards, target, behavior = random_logs(40, seed=7)
    res = ncis(rewards, target, behavior, n_boot=30, groups=np.full(40, "s1"))
    assert res.n_groups == 1
    assert res.ci_low == pytest.approx(res.value) and res.ci_high == pytest.approx(res.value)


def test_no_bootstrap_gives_nan_interval():
    res = ncis([1.0, 0.0], [0.5, 0.5], [0.5, 0.5], n_boot=0)
    assert res.value == 0.5 and math.isnan(res.ci_low) and math.isnan(res.ci_high)


def test_bootstrap_interval_contains_value_and_narrows():
    rng = np.random.default_rng(8)
    n = 20_000
    rewards = rng.binomial(1, 0.3, n).astype(float)
    behavior = rng.uniform(0.2, 1.0, n)
    target = rng.uniform(0.0, 1.0, n)
    small = ncis(rewards[:200], target[:200], behavior[:200], n_boot=400)
    large = ncis(rewards, target, behavior, n_boot=400)
    for res in (small, large):
        assert res.ci_low < res.value < res.ci_high
    # 100 times the data: the width shrinks about 10-fold (1/√n)
    assert (large.ci_high - large.ci_low) < 0.2 * (small.ci_high - small.ci_low)


def test_cluster_bootstrap_is_wider_for_clustered_rewards():
    rng = np.random.default_rng(9)
    n_groups, size = 200, 20
    groups = np.repeat(np.arange(n_groups), size)
    rewards = np.repeat(rng.binomial(1, 0.4, n_groups), size).astype(float)  # one value/group
    behavior = rng.uniform(0.2, 1.0, n_groups * size)
    target = np.clip(behavior * rng.uniform(0.5, 1.5, n_groups * size), 0, 1)
    iid = ncis(rewards, target, behavior, n_boot=400, seed=1)
    clustered = ncis(rewards, target, behavior, n_boot=400, seed=1, groups=groups)
    assert clustered.value == iid.value
    assert (clustered.ci_high - clustered.ci_low) > 2 * (iid.ci_high - iid.ci_low)


def test_ncis_is_deterministic_per_seed():
    data = random_logs(300, seed=10)
    assert ncis(*data, seed=4) == ncis(*data, seed=4)
    assert ncis(*data, seed=4).ci_low != ncis(*data, seed=5).ci_low


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": []}, "at least one logged decision"),
        ({"behavior_propensity": [0.5, 0.0, 0.5]}, r"behavior_propensity .*\(0, 1\]; 1 of 3"),
        ({"behavior_propensity": [0.5, np.nan, -1.0]}, r"behavior_propensity .*; 2 of 3"),
        ({"behavior_propensity": [0.5, np.inf, 0.5]}, r"behavior_propensity .*; 1 of 3"),
        ({"target_propensity": [1.5, 0.2, -0.1]}, r"target_propensity .*\[0, 1\]; 2 of 3"),
        ({"target_propensity": [0.5, np.nan, 0.5]}, r"target_propensity .*; 1 of 3"),
        ({"rewards": [1.0, np.nan, 0.0]}, r"rewards must be finite; 1 of 3"),
        ({"target_propensity": [0.0, 0.0, 0.0]}, "all importance weights are zero"),
        ({"target_propensity": [0.5, 0.5]}, "same length"),
        ({"rewards": [1.0, 0.0]}, "same length"),
        ({"cap": 0.0}, "cap must be > 0"),
        ({"cap": -2.0}, "cap must be > 0"),
        ({"groups": [1, 2]}, "groups must be 1-D with one entry per row"),
        ({"n_boot": -1}, "n_boot"),
        ({"alpha": 1.0}, "alpha"),
    ],
)
def test_ncis_rejects_bad_input(kwargs, message):
    args = {
        "rewards": [1.0, 0.0, 1.0],
        "target_propensity": [0.2, 0.3, 0.4],
        "behavior_propensity": [0.5, 0.5, 0.5],
    }
    if kwargs.get("rewards") == []:
        args = {k: [] for k in args}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ncis(**args)


# --------------------------------------------------------------------------------------------
# per-aspect NCIS


def impressions_frame(n_requests=80, slate=4, seed=0):
    rng = np.random.default_rng(seed)
    n = n_requests * slate
    frame = pd.DataFrame(
        {
            "request_id": np.repeat(np.arange(n_requests) + 1000, slate),
            "user_id": np.repeat(rng.integers(0, 20, n_requests), slate),
            "position": np.tile(np.arange(slate), n_requests),
            "propensity": rng.uniform(0.05, 1.0, n),
            "play_time_ms": rng.exponential(5000.0, n),
        }
    )
    for i, flag in enumerate(ASPECTS[:-1]):
        frame[flag] = rng.binomial(1, 0.05 + 0.1 * i, n)
    return frame, rng.uniform(0.0, 1.0, n)


def test_per_aspect_matches_ncis_and_logging_mean():
    frame, target = impressions_frame()
    table = per_aspect_ncis(frame, target, cap=4.0, n_boot=200, seed=3)
    assert table["aspect"].tolist() == list(ASPECTS)
    for row in table.itertuples():
        reward = frame[row.aspect].to_numpy(float)
        single = ncis(
            reward, target, frame["propensity"], cap=4.0, n_boot=200, seed=3,
            groups=frame["request_id"],
        )  # fmt: skip
        assert row.value == pytest.approx(single.value, rel=1e-12)
        assert (row.ci_low, row.ci_high) == pytest.approx((single.ci_low, single.ci_high))
        assert row.ess == pytest.approx(single.ess)
        assert row.capped_share == pytest.approx(single.capped_share)
        on_policy = ncis(
            reward, frame["propensity"], frame["propensity"], n_boot=200, seed=3,
            groups=frame["request_id"],
        )  # fmt: skip
        assert row.baseline_value == pytest.approx(reward.mean(), rel=1e-12)
        assert (row.baseline_ci_low, row.baseline_ci_high) == pytest.approx(
            (on_policy.ci_low, on_policy.ci_high)
        )
        assert row.uplift == pytest.approx(row.value - row.baseline_value)
        assert row.uplift_ci_low <= row.uplift <= row.uplift_ci_high
        assert row.rel_uplift == pytest.approx(row.value / row.baseline_value - 1)


def test_per_aspect_on_policy_has_zero_uplift():
    frame, _ = impressions_frame(seed=1)
    table = per_aspect_ncis(frame, frame["propensity"].to_numpy(), n_boot=50, group_column=None)
    assert np.allclose(table["uplift"], 0.0) and np.allclose(table["uplift_ci_high"], 0.0)
    assert np.allclose(table["ess"], len(frame))


def test_per_aspect_rejects_missing_columns_and_lengths():
    frame, target = impressions_frame()
    with pytest.raises(ValueError, match="lack the columns"):
        per_aspect_ncis(frame.drop(columns="is_like"), target)
    with pytest.raises(ValueError, match="same length"):
        per_aspect_ncis(frame, target[:-1])


# --------------------------------------------------------------------------------------------
# AUC / GAUC


def test_gauc_two_users_hand_example():
    # user 1: positives scored 0.9, 0.4; negatives 0.3, 0.5
    #   pairs (0.9>0.3) 1, (0.9>0.5) 1, (0.4>0.3) 1, (0.4<0.5) 0 → AUC = 3/4
    # user 2: labels all 0 → dropped
    res = gauc([1, 0, 1, 0, 0, 0], [0.9, 0.3, 0.4, 0.5, 0.1, 0.2], [1, 1, 1, 1, 2, 2])
    assert res.value == pytest.approx(0.75)
    assert (res.n_users, res.n_users_dropped, res.n_rows) == (1, 1, 4)


def test_gauc_weights_by_impressions():
    # user "a": AUC 3/4 on 4 impressions; user "c": positive 0.7, negatives 0.1, 0.8 → 1/2
    # on 3 impressions; user "b" (all positive) dropped. GAUC = (4·0.75 + 3·0.5) / 7 = 4.5 / 7
    labels = [1, 0, 1, 0, 1, 1, 1, 0, 0]
    scores = [0.9, 0.3, 0.4, 0.5, 0.2, 0.6, 0.7, 0.1, 0.8]
    users = ["a", "a", "a", "a", "b", "b", "c", "c", "c"]
    res = gauc(labels, scores, users)
    assert res.value == pytest.approx(4.5 / 7)
    assert (res.n_users, res.n_users_dropped, res.n_rows) == (2, 1, 7)


def test_ties_count_half():
    assert auc([1, 0], [0.5, 0.5]) == 0.5
    # (0.5 vs 0.5) ½ + (0.7 vs 0.5) 1 → 0.75
    assert auc([1, 1, 0], [0.5, 0.7, 0.5]) == 0.75
    assert auc([0, 0, 1, 1], [2.0, 2.0, 2.0, 2.0]) == 0.5
    res = gauc([1, 0, 0, 1], [1.0, 1.0, 3.0, 3.0], [5, 5, 6, 6])  # each user ½
    assert res.value == 0.5 and res.n_users == 2


def test_gauc_matches_pairwise_brute_force():
    rng = np.random.default_rng(12)
    n = 1500
    users = rng.integers(0, 60, n)
    scores = np.round(rng.normal(size=n), 1)  # rounding makes many ties
    labels = (rng.random(n) < 0.2 + 0.1 * (scores > 0)).astype(int)
    num = den = 0.0
    dropped = 0
    for u in np.unique(users):
        sel = users == u
        if labels[sel].min() == labels[sel].max():
            dropped += 1
            continue
        num += sel.sum() * pairwise_auc(labels[sel], scores[sel])
        den += sel.sum()
    res = gauc(labels, scores, users)
    assert res.value == pytest.approx(num / den, rel=1e-12)
    assert res.n_users_dropped == dropped
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), rel=1e-12)


def test_gauc_without_usable_users_is_nan():
    res = gauc([1, 1, 0], [0.1, 0.2, 0.3], [1, 1, 2])
    assert math.isnan(res.value) and res.n_users == 0 and res.n_users_dropped == 2


def test_gauc_is_fast():
    rng = np.random.default_rng(0)
    n = 150_000
    users, scores, labels = rng.integers(0, 1000, n), rng.random(n), rng.integers(0, 2, n)
    start = time.perf_counter()
    gauc(labels, scores, users)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([], [], "at least one"),
        ([1, 2], [0.1, 0.2], r"labels must be 0 or 1; 1 of 2"),
        ([1, 0], [0.1, np.nan], r"scores must be finite; 1 of 2"),
        ([1, 0], [0.1], "same length"),
        ([1, 1], [0.1, 0.2], "all labels are one class"),
    ],
)
def test_auc_rejects_bad_input(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        auc(labels, scores)


def test_gauc_rejects_missing_users():
    with pytest.raises(ValueError, match="users must not be missing"):
        gauc([1, 0], [0.1, 0.2], np.array([1.0, np.nan]))


# --------------------------------------------------------------------------------------------
# Plackett–Luce slate propensities


def test_slate_propensities_hand_example():
    # weights 1, 2, 3: first column 2 with 3/(1+2+3) = 1/2, then column 1 with 2/(1+2) = 2/3
    p = slate_propensities(np.log([[1.0, 2.0, 3.0]]), np.array([[2, 1]]), temperature=1.0)
    assert p == pytest.approx(np.array([[0.5, 2 / 3]]))
    # temperature 2 halves the logits: weights 1, √2, √3
    p2 = slate_propensities(np.log([[1.0, 2.0, 3.0]]), np.array([[2, 1]]), temperature=2.0)
    r2, r3 = math.sqrt(2), math.sqrt(3)
    assert p2 == pytest.approx(np.array([[r3 / (1 + r2 + r3), r2 / (1 + r2)]]))


def test_slate_propensities_agree_with_logging_sampler():
    rng = np.random.default_rng(13)
    scores = rng.normal(size=(300, 12))
    mask = rng.random((300, 12)) < 0.8
    mask[:, :6] = True  # every row can fill a slate of 5
    for temperature in (0.3, 1.0, 4.0):
        slate, propensity = plackett_luce(scores, mask, 5, temperature, rng)
        got = slate_propensities(scores, slate, temperature, candidate_mask=mask)
        np.testing.assert_allclose(got, propensity, rtol=1e-10)


def test_masked_columns_are_excluded():
    scores = np.log([[1.0, 2.0, 3.0, 100.0], [1.0, 2.0, 3.0, np.nan]])
    mask = np.array([[True, True, True, False], [True, True, True, False]])
    p = slate_propensities(scores, np.array([[2, 1], [2, 1]]), 1.0, candidate_mask=mask)
    assert p == pytest.approx(np.array([[0.5, 2 / 3], [0.5, 2 / 3]]))
    with pytest.raises(ValueError, match="masked-out"):
        slate_propensities(scores, np.array([[3, 1], [2, 1]]), 1.0, candidate_mask=mask)


def test_zero_temperature_is_greedy_limit():
    scores = np.array([[1.0, 3.0, 2.0], [3.0, 3.0, 1.0]])
    slates = np.array([[1, 2], [0, 1]])
    # row 0: 3 is the top, then 2 is the top of {1, 2}; row 1: a tie of two at the top → ½
    assert slate_propensities(scores, slates, 0.0) == pytest.approx(np.array([[1, 1], [0.5, 1]]))
    assert slate_propensities(scores, np.array([[2, 1], [2, 0]]), 0.0) == pytest.approx(
        np.array([[0, 1], [0, 0.5]])
    )
    # a tiny positive temperature converges to the limit
    assert slate_propensities(scores, slates, 1e-9) == pytest.approx(np.array([[1, 1], [0.5, 1]]))


def test_slate_propensities_are_numerically_stable():
    # exp(1001) overflows; the log-sum-exp form gives 1/(1 + e^-1), then 1
    p = slate_propensities(np.array([[1000.0, 1001.0]]), np.array([[1, 0]]), 1.0)
    assert p == pytest.approx(np.array([[1 / (1 + math.exp(-1)), 1.0]]))
    # the loser's probability underflows to 0 instead of nan
    p = slate_propensities(np.array([[0.0, 2000.0]]), np.array([[0, 1]]), 1.0)
    assert p[0, 0] == 0.0 and p[0, 1] == 1.0


def test_slate_padding_gives_nan():
    p = slate_propensities(np.log([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), [[2, -1], [0, 2]], 1.0)
    assert p[0, 0] == pytest.approx(0.5) and math.isnan(p[0, 1])
    assert p[1] == pytest.approx([1 / 6, 3 / 5])


@pytest.mark.parametrize(
    ("slates", "temperature", "message"),
    [
        ([[0, 0]], 1.0, "repeat an item"),
        ([[0, 3]], 1.0, "column indices >="),
        ([[-1, 0]], 1.0, "padding"),
        ([[0, 1]], -1.0, "temperature"),
        ([[0.0, 1.0]], 1.0, "integer column indices"),
        ([0, 1], 1.0, "slates must be 2-D"),
    ],
)
def test_slate_propensities_reject_bad_input(slates, temperature, message):
    with pytest.raises(ValueError, match=message):
        slate_propensities(np.zeros((1, 3)), np.asarray(slates), temperature)


def test_per_aspect_against_a_champion_baseline():
    """Baseline = another target policy: identical policies give zero uplift exactly, and the
    baseline columns equal that policy's own NCIS."""
    rng = np.random.default_rng(5)
    n = 2_000
    imp = pd.DataFrame(
        {
            "request_id": np.repeat(np.arange(n // 4), 4),
            "propensity": rng.uniform(0.1, 0.9, n),
            "play_time_ms": rng.exponential(1000.0, n),
            "is_click": rng.integers(0, 2, n),
        }
    )
    pi = rng.uniform(0.05, 0.95, n)
    pi_b = rng.uniform(0.05, 0.95, n)
    same = per_aspect_ncis(
        imp, pi, aspects=("play_time_ms", "is_click"), n_boot=200, baseline_propensity=pi
    )
    assert np.allclose(same["uplift"], 0.0)
    assert np.allclose(same[["uplift_ci_low", "uplift_ci_high"]], 0.0)
    other = per_aspect_ncis(
        imp, pi, aspects=("play_time_ms",), n_boot=200, baseline_propensity=pi_b
    )
    direct = ncis(imp["play_time_ms"], pi_b, imp["propensity"], n_boot=0)
    assert other["baseline_value"].iloc[0] == pytest.approx(direct.value, rel=1e-12)
    assert other["rel_uplift_ci_low"].iloc[0] <= other["rel_uplift"].iloc[0]
    assert other["rel_uplift"].iloc[0] <= other["rel_uplift_ci_high"].iloc[0]
