"""Train, score, save and load the ranking agents (``models.mmrf``): MMRF, its ablations, TSCAC.

:func:`train_agents` runs the paper's Algorithm 1 on logged data::

    for round in 1..R:
        sample a share of the logged non-impressions, label them   (simulator, or −c, or none)
        train the agents for E epochs on impressions + labelled non-impressions
        refit the simulator, weighting each logged impression by the current WatchTime
        policy's ratio π_0(i|s) / β(i|s) (clipped), so it is accurate where the policy goes

The labelling and refitting are callables (:class:`NonImpressionLabeller`), so the agents do
not depend on how the simulator is built; ``components.simulator`` provides the MMRF one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import pandas as pd
import torch

from components.agent_data import (
    AGENTS,
    AgentData,
    SessionCredit,
    build_agent_data,
    fit_session_credit,
    negative_rewards,
    with_session_credit,
)
from components.features import (
    FeatureSpace,
    context_features,
    history_features,
    item_durations_s,
)
from components.io import read_table
from components.model_files import read_model_files, save_model_files
from components.training import (
    IndexBatches,
    _lightning_context,
    _torch_threads,
    load_tables,
    split_by_day,
)
from models.mmrf import AgentsConfig, AgentsModule, Critics, Encoder, RankingAgents

SCORE_CHUNK = 65_536
FILES = ("agents.pt", "agents.json")


class NonImpressionLabeller(Protocol):
    """What the agents need from a feedback simulator."""

    def label(self, request_ids: np.ndarray, share: float, seed: int) -> pd.DataFrame:
        """A ``share`` of the non-impressions of ``request_ids`` with one signed reward
        column per agent (``AGENTS``), plus ``request_id`` and ``item_id``."""

    def refit(self, impression_weights: pd.DataFrame) -> None:
        """Continue fitting with per-impression weights (request_id, item_id, weight)."""


def _encoder(fs: FeatureSpace, config: AgentsConfig) -> Encoder:
    return Encoder(
        user_table=torch.as_tensor(fs.user_table),
        item_table=torch.as_tensor(fs.item_table),
        item_tag=torch.as_tensor(fs.item_tag),
        n_tags=fs.n_tags,
        n_context=fs.n_context_features,
        n_history=6,
        dim=config.dim,
        id_embedding_dim=config.id_embedding_dim,
        tag_embedding_dim=config.tag_embedding_dim,
    )


def build_networks(fs: FeatureSpace, config: AgentsConfig) -> tuple[RankingAgents, Critics]:
    """Fresh actor and critic networks (separate encoders)."""
    return RankingAgents(_encoder(fs, config), config), Critics(_encoder(fs, config), config)


def _tensors(data: AgentData) -> dict[str, torch.Tensor]:
    return {
        "user_row": torch.from_numpy(data.user_row),
        "context": torch.from_numpy(data.context),
        "history": torch.from_numpy(data.history),
        "item_row": torch.from_numpy(data.item_row),
        "mask": torch.from_numpy(data.mask),
        "shown": torch.from_numpy(data.shown),
        "rewards": torch.from_numpy(data.rewards),
        "next_index": torch.from_numpy(data.next_index),
        "continues": torch.from_numpy(data.continues),
        "returns": torch.from_numpy(data.returns),
    }


def request_tensors(
    fs: FeatureSpace,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    hour: np.ndarray,
    position: np.ndarray,
    history: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The networks' inputs ``(user_row, context, history, item_row)`` of requests: user ids,
    hours and positions ``(R,)``, session history ``(R, 6)``, candidates ``(R, C)``."""
    return (
        torch.from_numpy(fs.user_rows(user_ids)),
        torch.from_numpy(context_features(hour, position)),
        torch.from_numpy(history_features(history)),
        torch.from_numpy(fs.item_rows(item_ids)),
    )


@dataclass(frozen=True, eq=False)
class TrainedAgents:
    """Trained ranking agents: actor weights, config, feature space, reward scales, metrics.

    ``score`` ranks candidates by the WatchTime actor's action (``a_0``); ``actions`` gives
    every agent's scores; ``temperature`` is the Plackett–Luce temperature of the policy.
    """

    state_dict: dict[str, torch.Tensor]
    config: AgentsConfig
    feature_space: FeatureSpace
    name: str = "mmrf"
    metrics: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def temperature(self) -> float:
        return float(self.config.temperature)

    @property
    def model(self) -> RankingAgents:
        if "model" not in self._cache:
            actor = RankingAgents(_encoder(self.feature_space, self.config), self.config)
            actor.load_state_dict(self.state_dict)
            actor.eval()
            self._cache["model"] = actor
        return self._cache["model"]

    def actions(
        self,
        user_ids: Any,
        item_ids: Any,
        hour: Any,
        position: Any,
        history: Any = None,
    ) -> np.ndarray:
        """Every agent's scores ``(R, C, J)`` for requests ``(R,)`` × candidates ``(R, C)``
        (1-D ``item_ids`` are one request); ``history (R, 6)`` defaults to an empty session."""
        items = np.asarray(item_ids, dtype=np.int64)
        single = items.ndim == 1
        if single:
            items = items[None, :]
        r = items.shape[0]
        users = np.broadcast_to(np.asarray(user_ids, dtype=np.int64).reshape(-1), (r,))
        hour_a = np.broadcast_to(np.asarray(hour).reshape(-1), (r,))
        pos_a = np.broadcast_to(np.asarray(position).reshape(-1), (r,))
        hist = np.zeros((r, 6)) if history is None else np.asarray(history, dtype=np.float64)
        hist = np.broadcast_to(hist.reshape(-1, 6), (r, 6))
        user_row, context, hfeat, item_row = request_tensors(
            self.feature_space, users, items, hour_a, pos_a, hist
        )
        step = max(1, SCORE_CHUNK // max(1, items.shape[1]))
        parts = []
        with torch.inference_mode():
            for s in range(0, r, step):
                sl = slice(s, s + step)
                parts.append(self.model(user_row[sl], context[sl], hfeat[sl], item_row[sl]).actions)
        out = torch.cat(parts).numpy() if parts else np.zeros((0, items.shape[1], len(AGENTS)))
        return out[0] if single else out

    def score(
        self, user_ids: Any, item_ids: Any, hour: Any, position: Any, history: Any = None
    ) -> np.ndarray:
        """The WatchTime agent's scores, the shape of ``item_ids``; higher is better."""
        return self.actions(user_ids, item_ids, hour, position, history)[..., 0]

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """``<path>/agents.pt`` (tensors only) and ``<path>/agents.json``."""
        meta = {
            "model": "models.mmrf.RankingAgents",
            "name": self.name,
            "config": self.config.to_dict(),
            "metrics": self.metrics,
        }
        return save_model_files(path, FILES, self.state_dict, self.feature_space, meta)

    @classmethod
    def load(cls, path: str | Path) -> TrainedAgents:
        """Read what :meth:`save` wrote (``torch.load(..., weights_only=True)``)."""
        f = read_model_files(path, FILES, "set of ranking agents", "TrainedAgents.save")
        return cls(
            state_dict=f.state_dict,
            config=AgentsConfig.from_dict(f.meta["config"]),
            feature_space=f.feature_space,
            name=f.meta.get("name", "mmrf"),
            metrics=f.meta.get("metrics", {}),
        )


def _policy_ratio_weights(
    module: AgentsModule, data: AgentData, clip: float = 10.0
) -> pd.DataFrame:
    """Per logged impression ``w = clip(π_0(i|s)·K / β(i|s))`` normalised to mean 1, where
    ``π_0`` is the WatchTime policy over the request's training candidates and ``β`` the
    logged position-wise propensity (a first-order ratio; for the simulator refit only).
    ``data`` is the round's data, whose tensors the module holds (``module.data``)."""
    t = module.data
    module.eval()
    with torch.inference_mode():
        probs = []
        for idx in torch.arange(len(data)).split(4096):
            a = module.actor(
                t["user_row"][idx], t["context"][idx], t["history"][idx], t["item_row"][idx]
            ).actions[..., 0]
            probs.append(torch.softmax(a.masked_fill(~t["mask"][idx], -1e9), dim=1))
    module.train()
    pi = torch.cat(probs).numpy()
    k = data.slate_size
    ratio = np.clip(pi[:, :k] * k / np.maximum(data.propensity[:, :k], 1e-6), 1.0 / clip, clip)
    ratio = ratio / ratio.mean()
    return pd.DataFrame(
        {
            "request_id": np.repeat(data.request_id, k),
            "item_id": data.items[:, :k].ravel(),
            "weight": ratio.ravel(),
        }
    )


def train_agents(
    data: str | Path | Mapping[str, pd.DataFrame],
    config: AgentsConfig | None = None,
    seed: int = 0,
    holdout_days: int = 1,
    labeller: NonImpressionLabeller | None = None,
    name: str = "mmrf",
    quiet: bool = True,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    inspect: Callable[[AgentsModule], None] | None = None,
) -> TrainedAgents:
    """Fit the agents on all but the last ``holdout_days`` days (module docstring).

    ``labeller`` is required when ``config.non_impressions == "simulated"``. ``inspect`` is
    called once with the trained module (actor and critics), for diagnostics; only the
    actor is kept in the result.
    """
    config = config or AgentsConfig()
    if config.non_impressions == "simulated" and labeller is None:
        raise ValueError(
            "AgentsConfig.non_impressions='simulated' needs a feedback simulator (labeller); "
            "fit one with components.simulator or choose non_impressions='none' or 'negative'"
        )
    tables = agent_tables(data)
    split = split_by_day(tables["requests"], holdout_days)
    train_ids = np.asarray(split.train_request_ids)
    fs = FeatureSpace.fit(tables["users"], tables["items"])
    say = progress or (lambda _m: None)
    with _torch_threads(threads), _lightning_context(quiet):
        L.seed_everything(seed, workers=True)
        actor, critic = build_networks(fs, config)
        base = build_agent_data(tables, fs, train_ids, config.gamma)
        credit = _SessionCreditor.fit(base, tables["items"], config)
        if credit.credit is not None:
            say(f"session credit fitted: {credit.credit.to_dict()}")
        base = credit.apply(base)
        module = AgentsModule(
            actor, critic, config, torch.from_numpy(base.reward_scale()), base.slate_size
        )
        rng = np.random.default_rng(seed)
        for rnd in range(config.rounds):
            extra = _non_impressions(tables, train_ids, config, labeller, rng)
            data_r = (
                base
                if extra is None
                else credit.apply(build_agent_data(tables, fs, train_ids, config.gamma, extra))
            )
            module.set_data(_tensors(data_r))
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(torch.arange(len(data_r))),
                sampler=IndexBatches(len(data_r), config.batch_size, True, seed + rnd),
                batch_size=None,
                collate_fn=lambda b: b[0],
            )
            trainer = L.Trainer(
                max_epochs=config.epochs,
                accelerator="cpu",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=not quiet,
                enable_model_summary=False,
                deterministic=True,
                num_sanity_val_steps=0,
            )
            trainer.fit(module, train_dataloaders=loader)
            say(
                f"round {rnd + 1}/{config.rounds}: {len(data_r)} requests, "
                f"{int(data_r.mask.sum())} candidates, critic loss "
                f"{module.history[-1]['critic_loss']:.4f}"
            )
            refit = labeller is not None and config.non_impressions == "simulated"
            if refit and rnd + 1 < config.rounds:
                labeller.refit(_policy_ratio_weights(module, data_r))
    if inspect is not None:
        inspect(module)
    state = {k: v.detach().clone() for k, v in module.actor.state_dict().items()}
    metrics = {"train_history": module.history, "reward_scale": base.reward_scale().tolist()}
    if credit.credit is not None:
        metrics["session_credit"] = credit.credit.to_dict()
    return TrainedAgents(state, config, fs, name=name, metrics=metrics)


@dataclass(frozen=True)
class _SessionCreditor:
    """The session credit of a training run (``AgentsConfig.session_credit``), fitted once on
    the logged impressions and applied to every round's candidates; inert when λ = 0."""

    credit: SessionCredit | None
    durations: pd.Series
    config: AgentsConfig

    @classmethod
    def fit(cls, base: AgentData, items: pd.DataFrame, config: AgentsConfig) -> _SessionCreditor:
        if config.session_credit <= 0:
            return cls(None, pd.Series(dtype=np.float64), config)
        durations = item_durations_s(items)
        return cls(fit_session_credit(base, cls._of(durations, base)), durations, config)

    @staticmethod
    def _of(durations: pd.Series, data: AgentData) -> np.ndarray:
        """Durations (s) of ``data``'s candidates, NaN where unknown."""
        return durations.reindex(data.items.ravel()).to_numpy().reshape(data.items.shape)

    def apply(self, data: AgentData) -> AgentData:
        if self.credit is None:
            return data
        return with_session_credit(
            data,
            self.credit,
            self._of(self.durations, data),
            self.config.session_credit,
            self.config.gamma,
        )


def agent_tables(data: str | Path | Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The training tables plus ``non_impressions`` when the data set has them."""
    tables = load_tables(data)
    if isinstance(data, Mapping):
        if "non_impressions" in data:
            tables["non_impressions"] = data["non_impressions"]
    elif (Path(data) / "non_impressions.parquet").exists():
        tables["non_impressions"] = read_table(data, "non_impressions")
    return tables


def _non_impressions(
    tables: Mapping[str, pd.DataFrame],
    request_ids: np.ndarray,
    config: AgentsConfig,
    labeller: NonImpressionLabeller | None,
    rng: np.random.Generator,
) -> pd.DataFrame | None:
    """This round's labelled non-impressions (or ``None`` for MMRF-DA)."""
    if config.non_impressions == "none" or "non_impressions" not in tables:
        return None
    round_seed = int(rng.integers(2**31))
    if config.non_impressions == "simulated":
        assert labeller is not None
        return labeller.label(request_ids, config.label_share, round_seed)
    ni = tables["non_impressions"]
    ni = ni[ni["request_id"].isin(request_ids)]
    keep = np.random.default_rng(round_seed).random(len(ni)) < config.label_share
    ni = ni.loc[keep, ["request_id", "item_id"]].reset_index(drop=True)
    imp = tables["impressions"]
    values = negative_rewards(imp[imp["request_id"].isin(request_ids)], config.negative_reward)
    for j, agent in enumerate(AGENTS):
        ni[agent] = values[j]
    return ni


def with_variant(config: AgentsConfig, variant: str) -> AgentsConfig:
    """The config of a named method: mmrf, mmrf_co, mmrf_nc, mmrf_da, mmrf_ns, tscac."""
    changes = {
        "mmrf": {},
        "mmrf_co": {"collaboration": "concat"},
        "mmrf_nc": {"collaboration": "none", "aux_actions": False},
        "mmrf_da": {"non_impressions": "none"},
        "mmrf_ns": {"non_impressions": "negative"},
        "tscac": {"collaboration": "none", "two_stage": True, "non_impressions": "none"},
    }
    if variant not in changes:
        raise ValueError(f"unknown agent variant {variant!r}; choose one of {sorted(changes)}")
    return replace(config, **changes[variant])
