r"""Supervised multi-task ranking baseline: the first ranking policy of relayrec.

Behaviour cloning in the weak sense that matters here: the model learns, from the logged
impressions, the user's response to an item shown in a context — one probability per binary
aspect and the play time — and ranks candidates by the predicted **expected play time**, the
platform's main objective (session watch time, credited item by item). It is the greedy,
myopic baseline that the RL agents (MMRF's aspect agents and WatchTime agent) must beat, and
the first champion the gate can compare them with.

Three layers (``STYLE.md``): :class:`MultiTaskRanker` is the maths (a plain ``nn.Module``),
:class:`RankerModule` the ``LightningModule`` that owns loss, optimiser and metrics, and
``components.training.train_ranker`` the entry point. :class:`RankerConfig` (next to the
algorithm, JSON-serialisable, saved with the model) holds every knob.

Architecture (shapes for ``B`` rows; items may carry an extra candidate axis)::

    user tower  u = ReLU(W_u [x_user ; e_user_id])                       (B, T)
    item tower  v = ReLU(W_v [x_item ; e_tag(first tag) ; e_item_id])     (B, T)
    shared      h_1 = ReLU(A_u u + A_v v + A_x (u ⊙ v) + A_c x_ctx + a)    (B, H_1)
                h_l = ReLU(W_l h_{l-1} + b_l)                              ...
    heads       z_k = w_k·h + c_k        one logit per aspect k            (B, 7)
                μ   = w_p·h + c_p        predicted log1p(play_time_s)      (B,)

The first shared layer is exactly ``Linear([u ; v ; u ⊙ v ; x_ctx])`` written as a sum of
projections, so the user part is computed once per request and broadcast over its
candidates at serving time; ``u ⊙ v`` (the GMF/DLRM interaction) lets the MLP express the
user–item dot product that drives affinity in the world.

Training objective (:func:`ranker_loss`), over a batch of logged impressions::

    L = Σ_k w_k · BCE(z_k, y_k)  +  w_play · (μ − log1p(play_time_ms / 1000))²

Play-time head. It predicts ``μ ≈ E[log1p(play_s) | x]`` (MSE on the log scale is robust to
the heavy tail of play time and defined for live streams and unknown durations, unlike the
watch fraction). The expected play time is recovered with Duan's smearing estimator
(Duan, "Smearing estimate: a nonparametric retransformation method", JASA 1983)::

    E[play_s | x] ≈ S · exp(μ(x)) − 1,   S = mean_i exp(log1p(play_i) − μ(x_i))  (training set)

``S`` is a buffer of the model (``play_smearing``), set after training; it does not change
the ranking, only the calibration of the seconds.

Training starts from the priors (:meth:`MultiTaskRanker.init_output_bias`: aspect biases at
``logit(base rate)``, play bias at the mean target) and replaces each id embedding by the
shared unknown-id row with probability ``id_dropout``, so that row is trained too.

Serving score (``RankerConfig.score_aspect_weights`` = ``λ``)::

    score = E[play_s | x] + Σ_k λ_k P(y_k = 1 | x)          (seconds; λ_k = 0 by default)

Stochastic evaluation. The policy ranks by Plackett–Luce over ``score / T`` (``T`` =
``RankerConfig.temperature``, seconds), ``P(i at position k | earlier) = exp(s_i/T) /
Σ_{j not yet placed} exp(s_j/T)`` — the same rule and propensities as the world's logging
policy (``components.world.policies.plackett_luce``) and the gate
(``components.evaluation.slate_propensities``), so NCIS can weigh the logs by it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from components.evaluation import auc
from components.schema import FEEDBACK_FLAGS
from models.config import config_from_dict

if TYPE_CHECKING:
    from components.features import FeatureSpace
    from models.baselines import DeepFMRanker, WideDeepRanker

try:  # torchmetrics comes with lightning, but the module works without it
    from torchmetrics.classification import BinaryAUROC
except ImportError:  # pragma: no cover - exercised only where torchmetrics is absent
    BinaryAUROC = None

ASPECTS: tuple[str, ...] = FEEDBACK_FLAGS
"""The binary aspects, one logit each, in this order (KuaiRand's column names)."""

ARCHITECTURES: tuple[str, ...] = ("mlp", "wide_deep", "deepfm")
"""The networks ``RankerConfig.architecture`` chooses from (see :meth:`RankerConfig.create`)."""


# --------------------------------------------------------------------------- config


def _default_aspect_weights() -> dict[str, float]:
    return dict.fromkeys(ASPECTS, 1.0)


@dataclass(frozen=True)
class RankerConfig:
    """Every knob of the multi-task ranker, with the defaults used for the demo data set.

    Architecture
        ``architecture`` ("mlp"): the network :meth:`create` builds, one of
        :data:`ARCHITECTURES`. ``"mlp"``: :class:`MultiTaskRanker` (the towers and shared
        MLP above). ``"wide_deep"``: :class:`models.baselines.WideDeepRanker`, Wide & Deep
        (Cheng et al. 2016); ``id_embedding_dim``, ``tag_embedding_dim`` and
        ``hidden_sizes`` size its deep part, ``tower_dim`` is not used. ``"deepfm"``:
        :class:`models.baselines.DeepFMRanker`, DeepFM (Guo et al. 2017); every field is
        embedded to ``k = tower_dim`` dims, ``id_embedding_dim`` / ``tag_embedding_dim``
        only switch the id / tag fields on (> 0) or off (0), ``hidden_sizes`` sizes its
        deep part. All three have the same heads, loss, optimiser and serving score, so
        the other knobs mean the same for each.
    Model
        ``tower_dim`` (32): width of the user and item towers' output ``T``.
        ``id_embedding_dim`` (16): per-user and per-item id embeddings (0: features only).
        Ids unknown at fit time share row 0.
        ``tag_embedding_dim`` (8): embedding of the item's first tag.
        ``hidden_sizes`` ((64, 32)): widths of the shared MLP.
        ``id_dropout`` (0.05): in training, each row's id embedding is replaced by the
        unknown id's with this probability, so the unknown row learns "a user/item like
        this one" instead of staying at its random initialisation.
    Optimisation
        ``lr`` (3e-3), ``weight_decay`` (0.0): Adam. ``batch_size`` (1024), ``epochs`` (4):
        about 100k impressions × 4 epochs train in ~5 s on 2 CPU cores.
    Loss
        ``aspect_weights`` (1.0 each): weight ``w_k`` of each aspect's BCE.
        ``play_weight`` (1.0): weight of the squared error on ``log1p(play_s)``.
    Serving
        ``score_aspect_weights`` (empty = 0): ``λ_k`` seconds of play per unit probability
        of aspect ``k`` added to the expected play time; e.g. ``{"is_hate": -30.0}``.
        ``temperature`` (20.0 s): Plackett–Luce temperature over scores (seconds) for
        stochastic evaluation; smaller is greedier. On the demo data the scores of a
        request's 150-item recall pool have a standard deviation of ~38 s, so 20 s keeps the
        policy stochastic (usable importance weights for NCIS) while favouring the top.
    """

    tower_dim: int = 32
    id_embedding_dim: int = 16
    tag_embedding_dim: int = 8
    hidden_sizes: tuple[int, ...] = (64, 32)
    id_dropout: float = 0.05
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    epochs: int = 4
    aspect_weights: Mapping[str, float] = field(default_factory=_default_aspect_weights)
    play_weight: float = 1.0
    score_aspect_weights: Mapping[str, float] = field(default_factory=dict)
    temperature: float = 20.0
    architecture: str = "mlp"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"RankerConfig.architecture must be one of {list(ARCHITECTURES)}, got "
                f"{self.architecture!r}: 'mlp' is the multi-task ranker, 'wide_deep' Wide & "
                "Deep (Cheng et al. 2016), 'deepfm' DeepFM (Guo et al. 2017)"
            )
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        weights = {**_default_aspect_weights(), **dict(self.aspect_weights)}
        object.__setattr__(self, "aspect_weights", weights)
        object.__setattr__(self, "score_aspect_weights", dict(self.score_aspect_weights))
        for name in ("tower_dim", "batch_size", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RankerConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("id_embedding_dim", "tag_embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"RankerConfig.{name} must be an integer >= 0 (0 disables it), got {value!r}"
                )
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(
                f"RankerConfig.hidden_sizes must be one or more positive widths, got "
                f"{self.hidden_sizes!r}; e.g. (64, 32)"
            )
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"RankerConfig.id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"RankerConfig needs lr > 0 and weight_decay >= 0, got lr={self.lr}, "
                f"weight_decay={self.weight_decay}"
            )
        if self.temperature <= 0:
            raise ValueError(
                f"RankerConfig.temperature must be > 0 (seconds; Plackett-Luce over score/T), "
                f"got {self.temperature}; use a small value such as 1.0 for a near-greedy policy"
            )
        for what, mapping in (
            ("aspect_weights", self.aspect_weights),
            ("score_aspect_weights", self.score_aspect_weights),
        ):
            unknown = sorted(set(mapping) - set(ASPECTS))
            if unknown:
                raise ValueError(
                    f"RankerConfig.{what} has unknown aspect(s) {unknown}; the aspects are "
                    f"{list(ASPECTS)}"
                )
        if min(self.aspect_weights.values()) < 0 or self.play_weight < 0:
            raise ValueError("RankerConfig loss weights must be >= 0")
        if sum(self.aspect_weights.values()) + self.play_weight <= 0:
            raise ValueError("RankerConfig: at least one loss weight must be > 0")

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["aspect_weights"] = dict(self.aspect_weights)
        d["score_aspect_weights"] = dict(self.score_aspect_weights)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankerConfig:
        return config_from_dict(cls, d)

    # ---------------------------------------------------------------- factory

    def create(
        self, feature_space: FeatureSpace
    ) -> MultiTaskRanker | WideDeepRanker | DeepFMRanker:
        """A freshly initialised network of ``architecture`` over ``feature_space``:
        :class:`MultiTaskRanker` or one of ``models.baselines``' networks, which take the
        same arguments."""
        net_class: type[MultiTaskRanker | WideDeepRanker | DeepFMRanker] = MultiTaskRanker
        if self.architecture != "mlp":
            from models.baselines import DeepFMRanker, WideDeepRanker  # imports this module

            net_class = {"wide_deep": WideDeepRanker, "deepfm": DeepFMRanker}[self.architecture]
        return net_class(
            user_table=torch.as_tensor(feature_space.user_table),
            item_table=torch.as_tensor(feature_space.item_table),
            item_tag=torch.as_tensor(feature_space.item_tag),
            n_tags=feature_space.n_tags,
            n_context=feature_space.n_context_features,
            tower_dim=self.tower_dim,
            id_embedding_dim=self.id_embedding_dim,
            tag_embedding_dim=self.tag_embedding_dim,
            hidden_sizes=self.hidden_sizes,
            id_dropout=self.id_dropout,
        )

    def aspect_weight_tensor(self) -> Tensor:
        return torch.tensor([self.aspect_weights[a] for a in ASPECTS], dtype=torch.float32)

    def score_weight_tensor(self) -> Tensor:
        w = self.score_aspect_weights
        return torch.tensor([w.get(a, 0.0) for a in ASPECTS], dtype=torch.float32)


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class RankerOutput:
    """Raw outputs: ``aspect_logits`` ``(*shape, 7)`` and ``log_play`` ``(*shape)``."""

    aspect_logits: Tensor
    log_play: Tensor


class MultiTaskRanker(nn.Module):
    """User tower + item tower (+ tag embedding) + context → shared MLP → aspect and play heads.

    The feature tables of :class:`components.features.FeatureSpace` are non-persistent
    buffers (they travel with the feature space, not with the weights); ``forward`` takes
    row indices of those tables. ``user_row`` must broadcast against ``item_row`` (e.g.
    ``(R, 1)`` users against ``(R, C)`` candidates) and ``context`` against
    ``(*item_row.shape, n_context)``.
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
        hidden_sizes: Sequence[int] = (64, 32),
        id_dropout: float = 0.0,
        n_aspects: int = len(ASPECTS),
    ) -> None:
        super().__init__()
        self.register_buffer("user_table", user_table.float(), persistent=False)
        self.register_buffer("item_table", item_table.float(), persistent=False)
        self.register_buffer("item_tag", item_tag.long(), persistent=False)
        self.register_buffer("play_smearing", torch.tensor(1.0))
        self.id_dropout = float(id_dropout)
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
        h1 = hidden_sizes[0]
        self.user_proj = nn.Linear(tower_dim, h1)
        self.item_proj = nn.Linear(tower_dim, h1, bias=False)
        self.cross_proj = nn.Linear(tower_dim, h1, bias=False)
        self.context_proj = nn.Linear(n_context, h1, bias=False)
        layers: list[nn.Module] = []
        for a, b in zip(hidden_sizes[:-1], hidden_sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.Linear(hidden_sizes[-1], n_aspects + 1)

    @torch.no_grad()
    def init_output_bias(self, base_rates: Tensor, mean_log_play: float) -> None:
        """Start the heads at the data's priors: aspect bias ``logit(base rate)`` (clipped
        away from 0 and 1), play bias ``mean log1p(play_s)``, head weights scaled down.

        Without it the first hundred steps only learn the means (the play term starts
        near ``E[log1p(play)^2] ≈ 15``)."""
        rates = base_rates.float().clamp(1e-4, 1 - 1e-4)
        self.heads.bias[:-1] = torch.log(rates / (1 - rates))
        self.heads.bias[-1] = float(mean_log_play)
        self.heads.weight.mul_(0.1)

    def _id_rows(self, rows: Tensor) -> Tensor:
        if self.training and self.id_dropout > 0:
            drop = torch.rand(rows.shape, device=rows.device) < self.id_dropout
            return rows.masked_fill(drop, 0)
        return rows

    def user_repr(self, user_row: Tensor) -> Tensor:
        x = self.user_table[user_row]
        if self.user_id_emb is not None:
            x = torch.cat([x, self.user_id_emb(self._id_rows(user_row))], dim=-1)
        return F.relu(self.user_tower(x))

    def item_repr(self, item_row: Tensor) -> Tensor:
        parts = [self.item_table[item_row]]
        if self.tag_emb is not None:
            parts.append(self.tag_emb(self.item_tag[item_row]))
        if self.item_id_emb is not None:
            parts.append(self.item_id_emb(self._id_rows(item_row)))
        return F.relu(self.item_tower(torch.cat(parts, dim=-1)))

    def forward(self, user_row: Tensor, item_row: Tensor, context: Tensor) -> RankerOutput:
        u = self.user_repr(user_row)
        v = self.item_repr(item_row)
        h = self.user_proj(u) + self.item_proj(v) + self.cross_proj(u * v)
        h = F.relu(h + self.context_proj(context))
        out = self.heads(self.mlp(h))
        return RankerOutput(aspect_logits=out[..., :-1], log_play=out[..., -1])

    def expected_play_s(self, log_play: Tensor) -> Tensor:
        """``E[play_s] ≈ S·exp(μ) − 1`` (Duan's smearing), clipped at 0."""
        return (self.play_smearing * torch.exp(log_play) - 1.0).clamp_min(0.0)


def log_play_target(play_time_ms: Any) -> np.ndarray:
    """The play-time head's target: ``log1p(play_time_ms / 1000)`` (float32)."""
    return np.log1p(np.clip(np.asarray(play_time_ms, dtype=np.float64), 0, None) / 1000.0).astype(
        np.float32
    )


def ranker_loss(
    output: RankerOutput,
    labels: Tensor,
    log_play: Tensor,
    aspect_weights: Tensor,
    play_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, per_aspect_bce (7,), play_mse)`` of the objective in the module docstring."""
    bce = F.binary_cross_entropy_with_logits(output.aspect_logits, labels, reduction="none")
    per_aspect = bce.reshape(-1, bce.shape[-1]).mean(dim=0)
    play_mse = F.mse_loss(output.log_play, log_play)
    total = (per_aspect * aspect_weights).sum() + play_weight * play_mse
    return total, per_aspect, play_mse


def binary_auc(scores: Any, labels: Any) -> float:
    """ROC AUC (``components.evaluation.auc``: Mann–Whitney with mid-ranks); NaN where the
    labels hold one class only (a rare aspect on a small slice)."""
    y = np.asarray(labels).ravel()
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return auc(y, np.asarray(scores, dtype=np.float64).ravel())


# ------------------------------------------------------------------- lightning


class RankerModule(L.LightningModule):
    """Loss, optimiser and validation metrics around a :class:`MultiTaskRanker`.

    Batches are ``(user_row, item_row, context, labels, log_play)`` tensors
    (``components.training.TrainingArrays``). The training loss is accumulated per epoch
    (``epoch_losses``), not logged per step: ``self.log`` on every step costs more than the
    step itself for a model this small (see ``bench/bench_training.py``). Validation
    computes per-aspect AUC (torchmetrics' ``BinaryAUROC`` when installed, else
    :func:`binary_auc` on the gathered predictions) and the RMSE of ``log1p(play_s)``;
    the last validation's values are in ``val_metrics``.
    """

    def __init__(self, net: MultiTaskRanker, config: RankerConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.register_buffer("aspect_weights", config.aspect_weight_tensor(), persistent=False)
        self.epoch_losses: list[float] = []
        self.val_metrics: dict[str, float] = {}
        self._loss_sum = torch.zeros(())
        self._loss_n = 0
        self._use_torchmetrics = BinaryAUROC is not None
        if self._use_torchmetrics:
            self.val_auc = nn.ModuleList(BinaryAUROC() for _ in ASPECTS)
        self._val_outputs: list[tuple[Tensor, Tensor]] = []
        self._val_se = torch.zeros((), dtype=torch.float64)
        self._val_n = 0

    def forward(self, user_row: Tensor, item_row: Tensor, context: Tensor) -> RankerOutput:
        return self.net(user_row, item_row, context)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        user_row, item_row, context, labels, log_play = batch
        output = self.net(user_row, item_row, context)
        loss, _, _ = ranker_loss(
            output, labels, log_play, self.aspect_weights, self.config.play_weight
        )
        self._loss_sum = self._loss_sum + loss.detach() * len(labels)
        self._loss_n += len(labels)
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros(())
        self._loss_n = 0

    def on_train_epoch_end(self) -> None:
        if self._loss_n:
            mean = float(self._loss_sum) / self._loss_n
            self.epoch_losses.append(mean)
            self.log("train_loss", mean, on_epoch=True, prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []
        self._val_se = torch.zeros((), dtype=torch.float64)
        self._val_n = 0

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        user_row, item_row, context, labels, log_play = batch
        output = self.net(user_row, item_row, context)
        if self._use_torchmetrics:
            for k, metric in enumerate(self.val_auc):
                metric.update(output.aspect_logits[:, k], labels[:, k].long())
        else:
            self._val_outputs.append((output.aspect_logits.detach(), labels))
        self._val_se += ((output.log_play - log_play) ** 2).sum().double()
        self._val_n += len(labels)

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, float] = {}
        if self._use_torchmetrics:
            for aspect, metric in zip(ASPECTS, self.val_auc, strict=True):
                has_both = _has_both_classes(metric)
                metrics[f"auc_{aspect}"] = float(metric.compute()) if has_both else float("nan")
                metric.reset()
        elif self._val_outputs:
            logits = torch.cat([o[0] for o in self._val_outputs]).numpy()
            labels = torch.cat([o[1] for o in self._val_outputs]).numpy()
            for k, aspect in enumerate(ASPECTS):
                metrics[f"auc_{aspect}"] = binary_auc(logits[:, k], labels[:, k])
        if self._val_n:
            metrics["log_play_rmse"] = float(torch.sqrt(self._val_se / self._val_n))
        self.val_metrics = metrics
        finite = {f"val_{k}": v for k, v in metrics.items() if np.isfinite(v)}
        if finite:
            self.log_dict(finite, prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )


def _has_both_classes(metric: Any) -> bool:
    """Whether a torchmetrics binary metric has seen both labels (AUC is undefined else)."""
    target = getattr(metric, "target", None)
    if isinstance(target, list):
        if not target:
            return False
        target = torch.cat([t.reshape(-1) for t in target])
    if target is None or target.numel() == 0:
        return False
    return bool(target.min() != target.max())
