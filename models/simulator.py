r"""MMRF's user-feedback simulator: a recurrent, siamese multi-aspect response model.

The model-based part of MMRF (Multi-agent Multi-aspect Recommendation Framework, §2.3 and
Algorithm 1): a model of the user's multi-aspect response to an item, fitted on logged
impressions and used to label a random share of the **non-impressions** (candidates that
were ranked but not shown), so that the ranking agents also learn where the logging policy
never looked (sample selection bias, SSB).

Three layers (``STYLE.md``): :class:`FeedbackSimulator` is the maths (a plain ``nn.Module``),
:class:`SimulatorModule` the ``LightningModule`` that owns loss and optimiser, and
``components.simulator.fit_simulator`` the entry point. :class:`SimulatorConfig` (next to the
algorithm, JSON-serialisable, saved with the model) holds every knob.

Recurrent user state (Bai et al., NeurIPS 2019, as in the paper). The requests of a user,
ordered by (day, request_id), form one sequence. Request ``t`` is summarised by::

    x_t = [ mean_i v_i ; Σ_i f_i v_i / Σ_i f_i ; mean_i y_i ; x_ctx(t) ; log1p(n_t) ]

over its shown items ``i`` (``v_i`` the learned item representation below, ``f_i`` the watch
fraction + 0.01, ``y_i`` the 9 observed feedback values: the 7 binary aspects, log1p(play
seconds) and the watch fraction clipped to [0, 3], ``n_t`` the number of shown items).
A GRU runs over ``x_1, x_2, …``; the state that predicts request ``t`` is the GRU output
**after requests < t**::

    s_1 = h_0 (learned),   s_t = GRU(x_1..x_{t−1})    (so request t never sees its own feedback)

Sequences are packed (``pack_padded_sequence``), so one batch holds many users of different
lengths without computing the padding. The state is worth having: with ``state_dim = 1``
the held-out click AUC drops from 0.644 to 0.623 on the demo world data and from 0.707 to
0.682 on KuaiRand-1K.

Heads (paper Eq. 5). With the user tower ``u = ReLU(W_u [x_user ; e_user_id])`` and the item
tower ``v = ReLU(W_v [x_item ; e_tag ; e_item_id])`` (``components.features.FeatureSpace``
rows; ids unknown at fit time, or seen in fewer than ``min_id_count`` training impressions,
share row 0), each predictor computes::

    h_1 = ReLU(A_u u + A_s s + A_c x_ctx + A_v v + A_x (u ⊙ v) + A_y ((P s) ⊙ v) + a)
    h_l = ReLU(W_l h_{l−1} + b_l)
    z_k = w_k·h + c_k      logit of aspect k (ASPECTS order)      p_k = σ(z_k)
    μ   = w_p·h + c_p      predicted log1p(play seconds)

``(P s) ⊙ v`` lets the state (what the user has been watching, how tired they are) interact
with the candidate, which is how the session's interest drifts.

Siamese twin (paper, after Burda et al., "Exploration by random network distillation",
2018). Two parallel predictors with the same architecture and the same targets share the
towers and the recurrent state; the **twin** applies dropout (``SimulatorConfig.dropout``)
to its hidden layers, the **main** predictor does not. Where the data constrain both, they
agree; away from the data their extrapolations differ. The uncertainty of a prediction is
their inconsistency (the twin in eval mode, i.e. deterministic; the reported prediction is
the main predictor's)::

    u_k    = |p_k − p'_k|        per binary aspect (probability scale)
    u_play = |μ − μ'|            play time (log1p-seconds scale)
    u      = mean(u_1..u_7, u_play)   scalar summary

Loss over a batch of target impressions ``i`` with sample weights ``ω_i``
(:func:`simulator_loss`)::

    ℓ_i = Σ_k w_k [BCE(z_k, y_k) + BCE(z'_k, y_k)] + w_play [(μ − t)² + (μ' − t)²]
          + β [ Σ_k KL(Bern(p_k) ‖ Bern(p'_k)) + ½ (μ − μ')² ]
    L   = Σ_i ω_i ℓ_i / Σ_i ω_i,          t = log1p(play_ms / 1000)

The paper fits every head with a squared error (Eq. 5). Here the binary heads use the
Bernoulli log-likelihood (BCE): the same minimiser (the conditional probability) but
calibrated gradients for rare aspects (follow, comment: base rates of 1e-3), where a squared
error on probabilities gives almost no signal. Play time keeps the squared error, on the
log1p scale (robust to the heavy tail, defined for live streams and unknown durations). ``β``
(``kl_weight``) is the paper's KL regulariser on the uncertainty; the play term is the KL of
two unit-variance Gaussians ``N(μ, 1)`` and ``N(μ', 1)``.

Expected play time (Duan's smearing, as ``models.ranker``): ``E[play_s] ≈ S·exp(μ) − 1``,
``S = Σ ω_i exp(t_i − μ_i) / Σ ω_i`` over the training impressions (buffer ``play_smearing``).

Simulated reward (paper Eq. 6, :func:`optimistic_rewards`), with ``λ`` =
``SimulatorConfig.uncertainty_weight``::

    r_k    = clip(p_k + σ_k λ u_k, 0, 1)          σ_k = +1, except σ_hate = −1
    r_play = S·exp(μ + λ u_play) − 1  (seconds; ×1000 for milliseconds)

An optimistic bonus: uncertain samples look better than predicted, so the agents try them —
the paper's "samples with high uncertainty should be more explored". For a harm (``is_hate``,
``HARM_ASPECTS``) optimism means *less* harm than predicted, hence the minus sign. Because
``u_k ≤ max(p_k, p'_k)``, the bonus is at most ``λ`` times the larger twin's probability:
with the default ``λ = 0.1`` it can move a reward by at most about 10 % of its scale and never
dominate the prediction. The clip keeps the reward a probability.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.config import config_from_dict
from models.ranker import ASPECTS

if TYPE_CHECKING:
    from components.features import FeatureSpace

HARM_ASPECTS: tuple[str, ...] = ("is_hate",)
"""Aspects that are harms: their optimistic bonus is negative (less harm than predicted)."""

N_FEEDBACK = len(ASPECTS) + 2
"""Observed feedback values per impression fed to the GRU: 7 aspects, log1p(play s), watch
fraction."""

WATCH_FRACTION_CAP = 3.0
"""Watch fractions (play / duration) are clipped to [0, 3] as GRU inputs (loops, live)."""

_WEIGHT_EPS = 0.01
"""Added to the watch fraction when it weighs the shown items of a request."""


# --------------------------------------------------------------------------- config


def _default_aspect_weights() -> dict[str, float]:
    return dict.fromkeys(ASPECTS, 1.0)


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the feedback simulator, with the defaults used for the demo data set.

    Model
        ``tower_dim`` (32): width of the user and item towers' output ``T``.
        ``id_embedding_dim`` (16): per-user and per-item id embeddings (0: features only).
        ``tag_embedding_dim`` (8): embedding of the item's first tag.
        ``state_dim`` (32): GRU hidden size (the recurrent user state ``s``).
        ``hidden_sizes`` ((64, 32)): widths of each predictor's MLP.
        ``min_id_count`` (20): only users and items with at least this many training
        impressions get their own id embedding; rarer ids share the unknown row. An id seen
        a handful of times has an embedding that memorises noise: on KuaiRand-1K (7.4k
        videos, ~5 impressions each) the held-out click AUC is 0.63 with an embedding for
        every id, 0.70–0.71 with this threshold and 0.72 without ids; on the demo world
        data (~100 impressions per user, ~30 per item) the ids are worth +0.02 (0.62 →
        0.64).
        ``id_dropout`` (0.05): in training, each id embedding is replaced by the unknown
        id's row with this probability, so that row learns "a user/item like this one".
    Siamese twin and simulated reward (paper Eq. 6)
        ``dropout`` (0.3): dropout on the twin predictor's hidden layers (the main predictor
        has none); the source of the twins' disagreement.
        ``kl_weight`` (0.1): ``β``, weight of ``KL(p ‖ p')`` (+ the play term) in the loss.
        Larger values pull the twins together on the training data.
        ``uncertainty_weight`` (0.1): ``λ`` of the optimistic bonus ``r = p ± λ·u``; small,
        so the bonus is at most ~10 % of the larger twin's probability.
    Optimisation
        ``lr`` (3e-3), ``weight_decay`` (1e-6): Adam. ``users_per_batch`` (32): a batch is the
        whole request sequences of this many users (~3.5k impressions on the demo data).
        ``epochs`` (10): on the demo data (~900 users, ~97k training impressions, 260
        steps) the fit takes ~15 s on 2 CPU cores (``bench/bench_simulator.py``); more
        epochs do not raise the held-out AUC there.
    Loss
        ``aspect_weights`` (1.0 each): weight ``w_k`` of each aspect's BCE.
        ``play_weight`` (1.0): weight of the squared error on ``log1p(play_s)``.
    """

    tower_dim: int = 32
    id_embedding_dim: int = 16
    tag_embedding_dim: int = 8
    state_dim: int = 32
    hidden_sizes: tuple[int, ...] = (64, 32)
    min_id_count: int = 20
    id_dropout: float = 0.05
    dropout: float = 0.3
    kl_weight: float = 0.1
    uncertainty_weight: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-6
    users_per_batch: int = 32
    epochs: int = 10
    aspect_weights: Mapping[str, float] = field(default_factory=_default_aspect_weights)
    play_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        weights = {**_default_aspect_weights(), **dict(self.aspect_weights)}
        object.__setattr__(self, "aspect_weights", weights)
        for name in ("tower_dim", "state_dim", "users_per_batch", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SimulatorConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.min_id_count, int) or self.min_id_count < 0:
            raise ValueError(
                f"SimulatorConfig.min_id_count must be an integer >= 0 (0 gives every id an "
                f"embedding), got {self.min_id_count!r}"
            )
        for name in ("id_embedding_dim", "tag_embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"SimulatorConfig.{name} must be an integer >= 0 (0 disables it), got {value!r}"
                )
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(
                f"SimulatorConfig.hidden_sizes must be one or more positive widths, got "
                f"{self.hidden_sizes!r}; e.g. (64, 32)"
            )
        for name in ("id_dropout", "dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SimulatorConfig.{name} must be in [0, 1), got {value}")
        if self.kl_weight < 0:
            raise ValueError(
                f"SimulatorConfig.kl_weight must be >= 0 (0 disables the KL term), "
                f"got {self.kl_weight}"
            )
        if not 0.0 <= self.uncertainty_weight <= 1.0:
            raise ValueError(
                f"SimulatorConfig.uncertainty_weight (λ of r = p ± λ·u) must be in [0, 1] so the "
                f"bonus cannot dominate the prediction, got {self.uncertainty_weight}; the "
                "default is 0.1"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"SimulatorConfig needs lr > 0 and weight_decay >= 0, got lr={self.lr}, "
                f"weight_decay={self.weight_decay}"
            )
        unknown = sorted(set(self.aspect_weights) - set(ASPECTS))
        if unknown:
            raise ValueError(
                f"SimulatorConfig.aspect_weights has unknown aspect(s) {unknown}; the aspects "
                f"are {list(ASPECTS)}"
            )
        if min(self.aspect_weights.values()) < 0 or self.play_weight < 0:
            raise ValueError("SimulatorConfig loss weights must be >= 0")
        if sum(self.aspect_weights.values()) + self.play_weight <= 0:
            raise ValueError("SimulatorConfig: at least one loss weight must be > 0")

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["aspect_weights"] = dict(self.aspect_weights)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimulatorConfig:
        return config_from_dict(cls, d)

    # ---------------------------------------------------------------- factory

    def create(self, feature_space: FeatureSpace) -> FeedbackSimulator:
        """A freshly initialised :class:`FeedbackSimulator` over ``feature_space``."""
        return FeedbackSimulator(
            user_table=torch.as_tensor(feature_space.user_table),
            item_table=torch.as_tensor(feature_space.item_table),
            item_tag=torch.as_tensor(feature_space.item_tag),
            n_tags=feature_space.n_tags,
            n_context=feature_space.n_context_features,
            tower_dim=self.tower_dim,
            id_embedding_dim=self.id_embedding_dim,
            tag_embedding_dim=self.tag_embedding_dim,
            state_dim=self.state_dim,
            hidden_sizes=self.hidden_sizes,
            dropout=self.dropout,
            id_dropout=self.id_dropout,
        )

    def aspect_weight_tensor(self) -> Tensor:
        return torch.tensor([self.aspect_weights[a] for a in ASPECTS], dtype=torch.float32)


# ---------------------------------------------------------------------- containers


class SequenceBatch(NamedTuple):
    """The request sequences of ``B`` users and the impressions to fit (a NamedTuple, so
    Lightning moves it between devices as a collection of tensors).

    Requests (``R`` rows, users' sequences concatenated in order):
        ``seq_index`` ``(R,)`` position ``b·T_max + t`` of the request in the padded
        ``(B, T_max)`` layout; ``lengths`` ``(B,)`` requests per user (CPU int64, > 0);
        ``request_user_row`` ``(R,)``; ``request_context`` ``(R, 3)``.
    Shown items (``N`` rows, the GRU's inputs):
        ``imp_request`` ``(N,)`` local request index; ``imp_item_row`` ``(N,)``;
        ``imp_feedback`` ``(N, 9)`` float: aspects, ``log1p(play_s)``, watch fraction.
    Targets (``M`` rows, a subset of the shown items):
        ``target`` ``(M,)`` indices into the shown items; ``target_weight`` ``(M,)`` ``ω``.
    """

    seq_index: Tensor
    lengths: Tensor
    request_user_row: Tensor
    request_context: Tensor
    imp_request: Tensor
    imp_item_row: Tensor
    imp_feedback: Tensor
    target: Tensor
    target_weight: Tensor

    def labels(self) -> Tensor:
        """``(M, 7)`` binary aspects of the targets."""
        return self.imp_feedback[self.target, : len(ASPECTS)]

    def log_play(self) -> Tensor:
        """``(M,)`` ``log1p(play_s)`` of the targets."""
        return self.imp_feedback[self.target, len(ASPECTS)]


@dataclass(frozen=True)
class TwinOutput:
    """Raw outputs of both predictors: logits ``(*, 7)`` and ``log1p(play_s)`` ``(*)``."""

    logits: Tensor
    log_play: Tensor
    twin_logits: Tensor
    twin_log_play: Tensor


# ---------------------------------------------------------------------------- maths


def bernoulli_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Elementwise ``KL(Bern(σ(z_p)) ‖ Bern(σ(z_q)))`` from logits, in nats::

    p (log σ(z_p) − log σ(z_q)) + (1 − p)(log σ(−z_p) − log σ(−z_q))

    computed with ``logsigmoid``, so saturated logits neither overflow nor give ``0·∞``.
    """
    p = torch.sigmoid(logits_p)
    return p * (F.logsigmoid(logits_p) - F.logsigmoid(logits_q)) + (1.0 - p) * (
        F.logsigmoid(-logits_p) - F.logsigmoid(-logits_q)
    )


@dataclass(frozen=True)
class SimulatorLoss:
    """``total`` (scalar) and its parts, each a weighted mean over the targets: ``bce``
    ``(7,)`` (both twins summed), ``play_mse`` (both twins summed), ``kl`` (aspects + play)."""

    total: Tensor
    bce: Tensor
    play_mse: Tensor
    kl: Tensor


def simulator_loss(
    output: TwinOutput,
    labels: Tensor,
    log_play: Tensor,
    weight: Tensor | None,
    aspect_weights: Tensor,
    play_weight: float,
    kl_weight: float,
) -> SimulatorLoss:
    """The objective ``L = Σ_i ω_i ℓ_i / Σ_i ω_i`` of the module docstring.

    ``labels`` ``(M, 7)``, ``log_play`` ``(M,)``, ``weight`` ``(M,)`` or ``None`` (all 1).
    """
    n = labels.shape[0]
    w = torch.ones(n, dtype=labels.dtype) if weight is None else weight.to(labels.dtype)
    w = w / w.sum().clamp_min(1e-12)
    bce = F.binary_cross_entropy_with_logits(
        output.logits, labels, reduction="none"
    ) + F.binary_cross_entropy_with_logits(output.twin_logits, labels, reduction="none")
    play = (output.log_play - log_play) ** 2 + (output.twin_log_play - log_play) ** 2
    kl = (
        bernoulli_kl(output.logits, output.twin_logits).sum(dim=-1)
        + 0.5 * (output.log_play - output.twin_log_play) ** 2
    )
    bce_mean = (w[:, None] * bce).sum(dim=0)
    play_mean = (w * play).sum()
    kl_mean = (w * kl).sum()
    total = (bce_mean * aspect_weights).sum() + play_weight * play_mean + kl_weight * kl_mean
    return SimulatorLoss(total=total, bce=bce_mean, play_mse=play_mean, kl=kl_mean)


@dataclass(frozen=True)
class Uncertainty:
    """Twin inconsistency: ``aspects`` ``(*, 7)`` = ``|p − p'|``, ``play`` ``(*)`` =
    ``|μ − μ'|``, ``summary`` ``(*)`` = mean of the 8."""

    aspects: Tensor
    play: Tensor
    summary: Tensor


def twin_uncertainty(output: TwinOutput) -> Uncertainty:
    """``u_k = |σ(z_k) − σ(z'_k)|``, ``u_play = |μ − μ'|``, ``u = mean(u_1..u_7, u_play)``."""
    u_aspects = (torch.sigmoid(output.logits) - torch.sigmoid(output.twin_logits)).abs()
    u_play = (output.log_play - output.twin_log_play).abs()
    summary = torch.cat([u_aspects, u_play[..., None]], dim=-1).mean(dim=-1)
    return Uncertainty(aspects=u_aspects, play=u_play, summary=summary)


def bonus_signs() -> Tensor:
    """``σ_k``: +1 per aspect, −1 for the harms of ``HARM_ASPECTS`` (``ASPECTS`` order)."""
    return torch.tensor([-1.0 if a in HARM_ASPECTS else 1.0 for a in ASPECTS])


def optimistic_rewards(
    probs: Tensor,
    log_play: Tensor,
    uncertainty: Uncertainty,
    smearing: Tensor | float,
    uncertainty_weight: float,
) -> tuple[Tensor, Tensor]:
    """Paper Eq. 6: ``(aspect rewards (*, 7), play reward in seconds (*))``.

    ``r_k = clip(p_k + σ_k λ u_k, 0, 1)``; ``r_play = max(0, S·exp(μ + λ u_play) − 1)``.
    """
    lam = float(uncertainty_weight)
    aspects = (probs + lam * bonus_signs().to(probs) * uncertainty.aspects).clamp(0.0, 1.0)
    play = (smearing * torch.exp(log_play + lam * uncertainty.play) - 1.0).clamp_min(0.0)
    return aspects, play


# ---------------------------------------------------------------------------- model


class AspectPredictor(nn.Module):
    """One of the two siamese predictors: ``(u, s, x_ctx)`` per request and ``v`` per pair
    → 7 logits and ``μ`` per pair.

    The first layer is split by what it depends on, so the request-level part is computed
    once per request and gathered for its pairs::

        h_1 = ReLU(B [u ; s ; x_ctx]_r + C [v ; u_r ⊙ v ; (P s_r) ⊙ v] + a)

    which is ``A_u u + A_s s + A_c x_ctx + A_v v + A_x (u ⊙ v) + A_y ((P s) ⊙ v) + a`` of the
    module docstring with ``B = [A_u A_s A_c]`` and ``C = [A_v A_x A_y]``.
    """

    def __init__(
        self,
        tower_dim: int,
        state_dim: int,
        n_context: int,
        hidden_sizes: Sequence[int],
        dropout: float,
        n_aspects: int,
    ) -> None:
        super().__init__()
        h1 = hidden_sizes[0]
        self.request_proj = nn.Linear(tower_dim + state_dim + n_context, h1)
        self.state_item = nn.Linear(state_dim, tower_dim, bias=False)
        self.pair_proj = nn.Linear(3 * tower_dim, h1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        layers: list[nn.Module] = []
        for a, b in zip(hidden_sizes[:-1], hidden_sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU(), self.dropout]
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.Linear(hidden_sizes[-1], n_aspects + 1)

    def forward(
        self, u: Tensor, s: Tensor, context: Tensor, v: Tensor, pair_request: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``u`` ``(R, T)``, ``s`` ``(R, S)``, ``context`` ``(R, 3)`` per request; ``v``
        ``(N, T)`` and ``pair_request`` ``(N,)`` (index into the requests) per pair."""
        base = self.request_proj(torch.cat([u, s, context], dim=-1))[pair_request]
        u_p, s_p = u[pair_request], self.state_item(s)[pair_request]
        h = base + self.pair_proj(torch.cat([v, u_p * v, s_p * v], dim=-1))
        out = self.heads(self.mlp(self.dropout(F.relu(h))))
        return out[..., :-1], out[..., -1]

    @torch.no_grad()
    def init_output_bias(self, base_rates: Tensor, mean_log_play: float) -> None:
        rates = base_rates.float().clamp(1e-4, 1 - 1e-4)
        self.heads.bias[:-1] = torch.log(rates / (1 - rates))
        self.heads.bias[-1] = float(mean_log_play)
        self.heads.weight.mul_(0.1)


class FeedbackSimulator(nn.Module):
    """Towers + GRU user state + two siamese predictors (module docstring).

    The feature tables of :class:`components.features.FeatureSpace` are non-persistent
    buffers (they travel with the feature space, not with the weights).
    :meth:`request_states` runs the GRU over a :class:`SequenceBatch`; :meth:`heads` scores
    any (state, user, item, context) rows; ``forward`` does both for the batch's targets.
    """

    def __init__(
        self,
        user_table: Tensor,
        item_table: Tensor,
        item_tag: Tensor,
        n_tags: int,
        n_context: int = 3,
        tower_dim: int = 32,
        id_embedding_dim: int = 16,
        tag_embedding_dim: int = 8,
        state_dim: int = 32,
        hidden_sizes: Sequence[int] = (64, 32),
        dropout: float = 0.3,
        id_dropout: float = 0.0,
        n_aspects: int = len(ASPECTS),
    ) -> None:
        super().__init__()
        self.register_buffer("user_table", user_table.float(), persistent=False)
        self.register_buffer("item_table", item_table.float(), persistent=False)
        self.register_buffer("item_tag", item_tag.long(), persistent=False)
        self.register_buffer("play_smearing", torch.tensor(1.0))
        self.register_buffer("user_id_known", torch.ones(user_table.shape[0], dtype=torch.bool))
        self.register_buffer("item_id_known", torch.ones(item_table.shape[0], dtype=torch.bool))
        self.id_dropout = float(id_dropout)
        self.n_aspects = n_aspects
        n_users, n_items = user_table.shape[0], item_table.shape[0]
        self.user_id_emb = nn.Embedding(n_users, id_embedding_dim) if id_embedding_dim else None
        self.item_id_emb = nn.Embedding(n_items, id_embedding_dim) if id_embedding_dim else None
        self.tag_emb = nn.Embedding(n_tags, tag_embedding_dim) if tag_embedding_dim else None
        for emb in (self.user_id_emb, self.item_id_emb, self.tag_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.05)
        self.user_tower = nn.Linear(user_table.shape[1] + id_embedding_dim, tower_dim)
        self.item_tower = nn.Linear(
            item_table.shape[1] + id_embedding_dim + tag_embedding_dim, tower_dim
        )
        step_dim = 2 * tower_dim + n_aspects + 2 + n_context + 1
        self.gru = nn.GRU(step_dim, state_dim, batch_first=True)
        self.initial_state = nn.Parameter(torch.zeros(state_dim))
        self.predictor = AspectPredictor(
            tower_dim, state_dim, n_context, hidden_sizes, 0.0, n_aspects
        )
        self.twin = AspectPredictor(
            tower_dim, state_dim, n_context, hidden_sizes, dropout, n_aspects
        )

    @property
    def state_dim(self) -> int:
        return int(self.initial_state.shape[0])

    @torch.no_grad()
    def init_output_bias(self, base_rates: Tensor, mean_log_play: float) -> None:
        """Start both predictors at the data's priors (aspect bias ``logit(base rate)``, play
        bias ``mean log1p(play_s)``, output weights scaled down by 10)."""
        self.predictor.init_output_bias(base_rates, mean_log_play)
        self.twin.init_output_bias(base_rates, mean_log_play)

    # ----------------------------------------------------------------- towers

    @torch.no_grad()
    def set_id_vocabulary(self, user_counts: Tensor, item_counts: Tensor, min_count: int) -> None:
        """Give an id embedding only to rows with at least ``min_count`` training
        impressions (``*_counts`` per feature-space row); the others use the unknown row 0.
        Saved with the weights (buffers ``user_id_known``/``item_id_known``)."""
        self.user_id_known.copy_(user_counts >= min_count)
        self.item_id_known.copy_(item_counts >= min_count)
        self.user_id_known[0] = True
        self.item_id_known[0] = True

    def _id_rows(self, rows: Tensor, known: Tensor) -> Tensor:
        rows = rows.masked_fill(~known[rows], 0)
        if self.training and self.id_dropout > 0:
            drop = torch.rand(rows.shape, device=rows.device) < self.id_dropout
            return rows.masked_fill(drop, 0)
        return rows

    def user_repr(self, user_row: Tensor) -> Tensor:
        x = self.user_table[user_row]
        if self.user_id_emb is not None:
            rows = self._id_rows(user_row, self.user_id_known)
            x = torch.cat([x, self.user_id_emb(rows)], dim=-1)
        return F.relu(self.user_tower(x))

    def item_repr(self, item_row: Tensor) -> Tensor:
        parts = [self.item_table[item_row]]
        if self.tag_emb is not None:
            parts.append(self.tag_emb(self.item_tag[item_row]))
        if self.item_id_emb is not None:
            parts.append(self.item_id_emb(self._id_rows(item_row, self.item_id_known)))
        return F.relu(self.item_tower(torch.cat(parts, dim=-1)))

    # ---------------------------------------------------------- user state

    def step_inputs(
        self,
        imp_request: Tensor,
        imp_item_row: Tensor,
        imp_feedback: Tensor,
        request_context: Tensor,
    ) -> Tensor:
        """``x_t`` of every request ``(R, 2T + 9 + 3 + 1)``: mean and watch-weighted mean item
        representation, mean feedback, context and ``log1p(n shown)``."""
        n_req = request_context.shape[0]
        v = self.item_repr(imp_item_row)
        frac = imp_feedback[:, -1:] + _WEIGHT_EPS
        stacked = torch.cat([v, frac * v, imp_feedback, frac, torch.ones_like(frac)], dim=-1)
        sums = torch.zeros(n_req, stacked.shape[1], dtype=stacked.dtype, device=stacked.device)
        sums = sums.index_add(0, imp_request, stacked)
        t, nf = v.shape[1], imp_feedback.shape[1]
        count = sums[:, -1:]
        mean_v = sums[:, :t] / count.clamp_min(1.0)
        wmean_v = sums[:, t : 2 * t] / sums[:, -2:-1].clamp_min(1e-6)
        mean_fb = sums[:, 2 * t : 2 * t + nf] / count.clamp_min(1.0)
        return torch.cat([mean_v, wmean_v, mean_fb, request_context, torch.log1p(count)], dim=-1)

    def request_states(self, batch: SequenceBatch) -> Tensor:
        """``(R, S)``: for each request, the GRU state after the user's earlier requests
        (``h_0`` for a user's first request)."""
        x = self.step_inputs(
            batch.imp_request, batch.imp_item_row, batch.imp_feedback, batch.request_context
        )
        lengths = batch.lengths.cpu()
        n_users, t_max = len(lengths), int(lengths.max())
        padded = x.new_zeros(n_users * t_max, x.shape[1]).index_copy(0, batch.seq_index, x)
        packed = pack_padded_sequence(
            padded.view(n_users, t_max, -1), lengths, batch_first=True, enforce_sorted=False
        )
        h0 = self.initial_state.view(1, 1, -1).expand(1, n_users, -1).contiguous()
        out, _ = self.gru(packed, h0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t_max)
        first = self.initial_state.view(1, 1, -1).expand(n_users, 1, -1)
        shifted = torch.cat([first, out[:, :-1]], dim=1)
        return shifted.reshape(n_users * t_max, -1)[batch.seq_index]

    # ---------------------------------------------------------------- heads

    def heads(
        self,
        state: Tensor,
        user_row: Tensor,
        context: Tensor,
        item_row: Tensor,
        pair_request: Tensor,
    ) -> TwinOutput:
        """Both predictors on pairs: ``state`` ``(R, S)``, ``user_row`` ``(R,)`` and
        ``context`` ``(R, 3)`` per request; ``item_row`` ``(N,)`` and ``pair_request`` ``(N,)``
        (index into the requests) per (request, item) pair."""
        u = self.user_repr(user_row)
        v = self.item_repr(item_row)
        logits, log_play = self.predictor(u, state, context, v, pair_request)
        twin_logits, twin_log_play = self.twin(u, state, context, v, pair_request)
        return TwinOutput(logits, log_play, twin_logits, twin_log_play)

    def forward(self, batch: SequenceBatch) -> TwinOutput:
        """Both predictors on the batch's target impressions, each with its request's state."""
        return self.heads(
            self.request_states(batch),
            batch.request_user_row,
            batch.request_context,
            batch.imp_item_row[batch.target],
            batch.imp_request[batch.target],
        )

    def expected_play_s(self, log_play: Tensor) -> Tensor:
        """``E[play_s] ≈ S·exp(μ) − 1`` (Duan's smearing), clipped at 0."""
        return (self.play_smearing * torch.exp(log_play) - 1.0).clamp_min(0.0)


# ------------------------------------------------------------------- lightning


class SimulatorModule(L.LightningModule):
    """Loss and optimiser around a :class:`FeedbackSimulator`.

    Batches are :class:`SequenceBatch` es (``components.simulator``). The loss and its parts
    are accumulated per epoch (``epoch_losses``, ``epoch_kl``), not logged per step (a
    ``self.log`` per step costs more than the step for a model this small).
    """

    def __init__(self, net: FeedbackSimulator, config: SimulatorConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.register_buffer("aspect_weights", config.aspect_weight_tensor(), persistent=False)
        self.epoch_losses: list[float] = []
        self.epoch_kl: list[float] = []
        self._sums = torch.zeros(2, dtype=torch.float64)
        self._n = 0

    def forward(self, batch: SequenceBatch) -> TwinOutput:
        return self.net(batch)

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> Tensor:
        output = self.net(batch)
        loss = simulator_loss(
            output,
            batch.labels(),
            batch.log_play(),
            batch.target_weight,
            self.aspect_weights,
            self.config.play_weight,
            self.config.kl_weight,
        )
        self._sums += torch.stack([loss.total.detach(), loss.kl.detach()]).double()
        self._n += 1
        return loss.total

    def on_train_epoch_start(self) -> None:
        self._sums = torch.zeros(2, dtype=torch.float64)
        self._n = 0

    def on_train_epoch_end(self) -> None:
        if self._n:
            mean = (self._sums / self._n).tolist()
            self.epoch_losses.append(mean[0])
            self.epoch_kl.append(mean[1])
            self.log("train_loss", mean[0], on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
