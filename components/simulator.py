"""Fitting, labelling and scoring MMRF's user-feedback simulator (``models.simulator``).

Pure functions, no files touched except by :meth:`TrainedSimulator.save` / ``load``:

- :func:`build_sequences` — the requests of the tables as per-user sequences (ordered by
  day, then request_id) with their shown items and observed feedback
  (:class:`SequenceData`); the recurrent state's input;
- :func:`fit_simulator` — the entry point: seeds once (``seed_everything(seed,
  workers=True)``), fits the :class:`~components.features.FeatureSpace` unless given and
  trains with ``lightning.Trainer(accelerator="cpu", deterministic=True, ...)`` on the
  impressions of ``request_ids``; returns a :class:`TrainedSimulator`;
- :func:`refit` — continues training from a simulator's weights, optionally with
  per-impression weights (the alternating rounds of the paper's Algorithm 1: the agents pass
  importance weights so the simulator is accurate where the current policy goes);
- :meth:`TrainedSimulator.predict` — aspect probabilities, expected play time, the twins'
  uncertainty and the optimistic rewards (paper Eq. 6) of any (request, item) pairs;
- :func:`label_non_impressions` — Algorithm 1's sampling and labelling: a seeded random
  ``share`` of the non-impressions with simulated feedback and rewards;
  :class:`SimulatorLabeller` wraps labelling and refitting for
  ``components.agents.train_agents`` (agent reward columns, importance-weight frames);
  :class:`TruthLabeller` labels the same sample with the world's exact expected feedback
  (the upper bound any simulator can reach);
- :func:`evaluate_simulator` — held-out AUC/GAUC per aspect, play-time error, and on world
  data the Bayes-optimal AUC and the error against the true probabilities on impressions and
  on non-impressions (the SSB measure), plus the uncertainty on each.

History. The state that predicts request ``t`` of a user is the GRU output after the user's
earlier requests **in the tables passed** (with their logged feedback), whether or not those
requests are in ``request_ids``: ``request_ids`` chooses the impressions to fit or score, the
tables are the observed history. With a time split (:func:`components.training.split_by_day`)
the held-out requests come after every training request, so no held-out feedback reaches
training; with a random split, earlier held-out requests would feed the state of later
training requests (their labels are never a target).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from components.agent_data import AGENTS, REWARD_SIGN
from components.evaluation import auc, gauc
from components.features import FeatureSpace, context_features, watch_fraction
from components.io import DataError
from components.model_files import read_model_files, save_model_files
from components.training import IndexBatches, _lightning_context, _torch_threads
from models.ranker import ASPECTS, log_play_target
from models.simulator import (
    N_FEEDBACK,
    WATCH_FRACTION_CAP,
    FeedbackSimulator,
    SequenceBatch,
    SimulatorConfig,
    SimulatorModule,
    TwinOutput,
    optimistic_rewards,
    simulator_loss,
    twin_uncertainty,
)

MODEL_FILE = "simulator.pt"
META_FILE = "simulator.json"
SCORE_CHUNK = 65_536
"""(request, item) pairs scored per forward pass by :meth:`TrainedSimulator.predict`."""
STATE_USERS = 256
"""Users whose sequences run through the GRU together when computing request states."""
STATE_CACHE = 4
"""Request-state tables kept per simulator (keyed by a fingerprint of the tables)."""
INFERENCE_THREADS = 1
"""Torch intra-op threads while computing states and predictions (restored afterwards): the
GRU is a loop of small matrix products, where extra threads only add synchronisation (on 2
shared cores a state pass is several times slower with 2 threads than with 1)."""

REQUEST_COLUMNS = ("request_id", "user_id", "day", "hour", "position_in_session")
IMPRESSION_COLUMNS = ("request_id", "item_id", *ASPECTS, "play_time_ms")
TRUTH_COLUMNS: dict[str, str] = {a: f"p_{a.removeprefix('is_')}" for a in ASPECTS}
"""Truth-table column of each aspect's true probability (``is_click`` → ``p_click``)."""


# ------------------------------------------------------------------------ sequences


@dataclass(frozen=True, eq=False)
class SequenceData:
    """The requests of a data set as per-user sequences, with their shown items.

    Requests (``R``) are ordered by (user_id, day, request_id): user ``j``'s sequence is
    ``user_start[j]:user_start[j + 1]``. Shown items (``N``) are ordered by (request, position);
    request ``r``'s are ``req_imp_start[r]:req_imp_start[r + 1]``. ``imp_source_row`` is each
    shown item's row number in the impressions table it came from.
    """

    request_id: np.ndarray  # (R,) int64
    user_id: np.ndarray  # (R,) int64
    user_start: np.ndarray  # (U + 1,) int64
    request_user_row: np.ndarray  # (R,) int64
    request_context: np.ndarray  # (R, 3) float32
    req_imp_start: np.ndarray  # (R + 1,) int64
    imp_request: np.ndarray  # (N,) int64, index into the requests
    imp_item_id: np.ndarray  # (N,) int64
    imp_item_row: np.ndarray  # (N,) int64
    imp_feedback: np.ndarray  # (N, 9) float32: ASPECTS, log1p(play_s), watch fraction
    imp_source_row: np.ndarray  # (N,) int64
    _id_order: np.ndarray = field(repr=False)  # argsort of request_id

    @property
    def n_users(self) -> int:
        return len(self.user_start) - 1

    @property
    def user_lengths(self) -> np.ndarray:
        return np.diff(self.user_start)

    def request_index(self, request_ids: Any) -> np.ndarray:
        """Position of each request id in the sequences; ``ValueError`` naming the unknown ids
        when some are not in the requests table."""
        ids = np.asarray(request_ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"request ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        sorted_ids = self.request_id[self._id_order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        found = sorted_ids[pos] == ids if len(sorted_ids) else np.zeros(ids.shape, bool)
        if not found.all():
            unknown = np.unique(ids[~found])
            raise ValueError(
                f"{len(unknown)} request id(s) are not in the requests table (e.g. "
                f"{unknown[:5].tolist()}); the simulator needs each request's user, context "
                "and history, so pass tables whose requests include every request id"
            )
        return self._id_order[pos]

    def batch(
        self,
        users: np.ndarray,
        lengths: np.ndarray,
        target: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> SequenceBatch:
        """The :class:`~models.simulator.SequenceBatch` of ``users`` (sequence indices), each
        truncated to its first ``lengths`` requests; ``target`` (``(N,)`` bool over all shown
        items, default none) and ``weight`` (``(N,)``, default 1) choose the fitted items."""
        users = np.asarray(users, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        req_idx, step = _ranges(self.user_start[users], lengths)
        t_max = int(lengths.max()) if len(lengths) else 1
        local_user = np.repeat(np.arange(len(users)), lengths)
        counts = self.req_imp_start[req_idx + 1] - self.req_imp_start[req_idx]
        imp_idx, _ = _ranges(self.req_imp_start[req_idx], counts)
        if target is None:
            local_target = np.zeros(0, dtype=np.int64)
        else:
            local_target = np.flatnonzero(target[imp_idx])
        w = (
            np.ones(len(local_target), np.float32)
            if weight is None
            else weight[imp_idx[local_target]].astype(np.float32)
        )
        return SequenceBatch(
            seq_index=torch.from_numpy(local_user * t_max + step),
            lengths=torch.from_numpy(lengths.copy()),
            request_user_row=torch.from_numpy(self.request_user_row[req_idx]),
            request_context=torch.from_numpy(self.request_context[req_idx]),
            imp_request=torch.from_numpy(np.repeat(np.arange(len(req_idx)), counts)),
            imp_item_row=torch.from_numpy(self.imp_item_row[imp_idx]),
            imp_feedback=torch.from_numpy(self.imp_feedback[imp_idx]),
            target=torch.from_numpy(local_target),
            target_weight=torch.from_numpy(w),
        )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(s, s + c)`` for each (start, count), and the offsets within."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + offset, offset


def _require(tables: Mapping[str, pd.DataFrame], name: str, columns: tuple[str, ...]) -> None:
    if name not in tables:
        raise DataError(f"the feedback simulator needs the {name!r} table; the data set lacks it")
    missing = [c for c in columns if c not in tables[name].columns]
    if missing:
        raise DataError(
            f"the {name} table lacks column(s) {missing} that the feedback simulator needs "
            f"({list(columns)}); see components/schema.py"
        )


def feedback_inputs(impressions: pd.DataFrame) -> np.ndarray:
    """``(N, 9)`` observed feedback of shown items: the 7 aspects, ``log1p(play_s)`` and the
    watch fraction ``play / duration`` clipped to ``[0, 3]`` (0 where the duration is unknown
    or 0, e.g. live streams)."""
    play = impressions["play_time_ms"].to_numpy(np.float64)
    if "duration_ms" in impressions.columns:
        duration = impressions["duration_ms"].to_numpy(np.float64)
    else:
        duration = np.zeros(len(impressions))
    frac = watch_fraction(play, duration)
    out = np.empty((len(impressions), N_FEEDBACK), dtype=np.float32)
    out[:, : len(ASPECTS)] = impressions[list(ASPECTS)].to_numpy(np.float32)
    out[:, len(ASPECTS)] = log_play_target(play)
    out[:, len(ASPECTS) + 1] = np.clip(frac, 0.0, WATCH_FRACTION_CAP)
    return out


def build_sequences(
    tables: Mapping[str, pd.DataFrame], feature_space: FeatureSpace
) -> SequenceData:
    """Every request of ``tables["requests"]`` in per-user order, with its shown items.

    Raises ``DataError`` when a table or column is missing, request ids repeat, or an
    impression refers to a request the requests table lacks.
    """
    _require(tables, "requests", REQUEST_COLUMNS)
    _require(tables, "impressions", IMPRESSION_COLUMNS)
    req, imp = tables["requests"], tables["impressions"]
    rid = req["request_id"].to_numpy(np.int64)
    uid = req["user_id"].to_numpy(np.int64)
    day = req["day"].to_numpy(np.int64)
    order = np.lexsort((rid, day, uid))
    rid, uid = rid[order], uid[order]
    id_order = np.argsort(rid, kind="stable")
    if len(rid) > 1 and (np.diff(rid[id_order]) == 0).any():
        raise DataError("requests.request_id must be unique; found duplicate ids")
    change = np.flatnonzero(np.diff(uid)) + 1 if len(uid) else np.zeros(0, np.int64)
    user_start = np.r_[0, change, len(uid)].astype(np.int64) if len(uid) else np.zeros(1, np.int64)

    imp_rid = imp["request_id"].to_numpy(np.int64)
    sorted_ids = rid[id_order]
    pos = np.minimum(np.searchsorted(sorted_ids, imp_rid), max(len(rid) - 1, 0))
    found = sorted_ids[pos] == imp_rid if len(rid) else np.zeros(len(imp_rid), bool)
    if not found.all():
        bad = imp_rid[~found]
        raise DataError(
            f"{len(bad)} impression(s) refer to request ids absent from the requests table "
            f"(e.g. {int(bad[0])}); validate the data set first"
        )
    imp_request = id_order[pos]
    position = (
        imp["position"].to_numpy(np.int64) if "position" in imp.columns else np.zeros(len(imp))
    )
    imp_order = np.lexsort((position, imp_request))
    imp_request = imp_request[imp_order]
    item_id = imp["item_id"].to_numpy(np.int64)[imp_order]
    hour = req["hour"].to_numpy()[order]
    pos_in_session = req["position_in_session"].to_numpy()[order]
    return SequenceData(
        request_id=rid,
        user_id=uid,
        user_start=user_start,
        request_user_row=feature_space.user_rows(uid),
        request_context=context_features(hour, pos_in_session),
        req_imp_start=np.searchsorted(imp_request, np.arange(len(rid) + 1)).astype(np.int64),
        imp_request=imp_request.astype(np.int64),
        imp_item_id=item_id,
        imp_item_row=feature_space.item_rows(item_id),
        imp_feedback=feedback_inputs(imp.iloc[imp_order]),
        imp_source_row=imp_order.astype(np.int64),
        _id_order=id_order,
    )


def tables_fingerprint(tables: Mapping[str, pd.DataFrame]) -> str:
    """A hash of the request and impression columns the recurrent state depends on."""
    h = hashlib.blake2b(digest_size=16)
    for name, columns in (
        ("requests", REQUEST_COLUMNS),
        ("impressions", (*IMPRESSION_COLUMNS, "position", "duration_ms")),
    ):
        df = tables[name]
        cols = [c for c in columns if c in df.columns]
        h.update(f"{name}:{cols}:{len(df)}".encode())
        h.update(pd.util.hash_pandas_object(df[cols], index=False).to_numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class SimulatorPrediction:
    """One row per (request, item) pair.

    ``aspect_probs`` ``(n, 7)`` main predictor's ``P(aspect)`` (``ASPECTS`` order);
    ``twin_probs`` the twin's; ``expected_play_s`` ``E[play_s]`` (Duan's smearing);
    ``log_play``/``twin_log_play`` the play heads' ``μ``/``μ'``; ``aspect_uncertainty``
    ``|p − p'|``; ``play_uncertainty`` ``|μ − μ'|``; ``uncertainty`` their mean;
    ``aspect_rewards`` and ``play_reward_s`` the optimistic rewards of paper Eq. 6.
    """

    request_id: np.ndarray
    item_id: np.ndarray
    aspect_probs: np.ndarray
    twin_probs: np.ndarray
    expected_play_s: np.ndarray
    log_play: np.ndarray
    twin_log_play: np.ndarray
    aspect_uncertainty: np.ndarray
    play_uncertainty: np.ndarray
    uncertainty: np.ndarray
    aspect_rewards: np.ndarray
    play_reward_s: np.ndarray

    def __len__(self) -> int:
        return len(self.request_id)

    def to_frame(self) -> pd.DataFrame:
        """request_id, item_id, one probability column per aspect, ``play_time_ms``
        (expected), ``uncertainty_<aspect>``, ``uncertainty_play``, ``uncertainty``,
        ``reward_<aspect>`` and ``reward_play_time_ms``."""
        cols: dict[str, np.ndarray] = {"request_id": self.request_id, "item_id": self.item_id}
        for k, a in enumerate(ASPECTS):
            cols[a] = self.aspect_probs[:, k]
        cols["play_time_ms"] = 1000.0 * self.expected_play_s.astype(np.float64)
        for k, a in enumerate(ASPECTS):
            cols[f"uncertainty_{a}"] = self.aspect_uncertainty[:, k]
        cols["uncertainty_play"] = self.play_uncertainty
        cols["uncertainty"] = self.uncertainty
        for k, a in enumerate(ASPECTS):
            cols[f"reward_{a}"] = self.aspect_rewards[:, k]
        cols["reward_play_time_ms"] = 1000.0 * self.play_reward_s.astype(np.float64)
        return pd.DataFrame(cols)


# ---------------------------------------------------------------------- the result


@dataclass(frozen=True, eq=False)
class TrainedSimulator:
    """A fitted feedback simulator: weights, config, feature space and training metrics.

    :meth:`predict` needs the tables (requests and impressions) to rebuild each request's
    recurrent state; the states are computed once per distinct tables (a fingerprint of their
    columns) and cached. Unknown user or item ids use the unknown rows.
    """

    state_dict: dict[str, torch.Tensor]
    config: SimulatorConfig
    feature_space: FeatureSpace
    metrics: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def model(self) -> FeedbackSimulator:
        """The network in eval mode (built once, then reused)."""
        if "model" not in self._cache:
            net = self.config.create(self.feature_space)
            net.load_state_dict(self.state_dict)
            net.eval()
            self._cache["model"] = net
        return self._cache["model"]

    def sequences_and_states(
        self, tables: Mapping[str, pd.DataFrame]
    ) -> tuple[SequenceData, torch.Tensor]:
        """The tables' :class:`SequenceData` and every request's state ``(R, S)`` (cached)."""
        key = tables_fingerprint(tables)
        cache: OrderedDict[str, tuple[SequenceData, torch.Tensor]] = self._cache.setdefault(
            "states", OrderedDict()
        )
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        seq = build_sequences(tables, self.feature_space)
        states = compute_states(self.model, seq)
        cache[key] = (seq, states)
        while len(cache) > STATE_CACHE:
            cache.popitem(last=False)
        return seq, states

    def predict(
        self, tables: Mapping[str, pd.DataFrame], request_ids: Any, item_ids: Any
    ) -> SimulatorPrediction:
        """Simulated feedback of each (``request_ids[i]``, ``item_ids[i]``) pair (1-D, same
        length), with the recurrent state of the request's user before that request."""
        rids = np.asarray(request_ids)
        iids = np.asarray(item_ids)
        if rids.ndim != 1 or iids.shape != rids.shape:
            raise ValueError(
                f"request_ids and item_ids must be 1-D with one entry per pair; got shapes "
                f"{rids.shape} and {iids.shape}"
            )
        seq, states = self.sequences_and_states(tables)
        r = seq.request_index(rids)
        item_row = self.feature_space.item_rows(iids)
        net = self.model
        outs: list[TwinOutput] = []
        with torch.inference_mode(), _torch_threads(INFERENCE_THREADS):
            for start in range(0, len(r), SCORE_CHUNK):
                req, pair_request = np.unique(r[start : start + SCORE_CHUNK], return_inverse=True)
                outs.append(
                    net.heads(
                        states[torch.from_numpy(req)],
                        torch.from_numpy(seq.request_user_row[req]),
                        torch.from_numpy(seq.request_context[req]),
                        torch.from_numpy(item_row[start : start + SCORE_CHUNK]),
                        torch.from_numpy(pair_request.astype(np.int64)),
                    )
                )
            out = _cat_outputs(outs, len(ASPECTS))
            unc = twin_uncertainty(out)
            probs = torch.sigmoid(out.logits)
            rewards, play_reward = optimistic_rewards(
                probs, out.log_play, unc, net.play_smearing, self.config.uncertainty_weight
            )
            return SimulatorPrediction(
                request_id=rids.astype(np.int64),
                item_id=iids.astype(np.int64),
                aspect_probs=probs.numpy(),
                twin_probs=torch.sigmoid(out.twin_logits).numpy(),
                expected_play_s=net.expected_play_s(out.log_play).numpy(),
                log_play=out.log_play.numpy(),
                twin_log_play=out.twin_log_play.numpy(),
                aspect_uncertainty=unc.aspects.numpy(),
                play_uncertainty=unc.play.numpy(),
                uncertainty=unc.summary.numpy(),
                aspect_rewards=rewards.numpy(),
                play_reward_s=play_reward.numpy(),
            )

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write ``<path>/simulator.pt`` (tensors only) and ``<path>/simulator.json``."""
        meta = {
            "model": "models.simulator.FeedbackSimulator",
            "config": self.config.to_dict(),
            "metrics": self.metrics,
        }
        return save_model_files(
            path, (MODEL_FILE, META_FILE), self.state_dict, self.feature_space, meta
        )

    @classmethod
    def load(cls, path: str | Path) -> TrainedSimulator:
        """Read what :meth:`save` wrote (``torch.load(..., weights_only=True)``)."""
        f = read_model_files(path, (MODEL_FILE, META_FILE), "simulator", "TrainedSimulator.save")
        return cls(
            state_dict=f.state_dict,
            config=SimulatorConfig.from_dict(f.meta["config"]),
            feature_space=f.feature_space,
            metrics=f.meta.get("metrics", {}),
        )


def _cat_outputs(outs: list[TwinOutput], n_aspects: int) -> TwinOutput:
    if not outs:
        empty = torch.zeros(0)
        return TwinOutput(torch.zeros(0, n_aspects), empty, torch.zeros(0, n_aspects), empty)
    return TwinOutput(
        *(torch.cat([getattr(o, f) for o in outs]) for f in TwinOutput.__dataclass_fields__)
    )


def compute_states(net: FeedbackSimulator, seq: SequenceData) -> torch.Tensor:
    """``(R, S)`` state of every request of ``seq`` (in its order), ``STATE_USERS`` users per
    GRU pass, in eval mode without gradients."""
    states = torch.zeros(len(seq.request_id), net.state_dim)
    was_training = net.training
    net.eval()
    lengths = seq.user_lengths
    with torch.inference_mode(), _torch_threads(INFERENCE_THREADS):
        for start in range(0, seq.n_users, STATE_USERS):
            users = np.arange(start, min(start + STATE_USERS, seq.n_users))
            batch = seq.batch(users, lengths[users])
            req_idx, _ = _ranges(seq.user_start[users], lengths[users])
            states[torch.from_numpy(req_idx)] = net.request_states(batch)
    net.train(was_training)
    return states


# ------------------------------------------------------------------------ training


class _UserBatchDataset(Dataset):
    """Index → :class:`SequenceBatch`: item ``idx`` (a tensor of positions in ``users``) is
    the batch of those users, truncated after their last target request."""

    def __init__(
        self,
        seq: SequenceData,
        users: np.ndarray,
        lengths: np.ndarray,
        target: np.ndarray,
        weight: np.ndarray,
    ) -> None:
        self.seq, self.users, self.lengths = seq, users, lengths
        self.target, self.weight = target, weight

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, idx: torch.Tensor) -> SequenceBatch:
        pick = idx.numpy()
        return self.seq.batch(self.users[pick], self.lengths[pick], self.target, self.weight)


@dataclass(frozen=True, eq=False)
class _Targets:
    """The fitted shown items of a :class:`SequenceData`: mask, weights, the users that have
    one and each user's sequence length up to their last target request."""

    mask: np.ndarray  # (N,) bool
    weight: np.ndarray  # (N,) float32
    users: np.ndarray  # (U_t,) int64
    lengths: np.ndarray  # (U_t,) int64

    @property
    def n(self) -> int:
        return int(self.mask.sum())


def _targets(
    seq: SequenceData,
    impressions: pd.DataFrame,
    request_ids: np.ndarray | None,
    sample_weight: np.ndarray | None,
) -> _Targets:
    rows = (
        np.ones(len(impressions), bool)
        if request_ids is None
        else impressions["request_id"].isin(np.asarray(request_ids)).to_numpy()
    )
    full = np.zeros(len(impressions), np.float32)
    if sample_weight is None:
        full[rows] = 1.0
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        n_rows = int(rows.sum())
        if w.shape != (n_rows,):
            raise ValueError(
                f"sample_weight must hold one weight per impression of the selected requests "
                f"({n_rows}, in the impressions table's row order), got shape {w.shape}"
            )
        if not np.isfinite(w).all() or (w < 0).any() or (n_rows and w.sum() <= 0):
            raise ValueError(
                "sample_weight must be finite and >= 0 with a positive sum (importance "
                f"weights); got min {w.min() if n_rows else 'n/a'}, sum {w.sum()}"
            )
        full[rows] = w.astype(np.float32)
    mask = rows[seq.imp_source_row]
    weight = full[seq.imp_source_row]
    last = np.full(seq.n_users, -1, np.int64)  # each user's last target request
    tgt_req = seq.imp_request[mask]
    user_of_req = np.repeat(np.arange(seq.n_users), seq.user_lengths)
    np.maximum.at(last, user_of_req[tgt_req], tgt_req)
    users = np.flatnonzero(last >= 0)
    lengths = last[users] - seq.user_start[users] + 1
    return _Targets(mask=mask, weight=weight, users=users, lengths=lengths)


def _check_request_ids(seq: SequenceData, request_ids: np.ndarray | None) -> None:
    if request_ids is not None:
        seq.request_index(np.asarray(request_ids))


def _eval_pass(
    net: FeedbackSimulator, seq: SequenceData, tg: _Targets, config: SimulatorConfig
) -> dict[str, float]:
    """Mean loss, smearing factor and mean uncertainty over the targets, in eval mode."""
    was_training = net.training
    net.eval()
    weights = config.aspect_weight_tensor()
    acc = {"loss": 0.0, "smear": 0.0, "unc": 0.0, "w": 0.0}
    with torch.inference_mode(), _torch_threads(INFERENCE_THREADS):
        for start in range(0, len(tg.users), STATE_USERS):
            sl = slice(start, start + STATE_USERS)
            batch = seq.batch(tg.users[sl], tg.lengths[sl], tg.mask, tg.weight)
            if len(batch.target) == 0:
                continue
            out = net(batch)
            w = batch.target_weight.double()
            loss = simulator_loss(
                out,
                batch.labels(),
                batch.log_play(),
                batch.target_weight,
                weights,
                config.play_weight,
                config.kl_weight,
            )
            acc["loss"] += float(loss.total) * float(w.sum())
            acc["smear"] += float((w * torch.exp((batch.log_play() - out.log_play).double())).sum())
            acc["unc"] += float((w * twin_uncertainty(out).summary.double()).sum())
            acc["w"] += float(w.sum())
    net.train(was_training)
    n = max(acc["w"], 1e-12)
    return {"loss": acc["loss"] / n, "smearing": acc["smear"] / n, "uncertainty": acc["unc"] / n}


def _train(
    net: FeedbackSimulator,
    seq: SequenceData,
    tg: _Targets,
    config: SimulatorConfig,
    epochs: int,
    seed: int,
    enable_progress_bar: bool,
) -> dict[str, Any]:
    """Lightning fit of ``net`` on the targets; sets the smearing factor; returns metrics."""
    module = SimulatorModule(net, config)
    dataset = _UserBatchDataset(seq, tg.users, tg.lengths, tg.mask, tg.weight)
    batches = IndexBatches(len(dataset), config.users_per_batch, shuffle=True, seed=seed)
    loader = DataLoader(dataset, sampler=batches, batch_size=None, num_workers=0)
    with _lightning_context(not enable_progress_bar):
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            deterministic=True,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=enable_progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=50,
        )
        t_fit = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        fit_seconds = time.perf_counter() - t_fit
    final = _eval_pass(net, seq, tg, config)
    net.play_smearing.fill_(final["smearing"])
    return {
        "seed": seed,
        "epochs": epochs,
        "steps": int(trainer.global_step),
        "n_train_impressions": tg.n,
        "n_train_users": len(tg.users),
        "epoch_train_loss": list(module.epoch_losses),
        "epoch_train_kl": list(module.epoch_kl),
        "final_train_loss": final["loss"],
        "train_uncertainty": final["uncertainty"],
        "play_smearing": final["smearing"],
        "fit_seconds": fit_seconds,
        "impressions_per_second": tg.n * epochs / max(fit_seconds, 1e-9),
    }


def _id_counts(
    seq: SequenceData, tg: _Targets, space: FeatureSpace
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training impressions per user row and per item row of ``space``."""
    user_row = seq.request_user_row[seq.imp_request[tg.mask]]
    item_row = seq.imp_item_row[tg.mask]
    users = np.bincount(user_row, minlength=space.n_user_rows)
    items = np.bincount(item_row, minlength=space.n_item_rows)
    return torch.from_numpy(users), torch.from_numpy(items)


def fit_simulator(
    tables: Mapping[str, pd.DataFrame],
    config: SimulatorConfig | None = None,
    seed: int = 0,
    request_ids: np.ndarray | None = None,
    feature_space: FeatureSpace | None = None,
    *,
    max_epochs: int | None = None,
    num_threads: int | None = 1,
    enable_progress_bar: bool = False,
) -> TrainedSimulator:
    """Fit the feedback simulator on the impressions of ``request_ids`` (``None``: all).

    ``tables``: users, items, requests and impressions (the requests are the history; see
    the module docstring). The feature space is fitted on ``users``/``items`` unless given.
    ``max_epochs`` overrides ``config.epochs``; ``num_threads``: torch intra-op threads while
    training (restored afterwards; ``None`` keeps the process setting).

    Determinism: ``seed_everything(seed, workers=True)`` once here, ``deterministic=True``
    and a seeded user-batch order, so the same inputs and seed give identical weights.
    """
    config = config or SimulatorConfig()
    epochs = config.epochs if max_epochs is None else int(max_epochs)
    if epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    t0 = time.perf_counter()
    for name in ("users", "items"):
        if feature_space is None and name not in tables:
            raise DataError(f"fitting the feature space needs the {name!r} table; it is missing")
    space = feature_space or FeatureSpace.fit(tables["users"], tables["items"])
    seq = build_sequences(tables, space)
    _check_request_ids(seq, request_ids)
    tg = _targets(seq, tables["impressions"], request_ids, None)
    if tg.n == 0:
        raise DataError(
            "no impression belongs to the given request ids; the simulator needs logged "
            "impressions to learn from"
        )
    with _torch_threads(num_threads):
        L.seed_everything(seed, workers=True, verbose=False)
        net = config.create(space)
        labels = seq.imp_feedback[tg.mask]
        net.set_id_vocabulary(*_id_counts(seq, tg, space), config.min_id_count)
        net.init_output_bias(
            torch.from_numpy(labels[:, : len(ASPECTS)].mean(axis=0)),
            float(labels[:, len(ASPECTS)].mean()),
        )
        metrics = _train(net, seq, tg, config, epochs, seed, enable_progress_bar)
    metrics["seconds"] = time.perf_counter() - t0
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return TrainedSimulator(state_dict=state, config=config, feature_space=space, metrics=metrics)


def refit(
    sim: TrainedSimulator,
    tables: Mapping[str, pd.DataFrame],
    request_ids: np.ndarray | None,
    sample_weight: np.ndarray | None = None,
    epochs: int = 1,
    *,
    seed: int = 0,
    num_threads: int | None = 1,
) -> TrainedSimulator:
    """Continue training ``sim`` on the impressions of ``request_ids`` (``None``: all).

    ``sample_weight``: one weight ``ω ≥ 0`` per impression of the selected requests, in the
    order of ``tables["impressions"]`` rows (``impressions[impressions.request_id.isin(
    request_ids)]``), e.g. importance weights ``π/β`` of the current policy; ``None`` = 1.
    The loss is ``Σ ω ℓ / Σ ω`` per batch. Starts from ``sim``'s weights with a fresh Adam
    state and keeps its feature space (new ids use the unknown rows); the smearing factor is
    re-estimated with the same weights. ``sim`` itself is not changed.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    t0 = time.perf_counter()
    seq = build_sequences(tables, sim.feature_space)
    _check_request_ids(seq, request_ids)
    tg = _targets(seq, tables["impressions"], request_ids, sample_weight)
    if tg.n == 0:
        raise DataError("no impression belongs to the given request ids; nothing to refit on")
    with _torch_threads(num_threads):
        L.seed_everything(seed, workers=True, verbose=False)
        net = sim.config.create(sim.feature_space)
        net.load_state_dict(sim.state_dict)
        net.train()
        metrics = _train(net, seq, tg, sim.config, epochs, seed, enable_progress_bar=False)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["refit_of"] = {k: sim.metrics.get(k) for k in ("seed", "epochs", "n_train_impressions")}
    metrics["weighted"] = sample_weight is not None
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return TrainedSimulator(
        state_dict=state, config=sim.config, feature_space=sim.feature_space, metrics=metrics
    )


# ------------------------------------------------------------------------ labelling


def _check_share(share: float) -> float:
    share = float(share)
    if not 0.0 < share <= 1.0:
        raise ValueError(
            f"share must be in (0, 1] (the fraction of non-impressions to label), got {share}; "
            "the paper samples about 0.25"
        )
    return share


def label_non_impressions(
    sim: TrainedSimulator,
    tables: Mapping[str, pd.DataFrame],
    share: float = 0.25,
    seed: int = 0,
    request_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """Algorithm 1: sample and label non-impressions.

    Draws ``round(share · n)`` rows of ``tables["non_impressions"]`` (restricted to
    ``request_ids`` when given) uniformly without replacement with ``numpy``'s generator
    seeded by ``seed`` (kept in table order) and returns one row per sample:
    ``request_id``, ``item_id``, the 7 aspect probabilities (columns named as the aspects),
    ``play_time_ms`` (expected), ``uncertainty_<aspect>``, ``uncertainty_play``,
    ``uncertainty`` and the simulated rewards ``reward_<aspect>`` and
    ``reward_play_time_ms`` (paper Eq. 6, ``models.simulator.optimistic_rewards``).
    """
    sample = sample_non_impressions(tables, share, seed, request_ids)
    pred = sim.predict(
        tables, sample["request_id"].to_numpy(np.int64), sample["item_id"].to_numpy(np.int64)
    )
    return pred.to_frame()


def sample_non_impressions(
    tables: Mapping[str, pd.DataFrame],
    share: float,
    seed: int,
    request_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """Algorithm 1's sample: ``round(share · n)`` rows of ``tables["non_impressions"]``
    (restricted to ``request_ids`` when given), uniformly without replacement with
    ``numpy``'s generator seeded by ``seed``, kept in table order."""
    share = _check_share(share)
    _require(tables, "non_impressions", ("request_id", "item_id"))
    ni = tables["non_impressions"]
    if request_ids is not None:
        ids = np.asarray(request_ids)
        known = np.isin(ids, tables["requests"]["request_id"].to_numpy())
        if not known.all():
            raise ValueError(
                f"{int((~known).sum())} request id(s) are not in the requests table (e.g. "
                f"{np.unique(ids[~known])[:5].tolist()}); pass request ids of these tables"
            )
        ni = ni[ni["request_id"].isin(ids)]
    n_keep = int(round(share * len(ni)))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ni), size=n_keep, replace=False)) if n_keep else []
    return ni.iloc[pick]


def agent_rewards(labelled: pd.DataFrame) -> pd.DataFrame:
    """:func:`label_non_impressions` output as ``components.agent_data`` rewards:
    ``request_id``, ``item_id`` and one signed column per agent (``AGENTS``): ``watch_time``
    = ``reward_play_time_ms / 1000`` (seconds), each aspect agent its ``reward_<aspect>``,
    times ``REWARD_SIGN`` (the Hate agent gets ``−reward_is_hate``, whose optimistic bonus
    is then ``+λ·u`` like every other agent's)."""
    cols: dict[str, Any] = {
        "request_id": labelled["request_id"].to_numpy(),
        "item_id": labelled["item_id"].to_numpy(),
    }
    for agent, sign in zip(AGENTS, REWARD_SIGN, strict=True):
        if agent == "watch_time":
            value = labelled["reward_play_time_ms"].to_numpy(np.float64) / 1000.0
        else:
            value = labelled[f"reward_{agent}"].to_numpy(np.float64)
        cols[agent] = (float(sign) * value).astype(np.float32)
    return pd.DataFrame(cols)


def impression_weights(
    impressions: pd.DataFrame, request_ids: np.ndarray, weights: pd.DataFrame
) -> np.ndarray:
    """:func:`refit`'s ``sample_weight`` from a (request_id, item_id, weight) frame: one value
    per impression of ``request_ids`` in table order; an impression the frame does not
    name gets 1.0 (the agents' weights have mean 1), frame rows that name no impression
    (e.g. padding) are ignored, and repeated (request, item) rows are averaged."""
    missing = [c for c in ("request_id", "item_id", "weight") if c not in weights.columns]
    if missing:
        raise ValueError(
            f"impression weights need columns request_id, item_id, weight; missing {missing}"
        )
    sel = impressions.loc[impressions["request_id"].isin(request_ids), ["request_id", "item_id"]]
    per_pair = weights.groupby(["request_id", "item_id"], as_index=False)["weight"].mean()
    joined = sel.merge(per_pair, on=["request_id", "item_id"], how="left")
    return joined["weight"].fillna(1.0).to_numpy(np.float64)


@dataclass(eq=False)
class SimulatorLabeller:
    """MMRF's labeller for ``components.agents.train_agents`` (its ``NonImpressionLabeller``):
    labels non-impressions with the current simulator (:func:`label_non_impressions` →
    :func:`agent_rewards`) and, between rounds, :func:`refit` s it on the requests the agents
    weighted, for ``refit_epochs`` epochs. ``sim`` is replaced by each refit; ``history``
    keeps every refit's metrics. ``tables`` must hold the requests, impressions and
    non_impressions the agents train on."""

    sim: TrainedSimulator
    tables: Mapping[str, pd.DataFrame]
    refit_epochs: int = 1
    seed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def label(self, request_ids: np.ndarray, share: float, seed: int) -> pd.DataFrame:
        labelled = label_non_impressions(self.sim, self.tables, share, seed, request_ids)
        return agent_rewards(labelled)

    def refit(self, impression_weights_frame: pd.DataFrame) -> None:
        request_ids = np.unique(impression_weights_frame["request_id"].to_numpy(np.int64))
        w = impression_weights(self.tables["impressions"], request_ids, impression_weights_frame)
        self.sim = refit(
            self.sim,
            self.tables,
            request_ids,
            w,
            self.refit_epochs,
            seed=self.seed + len(self.history),
        )
        self.history.append(self.sim.metrics)


@dataclass(eq=False)
class TruthLabeller:
    """An upper bound for any feedback simulator, on world data only: labels the same
    Algorithm 1 sample as :class:`SimulatorLabeller` with the world's **exact** expected
    feedback (the ``truth`` table: ``p_<aspect>`` and ``expected_play_ms`` of each
    non-impression, no uncertainty bonus) and never refits. Agents trained with it
    (``mmrf_oracle`` in ``components.experiments``) show what non-impression labels can give
    the agents at best, which separates the simulator's error from the agents' use of the
    labels."""

    tables: Mapping[str, pd.DataFrame]
    truth: pd.DataFrame

    def __post_init__(self) -> None:
        missing = [
            c
            for c in ("request_id", "item_id", "shown", *TRUTH_COLUMNS.values(), "expected_play_ms")
            if c not in self.truth.columns
        ]
        if missing:
            raise DataError(
                f"the truth table lacks {missing}; only world data (relayrec data generate) "
                "has the exact expected feedback the truth labeller needs"
            )

    def label(self, request_ids: np.ndarray, share: float, seed: int) -> pd.DataFrame:
        sample = sample_non_impressions(self.tables, share, seed, request_ids)
        exact = _truth_join(self.truth, sample, 0)
        if exact["expected_play_ms"].isna().any():
            raise DataError(
                f"{int(exact['expected_play_ms'].isna().sum())} sampled non-impression(s) have "
                "no row in the truth table; the truth table must come with these logs"
            )
        labelled = pd.DataFrame(
            {
                "request_id": exact["request_id"].to_numpy(),
                "item_id": exact["item_id"].to_numpy(),
                "reward_play_time_ms": exact["expected_play_ms"].to_numpy(np.float64),
                **{f"reward_{a}": exact[c].to_numpy(np.float64) for a, c in TRUTH_COLUMNS.items()},
            }
        )
        return agent_rewards(labelled)

    def refit(self, impression_weights_frame: pd.DataFrame) -> None:
        """Nothing to refit: the truth does not depend on the policy."""


# ----------------------------------------------------------------------- evaluation


def _safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(labels) == 0 or labels.min() == labels.max():
        return float("nan")
    return auc(labels, scores)


def _truth_join(truth: pd.DataFrame, pairs: pd.DataFrame, shown: int) -> pd.DataFrame:
    t = truth[truth["shown"] == shown] if "shown" in truth.columns else truth
    cols = ["request_id", "item_id", *TRUTH_COLUMNS.values(), "expected_play_ms"]
    return pairs[["request_id", "item_id"]].merge(
        t[[c for c in cols if c in t.columns]], on=["request_id", "item_id"], how="left"
    )


def _prob_errors(pred: SimulatorPrediction, truth: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per aspect (and ``play_s``): ``mae`` = mean |predicted − true|, ``predicted`` and
    ``true`` means over the pairs with a true value (their gap is the signed bias)."""
    columns = [(a, pred.aspect_probs[:, k], TRUTH_COLUMNS[a]) for k, a in enumerate(ASPECTS)]
    columns.append(("play_s", pred.expected_play_s, "expected_play_ms"))
    out: dict[str, dict[str, float]] = {"mae": {}, "predicted": {}, "true": {}}
    for name, predicted, column in columns:
        t = truth[column].to_numpy(np.float64) / (1000.0 if name == "play_s" else 1.0)
        ok = np.isfinite(t)
        p = np.asarray(predicted, dtype=np.float64)[ok]
        out["mae"][name] = float(np.abs(p - t[ok]).mean()) if ok.any() else np.nan
        out["predicted"][name] = float(p.mean()) if ok.any() else np.nan
        out["true"][name] = float(t[ok].mean()) if ok.any() else np.nan
    return out


def evaluate_simulator(
    sim: TrainedSimulator, tables: Mapping[str, pd.DataFrame], request_ids: np.ndarray
) -> dict[str, Any]:
    """Scores of ``sim`` on the impressions (and non-impressions) of ``request_ids``.

    Returns ``n_impressions``; per aspect ``auc`` and ``gauc`` (DIN's, per user) on the
    logged labels; ``play``: RMSE and MAE of expected vs logged play seconds and RMSE of
    ``log1p(play_s)``; ``uncertainty``: mean scalar uncertainty on ``impressions`` and on
    ``non_impressions`` (when the table exists). With a ``truth`` table (world data):
    ``bayes_auc`` (the AUC of the true probabilities on the same impressions — the ceiling),
    ``prob_mae`` on ``impressions`` and ``non_impressions``: mean absolute error of the
    predicted vs true probability per aspect and of expected play seconds (``play_s``), and
    ``mean_vs_true`` on both: the mean predicted and the mean true value. A gap between
    impressions and non-impressions is the selection bias the logs leave in the simulator:
    the logging policy did not show the non-impressions for reasons the simulator may not
    see, so their labels come out optimistic.
    """
    seq, _ = sim.sequences_and_states(tables)
    _check_request_ids(seq, request_ids)
    imp = tables["impressions"]
    imp = imp[imp["request_id"].isin(np.asarray(request_ids))]
    if len(imp) == 0:
        raise DataError("no impression belongs to the given request ids; nothing to evaluate")
    pred = sim.predict(tables, imp["request_id"].to_numpy(), imp["item_id"].to_numpy())
    users = imp["user_id"].to_numpy() if "user_id" in imp.columns else imp["request_id"].to_numpy()
    result: dict[str, Any] = {"n_impressions": len(imp), "auc": {}, "gauc": {}}
    for k, a in enumerate(ASPECTS):
        y = imp[a].to_numpy(np.int64)
        result["auc"][a] = _safe_auc(y, pred.aspect_probs[:, k])
        result["gauc"][a] = gauc(y, pred.aspect_probs[:, k], users).value
    play_s = imp["play_time_ms"].to_numpy(np.float64) / 1000.0
    err = pred.expected_play_s.astype(np.float64) - play_s
    result["play"] = {
        "rmse_s": float(np.sqrt(np.mean(err**2))),
        "mae_s": float(np.mean(np.abs(err))),
        "log_play_rmse": float(
            np.sqrt(np.mean((pred.log_play - log_play_target(play_s * 1000.0)) ** 2))
        ),
        "mean_logged_s": float(play_s.mean()),
        "mean_expected_s": float(pred.expected_play_s.mean()),
    }
    result["uncertainty"] = {"impressions": float(pred.uncertainty.mean())}
    ni_pred = None
    if "non_impressions" in tables:
        ni = tables["non_impressions"]
        ni = ni[ni["request_id"].isin(np.asarray(request_ids))]
        result["n_non_impressions"] = len(ni)
        if len(ni):
            ni_pred = sim.predict(tables, ni["request_id"].to_numpy(), ni["item_id"].to_numpy())
            result["uncertainty"]["non_impressions"] = float(ni_pred.uncertainty.mean())
    if "truth" in tables:
        truth_imp = _truth_join(tables["truth"], imp, shown=1)
        result["bayes_auc"] = {
            a: _safe_auc(imp[a].to_numpy(np.int64), truth_imp[TRUTH_COLUMNS[a]].to_numpy())
            for a in ASPECTS
        }
        errors = {"impressions": _prob_errors(pred, truth_imp)}
        if ni_pred is not None:
            errors["non_impressions"] = _prob_errors(ni_pred, _truth_join(tables["truth"], ni, 0))
        result["prob_mae"] = {k: v["mae"] for k, v in errors.items()}
        result["mean_vs_true"] = {
            k: {"predicted": v["predicted"], "true": v["true"]} for k, v in errors.items()
        }
    return result
