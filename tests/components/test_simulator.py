"""The MMRF feedback simulator: maths against hand-computed values, the sequence layout and
shift, uncertainty out of distribution, determinism, held-out quality, labelling, refitting,
files and bad inputs.

World ``tiny`` data (3 days: 2 train, 1 held out) and a small config keep the run short.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.agent_data import AGENTS
from components.features import FeatureSpace
from components.io import DataError
from components.simulator import (
    SimulatorLabeller,
    TrainedSimulator,
    TruthLabeller,
    build_sequences,
    evaluate_simulator,
    fit_simulator,
    label_non_impressions,
    refit,
    sample_non_impressions,
)
from components.training import split_by_day
from models.simulator import (
    ASPECTS,
    HARM_ASPECTS,
    SimulatorConfig,
    TwinOutput,
    bernoulli_kl,
    simulator_loss,
    twin_uncertainty,
)

SMALL = SimulatorConfig(
    users_per_batch=8, epochs=8, tower_dim=16, state_dim=16, hidden_sizes=(32, 16), lr=0.006
)


@pytest.fixture(scope="module")
def tiny() -> dict[str, pd.DataFrame]:
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=0)
    return tables


@pytest.fixture(scope="module")
def split(tiny: dict[str, pd.DataFrame]):
    return split_by_day(tiny["requests"], 1)


@pytest.fixture(scope="module")
def sim(tiny: dict[str, pd.DataFrame], split) -> TrainedSimulator:
    return fit_simulator(tiny, SMALL, seed=0, request_ids=split.train_request_ids)


def _impressions(tables: dict[str, pd.DataFrame], request_ids: np.ndarray) -> pd.DataFrame:
    imp = tables["impressions"]
    return imp[imp["request_id"].isin(request_ids)]


# ------------------------------------------------------------------------- maths


def test_bernoulli_kl_hand_checked() -> None:
    # p = 0.5, 0.75, 0.1 ; q = 0.25, 0.75, 0.9
    lp = torch.tensor([0.0, math.log(3.0), math.log(1 / 9)])
    lq = torch.tensor([math.log(1 / 3), math.log(3.0), math.log(9.0)])
    expected = [
        0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),  # = ½ ln(4/3)
        0.0,
        0.1 * math.log(0.1 / 0.9) + 0.9 * math.log(0.9 / 0.1),  # = 0.8 ln 9
    ]
    assert bernoulli_kl(lp, lq).tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(0.5 * math.log(4 / 3))
    # saturated logits stay finite (no 0·∞)
    assert torch.isfinite(bernoulli_kl(torch.tensor([80.0]), torch.tensor([-80.0]))).all()


def test_simulator_loss_parts_hand_checked() -> None:
    """Two rows, one aspect weight on: every part of ℓ_i recomputed by hand."""
    logits = torch.zeros(2, 7)
    twin = torch.zeros(2, 7)
    twin[0, 0] = math.log(3.0)  # p' = 0.75 on row 0, aspect 0
    out = TwinOutput(logits, torch.tensor([1.0, 2.0]), twin, torch.tensor([1.5, 2.0]))
    labels = torch.zeros(2, 7)
    labels[1, 0] = 1.0
    log_play = torch.tensor([1.0, 3.0])
    aspect_w = torch.zeros(7)
    aspect_w[0] = 1.0
    weight = torch.tensor([1.0, 3.0])
    loss = simulator_loss(out, labels, log_play, weight, aspect_w, 0.5, 0.2)

    ln2 = math.log(2.0)
    bce = [ln2 + (-math.log(0.25)), ln2 + ln2]  # row 0: y=0 vs p=.5 and p'=.75; row 1: y=1
    play = [(0.0**2) + (0.5**2), (1.0**2) + (1.0**2)]
    kl = [(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * 0.5**2, 0.0]
    w = [0.25, 0.75]
    exp_bce = sum(wi * b for wi, b in zip(w, bce, strict=True))
    exp_play = sum(wi * p for wi, p in zip(w, play, strict=True))
    exp_kl = sum(wi * k for wi, k in zip(w, kl, strict=True))
    assert float(loss.bce[0]) == pytest.approx(exp_bce, rel=1e-6)
    assert float(loss.play_mse) == pytest.approx(exp_play, rel=1e-6)
    assert float(loss.kl) == pytest.approx(exp_kl, rel=1e-6)
    assert float(loss.total) == pytest.approx(exp_bce + 0.5 * exp_play + 0.2 * exp_kl, rel=1e-6)
    # scaling every weight leaves the loss unchanged (Σ ω ℓ / Σ ω)
    scaled = simulator_loss(out, labels, log_play, 7 * weight, aspect_w, 0.5, 0.2)
    assert float(scaled.total) == pytest.approx(float(loss.total), rel=1e-6)


def test_twin_uncertainty_definition() -> None:
    out = TwinOutput(
        logits=torch.zeros(1, 7),
        log_play=torch.tensor([2.0]),
        twin_logits=torch.full((1, 7), math.log(3.0)),
        twin_log_play=torch.tensor([1.2]),
    )
    u = twin_uncertainty(out)
    assert u.aspects[0].tolist() == pytest.approx([0.25] * 7)
    assert u.play.tolist() == pytest.approx([0.8])
    assert u.summary.tolist() == pytest.approx([(7 * 0.25 + 0.8) / 8])


# --------------------------------------------------------------------- sequences


def _toy_tables() -> dict[str, pd.DataFrame]:
    """Two users (7 and 3), five requests out of order, impressions shuffled."""
    requests = pd.DataFrame(
        {
            "request_id": [10, 11, 12, 13, 14],
            "user_id": [7, 3, 7, 7, 3],
            "day": [1, 0, 0, 1, 0],
            "hour": [5, 5, 9, 6, 6],
            "position_in_session": [0, 0, 0, 1, 1],
        }
    )
    rows = [  # request_id, item_id, position
        (13, 2, 0),
        (10, 1, 1),
        (11, 3, 0),
        (10, 2, 0),
        (12, 3, 0),
        (14, 1, 0),
        (13, 1, 1),
    ]
    imp = pd.DataFrame(rows, columns=["request_id", "item_id", "position"])
    for a in ASPECTS:
        imp[a] = 0
    imp["is_click"] = [1, 0, 1, 1, 0, 0, 1]
    imp["play_time_ms"] = [5_000.0, 0.0, 20_000.0, 1_000.0, 3_000.0, 0.0, 10_000.0]
    imp["duration_ms"] = 10_000.0
    users = pd.DataFrame({"user_id": [3, 7]})
    items = pd.DataFrame({"item_id": [1, 2, 3]})
    return {"requests": requests, "impressions": imp, "users": users, "items": items}


def test_sequences_order_by_user_day_request_id() -> None:
    t = _toy_tables()
    fs = FeatureSpace.fit(t["users"], t["items"])
    seq = build_sequences(t, fs)
    assert seq.request_id.tolist() == [11, 14, 12, 10, 13]
    assert seq.user_start.tolist() == [0, 2, 5]
    # shown items grouped by request in sequence order, by position inside a request
    assert seq.req_imp_start.tolist() == [0, 1, 2, 3, 5, 7]
    assert seq.imp_item_id.tolist() == [3, 1, 3, 2, 1, 2, 1]
    assert seq.request_index([13, 11]).tolist() == [4, 0]
    # watch fraction and log1p(play seconds) of the first shown item (request 11: 20 s of 10 s)
    assert seq.imp_feedback[0, len(ASPECTS)] == pytest.approx(math.log1p(20.0))
    assert seq.imp_feedback[0, len(ASPECTS) + 1] == pytest.approx(2.0)
    batch = seq.batch(np.array([0, 1]), np.array([2, 3]))
    assert batch.seq_index.tolist() == [0, 1, 3, 4, 5]  # b·T_max + t with T_max = 3
    assert batch.imp_request.tolist() == [0, 1, 2, 3, 3, 4, 4]


def test_request_states_are_the_shifted_gru_outputs() -> None:
    """The packed batch gives, for step t, the GRU output after steps < t (h_0 first),
    exactly as an unpacked GRU run on one user's inputs; the step input averages items."""
    t = _toy_tables()
    fs = FeatureSpace.fit(t["users"], t["items"])
    seq = build_sequences(t, fs)
    torch.manual_seed(0)
    net = SMALL.create(fs).eval()
    with torch.no_grad():
        net.initial_state.normal_()
        batch = seq.batch(np.array([0, 1]), seq.user_lengths)
        states = net.request_states(batch)
        x = net.step_inputs(
            batch.imp_request, batch.imp_item_row, batch.imp_feedback, batch.request_context
        )
        v = net.item_repr(batch.imp_item_row)
        assert torch.allclose(x[3, :16], v[3:5].mean(dim=0), atol=1e-6)  # request 10
        h0 = net.initial_state
        for start, stop in ((0, 2), (2, 5)):
            out, _ = net.gru(x[None, start:stop], h0.view(1, 1, -1))
            expected = torch.cat([h0[None], out[0, :-1]])
            assert torch.allclose(states[start:stop], expected, atol=1e-6)


def test_sequence_shift_state_never_sees_its_own_feedback(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split
) -> None:
    """Changing request t's feedback leaves t's predictions unchanged and moves t+1's."""
    req = tiny["requests"].sort_values(["user_id", "day", "request_id"])
    held = req[req["request_id"].isin(split.holdout_request_ids)]
    user = held.groupby("user_id").size().idxmax()
    ids = held.loc[held["user_id"] == user, "request_id"].to_numpy()
    r_t, r_next = int(ids[1]), int(ids[2])
    imp = tiny["impressions"]
    pairs = imp[imp["request_id"].isin([r_t, r_next])]
    changed = dict(tiny)
    new_imp = imp.copy()
    at_t = new_imp["request_id"] == r_t
    for a in ASPECTS:
        new_imp.loc[at_t, a] = 1 - new_imp.loc[at_t, a]
    new_imp.loc[at_t, "play_time_ms"] = new_imp.loc[at_t, "duration_ms"] * 1.5
    changed["impressions"] = new_imp

    before = sim.predict(tiny, pairs["request_id"].to_numpy(), pairs["item_id"].to_numpy())
    after = sim.predict(changed, pairs["request_id"].to_numpy(), pairs["item_id"].to_numpy())
    is_t = pairs["request_id"].to_numpy() == r_t
    np.testing.assert_allclose(after.aspect_probs[is_t], before.aspect_probs[is_t], atol=1e-6)
    np.testing.assert_allclose(after.log_play[is_t], before.log_play[is_t], atol=1e-6)
    moved = np.abs(after.aspect_probs[~is_t] - before.aspect_probs[~is_t]).max()
    assert moved > 1e-4


# ------------------------------------------------------------------- the model


def test_uncertainty_higher_out_of_distribution(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split
) -> None:
    """Items whose feature vectors are shifted 5 standard deviations out: the twins disagree
    far more than on the training impressions (ratio ~5 on tiny data; asserted > 2)."""
    imp = _impressions(tiny, split.train_request_ids)
    rid, iid = imp["request_id"].to_numpy(), imp["item_id"].to_numpy()
    arrays, meta = sim.feature_space.to_state()
    table = arrays["item_table"].copy()
    table[1:] += 5.0
    shifted = replace(
        sim, feature_space=FeatureSpace.from_state({**arrays, "item_table": table}, meta)
    )
    u_in = sim.predict(tiny, rid, iid).uncertainty.mean()
    u_out = shifted.predict(tiny, rid, iid).uncertainty.mean()
    assert u_out > 2.0 * u_in
    assert sim.metrics["train_uncertainty"] == pytest.approx(u_in, rel=1e-3)


def test_held_out_quality(sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split) -> None:
    """On the held-out day (~8.4k impressions, ~3.9k clicks) the AUC's standard error is
    ~0.006, so 0.56 is far above chance; the Bayes-optimal AUC (true probabilities) is
    ~0.71 for click and ~0.88 for long_view, which bound the figures from above."""
    ev = evaluate_simulator(sim, tiny, split.holdout_request_ids)
    assert ev["auc"]["is_click"] > 0.56
    assert ev["auc"]["long_view"] > 0.75
    for a in ("is_click", "long_view"):
        assert ev["auc"][a] < ev["bayes_auc"][a]
    assert ev["play"]["mae_s"] < ev["play"]["rmse_s"]
    # the expected play time is calibrated on average (Duan's smearing): within 25 %
    assert ev["play"]["mean_expected_s"] == pytest.approx(ev["play"]["mean_logged_s"], rel=0.25)
    assert set(ev["prob_mae"]) == {"impressions", "non_impressions"}
    # selection bias: the logging policy shows what it knows to be better, so the true
    # value of the non-impressions is lower, and the simulator, which cannot see why they
    # were not shown, overrates them more than it does the impressions
    means = ev["mean_vs_true"]
    imp, ni = means["impressions"], means["non_impressions"]
    for a in ("is_click", "long_view", "play_s"):
        assert ni["true"][a] < imp["true"][a]
        assert ni["predicted"][a] - ni["true"][a] > imp["predicted"][a] - imp["true"][a]
    assert ev["n_non_impressions"] > 0 and ev["uncertainty"]["non_impressions"] > 0
    json.dumps(ev)  # plain numbers only


def test_same_seed_same_weights(tiny: dict[str, pd.DataFrame], split) -> None:
    cfg = replace(SMALL, epochs=2)
    a = fit_simulator(tiny, cfg, seed=3, request_ids=split.train_request_ids)
    b = fit_simulator(tiny, cfg, seed=3, request_ids=split.train_request_ids)
    c = fit_simulator(tiny, cfg, seed=4, request_ids=split.train_request_ids)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)
    imp = _impressions(tiny, split.holdout_request_ids)
    pa = a.predict(tiny, imp["request_id"].to_numpy(), imp["item_id"].to_numpy())
    pb = b.predict(tiny, imp["request_id"].to_numpy(), imp["item_id"].to_numpy())
    np.testing.assert_array_equal(pa.aspect_probs, pb.aspect_probs)
    np.testing.assert_array_equal(pa.uncertainty, pb.uncertainty)


# -------------------------------------------------------------------- labelling


def test_label_non_impressions_share_and_rewards(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split
) -> None:
    ni = tiny["non_impressions"]
    held = ni[ni["request_id"].isin(split.holdout_request_ids)]
    out = label_non_impressions(sim, tiny, 0.25, seed=1, request_ids=split.holdout_request_ids)
    assert len(out) == round(0.25 * len(held))
    assert out["request_id"].isin(split.holdout_request_ids).all()
    keys = set(zip(held["request_id"], held["item_id"], strict=True))
    assert set(zip(out["request_id"], out["item_id"], strict=True)) <= keys
    assert not out.duplicated(["request_id", "item_id"]).any()
    again = label_non_impressions(sim, tiny, 0.25, seed=1, request_ids=split.holdout_request_ids)
    pd.testing.assert_frame_equal(out, again)
    other = label_non_impressions(sim, tiny, 0.25, seed=2, request_ids=split.holdout_request_ids)
    assert not other["item_id"].reset_index(drop=True).equals(out["item_id"])
    assert len(label_non_impressions(sim, tiny, 1.0)) == len(ni)

    # Eq. 6: reward = clip(p + σ λ u, 0, 1), σ = −1 for harms; play: S·exp(μ + λ u_play) − 1
    lam = sim.config.uncertainty_weight
    assert lam == pytest.approx(0.1)
    for a in ASPECTS:
        sign = -1.0 if a in HARM_ASPECTS else 1.0
        expected = np.clip(out[a] + sign * lam * out[f"uncertainty_{a}"], 0.0, 1.0)
        np.testing.assert_allclose(out[f"reward_{a}"], expected, atol=1e-6)
    assert (out["reward_is_click"] >= out["is_click"]).all()
    assert (out["reward_is_hate"] <= out["is_hate"]).all()
    pred = sim.predict(tiny, out["request_id"].to_numpy(), out["item_id"].to_numpy())
    smear = float(sim.state_dict["play_smearing"])
    play = smear * np.exp(pred.log_play.astype(np.float64) + lam * pred.play_uncertainty) - 1
    np.testing.assert_allclose(out["reward_play_time_ms"], 1000 * np.maximum(play, 0), rtol=1e-5)
    assert (out["reward_play_time_ms"] >= out["play_time_ms"] - 1e-3).all()
    per_aspect = out[[f"uncertainty_{a}" for a in ASPECTS] + ["uncertainty_play"]]
    np.testing.assert_allclose(out["uncertainty"], per_aspect.mean(axis=1), rtol=1e-5)

    no_bonus = replace(sim, config=replace(sim.config, uncertainty_weight=0.0))
    plain = label_non_impressions(no_bonus, tiny, 0.25, seed=1)
    np.testing.assert_allclose(plain["reward_is_click"], plain["is_click"], atol=1e-7)


def test_truth_labeller_gives_the_worlds_exact_feedback_on_the_same_sample(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split
) -> None:
    from components.agent_data import AGENTS

    ids = split.train_request_ids
    labeller = TruthLabeller(tiny, tiny["truth"])
    got = labeller.label(ids, 0.3, seed=4)
    sample = sample_non_impressions(tiny, 0.3, 4, ids)
    simulated = label_non_impressions(sim, tiny, 0.3, seed=4, request_ids=ids)
    # the same Algorithm-1 sample as the simulator's labeller, in the same order
    for frame in (sample, simulated):
        np.testing.assert_array_equal(got["request_id"], frame["request_id"])
        np.testing.assert_array_equal(got["item_id"], frame["item_id"])
    assert list(got.columns) == ["request_id", "item_id", *AGENTS]
    # each value is the truth table's row for that (request, item), not shown: play in
    # seconds, probabilities as they are, the hate agent's reward negated
    truth = tiny["truth"][tiny["truth"]["shown"] == 0].set_index(["request_id", "item_id"])
    exact = truth.loc[list(zip(got["request_id"], got["item_id"], strict=True))]
    np.testing.assert_allclose(got["watch_time"], exact["expected_play_ms"] / 1000, rtol=1e-6)
    np.testing.assert_allclose(got["is_click"], exact["p_click"], rtol=1e-6)
    np.testing.assert_allclose(got["is_hate"], -exact["p_hate"], rtol=1e-6)
    np.testing.assert_allclose(got["long_view"], exact["p_long_view"], rtol=1e-6)
    labeller.refit(pd.DataFrame({"request_id": [], "item_id": [], "weight": []}))
    pd.testing.assert_frame_equal(labeller.label(ids, 0.3, seed=4), got)  # nothing refitted

    with pytest.raises(DataError, match="only world data"):
        TruthLabeller(tiny, tiny["truth"].drop(columns=["p_hate"]))
    shown_only = tiny["truth"][tiny["truth"]["shown"] == 1]
    with pytest.raises(DataError, match="no row in the truth table"):
        TruthLabeller(tiny, shown_only).label(ids, 0.3, seed=4)


# ---------------------------------------------------------------------- refitting


def test_refit_continues_and_weights_are_scale_free(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split
) -> None:
    ids = split.holdout_request_ids
    n = len(_impressions(tiny, ids))
    plain = refit(sim, tiny, ids, None, epochs=1, seed=5)
    ones = refit(sim, tiny, ids, np.ones(n), epochs=1, seed=5)
    twos = refit(sim, tiny, ids, np.full(n, 2.0), epochs=1, seed=5)
    for k in plain.state_dict:
        assert torch.equal(plain.state_dict[k], ones.state_dict[k]), k
        assert torch.equal(ones.state_dict[k], twos.state_dict[k]), k
    changed = [k for k in sim.state_dict if not torch.equal(sim.state_dict[k], plain.state_dict[k])]
    assert "gru.weight_hh_l0" in changed
    assert plain.metrics["n_train_impressions"] == n and plain.metrics["epochs"] == 1
    # weights move the fit: all weight on clicks vs none
    clicks = _impressions(tiny, ids)["is_click"].to_numpy(np.float64)
    tilted = refit(sim, tiny, ids, 0.01 + clicks, epochs=2, seed=5)
    imp = _impressions(tiny, ids)
    p0 = plain.predict(tiny, imp["request_id"].to_numpy(), imp["item_id"].to_numpy())
    p1 = tilted.predict(tiny, imp["request_id"].to_numpy(), imp["item_id"].to_numpy())
    assert p1.aspect_probs[:, 0].mean() > p0.aspect_probs[:, 0].mean() + 0.1
    with pytest.raises(ValueError, match="one weight per impression"):
        refit(sim, tiny, ids, np.ones(n - 1))
    with pytest.raises(ValueError, match="finite and >= 0"):
        refit(sim, tiny, ids, -np.ones(n))


def test_labeller_for_the_agents(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split
) -> None:
    """The agents' interface: signed reward columns per agent; a refit from a weight frame."""
    labeller = SimulatorLabeller(sim, tiny, refit_epochs=1)
    ids = split.holdout_request_ids
    rewards = labeller.label(ids, 0.25, seed=1)
    plain = label_non_impressions(sim, tiny, 0.25, seed=1, request_ids=ids)
    assert list(rewards.columns) == ["request_id", "item_id", *AGENTS]
    np.testing.assert_allclose(rewards["watch_time"], plain["reward_play_time_ms"] / 1000, 1e-5)
    np.testing.assert_allclose(rewards["is_click"], plain["reward_is_click"], 1e-6)
    np.testing.assert_allclose(rewards["is_hate"], -plain["reward_is_hate"], 1e-6)

    imp = _impressions(tiny, ids[:50])
    frame = pd.DataFrame(
        {"request_id": imp["request_id"], "item_id": imp["item_id"], "weight": 2.0}
    )
    frame = pd.concat(
        [frame, pd.DataFrame({"request_id": [ids[0]], "item_id": [-1], "weight": [9.0]})]
    )
    labeller.refit(frame)
    assert labeller.sim is not sim and len(labeller.history) == 1
    assert labeller.history[0]["n_train_impressions"] == len(imp)
    assert labeller.history[0]["weighted"] is True


# -------------------------------------------------------------------------- files


def test_save_load_round_trip(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split, tmp_path: Path
) -> None:
    sim.save(tmp_path / "sim")
    loaded = TrainedSimulator.load(tmp_path / "sim")
    assert loaded.config == sim.config
    assert loaded.feature_space.equals(sim.feature_space)
    assert loaded.metrics["epochs"] == sim.metrics["epochs"]
    imp = _impressions(tiny, split.holdout_request_ids)
    a = sim.predict(tiny, imp["request_id"].to_numpy(), imp["item_id"].to_numpy())
    b = loaded.predict(tiny, imp["request_id"].to_numpy(), imp["item_id"].to_numpy())
    np.testing.assert_array_equal(a.aspect_probs, b.aspect_probs)
    np.testing.assert_array_equal(a.aspect_rewards, b.aspect_rewards)
    np.testing.assert_array_equal(a.expected_play_s, b.expected_play_s)
    meta = json.loads((tmp_path / "sim" / "simulator.json").read_text())
    assert meta["config"]["dropout"] == sim.config.dropout
    with pytest.raises(FileNotFoundError, match="simulator.json"):
        TrainedSimulator.load(tmp_path / "nowhere")


def test_config_round_trip_and_rules() -> None:
    cfg = SimulatorConfig(hidden_sizes=[48], aspect_weights={"is_hate": 2.0})
    back = SimulatorConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and back.hidden_sizes == (48,)
    assert back.aspect_weights["is_hate"] == 2.0 and back.aspect_weights["is_click"] == 1.0
    with pytest.raises(ValueError, match="dropout must be in"):
        SimulatorConfig(dropout=1.0)
    with pytest.raises(ValueError, match="uncertainty_weight"):
        SimulatorConfig(uncertainty_weight=2.0)
    with pytest.raises(ValueError, match="unknown aspect"):
        SimulatorConfig(aspect_weights={"is_fun": 1.0})
    with pytest.raises(ValueError, match="unknown SimulatorConfig field"):
        SimulatorConfig.from_dict({"epoch": 3})


# ---------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(
    sim: TrainedSimulator, tiny: dict[str, pd.DataFrame], split
) -> None:
    with pytest.raises(ValueError, match="not in the requests table"):
        sim.predict(tiny, np.array([10**9]), np.array([1]))
    with pytest.raises(ValueError, match="1-D with one entry per pair"):
        sim.predict(tiny, np.array([1, 2]), np.array([1]))
    for share in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
            label_non_impressions(sim, tiny, share)
    with pytest.raises(ValueError, match="not in the requests table"):
        label_non_impressions(sim, tiny, 0.5, request_ids=np.array([10**9]))
    with pytest.raises(ValueError, match="not in the requests table"):
        evaluate_simulator(sim, tiny, np.array([10**9]))
    with pytest.raises(ValueError, match="not in the requests table"):
        fit_simulator(tiny, SMALL, request_ids=np.array([10**9]))
    no_ni = {k: v for k, v in tiny.items() if k != "non_impressions"}
    with pytest.raises(DataError, match="non_impressions"):
        label_non_impressions(sim, no_ni, 0.25)
    orphan = dict(tiny)
    orphan["requests"] = tiny["requests"].iloc[1:]
    with pytest.raises(DataError, match="absent from the requests table"):
        sim.predict(orphan, split.holdout_request_ids[:1], np.array([1]))
    with pytest.raises(DataError, match="lacks column"):
        fit_simulator({**tiny, "requests": tiny["requests"].drop(columns="day")}, SMALL)
