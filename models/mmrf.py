r"""MMRF: collaborative multi-aspect ranking agents trained by deterministic policy gradient.

Implements the ranking agents of "A Model-based Multi-Agent Personalized Short-Video
Recommender System" (MMRF, seed 002, §2.2), with the two-stage constrained actor-critic
(TSCAC, Cai et al., WWW 2023) and the paper's ablation MMRF-CO in the same code path.

Agents ``j = 0..J−1`` (``components.agent_data.AGENTS``): ``j = 0`` maximises watch time, the
others one auxiliary aspect each (click, like, follow, comment, −hate, long view). A request's
state ``s`` (user, context, session history) is shared by all agents; a candidate ``i`` is
encoded as ``v_i``.

State embeddings and attentive collaboration (Eq. 1)::

    e_j = ReLU(W_j z(s) + b_j)                                    per-agent state embedding
    x_j = W_O Σ_{i≠j} α_ji (W_V e_i + b_V) + b_O,
    α_j· = softmax_i≠j((W_Q e_j + b_Q)·(W_K e_i + b_K)/√d)        (per head, heads concatenated)

``W_Q, W_K, W_V`` are one ``nn.MultiheadAttention`` applied to the J agent tokens, so they are
shared by all agents (a common embedding space); the attention mask removes ``i = j``.
MMRF-CO replaces ``x_j`` by a linear map of the concatenated other embeddings; TSCAC has no
collaboration (``x_j = 0``), and neither has MMRF-NC, whose WatchTime actor also leaves the
auxiliary actions out of Eq. 3 (independent agents, MMRF's objective).

Actors (Eq. 2–3), one score per candidate::

    a_j(s, i) = MLP_j([e_j ; x_j], v_i)                           auxiliary agent j ≥ 1
    a_0(s, i) = MLP_0([e_0 ; x_0], v_i, a_1(s, i) … a_J−1(s, i))  WatchTime agent

The action of agent j is its score vector over the candidates; its policy is
``π_j(i | s) = softmax_i(a_j(s, i))`` over the request's candidates (Plackett–Luce for a
slate), so the scores double as the stochastic ranking policy NCIS needs (temperature 1).

Critics, one per agent, over candidates: ``q_j(s, i)`` is agent j's expected discounted
reward from showing i in s. The value of a score vector is ``Q_j(s, a_j) = Σ_i π_j(i|s)
q_j(s, i)``, which is differentiable in the action, so the deterministic policy gradient
(Silver et al., 2014) is ``∇_θ Q_j = Σ_i ∇_θ a_j(s, i) · π_j(i|s) (q_j(s, i) − Q_j(s, a_j))``.

Critic target (TD blended with the logged Monte-Carlo return, η = ``mc_weight``; ``K``
slots share a request's future)::

    y_j = r_j(s, i) + γ·c·[(1 − η)·Q̄_j(s', a_j(s')) + η·G_j(s') / K]  =  r_j + γ·F_j(s)

``critic="split"`` regresses the two parts of the target apart, ``q_j = r̂_j + γ·f_j``::

    L_critic = Σ_j mean_i [(r̂_j(s, i) − r_j(s, i))² + (f_j(s, i) − F_j(s))²]

with ``f`` on a stop-gradient of the encoder (:class:`Critics`); the default ``"joint"``
regresses one ``q_j`` on ``y_j`` (rewards are scaled per agent either way).

The continuation ``F_j(s)`` is the same for every candidate of a request, so it cannot
tell them apart; ``session_credit`` = λ > 0 adds to the WatchTime reward of each candidate
the share of the future its own feedback buys, ``λ·γ·w·(φ_i − φ̄)``, with ``w`` fitted on
the log (``components.agent_data.fit_session_credit``).

``Q̄`` uses a Polyak-averaged target critic. The session's state (fatigue) is hidden from
the logged features, so a pure TD target cannot see a clickbait's later cost; the
Monte-Carlo part can (its variance is the price), hence the blend.

Actor objective (Eq. 4: auxiliary agents are updated on their own objective *and* the main
one, because ``a_0`` takes their actions as inputs)::

    L_actor = −Q_0(s, a_0) − Σ_{j≥1} Q_j(s, a_j) − α Σ_j log π_j(logged items | s)

The last term (weight ``bc_weight``) keeps the policies near the logged support, as offline
actor-critics must (TD3+BC, Fujimoto & Gu 2021): the critics are only trained on logged and
simulated candidates. TSCAC instead trains each auxiliary actor on its own critic (stage 1)
and the WatchTime actor on ``−Q_0 + λ Σ_j KL(π_0 ‖ π_j)`` with the auxiliary policies fixed
(stage 2; ``tscac_kl_weight`` = λ), i.e. no communication between agents.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.config import config_from_dict

N_AGENTS = 7
COLLABORATION = ("attention", "concat", "none")
CRITICS = ("split", "joint")
NON_IMPRESSIONS = ("simulated", "none", "negative")


@dataclass(frozen=True)
class AgentsConfig:
    """Every knob of the ranking agents, with the defaults used for the demo data set.

    Variant
        ``collaboration`` ("attention"): MMRF's attentive collaboration; "concat" is MMRF-CO;
        "none" with ``two_stage=True`` is TSCAC.
        ``two_stage`` (False): TSCAC's objective (module docstring) instead of MMRF's.
        ``aux_actions`` (True): the WatchTime actor takes the auxiliary actions as inputs
        (Eq. 3). With ``collaboration="none"`` and False the agents do not communicate at
        all: MMRF-NC, which answers whether collaboration matters, not only its form.
        ``critic`` ("joint"): one ``q`` regressed on the summed target; "split" is
        ``q = r̂ + γ·f`` with the immediate reward and the continuation regressed apart
        (:class:`Critics`; measured in docs/results/aligned_world_split).
        ``session_credit`` (0.0): λ of the per-item session credit — the WatchTime reward
        of each candidate is raised by ``λ·γ·w·(φ_i − φ̄)``, what its feedback buys of the
        rest of the session (``components.agent_data.fit_session_credit``); 0 leaves the
        rewards as logged.
        ``non_impressions`` ("simulated"): labelled by the feedback simulator (MMRF),
        "none" (MMRF-DA), "negative" (MMRF-NS, constant reward ``negative_reward``·mean).
        ``label_share`` (0.25): share of logged non-impressions sampled per round.
        ``rounds`` (2): alternations of agent training and simulator refitting
        (Algorithm 1); ``epochs`` per round.
    Model
        ``dim`` (32): state, item and agent embedding width; ``heads`` (4) attention heads;
        ``hidden`` (64): actor and critic hidden width; ``id_embedding_dim`` (16),
        ``tag_embedding_dim`` (8) as in the supervised ranker.
    Learning
        ``gamma`` (0.9) discount per request; ``mc_weight`` (0.5) η of the critic target;
        ``bc_weight`` (0.1) α; ``tscac_kl_weight`` (0.5) λ; ``tau`` (0.05) Polyak rate of the
        target critic; ``lr_actor`` (1e-3), ``lr_critic`` (2e-3), Adam; ``batch_size`` (256)
        requests; ``epochs`` (4) per round.
    Serving
        ``temperature`` (0.1): the policy is softmax / Plackett–Luce over the WatchTime
        actor's scores divided by it. The actor is trained as a softmax (T = 1) over a
        request's ~8 logged candidates (6 shown + sampled non-impressions), but serves over
        the 12–36 pre-ranked ones, where T = 1 spreads most of the mass over the tail. On the
        demo world (MMRF-NS, one rollout day) T = 1 / 0.3 / 0.1 / 0.03 gave 2482 / 2702 /
        2712 / 2810 s of session watch time, while the behaviour-cloning ranker was flat
        in its temperature (2444–2460 s for T = 10 … 0.3 s); 0.1 keeps the policy
        stochastic enough for NCIS (see docs/results/mmrf.md for the ESS).
    """

    collaboration: str = "attention"
    two_stage: bool = False
    aux_actions: bool = True
    critic: str = "joint"
    session_credit: float = 0.0
    non_impressions: str = "simulated"
    negative_reward: float = 1.0
    label_share: float = 0.25
    rounds: int = 2
    epochs: int = 4
    dim: int = 32
    heads: int = 4
    hidden: int = 64
    id_embedding_dim: int = 16
    tag_embedding_dim: int = 8
    gamma: float = 0.9
    mc_weight: float = 0.5
    bc_weight: float = 0.1
    tscac_kl_weight: float = 0.5
    tau: float = 0.05
    lr_actor: float = 1e-3
    lr_critic: float = 2e-3
    batch_size: int = 256
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.collaboration not in COLLABORATION:
            raise ValueError(
                f"AgentsConfig.collaboration must be one of {COLLABORATION}, "
                f"got {self.collaboration!r}"
            )
        if self.critic not in CRITICS:
            raise ValueError(f"AgentsConfig.critic must be one of {CRITICS}, got {self.critic!r}")
        if self.non_impressions not in NON_IMPRESSIONS:
            raise ValueError(
                f"AgentsConfig.non_impressions must be one of {NON_IMPRESSIONS}, "
                f"got {self.non_impressions!r}"
            )
        if self.heads < 1 or self.dim % self.heads:
            raise ValueError(
                f"AgentsConfig.dim ({self.dim}) must be divisible by heads ({self.heads} >= 1)"
            )
        if not 0 < self.label_share <= 1:
            raise ValueError(f"AgentsConfig.label_share must be in (0, 1], got {self.label_share}")
        if not 0 <= self.gamma < 1 or not 0 <= self.mc_weight <= 1:
            raise ValueError("AgentsConfig: gamma must be in [0, 1) and mc_weight in [0, 1]")
        for name in ("rounds", "epochs", "batch_size", "dim", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"AgentsConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.session_credit < 0:
            raise ValueError(f"AgentsConfig.session_credit must be >= 0, got {self.session_credit}")
        if self.temperature <= 0:
            raise ValueError(f"AgentsConfig.temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentsConfig:
        return config_from_dict(cls, d)


# ------------------------------------------------------------------------- encoders


class Encoder(nn.Module):
    """``z(s) = ReLU(W [x_user ; e_user_id ; context ; history])`` and
    ``v_i = ReLU(W' [x_item ; e_tag ; e_item_id])`` over the feature space's tables."""

    def __init__(
        self,
        user_table: Tensor,
        item_table: Tensor,
        item_tag: Tensor,
        n_tags: int,
        n_context: int,
        n_history: int,
        dim: int,
        id_embedding_dim: int,
        tag_embedding_dim: int,
    ) -> None:
        super().__init__()
        self.register_buffer("user_table", user_table.float(), persistent=False)
        self.register_buffer("item_table", item_table.float(), persistent=False)
        self.register_buffer("item_tag", item_tag.long(), persistent=False)
        self.user_id = nn.Embedding(user_table.shape[0], id_embedding_dim)
        self.item_id = nn.Embedding(item_table.shape[0], id_embedding_dim)
        self.tag = nn.Embedding(n_tags, tag_embedding_dim)
        for emb in (self.user_id, self.item_id, self.tag):
            nn.init.normal_(emb.weight, std=0.05)
        n_state = user_table.shape[1] + id_embedding_dim + n_context + n_history
        self.state_net = nn.Sequential(nn.Linear(n_state, dim), nn.ReLU(), nn.Linear(dim, dim))
        n_item = item_table.shape[1] + id_embedding_dim + tag_embedding_dim
        self.item_net = nn.Sequential(nn.Linear(n_item, dim), nn.ReLU(), nn.Linear(dim, dim))

    def state(self, user_row: Tensor, context: Tensor, history: Tensor) -> Tensor:
        x = torch.cat([self.user_table[user_row], self.user_id(user_row), context, history], -1)
        return F.relu(self.state_net(x))

    def item(self, item_row: Tensor) -> Tensor:
        x = torch.cat(
            [self.item_table[item_row], self.tag(self.item_tag[item_row]), self.item_id(item_row)],
            -1,
        )
        return F.relu(self.item_net(x))


class PairScorer(nn.Module):
    """``J`` independent scorers of (state, candidate) pairs, computed together::

        h_j = ReLU(A_j u_j + B_j v_i + C_j (P_j u_j ⊙ v_i) + D_j w_i)      (hidden H)
        out_j = o_j · h_j + c_j

    ``u`` is ``(B, J, d_u)`` (one state input per scorer), ``v`` ``(B, C, d)``, ``w`` an
    optional per-scorer extra input ``(B, C, J, d_w)``; the output is ``(B, C, J)``."""

    def __init__(self, n: int, d_state: int, d_item: int, hidden: int, d_extra: int = 0) -> None:
        super().__init__()
        self.n, self.hidden = n, hidden
        self.state_w = nn.Parameter(torch.randn(n, d_state, hidden) / d_state**0.5)
        self.state_b = nn.Parameter(torch.zeros(n, hidden))
        self.proj = nn.Parameter(torch.randn(n, d_state, d_item) / d_state**0.5)
        self.item = nn.Linear(d_item, n * hidden, bias=False)
        self.cross = nn.Linear(d_item, n * hidden, bias=False)
        self.extra = (
            nn.Parameter(torch.randn(n, d_extra, hidden) / max(d_extra, 1) ** 0.5)
            if d_extra
            else None
        )
        self.out_w = nn.Parameter(torch.randn(n, hidden) / hidden**0.5)
        self.out_b = nn.Parameter(torch.zeros(n))

    def forward(self, u: Tensor, v: Tensor, w: Tensor | None = None) -> Tensor:
        b, c = v.shape[0], v.shape[1]
        hs = torch.einsum("bjd,jdh->bjh", u, self.state_w) + self.state_b  # (B, J, H)
        pu = torch.einsum("bjd,jde->bje", u, self.proj)  # (B, J, d)
        hi = self.item(v).view(b, c, self.n, self.hidden)  # (B, C, J, H)
        cross_in = pu[:, None, :, :] * v[:, :, None, :]  # (B, C, J, d)
        w_cross = self.cross.weight.view(self.n, self.hidden, -1)  # (J, H, d)
        hc = torch.einsum("bcjd,jhd->bcjh", cross_in, w_cross)
        h = hs[:, None] + hi + hc
        if self.extra is not None and w is not None:
            h = h + torch.einsum("bcje,jeh->bcjh", w, self.extra)
        h = F.relu(h)
        return torch.einsum("bcjh,jh->bcj", h, self.out_w) + self.out_b


# ------------------------------------------------------------------- collaboration


class AttentiveCollaboration(nn.Module):
    """Eq. 1: every agent attends to the others' state embeddings with shared Q/K/V weights.

    ``forward(e (B, J, d)) -> (x (B, J, d), weights (B, J, J))``; ``weights[b, j, j] = 0``.
    """

    def __init__(self, dim: int, heads: int, n_agents: int = N_AGENTS) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.register_buffer("self_mask", torch.eye(n_agents, dtype=torch.bool), persistent=False)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        x, w = self.attn(e, e, e, attn_mask=self.self_mask, need_weights=True)
        return x, w


class ConcatCollaboration(nn.Module):
    """MMRF-CO: ``x_j = W [e_i for i ≠ j]`` (the others' embeddings concatenated, own slot
    zeroed), one shared ``W``; no attention."""

    def __init__(self, dim: int, n_agents: int = N_AGENTS) -> None:
        super().__init__()
        self.linear = nn.Linear(n_agents * dim, dim)
        self.register_buffer("others", 1.0 - torch.eye(n_agents), persistent=False)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        b, j, d = e.shape
        stacked = e[:, None, :, :] * self.others[None, :, :, None]  # (B, J, J, d)
        x = self.linear(stacked.reshape(b, j, j * d))
        return x, self.others.expand(b, j, j) / (j - 1)


# ---------------------------------------------------------------------- the agents


@dataclass(frozen=True)
class AgentOutputs:
    """Scores ``actions (B, C, J)`` (agent 0 = WatchTime) and the collaboration weights."""

    actions: Tensor
    attention: Tensor


class RankingAgents(nn.Module):
    """The J actors: encoder → per-agent embeddings → collaboration → actor scores."""

    def __init__(self, encoder: Encoder, config: AgentsConfig, n_agents: int = N_AGENTS) -> None:
        super().__init__()
        self.encoder, self.n = encoder, n_agents
        d = config.dim
        self.agent_embed = nn.Linear(d, n_agents * d)
        if config.collaboration == "attention":
            self.collab: nn.Module | None = AttentiveCollaboration(d, config.heads, n_agents)
        elif config.collaboration == "concat":
            self.collab = ConcatCollaboration(d, n_agents)
        else:
            self.collab = None
        self.uses_aux_actions = config.aux_actions and not config.two_stage
        self.aux = PairScorer(n_agents - 1, 2 * d, d, config.hidden)
        self.main = PairScorer(
            1, 2 * d, d, config.hidden, d_extra=(n_agents - 1) if self.uses_aux_actions else 0
        )

    def embeddings(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """``(u (B, J, 2d), attention (B, J, J))`` with ``u_j = [e_j ; x_j]``."""
        b = state.shape[0]
        e = F.relu(self.agent_embed(state)).view(b, self.n, -1)
        if self.collab is None:
            x = torch.zeros_like(e)
            w = torch.zeros(b, self.n, self.n, device=e.device)
        else:
            x, w = self.collab(e)
        return torch.cat([e, x], dim=-1), w

    def forward(
        self, user_row: Tensor, context: Tensor, history: Tensor, item_row: Tensor
    ) -> AgentOutputs:
        u, w = self.embeddings(self.encoder.state(user_row, context, history))
        v = self.encoder.item(item_row)
        aux = self.aux(u[:, 1:], v)  # (B, C, J-1)
        extra = aux[:, :, None, :] if self.uses_aux_actions else None
        main = self.main(u[:, :1], v, extra)  # (B, C, 1)
        return AgentOutputs(torch.cat([main, aux], dim=-1), w)


class Critics(nn.Module):
    """``q_j(s, i)`` for every agent j, ``(B, C, J)``.

    ``split=True`` (``AgentsConfig.critic="split"``)::

        q_j(s, i) = r̂_j(s, i) + γ·f_j(s, i)

    ``r̂`` (scorer ``q``) regresses the immediate reward, ``f`` (scorer ``f``) the value of
    what follows (:func:`continuation_targets`), each on its own part of the target
    (:meth:`parts`). ``f`` reads the encoder's outputs without training them: the
    continuation is a session-level Monte-Carlo/TD quantity several times larger and far
    noisier than one item's reward, and its gradient would otherwise dominate the encoder
    (``bench/critic_quality.py`` compares split and joint; figures in bench/RESULTS.md).
    ``split=False``: one scorer per agent regressed on the sum, the encoder trained by all
    of it.
    """

    def __init__(self, encoder: Encoder, config: AgentsConfig, n_agents: int = N_AGENTS) -> None:
        super().__init__()
        self.encoder, self.n, self.gamma = encoder, n_agents, config.gamma
        self.q = PairScorer(n_agents, config.dim, config.dim, config.hidden)
        self.f = (
            PairScorer(n_agents, config.dim, config.dim, config.hidden)
            if config.critic == "split"
            else None
        )

    @property
    def split(self) -> bool:
        """Whether the critic is split into ``r̂`` and ``f``."""
        return self.f is not None

    def _encode(
        self, user_row: Tensor, context: Tensor, history: Tensor, item_row: Tensor
    ) -> tuple[Tensor, Tensor]:
        s = self.encoder.state(user_row, context, history)
        return s[:, None, :].expand(-1, self.n, -1), self.encoder.item(item_row)

    def parts(
        self, user_row: Tensor, context: Tensor, history: Tensor, item_row: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(r̂ (B, C, J), f (B, C, J))`` of a split critic."""
        if self.f is None:
            raise ValueError("Critics.parts needs a split critic (AgentsConfig.critic='split')")
        s, v = self._encode(user_row, context, history, item_row)
        return self.q(s, v), self.f(s.detach(), v.detach())

    def forward(
        self, user_row: Tensor, context: Tensor, history: Tensor, item_row: Tensor
    ) -> Tensor:
        if self.f is None:
            return self.q(*self._encode(user_row, context, history, item_row))
        r_hat, f = self.parts(user_row, context, history, item_row)
        return r_hat + self.gamma * f


def masked_log_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """``log softmax`` over the unmasked entries (masked ones get ``−inf``-like logits)."""
    return F.log_softmax(scores.masked_fill(~mask, -1e9), dim=dim)


def policy_value(log_pi: Tensor, q: Tensor, mask: Tensor) -> Tensor:
    """``Q_j(s, a_j) = Σ_i π_j(i|s) q_j(s, i)`` over unmasked candidates: ``(B, J)``."""
    pi = log_pi.exp() * mask[..., None]
    return (pi * q).sum(dim=1)


def continuation_targets(
    continues: Tensor,
    next_value: Tensor,
    returns: Tensor,
    mc_weight: float,
    slate_size: int,
) -> Tensor:
    """``c·[(1 − η)·Q̄(s') + η·G/K]``, the value of what follows a request: ``(B, J)``.

    ``continues (B,)``, ``next_value (B, J)`` (0 where there is no next request),
    ``returns (B, J)`` the discounted rewards of the following requests.
    """
    future = (1.0 - mc_weight) * next_value + mc_weight * returns / slate_size
    return continues[:, None] * future


def critic_targets(
    rewards: Tensor,
    continues: Tensor,
    next_value: Tensor,
    returns: Tensor,
    gamma: float,
    mc_weight: float,
    slate_size: int,
) -> Tensor:
    """``y = r + γ·c·[(1 − η)·Q̄(s') + η·G/K]`` broadcast over candidates: ``(B, C, J)``.

    ``rewards (B, C, J)``; the rest as in :func:`continuation_targets`.
    """
    cont = continuation_targets(continues, next_value, returns, mc_weight, slate_size)
    return rewards + gamma * cont[:, None, :]


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``(pred − target)²`` over unmasked candidates and agents (``mask (B, C)``)."""
    m = mask[..., None].to(pred.dtype).expand_as(pred)
    return (((pred - target) ** 2) * m).sum() / m.sum().clamp_min(1.0)


def bc_log_likelihood(log_pi: Tensor, shown: Tensor) -> Tensor:
    """Mean ``log π_j(i|s)`` over the logged (shown) items: ``(B, J)``."""
    k = shown.sum(dim=1, keepdim=True).clamp_min(1)
    return (log_pi * shown[..., None]).sum(dim=1) / k


def kl_to(log_p: Tensor, log_q: Tensor, mask: Tensor) -> Tensor:
    """``KL(p ‖ q) = Σ_i p_i (log p_i − log q_i)`` over unmasked candidates: ``(B,)``."""
    p = log_p.exp() * mask
    return (p * (log_p - log_q).masked_fill(~mask, 0.0)).sum(dim=1)


# ------------------------------------------------------------------- lightning


class AgentsModule(L.LightningModule):
    """Critic and actor updates of the agents (module docstring), manual optimisation.

    A batch is a tensor of request indices into ``self.data`` (a dict of tensors set with
    :meth:`set_data` before each round); the next requests are gathered from the same
    tensors. ``reward_scale (J,)`` divides rewards and returns so every critic sees targets
    of order one.
    """

    def __init__(
        self,
        actor: RankingAgents,
        critic: Critics,
        config: AgentsConfig,
        reward_scale: Tensor,
        slate_size: int,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.actor, self.critic, self.config = actor, critic, config
        self.target_critic = copy.deepcopy(critic)
        for p in self.target_critic.parameters():
            p.requires_grad_(False)
        self.register_buffer("reward_scale", reward_scale.float())
        self.slate_size = slate_size
        self.data: dict[str, Tensor] = {}
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._steps = 0

    def set_data(self, data: dict[str, Tensor]) -> None:
        self.data = data

    def _gather(self, idx: Tensor) -> dict[str, Tensor]:
        return {k: v[idx] for k, v in self.data.items()}

    def _inputs(self, b: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return b["user_row"], b["context"], b["history"], b["item_row"]

    def losses(self, idx: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """``(critic_loss, actor_loss, logs)`` for the requests ``idx``."""
        cfg = self.config
        b = self._gather(idx)
        mask, shown = b["mask"], b["shown"]
        scale = self.reward_scale
        # ---- critic
        with torch.no_grad():
            nxt = b["next_index"]
            has_next = nxt >= 0
            nb = self._gather(nxt.clamp_min(0))
            q_next = self.target_critic(*self._inputs(nb))
            a_next = self.actor(*self._inputs(nb)).actions
            logp_next = masked_log_softmax(a_next, nb["mask"][..., None].expand_as(a_next))
            v_next = policy_value(logp_next, q_next, nb["mask"]) * has_next[:, None]
            r, returns = b["rewards"] / scale, b["returns"] / scale
            if self.critic.split:
                cont = continuation_targets(
                    b["continues"], v_next, returns, cfg.mc_weight, self.slate_size
                )
            else:
                y = critic_targets(
                    r, b["continues"], v_next, returns, cfg.gamma, cfg.mc_weight, self.slate_size
                )
        if self.critic.split:
            r_hat, f = self.critic.parts(*self._inputs(b))
            q = r_hat + cfg.gamma * f
            critic_loss = masked_mse(r_hat, r, mask) + masked_mse(
                f, cont[:, None, :].expand_as(f), mask
            )
        else:
            q = self.critic(*self._inputs(b))
            critic_loss = masked_mse(q, y, mask)
        # ---- actor
        out = self.actor(*self._inputs(b))
        logp = masked_log_softmax(out.actions, mask[..., None].expand_as(out.actions))
        value = policy_value(logp, q.detach(), mask)  # (B, J)
        bc = bc_log_likelihood(logp, shown)  # (B, J)
        if cfg.two_stage:
            kl = torch.stack(
                [kl_to(logp[..., 0], logp[..., j].detach(), mask) for j in range(1, q.shape[-1])],
                dim=-1,
            ).sum(-1)
            actor_loss = (
                -value.sum(-1) + cfg.tscac_kl_weight * kl - cfg.bc_weight * bc.sum(-1)
            ).mean()
        else:
            actor_loss = (-value.sum(-1) - cfg.bc_weight * bc.sum(-1)).mean()
        logs = {
            "critic_loss": float(critic_loss.detach()),
            "actor_value_watch": float(value[:, 0].detach().mean()),
            "bc_loglik_watch": float(bc[:, 0].detach().mean()),
        }
        return critic_loss, actor_loss, logs

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        opt_critic, opt_actor = self.optimizers()
        critic_loss, actor_loss, logs = self.losses(batch)
        opt_critic.zero_grad()
        opt_actor.zero_grad()
        self.manual_backward(critic_loss + actor_loss)
        # the actor loss reads q.detach(): its gradient reaches the actor only; the critic
        # loss reaches the critic only (the actor output under no_grad in the target)
        opt_critic.step()
        opt_actor.step()
        self._polyak()
        for k, v in logs.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._steps += 1

    @torch.no_grad()
    def _polyak(self) -> None:
        tau = self.config.tau
        for p, tp in zip(self.critic.parameters(), self.target_critic.parameters(), strict=True):
            tp.mul_(1 - tau).add_(p.detach(), alpha=tau)

    def on_train_epoch_start(self) -> None:
        self._sums, self._steps = {}, 0

    def on_train_epoch_end(self) -> None:
        if self._steps:
            self.history.append({k: v / self._steps for k, v in self._sums.items()})
            self.log("critic_loss", self.history[-1]["critic_loss"], prog_bar=True)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.critic.parameters(), lr=self.config.lr_critic),
            torch.optim.Adam(self.actor.parameters(), lr=self.config.lr_actor),
        ]
