"""Training the supervised multi-task ranker (``models.ranker``): data → arrays → Lightning.

Pure functions, no files touched except by :meth:`TrainedRanker.save` / ``load``:

- :func:`split_by_day` — the time split: the last ``holdout_days`` logged days are held out
  (the gate's later slice), every earlier day trains;
- :func:`build_training_arrays` — logged impressions of a split as index/feature arrays
  (:class:`TrainingArrays`), ready for a ``TensorDataset``;
- :func:`train_ranker` — the entry point: seeds once (``seed_everything(seed,
  workers=True)``), fits the :class:`~components.features.FeatureSpace`, trains with
  ``lightning.Trainer(accelerator="cpu", deterministic=True, ...)`` and returns a
  :class:`TrainedRanker`: weights, config, feature space and metrics, which scores
  candidates and saves/loads without pickling (``torch.load(weights_only=True)``).

Batches are drawn as whole index batches (:class:`IndexBatches`): one fancy-indexing call
per batch instead of one ``__getitem__`` per sample plus a collate, which would cost more
than the model's step at this size.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, Sampler, TensorDataset

from components.features import FeatureSpace, context_features
from components.io import DataError, read_table
from components.model_files import read_model_files, save_model_files
from models.ranker import (
    ASPECTS,
    MultiTaskRanker,
    RankerConfig,
    RankerModule,
    binary_auc,
    log_play_target,
    ranker_loss,
)

MODEL_FILE = "model.pt"
META_FILE = "ranker.json"
REQUIRED_TABLES: tuple[str, ...] = ("users", "items", "requests", "impressions")
SCORE_CHUNK = 65_536
"""Candidates scored per forward pass by :meth:`TrainedRanker.predict` (bounds memory)."""


# -------------------------------------------------------------------------- split


@dataclass(frozen=True)
class DaySplit:
    """Request ids of the training days and of the held-out (later) days."""

    train_request_ids: np.ndarray
    holdout_request_ids: np.ndarray
    train_days: tuple[int, ...]
    holdout_days: tuple[int, ...]


def split_by_day(requests: pd.DataFrame, holdout_days: int = 1) -> DaySplit:
    """Hold out the last ``holdout_days`` distinct days of ``requests`` for the gate.

    ``holdout_days = 0`` trains on everything. Raises ``DataError`` when the log has no
    earlier day left to train on.
    """
    if not isinstance(holdout_days, int) or holdout_days < 0:
        raise ValueError(f"holdout_days must be an integer >= 0, got {holdout_days!r}")
    for column in ("request_id", "day"):
        if column not in requests.columns:
            raise DataError(f"requests table has no {column!r} column; cannot split by day")
    days = np.sort(requests["day"].unique())
    if holdout_days >= len(days):
        raise DataError(
            f"cannot hold out {holdout_days} day(s): the log has {len(days)} day(s) "
            f"({days.tolist()}), so nothing would be left to train on; use holdout_days <= "
            f"{len(days) - 1} or a longer log"
        )
    held = days[len(days) - holdout_days :] if holdout_days else days[:0]
    is_held = requests["day"].isin(held).to_numpy()
    ids = requests["request_id"].to_numpy(np.int64)
    return DaySplit(
        train_request_ids=np.sort(ids[~is_held]),
        holdout_request_ids=np.sort(ids[is_held]),
        train_days=tuple(int(d) for d in days if d not in set(held)),
        holdout_days=tuple(int(d) for d in held),
    )


# ------------------------------------------------------------------------- arrays


@dataclass(frozen=True, eq=False)
class TrainingArrays:
    """One row per logged impression of a split, ordered by (request_id, position).

    ``user_row``/``item_row`` index the feature space's tables (0 = unknown id),
    ``context`` is :func:`components.features.context_features`, ``labels`` the binary
    aspects in ``models.ranker.ASPECTS`` order, ``log_play`` the play head's target.
    """

    request_id: np.ndarray  # (N,) int64
    user_id: np.ndarray  # (N,) int64
    item_id: np.ndarray  # (N,) int64
    user_row: np.ndarray  # (N,) int64
    item_row: np.ndarray  # (N,) int64
    context: np.ndarray  # (N, 3) float32
    labels: np.ndarray  # (N, 7) float32
    log_play: np.ndarray  # (N,) float32
    play_time_ms: np.ndarray  # (N,) float64
    hour: np.ndarray  # (N,) int64
    position_in_session: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.request_id)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """``(user_row, item_row, context, labels, log_play)``: the module's batch layout."""
        return tuple(
            torch.from_numpy(np.array(a, copy=True))
            for a in (self.user_row, self.item_row, self.context, self.labels, self.log_play)
        )

    def dataset(self) -> TensorDataset:
        return TensorDataset(*self.tensors())


def build_training_arrays(
    tables: Mapping[str, pd.DataFrame],
    feature_space: FeatureSpace,
    request_ids: np.ndarray | None = None,
) -> TrainingArrays:
    """The impressions of the requests in ``request_ids`` (the split; ``None`` = all).

    Joins each impression with its request's ``hour`` and ``position_in_session``.
    Impressions whose request is missing from ``requests`` raise ``DataError``.
    """
    for name in ("requests", "impressions"):
        if name not in tables:
            raise DataError(f"training needs the {name!r} table; the data set lacks it")
    imp = tables["impressions"]
    req = tables["requests"][["request_id", "hour", "position_in_session"]]
    if request_ids is not None:
        imp = imp[imp["request_id"].isin(np.asarray(request_ids))]
    df = imp.merge(req, on="request_id", how="left", validate="many_to_one")
    orphans = df["hour"].isna()
    if orphans.any():
        raise DataError(
            f"{int(orphans.sum())} impression(s) refer to request ids absent from the "
            f"requests table (e.g. {int(df.loc[orphans, 'request_id'].iloc[0])}); "
            "validate the data set first"
        )
    df = df.sort_values(["request_id", "position"], kind="stable").reset_index(drop=True)
    user_id = df["user_id"].to_numpy(np.int64)
    item_id = df["item_id"].to_numpy(np.int64)
    play = df["play_time_ms"].to_numpy(np.float64)
    return TrainingArrays(
        request_id=df["request_id"].to_numpy(np.int64),
        user_id=user_id,
        item_id=item_id,
        user_row=feature_space.user_rows(user_id),
        item_row=feature_space.item_rows(item_id),
        context=context_features(df["hour"].to_numpy(), df["position_in_session"].to_numpy()),
        labels=df[list(ASPECTS)].to_numpy(np.float32),
        log_play=log_play_target(play),
        play_time_ms=play,
        hour=df["hour"].to_numpy(np.int64),
        position_in_session=df["position_in_session"].to_numpy(np.int64),
    )


class IndexBatches(Sampler[torch.Tensor]):
    """Yields whole batches of row indices as tensors: a seeded permutation (``shuffle``)
    or ``0..n-1``, split into ``batch_size`` chunks (the last one may be smaller).

    Used as a DataLoader ``sampler`` with ``batch_size=None``, so a batch is one tensor
    fancy-indexing call on the ``TensorDataset``. A ``BatchSampler`` would yield Python
    lists (converted to tensors on every batch) and the default per-sample path calls
    ``__getitem__`` once per row and collates: both cost more than the model's step here.
    Each epoch draws the next permutation from the sampler's own generator, so the batch
    order is a function of ``seed`` alone.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle = int(n), int(batch_size), shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = (
            torch.randperm(self.n, generator=self.generator)
            if self.shuffle
            else torch.arange(self.n)
        )
        return iter(order.split(self.batch_size))

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def make_loader(
    arrays: TrainingArrays, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """Whole-batch DataLoader over ``arrays`` (:class:`IndexBatches`; no worker processes:
    slicing in-memory tensors is faster than shipping batches between processes)."""
    dataset = arrays.dataset()
    batches = IndexBatches(len(dataset), batch_size, shuffle, seed)
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=0)


# ------------------------------------------------------------------- the result


@dataclass(frozen=True)
class RankerPrediction:
    """Per-candidate predictions, each of the candidates' shape (``(..., 7)`` for aspects)."""

    aspect_probs: np.ndarray  # (..., 7) float32, ASPECTS order
    expected_play_s: np.ndarray  # (...,) float32, seconds
    score: np.ndarray  # (...,) float32, seconds (+ aspect terms)
    log_play: np.ndarray  # (...,) float32, the play head's μ = predicted log1p(play_s)


@dataclass(frozen=True, eq=False)
class TrainedRanker:
    """A trained ranker: weights, config, feature space and training metrics.

    ``score`` ranks candidates by expected play time in seconds (plus the configured aspect
    terms, see ``models.ranker``); ``temperature`` is the Plackett–Luce temperature over those
    scores for stochastic evaluation. Unknown user or item ids score as the unknown row; a
    service should reject them first with ``feature_space.unknown_user_ids`` /
    ``unknown_item_ids``.
    """

    state_dict: dict[str, torch.Tensor]
    config: RankerConfig
    feature_space: FeatureSpace
    metrics: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def temperature(self) -> float:
        return float(self.config.temperature)

    @property
    def model(self) -> MultiTaskRanker:
        """The network in eval mode (built once, then reused)."""
        if "model" not in self._cache:
            net = self.config.create(self.feature_space)
            net.load_state_dict(self.state_dict)
            net.eval()
            self._cache["model"] = net
            self._cache["score_weights"] = self.config.score_weight_tensor()
        return self._cache["model"]

    # ---------------------------------------------------------------- scoring

    def _inputs(
        self, user_ids: Any, item_ids: Any, hour: Any, position: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row indices and context, each with the candidates' leading axis."""
        items = np.asarray(item_ids)
        if items.ndim == 0:
            items = items.reshape(1)
        nd = items.ndim

        def lead(x: Any, name: str) -> np.ndarray:
            x = np.asarray(x)
            if x.ndim > nd or (x.ndim and items.shape[: x.ndim] != x.shape):
                raise ValueError(
                    f"{name} must be a scalar or have the leading shape of item_ids: got "
                    f"{name} {x.shape} and item_ids {items.shape}; pass one value per request "
                    "(R,) with candidates (R, C), or one per candidate"
                )
            x = x.reshape(x.shape + (1,) * (nd - x.ndim))
            return np.broadcast_to(x, (items.shape[0], *x.shape[1:]))

        user_row = self.feature_space.user_rows(lead(user_ids, "user_ids"))
        item_row = self.feature_space.item_rows(items)
        context = context_features(lead(hour, "hour"), lead(position, "position"))
        return user_row, item_row, context

    def predict(self, user_ids: Any, item_ids: Any, hour: Any, position: Any) -> RankerPrediction:
        """Aspect probabilities, expected play (s) and score for every candidate.

        ``item_ids`` may be 1-D (one row per candidate) or 2-D (requests × candidates);
        ``user_ids``, ``hour`` and ``position`` (``position_in_session``) are scalars or
        have ``item_ids``' leading shape (e.g. ``(R,)``). Batched in chunks of about
        ``SCORE_CHUNK`` candidates, without gradients.
        """
        net = self.model
        weights = self._cache["score_weights"]
        shape = np.shape(item_ids)
        user_row, item_row, context = self._inputs(user_ids, item_ids, hour, position)
        n = item_row.shape[0]
        step = max(1, SCORE_CHUNK // max(1, item_row.size // max(n, 1)))
        parts: list[tuple[torch.Tensor, ...]] = []
        with torch.inference_mode():
            for start in range(0, n, step):
                sl = slice(start, start + step)
                out = net(
                    torch.from_numpy(np.ascontiguousarray(user_row[sl])),
                    torch.from_numpy(np.ascontiguousarray(item_row[sl])),
                    torch.from_numpy(np.ascontiguousarray(context[sl])),
                )
                p = torch.sigmoid(out.aspect_logits)
                e = net.expected_play_s(out.log_play)
                parts.append((p, e, e + p @ weights, out.log_play))
        if not parts:
            empty = np.zeros(shape, dtype=np.float32)
            probs = np.zeros((*shape, len(ASPECTS)), np.float32)
            return RankerPrediction(probs, empty, empty, empty)
        cols = [(torch.cat(c) if len(c) > 1 else c[0]).numpy() for c in zip(*parts, strict=True)]
        return RankerPrediction(
            aspect_probs=cols[0].reshape(*shape, len(ASPECTS)),
            expected_play_s=cols[1].reshape(shape),
            score=cols[2].reshape(shape),
            log_play=cols[3].reshape(shape),
        )

    def score(self, user_ids: Any, item_ids: Any, hour: Any, position: Any) -> np.ndarray:
        """Ranking scores (float32, seconds, the shape of ``item_ids``); higher is better."""
        return self.predict(user_ids, item_ids, hour, position).score

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write ``<path>/model.pt`` (tensors only) and ``<path>/ranker.json``."""
        meta = {
            "model": "models.ranker.MultiTaskRanker",
            "config": self.config.to_dict(),
            "metrics": self.metrics,
        }
        return save_model_files(
            path, (MODEL_FILE, META_FILE), self.state_dict, self.feature_space, meta
        )

    @classmethod
    def load(cls, path: str | Path) -> TrainedRanker:
        """Read what :meth:`save` wrote (``torch.load(..., weights_only=True)``)."""
        f = read_model_files(path, (MODEL_FILE, META_FILE), "ranker", "TrainedRanker.save")
        return cls(
            state_dict=f.state_dict,
            config=RankerConfig.from_dict(f.meta["config"]),
            feature_space=f.feature_space,
            metrics=f.meta.get("metrics", {}),
        )


# ----------------------------------------------------------------------- training


@contextlib.contextmanager
def _lightning_context(quiet: bool) -> Iterator[None]:
    """Around a ``Trainer``: with ``quiet``, silence Lightning's banner lines and hints (the
    single-process dataloader hint does not apply to in-memory tensor batches); always
    restore the loggers' levels and torch's deterministic-algorithms flag afterwards
    (``Trainer(deterministic=True)`` sets it process-wide)."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with warnings.catch_warnings():
        if quiet:
            for n in names:
                logging.getLogger(n).setLevel(logging.WARNING)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _mean_loss(net: MultiTaskRanker, arrays: TrainingArrays, config: RankerConfig) -> float:
    """The training objective over ``arrays`` in eval mode (no id dropout)."""
    was_training = net.training
    net.eval()
    weights = config.aspect_weight_tensor()
    total, n = 0.0, 0
    with torch.inference_mode():
        for user_row, item_row, context, labels, log_play in make_loader(
            arrays, SCORE_CHUNK, shuffle=False
        ):
            out = net(user_row, item_row, context)
            loss, _, _ = ranker_loss(out, labels, log_play, weights, config.play_weight)
            total += float(loss) * len(labels)
            n += len(labels)
    net.train(was_training)
    return total / max(n, 1)


def _smearing(net: MultiTaskRanker, arrays: TrainingArrays) -> float:
    """Duan's smearing factor ``mean exp(log1p(play) − μ)`` over ``arrays``."""
    net.eval()
    acc, n = 0.0, 0
    with torch.inference_mode():
        for user_row, item_row, context, _, log_play in make_loader(
            arrays, SCORE_CHUNK, shuffle=False
        ):
            mu = net(user_row, item_row, context).log_play
            acc += float(torch.exp((log_play - mu).double()).sum())
            n += len(log_play)
    return acc / n if n else 1.0


def load_tables(data: str | Path | Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables training needs, from a data set directory or a dict of tables."""
    if isinstance(data, Mapping):
        missing = [t for t in REQUIRED_TABLES if t not in data]
        if missing:
            raise DataError(f"training needs tables {list(REQUIRED_TABLES)}; missing {missing}")
        return {name: data[name] for name in REQUIRED_TABLES}
    return {name: read_table(data, name) for name in REQUIRED_TABLES}


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_ranker(
    data: str | Path | Mapping[str, pd.DataFrame],
    config: RankerConfig | None = None,
    seed: int = 0,
    max_epochs: int | None = None,
    *,
    holdout_days: int = 1,
    limit_train_batches: int | float | None = None,
    enable_progress_bar: bool = False,
    feature_space: FeatureSpace | None = None,
    num_threads: int | None = 1,
) -> TrainedRanker:
    """Train the multi-task ranker on the logged impressions of ``data``.

    ``data``: a data set directory or its tables (users, items, requests, impressions).
    The last ``holdout_days`` days are held out and used as the validation set (per-aspect
    AUC, play RMSE) — the same later slice the gate scores on. ``max_epochs`` overrides
    ``config.epochs``; ``limit_train_batches`` shrinks an epoch (tests). The feature space is
    fitted on ``users``/``items`` unless given. ``num_threads``: torch intra-op threads
    while training (restored afterwards; ``None`` keeps the process setting). The default 1
    is as fast as 2 for a model this small and does not collapse when other processes
    share the cores (see ``bench/bench_training.py``).

    Determinism: ``seed_everything(seed, workers=True)`` once here, ``deterministic=True``
    and a seeded shuffling generator, so the same inputs and seed give identical weights.
    """
    config = config or RankerConfig()
    epochs = config.epochs if max_epochs is None else int(max_epochs)
    if epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    t0 = time.perf_counter()
    tables = load_tables(data)
    split = split_by_day(tables["requests"], holdout_days)
    space = feature_space or FeatureSpace.fit(tables["users"], tables["items"])
    train = build_training_arrays(tables, space, split.train_request_ids)
    if len(train) == 0:
        raise DataError(
            f"no impression falls on the training days {split.train_days}; "
            "the ranker needs logged impressions to learn from"
        )
    holdout = build_training_arrays(tables, space, split.holdout_request_ids)

    with _torch_threads(num_threads):
        L.seed_everything(seed, workers=True, verbose=False)
        net = config.create(space)
        net.init_output_bias(
            torch.from_numpy(train.labels.mean(axis=0)), float(train.log_play.mean())
        )
        module = RankerModule(net, config)
        initial_loss = _mean_loss(net, train, config)
        train_loader = make_loader(train, config.batch_size, shuffle=True, seed=seed)
        val_loader = make_loader(holdout, SCORE_CHUNK, shuffle=False) if len(holdout) else None
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
                limit_train_batches=limit_train_batches,
                log_every_n_steps=50,
            )
            t_fit = time.perf_counter()
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
            fit_seconds = time.perf_counter() - t_fit

        net.play_smearing.fill_(_smearing(net, train))
        final_loss = _mean_loss(net, train, config)
        val = module.val_metrics
        metrics: dict[str, Any] = {
            "seed": seed,
            "epochs": epochs,
            "steps": int(trainer.global_step),
            "n_train": len(train),
            "n_holdout": len(holdout),
            "train_days": list(split.train_days),
            "holdout_days": list(split.holdout_days),
            "initial_train_loss": initial_loss,
            "final_train_loss": final_loss,
            "epoch_train_loss": list(module.epoch_losses),
            "play_smearing": float(net.play_smearing),
            "holdout_auc": {a: val.get(f"auc_{a}", float("nan")) for a in ASPECTS},
            "holdout_log_play_rmse": val.get("log_play_rmse", float("nan")),
            "fit_seconds": fit_seconds,
            "seconds": time.perf_counter() - t0,
        }
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return TrainedRanker(state_dict=state, config=config, feature_space=space, metrics=metrics)


def evaluate_ranker(ranker: TrainedRanker, arrays: TrainingArrays) -> dict[str, Any]:
    """Per-aspect AUC (rank-based :func:`binary_auc`) and play-time fit of ``ranker`` on
    ``arrays``: ``auc`` per aspect, ``log_play_rmse`` and ``play_spearman`` (rank
    correlation of expected and logged play time)."""
    pred = ranker.predict(arrays.user_id, arrays.item_id, arrays.hour, arrays.position_in_session)
    auc = {
        a: binary_auc(pred.aspect_probs[:, k], arrays.labels[:, k]) for k, a in enumerate(ASPECTS)
    }
    if len(arrays) == 0:
        return {"auc": auc, "log_play_rmse": float("nan"), "play_spearman": float("nan")}
    rmse = float(np.sqrt(np.mean((pred.log_play.astype(np.float64) - arrays.log_play) ** 2)))
    rho = float(spearmanr(pred.expected_play_s, arrays.play_time_ms).statistic)
    return {"auc": auc, "log_play_rmse": rmse, "play_spearman": rho}
