"""MMRF ranking agents (``models.mmrf``, ``components.agent_data``, ``components.agents``):
collaboration layers, the actor-critic maths against hand-computed answers, the logged
transitions, the policy-gradient direction on a toy problem with a known optimum,
determinism, files and every variant.

World ``tiny`` data (3 days: 2 train, 1 held out) and a small config keep the run short.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from components.agent_data import AGENTS, _discounted_returns, build_agent_data
from components.agents import (
    TrainedAgents,
    _tensors,
    build_networks,
    train_agents,
    with_variant,
)
from components.features import FeatureSpace
from components.io import DataError
from models.mmrf import (
    AgentsConfig,
    AgentsModule,
    AttentiveCollaboration,
    ConcatCollaboration,
    RankingAgents,
    bc_log_likelihood,
    continuation_targets,
    critic_targets,
    kl_to,
    masked_log_softmax,
    policy_value,
)

SMALL = AgentsConfig(epochs=1, rounds=1, dim=8, heads=2, hidden=16, batch_size=256)
VARIANTS = ("mmrf", "mmrf_co", "mmrf_nc", "mmrf_da", "mmrf_ns", "tscac")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest and leaves the other cores alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> dict[str, pd.DataFrame]:
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=0)
    return tables


@pytest.fixture(scope="module")
def space(tiny: dict[str, pd.DataFrame]) -> FeatureSpace:
    return FeatureSpace.fit(tiny["users"], tiny["items"])


def _train(tables: dict[str, pd.DataFrame], config: AgentsConfig, **kw: object) -> TrainedAgents:
    return train_agents(tables, config, threads=1, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------- collaboration


def _embeddings(b: int = 3, j: int = 7, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, j, d, generator=torch.Generator().manual_seed(seed))


def test_attention_weights_mask_self_and_are_distributions() -> None:
    torch.manual_seed(0)
    att = AttentiveCollaboration(dim=8, heads=2, n_agents=7)
    x, w = att(_embeddings())
    assert x.shape == (3, 7, 8) and w.shape == (3, 7, 7)
    torch.testing.assert_close(torch.diagonal(w, dim1=1, dim2=2), torch.zeros(3, 7))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 7))
    assert (w >= 0).all()
    # not uniform with random weights: the attention does depend on the embeddings
    assert not torch.allclose(w, (1 - torch.eye(7)).expand(3, 7, 7) / 6, atol=1e-3)


def test_attention_uniform_when_query_and_key_weights_are_zero() -> None:
    # W_Q = W_K = 0 (and their biases): every score is 0, so α_ji = 1/(J−1) for i ≠ j and
    # x_j = W_O · mean_{i≠j}(W_V e_i + b_V) + b_O
    torch.manual_seed(0)
    d, j = 8, 5
    att = AttentiveCollaboration(dim=d, heads=2, n_agents=j)
    mha = att.attn
    with torch.no_grad():
        mha.in_proj_weight[: 2 * d] = 0.0
        mha.in_proj_bias[: 2 * d] = 0.0
        mha.in_proj_bias[2 * d :] = torch.linspace(-1, 1, d)  # a visible value bias
    e = _embeddings(2, j, d)
    x, w = att(e)
    torch.testing.assert_close(w, (1 - torch.eye(j)).expand(2, j, j) / (j - 1))
    w_v, b_v = mha.in_proj_weight[2 * d :], mha.in_proj_bias[2 * d :]
    values = e @ w_v.T + b_v  # (B, J, d)
    mean_others = (values.sum(1, keepdim=True) - values) / (j - 1)
    expected = mean_others @ mha.out_proj.weight.T + mha.out_proj.bias
    torch.testing.assert_close(x, expected.detach())


def test_attention_output_of_agent_ignores_its_own_value() -> None:
    # With W_Q = 0 the query is a constant, so x_j reads e_j nowhere but through the (masked)
    # self slot: perturbing e_j must leave x_j unchanged, and change every other x_i (e_j is
    # one of their keys and values). The attention stays non-uniform (keys are random).
    torch.manual_seed(0)
    d, j, target = 8, 7, 2
    att = AttentiveCollaboration(dim=d, heads=2, n_agents=j)
    with torch.no_grad():
        att.attn.in_proj_weight[:d] = 0.0
        att.attn.in_proj_bias[:d] = torch.linspace(-2, 2, d)
    e = _embeddings(2, j, d)
    e2 = e.clone()
    e2[:, target] += 3.0 * torch.randn(2, d, generator=torch.Generator().manual_seed(5))
    (x, w), (x2, _) = att(e), att(e2)
    assert not torch.allclose(w, (1 - torch.eye(j)).expand(2, j, j) / (j - 1), atol=1e-3)
    torch.testing.assert_close(x2[:, target], x[:, target])
    others = [i for i in range(j) if i != target]
    assert (x2[:, others] - x[:, others]).abs().amax(-1).min() > 1e-4


def test_attention_is_permutation_equivariant_with_one_shared_set_of_weights() -> None:
    torch.manual_seed(0)
    att = AttentiveCollaboration(dim=8, heads=2, n_agents=7)
    e = _embeddings()
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    x, w = att(e)
    xp, wp = att(e[:, perm])
    torch.testing.assert_close(xp, x[:, perm])
    torch.testing.assert_close(wp, w[:, perm][:, :, perm])
    # one Q/K/V/O set for all agents: the parameter count does not grow with J
    d = 8
    n_params = sum(p.numel() for p in att.parameters())
    assert n_params == 4 * d * d + 4 * d
    assert n_params == sum(p.numel() for p in AttentiveCollaboration(d, 2, n_agents=3).parameters())
    assert tuple(att.attn.in_proj_weight.shape) == (3 * d, d)


def test_concat_collaboration_ignores_own_embedding() -> None:
    torch.manual_seed(0)
    b, j, d, target = 2, 4, 3, 1
    co = ConcatCollaboration(dim=d, n_agents=j)
    e = _embeddings(b, j, d)
    x, w = co(e)
    torch.testing.assert_close(w, (1 - torch.eye(j)).expand(b, j, j) / (j - 1))
    # hand computation: x_j = W [e_0; …; 0 (slot j); …; e_{J−1}] + b
    for jj in range(j):
        stacked = e.clone()
        stacked[:, jj] = 0.0
        expected = stacked.reshape(b, j * d) @ co.linear.weight.T + co.linear.bias
        torch.testing.assert_close(x[:, jj], expected.detach())
    e2 = e.clone()
    e2[:, target] += 5.0
    x2, _ = co(e2)
    torch.testing.assert_close(x2[:, target], x[:, target])
    others = [i for i in range(j) if i != target]
    assert (x2[:, others] - x[:, others]).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize(("variant", "reads_aux"), [("mmrf", True), ("mmrf_nc", False)])
def test_watch_time_actor_reads_the_auxiliary_actions_unless_nc(
    space: FeatureSpace, variant: str, reads_aux: bool
) -> None:
    """Eq. 3: a_0 takes a_1..a_J−1 as inputs, so changing only the auxiliary actors moves
    MMRF's WatchTime scores; MMRF-NC's stay exactly the same (independent agents)."""
    torch.manual_seed(0)
    actor, _ = build_networks(space, with_variant(SMALL, variant))
    args = (
        torch.tensor([1, 2]),
        torch.zeros(2, 3),
        torch.zeros(2, 6),
        torch.tensor([[1, 2, 3], [4, 5, 6]]),
    )
    with torch.no_grad():
        before = actor(*args).actions
        actor.aux.out_b.add_(torch.arange(1.0, len(AGENTS)))  # aux actors only
        after = actor(*args).actions
    assert (after[..., 1:] - before[..., 1:]).abs().min() > 0.5  # the aux actions moved
    moved = (after[..., 0] - before[..., 0]).abs().max().item()
    assert (moved > 1e-4) if reads_aux else (moved == 0.0)


def test_no_collaboration_gives_zero_messages(space: FeatureSpace) -> None:
    torch.manual_seed(0)
    actor, _ = build_networks(space, with_variant(SMALL, "tscac"))
    assert actor.collab is None
    u, w = actor.embeddings(torch.randn(4, SMALL.dim))
    assert u.shape == (4, len(AGENTS), 2 * SMALL.dim)
    torch.testing.assert_close(u[..., SMALL.dim :], torch.zeros(4, len(AGENTS), SMALL.dim))
    torch.testing.assert_close(w, torch.zeros(4, len(AGENTS), len(AGENTS)))


# ---------------------------------------------------------------------- maths


def test_critic_targets_known_answer() -> None:
    # B=2 requests, C=2 candidates, J=2 agents; γ = 0.5, η = 0.25, K = 3
    rewards = torch.tensor([[[1.0, 0.0], [2.0, 1.0]], [[0.0, 0.0], [3.0, -1.0]]])
    continues = torch.tensor([1.0, 0.0])
    next_value = torch.tensor([[4.0, 2.0], [9.0, 9.0]])
    returns = torch.tensor([[6.0, 3.0], [9.0, 9.0]])
    y = critic_targets(rewards, continues, next_value, returns, 0.5, 0.25, 3)
    # request 0: future = 0.75·[4, 2] + 0.25·[6, 3]/3 = [3.5, 1.75]; γ·future = [1.75, 0.875]
    # request 1: the session ended (c = 0), so y = r whatever the next value
    expected = torch.tensor([[[2.75, 0.875], [3.75, 1.875]], [[0.0, 0.0], [3.0, -1.0]]])
    torch.testing.assert_close(y, expected)
    # η = 0: pure TD, η = 1: pure Monte-Carlo
    torch.testing.assert_close(
        critic_targets(rewards, continues, next_value, returns, 0.5, 0.0, 3)[0, 0],
        torch.tensor([1.0 + 2.0, 0.0 + 1.0]),
    )
    torch.testing.assert_close(
        critic_targets(rewards, continues, next_value, returns, 0.5, 1.0, 3)[0, 0],
        torch.tensor([1.0 + 1.0, 0.0 + 0.5]),
    )


def test_continuation_targets_known_answer() -> None:
    # γ-free part of the target: c·[(1 − η)·Q̄(s') + η·G/K], η = 0.25, K = 3
    continues = torch.tensor([1.0, 0.0])
    next_value = torch.tensor([[4.0, 2.0], [9.0, 9.0]])
    returns = torch.tensor([[6.0, 3.0], [9.0, 9.0]])
    cont = continuation_targets(continues, next_value, returns, 0.25, 3)
    torch.testing.assert_close(cont, torch.tensor([[3.5, 1.75], [0.0, 0.0]]))


def test_split_critic_is_immediate_plus_discounted_continuation(space: FeatureSpace) -> None:
    torch.manual_seed(0)
    config = replace(SMALL, critic="split", gamma=0.7)
    _, critic = build_networks(space, config)
    user = torch.tensor([0, 1])
    context, history = torch.randn(2, 3), torch.randn(2, 6)
    items = torch.tensor([[0, 1, 2], [3, 4, 5]])
    r_hat, f = critic.parts(user, context, history, items)
    assert r_hat.shape == f.shape == (2, 3, len(AGENTS))
    torch.testing.assert_close(critic(user, context, history, items), r_hat + 0.7 * f)
    _, joint = build_networks(space, replace(config, critic="joint"))
    with pytest.raises(ValueError, match="split critic"):
        joint.parts(user, context, history, items)
    with pytest.raises(ValueError, match="critic must be one of"):
        AgentsConfig(critic="shared")


def _critic_grads(
    tiny: dict[str, pd.DataFrame], space: FeatureSpace, config: AgentsConfig, returns_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the critic loss, with the logged returns multiplied by ``returns_scale``:
    on the encoder and immediate scorer ``q`` together, and on the continuation scorer ``f``
    (empty for a joint critic)."""
    torch.manual_seed(0)
    actor, critic = build_networks(space, config)
    ids = tiny["requests"]["request_id"].to_numpy()[:200]
    data = build_agent_data(tiny, space, ids, config.gamma)
    module = AgentsModule(
        actor, critic, config, torch.from_numpy(data.reward_scale()), data.slate_size
    )
    tensors = _tensors(data)
    tensors["returns"] = tensors["returns"] * returns_scale
    module.set_data(tensors)
    critic_loss, _, _ = module.losses(torch.arange(len(data)))
    critic_loss.backward()

    def flat(m: nn.Module | None) -> torch.Tensor:
        if m is None:
            return torch.zeros(0)
        return torch.cat([p.grad.ravel() for p in m.parameters() if p.grad is not None])

    return torch.cat([flat(critic.encoder), flat(critic.q)]), flat(critic.f)


def test_split_critic_keeps_the_continuation_out_of_the_immediate_heads(
    tiny: dict[str, pd.DataFrame], space: FeatureSpace
) -> None:
    # r̂ regresses on the rewards only and f does not train the encoder: scaling the
    # Monte-Carlo returns changes f's gradient and leaves the encoder's and r̂'s unchanged;
    # in the joint critic the same change moves the encoder's and the heads' gradient
    config = replace(SMALL, critic="split", mc_weight=1.0)
    shared_1, cont_1 = _critic_grads(tiny, space, config, 1.0)
    shared_5, cont_5 = _critic_grads(tiny, space, config, 5.0)
    torch.testing.assert_close(shared_1, shared_5)
    assert cont_1.numel() and not torch.allclose(cont_1, cont_5)
    joint = replace(config, critic="joint")
    j_1, none = _critic_grads(tiny, space, joint, 1.0)
    j_5, _ = _critic_grads(tiny, space, joint, 5.0)
    assert none.numel() == 0 and not torch.allclose(j_1, j_5)


def _masked_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One request, 3 candidates (the last masked), 2 agents.

    agent 0 scores [0, ln 3, 100] → π = [1/4, 3/4, 0]; agent 1 scores [ln 2, ln 2, −5] →
    π = [1/2, 1/2, 0]. The masked candidate has the largest score and q for agent 0.
    """
    scores = torch.tensor([[[0.0, math.log(2)], [math.log(3), math.log(2)], [100.0, -5.0]]])
    mask = torch.tensor([[True, True, False]])
    q = torch.tensor([[[2.0, 1.0], [6.0, -1.0], [1000.0, 50.0]]])
    return scores, mask, q


def test_masked_log_softmax_gives_masked_candidates_zero_probability() -> None:
    scores, mask, _ = _masked_example()
    log_pi = masked_log_softmax(scores, mask[..., None].expand_as(scores))
    pi = log_pi.exp()
    torch.testing.assert_close(pi[0, :, 0], torch.tensor([0.25, 0.75, 0.0]))
    torch.testing.assert_close(pi[0, :, 1], torch.tensor([0.5, 0.5, 0.0]))
    assert (pi[0, 2] == 0).all()


def test_policy_value_known_answer_with_mask() -> None:
    scores, mask, q = _masked_example()
    log_pi = masked_log_softmax(scores, mask[..., None].expand_as(scores))
    # agent 0: 1/4·2 + 3/4·6 = 5; agent 1: 1/2·1 + 1/2·(−1) = 0 (q of the masked one unused)
    torch.testing.assert_close(policy_value(log_pi, q, mask), torch.tensor([[5.0, 0.0]]))


def test_bc_log_likelihood_known_answer() -> None:
    scores, mask, _ = _masked_example()
    log_pi = masked_log_softmax(scores, mask[..., None].expand_as(scores))
    one = torch.tensor([[True, False, False]])
    two = torch.tensor([[True, True, False]])
    torch.testing.assert_close(
        bc_log_likelihood(log_pi, one), torch.tensor([[math.log(0.25), math.log(0.5)]])
    )
    torch.testing.assert_close(
        bc_log_likelihood(log_pi, two),
        torch.tensor([[(math.log(0.25) + math.log(0.75)) / 2, math.log(0.5)]]),
    )


def test_kl_to_known_answer_with_mask() -> None:
    scores, mask, _ = _masked_example()
    log_pi = masked_log_softmax(scores, mask[..., None].expand_as(scores))
    p, q = log_pi[..., 0], log_pi[..., 1]
    # KL([1/4, 3/4] ‖ [1/2, 1/2]) = 1/4·ln(1/2) + 3/4·ln(3/2); the masked slot adds nothing
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    torch.testing.assert_close(kl_to(p, q, mask), torch.tensor([expected]))
    torch.testing.assert_close(kl_to(p, p, mask), torch.tensor([0.0]))
    assert float(kl_to(q, p, mask)) > 0


def test_discounted_returns_session_chain_and_terminal() -> None:
    # rows (shuffled): 0 = session A pos 2 (last), 1 = A pos 0, 2 = B pos 0 (alone),
    # 3 = A pos 1. Chain A: 1 → 3 → 0. γ = 0.5, two agents.
    per_request = np.array([[1.0, 10.0], [2.0, 20.0], [5.0, 50.0], [4.0, 40.0]])
    next_index = np.array([-1, 3, -1, 0])
    position = np.array([2, 0, 0, 1])
    g = _discounted_returns(per_request, next_index, position, 0.5)
    # G(A2) = 0; G(A1) = R(A2) = [1, 10]; G(A0) = R(A1) + γ·G(A1) = [4.5, 45]; G(B0) = 0
    np.testing.assert_allclose(g, [[0.0, 0.0], [4.5, 45.0], [0.0, 0.0], [1.0, 10.0]])
    # γ = 0 keeps only the next request's reward
    g0 = _discounted_returns(per_request, next_index, position, 0.0)
    np.testing.assert_allclose(g0, [[0.0, 0.0], [4.0, 40.0], [0.0, 0.0], [1.0, 10.0]])


# ------------------------------------------------------------------ agent data


def _stopped_session(requests: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """A copy of ``requests`` where a session of ≥ 3 requests stops after its first request
    (``session_continues = 0`` although later requests exist); returns the copy, the stopped
    request's id and the id of its session's second request."""
    sizes = requests.groupby("session_id").size()
    sid = int(sizes[sizes >= 3].index[0])
    in_s = requests[requests["session_id"] == sid].sort_values("position_in_session")
    stopped, second = int(in_s["request_id"].iloc[0]), int(in_s["request_id"].iloc[1])
    out = requests.copy()
    out.loc[out["request_id"] == stopped, "session_continues"] = 0
    return out, stopped, second


def test_build_agent_data_matches_the_log(
    tiny: dict[str, pd.DataFrame], space: FeatureSpace
) -> None:
    gamma = 0.8
    requests, stopped, second = _stopped_session(tiny["requests"])
    sessions = requests["session_id"].drop_duplicates().iloc[:30]
    chosen = requests[requests["session_id"].isin(sessions)]["request_id"].to_numpy()
    chosen = np.random.default_rng(0).permutation(chosen)  # any row order
    assert stopped in chosen and second in chosen
    # impressions shuffled: the shown columns must come back in position order
    imp = tiny["impressions"].sample(frac=1.0, random_state=1).reset_index(drop=True)
    tables = {"requests": requests, "impressions": imp}

    # labelled non-impressions for 3 requests (2, 3 and 1 items) plus one outside the set
    ni = tiny["non_impressions"]
    picked = [int(chosen[0]), int(chosen[1]), int(chosen[2])]
    parts = [ni[ni["request_id"] == r].iloc[:n] for r, n in zip(picked, (2, 3, 1), strict=True)]
    outside = int(np.setdiff1d(requests["request_id"], chosen)[0])
    parts.append(ni[ni["request_id"] == outside].iloc[:2])
    extra = pd.concat(parts)[["request_id", "item_id"]].sample(frac=1.0, random_state=2)
    extra = extra.reset_index(drop=True)
    for j, agent in enumerate(AGENTS):
        extra[agent] = np.arange(len(extra), dtype=np.float32) * 10.0 + j  # unique per cell
    data = build_agent_data(tables, space, chosen, gamma, extra)

    k = 6
    assert data.slate_size == k and len(data) == len(chosen)
    np.testing.assert_array_equal(data.request_id, chosen)
    assert data.items.shape[1] == k + 3  # K + the most extras of one request
    assert data.shown[:, :k].all() and not data.shown[:, k:].any()

    by_key = imp.set_index(["request_id", "position"])
    req = requests.set_index("request_id")
    for row, rid in enumerate(chosen):
        logged = by_key.loc[rid].sort_index()  # positions 0..K-1
        np.testing.assert_array_equal(data.items[row, :k], logged["item_id"].to_numpy())
        np.testing.assert_allclose(data.propensity[row, :k], logged["propensity"].to_numpy())
        expected_r = np.stack(
            [logged["play_time_ms"].to_numpy() / 1000.0]
            + [
                -logged[a].to_numpy() if a == "is_hate" else logged[a].to_numpy()
                for a in AGENTS[1:]
            ],
            axis=1,
        )
        np.testing.assert_allclose(data.rewards[row, :k], expected_r, rtol=1e-6)
        # extras in columns ≥ K, in the order they came, with their own rewards
        mine = extra[extra["request_id"] == rid]
        n = len(mine)
        np.testing.assert_array_equal(data.items[row, k : k + n], mine["item_id"].to_numpy())
        np.testing.assert_allclose(data.rewards[row, k : k + n], mine[list(AGENTS)].to_numpy())
        assert data.mask[row, : k + n].all() and not data.mask[row, k + n :].any()
        assert (data.rewards[row, k + n :] == 0).all()
        assert (data.propensity[row, k:] == 1).all()
        # the next request: same session, position + 1, unless the session stopped here
        sid, pos = req.loc[rid, "session_id"], req.loc[rid, "position_in_session"]
        nxt = data.next_index[row]
        if req.loc[rid, "session_continues"] == 0:
            assert nxt == -1
        else:
            assert nxt >= 0
            assert req.loc[chosen[nxt], "session_id"] == sid
            assert req.loc[chosen[nxt], "position_in_session"] == pos + 1
    assert data.next_index[list(chosen).index(stopped)] == -1
    assert data.next_index[list(chosen).index(second)] >= 0
    assert data.continues[list(chosen).index(stopped)] == 0
    assert data.items.shape[1] == k + 3 and outside not in data.request_id

    # returns: G_t+1 = Σ_k≥1 γ^(k−1) R_t+k walked forward along the chain
    per_request = data.rewards[:, :k].sum(axis=1)
    for row in range(len(data)):
        g, discount, nxt = np.zeros(len(AGENTS)), 1.0, data.next_index[row]
        while nxt >= 0:
            g += discount * per_request[nxt]
            discount *= gamma
            nxt = data.next_index[nxt]
        np.testing.assert_allclose(data.returns[row], g, rtol=1e-5, atol=1e-4)
    assert (data.returns[list(chosen).index(stopped)] == 0).all()
    # the first request of a session has an empty history
    first = requests.set_index("request_id").loc[chosen, "position_in_session"].to_numpy() == 0
    assert first.any() and (data.history[first] == 0).all()


def test_build_agent_data_rejects_bad_input(
    tiny: dict[str, pd.DataFrame], space: FeatureSpace
) -> None:
    ids = tiny["requests"]["request_id"].to_numpy()[:20]
    with pytest.raises(DataError, match="impressions"):
        build_agent_data({"requests": tiny["requests"]}, space, ids, 0.9)
    with pytest.raises(ValueError, match="gamma"):
        build_agent_data(tiny, space, ids, 1.0)
    imp = tiny["impressions"]
    short = imp.drop(imp.index[(imp["request_id"] == ids[0]) & (imp["position"] == 5)])
    with pytest.raises(DataError, match="same number of impressions"):
        build_agent_data({"requests": tiny["requests"], "impressions": short}, space, ids, 0.9)


# -------------------------------------------------------------- gradient direction


def _ascend(q: list[float], mask: list[bool], logged: int | None, bc_weight: float, steps: int):
    """Gradient ascent of ``Q(s, a) + bc_weight · log π(logged)`` over a free score vector."""
    a = nn.Parameter(torch.zeros(1, len(q), 1))
    qt = torch.tensor(q)[None, :, None]
    m = torch.tensor([mask])
    opt = torch.optim.Adam([a], lr=0.1)
    for _ in range(steps):
        log_pi = masked_log_softmax(a, m[..., None])
        objective = policy_value(log_pi, qt, m).sum()
        if logged is not None:
            shown = torch.zeros_like(m)
            shown[0, logged] = True
            objective = objective + bc_weight * bc_log_likelihood(log_pi, shown).sum()
        opt.zero_grad()
        (-objective).backward()
        opt.step()
    return a.detach()[0, :, 0], masked_log_softmax(a, m[..., None]).exp().detach()[0, :, 0]


def test_policy_gradient_at_uniform_scores_matches_the_dpg_formula() -> None:
    # ∂Q/∂a_i = π_i (q_i − Q): at a = 0, π = 1/3, Q = 2 → [−1/3, 1/3, 0]; a masked candidate
    # (huge q) gets no gradient
    a = nn.Parameter(torch.zeros(1, 4, 1))
    q = torch.tensor([1.0, 3.0, 2.0, 100.0])[None, :, None]
    m = torch.tensor([[True, True, True, False]])
    policy_value(masked_log_softmax(a, m[..., None]), q, m).sum().backward()
    torch.testing.assert_close(a.grad[0, :, 0], torch.tensor([-1 / 3, 1 / 3, 0.0, 0.0]))


def test_policy_ascent_finds_the_best_candidate() -> None:
    q, mask = [1.0, 3.0, 2.0, 100.0], [True, True, True, False]
    a, pi = _ascend(q, mask, None, 0.0, steps=300)
    assert int(a[:3].argmax()) == 1  # the best unmasked candidate
    assert float(pi[1]) > 0.95 and float(pi[3]) == 0.0


def test_behaviour_cloning_term_moves_the_optimum_to_the_logged_item() -> None:
    # max_π π·q + α log π_0: moving mass from item 0 to item 1 gains 2 and costs α/π_0, so
    # with α = 10 the optimum is π_0 → 1; with α = 0.1 it is π_0 = 0.05 and item 1 wins
    q, mask = [1.0, 3.0, 2.0], [True, True, True]
    a_small, pi_small = _ascend(q, mask, logged=0, bc_weight=0.1, steps=400)
    assert int(a_small.argmax()) == 1
    assert float(pi_small[0]) == pytest.approx(0.05, abs=0.02)
    a_big, pi_big = _ascend(q, mask, logged=0, bc_weight=10.0, steps=400)
    assert int(a_big.argmax()) == 0 and float(pi_big[0]) > 0.9


def test_agents_module_actor_step_increases_value_under_a_frozen_critic(
    tiny: dict[str, pd.DataFrame], space: FeatureSpace
) -> None:
    torch.manual_seed(0)
    config = replace(SMALL, bc_weight=0.0)
    actor, critic = build_networks(space, config)
    ids = tiny["requests"]["request_id"].to_numpy()[:300]
    data = build_agent_data(tiny, space, ids, config.gamma)
    module = AgentsModule(
        actor, critic, config, torch.from_numpy(data.reward_scale()), data.slate_size
    )
    module.set_data(_tensors(data))
    idx = torch.arange(len(data))

    # gradient routing: the actor loss reaches the actor only, the critic loss the critic only
    critic_loss, actor_loss, logs0 = module.losses(idx)
    actor_loss.backward()
    assert all(p.grad is None for p in critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    actor.zero_grad(set_to_none=True)
    critic_loss.backward()
    assert all(p.grad is None for p in actor.parameters())
    assert all(p.grad is None for p in module.target_critic.parameters())
    critic.zero_grad(set_to_none=True)

    frozen = {k: v.clone() for k, v in critic.state_dict().items()}
    opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
    start = -float(actor_loss.detach())
    for _ in range(15):
        _, actor_loss, logs = module.losses(idx)
        opt.zero_grad()
        actor_loss.backward()
        opt.step()
    _, actor_loss, logs = module.losses(idx)
    assert -float(actor_loss.detach()) > start + 1e-3
    assert logs["actor_value_watch"] > logs0["actor_value_watch"]
    for k, v in critic.state_dict().items():
        torch.testing.assert_close(v, frozen[k])


# --------------------------------------------------------- training, files, variants


@pytest.fixture(scope="module")
def trained(tiny: dict[str, pd.DataFrame]) -> TrainedAgents:
    return _train(tiny, with_variant(SMALL, "mmrf_ns"), seed=0)


def test_training_is_deterministic(tiny: dict[str, pd.DataFrame], trained: TrainedAgents) -> None:
    config = with_variant(SMALL, "mmrf_ns")
    again = _train(tiny, config, seed=0)
    assert set(again.state_dict) == set(trained.state_dict)
    for k, v in trained.state_dict.items():
        assert torch.equal(v, again.state_dict[k]), k
    other = _train(tiny, config, seed=1)
    assert any(not torch.equal(v, other.state_dict[k]) for k, v in trained.state_dict.items())


def test_split_critic_trains_and_inspect_sees_the_trained_module(
    tiny: dict[str, pd.DataFrame],
) -> None:
    seen: list[AgentsModule] = []
    config = with_variant(replace(SMALL, critic="split"), "mmrf_ns")
    model = _train(tiny, config, seed=0, inspect=seen.append)
    assert len(seen) == 1 and seen[0].critic.split
    for k, v in seen[0].actor.state_dict().items():
        assert torch.equal(v, model.state_dict[k]), k  # the returned actor is the inspected one
    # the continuation scorer was trained: train_agents seeds everything, then builds the
    # networks, so the same two steps give its initial weights
    L.seed_everything(0)
    fresh = build_networks(model.feature_space, config)[1]
    assert not torch.equal(fresh.f.out_w, seen[0].critic.f.out_w)
    assert np.isfinite(model.metrics["train_history"][-1]["critic_loss"])


def _score_inputs(tiny: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    items = tiny["items"]["item_id"].to_numpy()
    users = tiny["users"]["user_id"].to_numpy()[:3]
    return {
        "user_ids": users,
        "item_ids": np.stack([items[:5], items[5:10], items[10:15]]),
        "hour": np.array([8, 13, 21]),
        "position": np.array([0, 2, 5]),
    }


def test_save_load_round_trip_scores_identically(
    tiny: dict[str, pd.DataFrame], trained: TrainedAgents, tmp_path: Path
) -> None:
    inputs = _score_inputs(tiny)
    before = trained.score(**inputs)
    assert before.shape == (3, 5)
    loaded = TrainedAgents.load(trained.save(tmp_path / "agents"))
    assert loaded.config == trained.config and loaded.name == trained.name
    np.testing.assert_array_equal(loaded.score(**inputs), before)
    # the score is the WatchTime agent's action
    np.testing.assert_array_equal(trained.actions(**inputs)[..., 0], before)
    one = trained.score(inputs["user_ids"][0], inputs["item_ids"][0], 8, 0)
    np.testing.assert_allclose(one, before[0], rtol=1e-5, atol=1e-6)


def test_history_is_a_model_input(tiny: dict[str, pd.DataFrame], trained: TrainedAgents) -> None:
    inputs = _score_inputs(tiny)
    empty = trained.score(**inputs)
    np.testing.assert_array_equal(trained.score(**inputs, history=np.zeros((3, 6))), empty)
    busy = np.array([[900.0, 0.8, 5.0, 2.0, 1.0, 0.0]] * 3)  # 15 min watched, 5 likes...
    with_history = trained.score(**inputs, history=busy)
    assert np.abs(with_history - empty).max() > 1e-6


class StubLabeller:
    """Labels a share of the logged non-impressions with constant rewards; records refits."""

    def __init__(self, non_impressions: pd.DataFrame, reward: float = 0.5) -> None:
        self.ni, self.reward = non_impressions, reward
        self.label_calls: list[tuple[int, float, int]] = []
        self.refits: list[pd.DataFrame] = []

    def label(self, request_ids: np.ndarray, share: float, seed: int) -> pd.DataFrame:
        self.label_calls.append((len(request_ids), share, seed))
        ni = self.ni[self.ni["request_id"].isin(request_ids)]
        keep = np.random.default_rng(seed).random(len(ni)) < share
        out = ni.loc[keep, ["request_id", "item_id"]].reset_index(drop=True)
        for agent in AGENTS:
            out[agent] = self.reward
        return out

    def refit(self, frame: pd.DataFrame) -> None:
        self.refits.append(frame)


def test_mmrf_with_labeller_refits_between_rounds(tiny: dict[str, pd.DataFrame]) -> None:
    rounds = 3
    labeller = StubLabeller(tiny["non_impressions"])
    messages: list[str] = []
    agents = _train(
        tiny,
        replace(with_variant(SMALL, "mmrf"), rounds=rounds),
        seed=0,
        labeller=labeller,
        progress=messages.append,
    )
    n_train = int((tiny["requests"]["day"] < 2).sum())
    assert [c[:2] for c in labeller.label_calls] == [(n_train, SMALL.label_share)] * rounds
    assert len(labeller.refits) == rounds - 1
    for frame in labeller.refits:
        assert list(frame.columns) == ["request_id", "item_id", "weight"]
        assert len(frame) == 6 * n_train  # one weight per logged impression
        assert frame["weight"].mean() == pytest.approx(1.0, rel=1e-5)
        assert (frame["weight"] > 0).all()
    assert len(messages) == rounds and len(agents.metrics["train_history"]) == rounds
    assert "collab.attn.in_proj_weight" in agents.state_dict


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "mmrf"])
def test_every_variant_trains_one_epoch(tiny: dict[str, pd.DataFrame], variant: str) -> None:
    config = with_variant(SMALL, variant)
    # MMRF-CO and MMRF-NC keep the simulated non-impressions, so they need a labeller too
    simulated = variant in ("mmrf_co", "mmrf_nc")
    labeller = StubLabeller(tiny["non_impressions"]) if simulated else None
    messages: list[str] = []
    agents = _train(tiny, config, seed=0, labeller=labeller, progress=messages.append)
    history = agents.metrics["train_history"]
    assert len(history) == 1 and all(np.isfinite(v) for v in history[0].values())
    keys = set(agents.state_dict)
    n_train = int((tiny["requests"]["day"] < 2).sum())
    candidates = int(messages[0].split(" candidates")[0].split()[-1])
    expected_collab = {
        "mmrf_co": "collab.linear.weight",
        "mmrf_da": "collab.attn.in_proj_weight",
        "mmrf_ns": "collab.attn.in_proj_weight",
    }
    if variant in ("tscac", "mmrf_nc"):
        assert not any(k.startswith("collab.") for k in keys)
        assert "main.extra" not in keys  # no communication: a_0 does not read a_j
    else:
        assert expected_collab[variant] in keys and "main.extra" in keys
    if variant in ("mmrf_ns", "mmrf_co", "mmrf_nc"):
        assert candidates > 6 * n_train  # the sampled non-impressions were added
    else:
        assert candidates == 6 * n_train  # impressions only
    assert isinstance(agents.model, RankingAgents)
    assert np.isfinite(agents.score(0, tiny["items"]["item_id"].to_numpy()[:4], 9, 0)).all()


def test_mmrf_without_labeller_and_unknown_variant_raise(tiny: dict[str, pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="needs a feedback simulator"):
        _train(tiny, with_variant(SMALL, "mmrf"), seed=0)
    with pytest.raises(ValueError, match="unknown agent variant 'mmrf_xx'"):
        with_variant(SMALL, "mmrf_xx")
    with pytest.raises(ValueError, match="collaboration"):
        replace(SMALL, collaboration="graph")
