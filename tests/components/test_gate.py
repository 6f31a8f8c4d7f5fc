"""The gate on world data: a policy that knows the users' taste passes, random scores fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.gate import (
    Candidate,
    Check,
    GateConfig,
    decide,
    evaluate_challenger,
    logged_slates,
    target_propensities,
    write_report,
)
from components.world import World, WorldConfig
from components.world.dataset import shape_tables


@pytest.fixture(scope="module")
def world_tables():
    world = World(WorldConfig.from_preset("tiny"), seed=11)
    raw, _ = world.generate()
    tables = shape_tables(world, raw)
    req = tables["requests"]
    holdout = req.loc[req["day"] == req["day"].max(), "request_id"].to_numpy()
    return world, tables, holdout


@pytest.fixture(scope="module")
def world_logs(world_tables):
    world, tables, holdout = world_tables
    slates = logged_slates(tables["requests"], tables["impressions"], tables["pools"], holdout)
    return world, slates


def _static(world: World):
    def score(users, items, hour, position):
        return world._static_affinity(users, items)

    return score


def _random(users, items, hour, position):
    return np.random.default_rng(0).normal(size=items.shape)


def test_logged_slates_rebuild_the_shown_items(world_logs) -> None:
    _, s = world_logs
    shown = np.take_along_axis(s.items, s.slate, axis=1)
    expected = s.impressions["item_id"].to_numpy().reshape(shown.shape)
    np.testing.assert_array_equal(shown, expected)
    assert s.mask[np.arange(len(s.slate))[:, None], s.slate].all()


def test_taste_aware_policy_is_promoted_and_random_rejected(world_logs, tmp_path: Path) -> None:
    world, s = world_logs
    cfg = GateConfig(min_ess=50, n_boot=300)
    good = target_propensities(_static(world), 0.5, s)
    bad = target_propensities(_random, 0.5, s)
    yes = decide(s.impressions, good, None, cfg, challenger="taste")
    no = decide(s.impressions, bad, None, cfg, challenger="random")
    assert yes.promote, yes.reasons
    assert not no.promote
    assert any(r.startswith("main objective uplift") for r in no.reasons)
    # against a champion: random vs taste is rejected, and identical policies show no uplift
    vs_champ = decide(s.impressions, bad, good, cfg, challenger="random", baseline="taste")
    assert not vs_champ.promote
    tie = decide(s.impressions, good, good, cfg)
    assert tie.table["uplift"].abs().max() == pytest.approx(0.0, abs=1e-9)
    assert not tie.promote  # no credible improvement → keep the champion

    paths = write_report(no, tmp_path)
    report = json.loads(paths["json"].read_text())
    assert report["promote"] is False and report["reasons"]
    assert "REJECT" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 1000


def test_constraints_and_ess_can_block(world_logs) -> None:
    world, s = world_logs
    good = target_propensities(_static(world), 0.5, s)
    blocked = decide(
        s.impressions,
        good,
        None,
        GateConfig(min_ess=50, n_boot=100),
        constraints=[Check("compute budget", False, 1.2, 1.0, "peak hour at 120% of budget")],
    )
    assert not blocked.promote
    assert blocked.reasons == ("compute budget: peak hour at 120% of budget",)
    huge_ess = decide(s.impressions, good, None, GateConfig(min_ess=1e9, n_boot=100))
    assert not huge_ess.promote
    assert any("effective sample size" in r for r in huge_ess.reasons)


def test_unknown_gate_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown gate settings"):
        GateConfig.from_dict({"capp": 3})


def test_true_online_values_and_ope_error(world_tables) -> None:
    world, tables, holdout = world_tables
    decision = evaluate_challenger(
        tables,
        {"world": world.config.to_dict()},
        11,
        holdout,
        Candidate("taste", _static(world), 0.5),
        Candidate("random", _random, 0.5),
        GateConfig(min_ess=50, n_boot=100),
    )
    truth = decision.true_values.set_index("policy")
    assert list(truth.index) == ["logging", "taste", "random"]
    col = "true watch time / impression (ms)"
    assert truth.loc["taste", col] > truth.loc["random", col]
    assert (truth["OPE error (ms)"] >= 0).all()
    # NCIS and the truth order the two policies the same way
    est = "NCIS watch time / impression (ms)"
    assert truth.loc["taste", est] > truth.loc["random", est]
