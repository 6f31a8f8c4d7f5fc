"""The request path of the ranking service, without BentoML: pick the model, check a request,
score the pool, choose the slate.

``service.py`` (the BentoML service) and ``bench/fastapi_app.py`` (the FastAPI baseline of
``bench/bench_serving.py``) call the same functions, so both serve the same computation.

- :func:`resolve_model_tag` — which model serves: ``$RELAYREC_MODEL_TAG``, else the registry's
  champion, else the model packaged in the Bento.
- :class:`ServingModel` — a loaded ranking model with its tag: the multi-task ranker or the
  MMRF ranking agents (``components.ranking``); :meth:`ServingModel.rank` checks a request
  against what the model knows (unknown user or item ids, duplicates, slate size, the
  session so far), scores the candidates and returns a :class:`RankResult`.
- :func:`top_k` and :func:`plackett_luce` — the deterministic and the exploring slate rules.

Every problem with a request is a :class:`RequestError` (a 4xx for the service), never an
arbitrary exception: the message names the field and what is wrong.

Scoring. :meth:`ServingModel.score` computes what the model's own ``score`` computes for one
request. For the multi-task ranker (expected play seconds plus the configured aspect terms)
the user row and the context are passed once, with shapes ``(1,)`` and ``(1, 3)``, and
broadcast over the ``(n,)`` candidates inside the network, instead of being repeated per
candidate. The ranking agents score with the WatchTime actor's action and also read the
session so far (``history``: ``features.HISTORY_COLUMNS``, an empty session when absent);
the ranker ignores it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import registry
from components.features import HISTORY_COLUMNS, FeatureSpace, context_features
from components.ranking import (
    RankingModel,
    load_ranking_model,
    method_name,
    model_kind,
    uses_history,
)
from components.training import TrainedRanker
from components.world.policies import plackett_luce as _pl_draw

logger = logging.getLogger(__name__)

MODEL_TAG_ENV = "RELAYREC_MODEL_TAG"
MAX_POOL = 1000
"""Most candidate items one request may carry (the recall pool)."""
DEFAULT_K = 6
"""Default slate size."""
MAX_POSITION = 100_000
"""Largest ``position_in_session`` accepted."""
MAX_ID = 2**63 - 1
"""Ids are int64 in every table."""
MAX_HISTORY_VALUE = 1e7
"""Largest value of a session-history field accepted (seconds of watch time, counts)."""


class RequestError(ValueError):
    """A request the model cannot serve; the service answers it with ``status`` (4xx)."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "status": self.status}


class ModelUnavailable(RuntimeError):
    """No model can be served (nothing configured, or the configured one cannot be loaded)."""


# ---------------------------------------------------------------------- model choice


@dataclass(frozen=True)
class ModelChoice:
    """The tag to serve and where the choice came from: ``env``, ``champion`` or ``packaged``.

    ``note`` explains a fallback (e.g. the champion is not in this model store)."""

    tag: str
    source: str
    note: str = ""


def resolve_model_tag(
    packaged_tag: str | None = None,
    registry_directory: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> ModelChoice:
    """Which model serves.

    1. ``$RELAYREC_MODEL_TAG`` when set: an explicit pin; it must exist in the model store.
    2. The registry's champion (``registry.champion``, replayed from the promotion log of
       ``registry_directory`` / ``$RELAYREC_REGISTRY`` / ``artifacts/registry``).
    3. ``packaged_tag``: the model built into the Bento (``components.packaging``), so a
       Bento serves with no registry present.

    A champion that is not in the model store (a Bento running where the registry points at
    models it does not carry) falls back to the packaged model with a ``note``, rather than
    refusing to start; with no packaged model it raises :class:`ModelUnavailable`.
    """
    env = os.environ if env is None else env
    pinned = (env.get(MODEL_TAG_ENV) or "").strip()
    if pinned:
        _require_stored(pinned, f"${MODEL_TAG_ENV}")
        return ModelChoice(pinned, "env")
    champion = registry.champion(registry_directory)
    if champion is not None:
        try:
            _require_stored(champion, "the registry's champion")
            return ModelChoice(champion, "champion")
        except ModelUnavailable as exc:
            if not packaged_tag:
                raise
            note = f"{exc}; serving the packaged model {packaged_tag} instead"
            logger.warning(note)
            return ModelChoice(packaged_tag, "packaged", note)
    if packaged_tag:
        return ModelChoice(packaged_tag, "packaged")
    where = registry.registry_dir(registry_directory)
    raise ModelUnavailable(
        f"no model to serve: ${MODEL_TAG_ENV} is not set, the registry at {where} has no "
        "champion (relayrec promote ...) and no model is packaged (serve a Bento built with "
        "components.packaging.build_bento)"
    )


def _require_stored(tag: str, what: str) -> None:
    try:
        registry.model_path(tag)
    except registry.RegistryError as exc:
        raise ModelUnavailable(f"{what} {tag!r} is not in the BentoML model store") from exc


# --------------------------------------------------------------------------- slates


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties: the earlier candidate first)."""
    return np.argsort(-scores, kind="stable")[:k]


def plackett_luce(
    scores: np.ndarray, k: int, temperature: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``k`` distinct indices by Plackett–Luce over ``scores / temperature`` and return
    them with their position-wise propensities ``exp(s_i/T) / Σ_{j not yet placed} exp(s_j/T)``.

    The world's logging rule (``components.world.policies.plackett_luce``, Gumbel-top-k) for
    one request, so logged propensities from the service are comparable with NCIS's."""
    s = np.asarray(scores, dtype=np.float64)[None, :]
    slate, propensity = _pl_draw(s, np.ones(s.shape, dtype=bool), k, temperature, rng)
    return slate[0], propensity[0]


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class RankResult:
    """A slate: item ids best first, their scores and position-wise propensities."""

    item_ids: list[int]
    scores: list[float]
    propensities: list[float]
    policy: str  # "top_k" or "plackett_luce"
    temperature: float | None
    pool_size: int


@dataclass(eq=False)
class ServingModel:
    """A loaded ranking model ready to serve: scoring, id checks and the slate rules."""

    model: RankingModel
    tag: str
    source: str = "given"
    note: str = ""
    _known_users: frozenset[int] = field(init=False, repr=False)
    _known_items: frozenset[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        space = self.model.feature_space
        self._known_users = frozenset(int(u) for u in space.user_ids)
        self._known_items = frozenset(int(i) for i in space.item_ids)
        self._net = self.model.model  # built once, eval mode
        if isinstance(self.model, TrainedRanker):
            self._weights = self.model.config.score_weight_tensor()
            self._use_aspects = bool(torch.any(self._weights != 0))

    @classmethod
    def load(cls, choice: ModelChoice | str) -> ServingModel:
        """Load a registered model (``registry.model_path(tag)``)."""
        if isinstance(choice, str):
            choice = ModelChoice(choice, "given")
        try:
            path = registry.model_path(choice.tag)
        except registry.RegistryError as exc:
            raise ModelUnavailable(str(exc)) from exc
        return cls(load_ranking_model(path), choice.tag, choice.source, choice.note)

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    @property
    def temperature(self) -> float:
        return self.model.temperature

    @property
    def feature_space(self) -> FeatureSpace:
        return self.model.feature_space

    @property
    def kind(self) -> str:
        """``multitask_ranker`` or ``ranking_agents``."""
        return model_kind(self.model)

    @property
    def method(self) -> str:
        """``bc``, ``wide_deep``, ``deepfm``, ``mmrf``, ``mmrf_co``, … (``ranking.method_name``)."""
        return method_name(self.model)

    @property
    def uses_history(self) -> bool:
        """Whether the session so far changes this model's scores."""
        return uses_history(self.model)

    # ----------------------------------------------------------------- checks

    def check(self, user_id: int, item_ids: Sequence[int], k: int) -> None:
        """Raise :class:`RequestError` for what the schema cannot know (unknown ids) and
        for what a direct caller may get wrong: an empty or oversized pool, duplicate
        candidates, ``k`` outside ``1..pool``. Checked in that order."""
        n = len(item_ids)
        if n == 0:
            raise RequestError(
                "item_ids is empty: send the candidate pool (1 or more ids)", "item_ids"
            )
        if n > MAX_POOL:
            raise RequestError(
                f"item_ids has {n} candidates; at most {MAX_POOL} per request", "item_ids"
            )
        if len(set(item_ids)) != n:
            dup = sorted(i for i, c in Counter(item_ids).items() if c > 1)
            raise RequestError(
                f"item_ids has duplicates: {', '.join(str(i) for i in dup[:10])}; each "
                "candidate once",
                "item_ids",
            )
        if not 1 <= k <= n:
            raise RequestError(
                f"k={k} is not a slate size for a pool of {n} candidates: use 1 <= k <= {n}", "k"
            )
        if user_id not in self._known_users:
            raise RequestError(
                f"unknown user_id {user_id}: model {self.tag} was trained without this user",
                "user_id",
            )
        unknown = [i for i in item_ids if i not in self._known_items]
        if unknown:
            shown = ", ".join(str(i) for i in unknown[:10])
            more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
            raise RequestError(
                f"{len(unknown)} unknown item id(s) in item_ids: {shown}{more}; model "
                f"{self.tag} does not know them",
                "item_ids",
            )

    @staticmethod
    def check_history(history: Sequence[float] | None) -> np.ndarray | None:
        """The session so far as a ``(6,)`` array in ``features.HISTORY_COLUMNS`` order, or
        :class:`RequestError` naming the bad field (not 6 values, negative, not finite, or
        above ``MAX_HISTORY_VALUE``)."""
        if history is None:
            return None
        h = np.asarray(history, dtype=np.float64).reshape(-1)
        if h.shape != (len(HISTORY_COLUMNS),):
            raise RequestError(
                f"history has {h.size} values; send {len(HISTORY_COLUMNS)}: "
                + ", ".join(HISTORY_COLUMNS),
                "history",
            )
        bad = [
            f"{name}={v}"
            for name, v in zip(HISTORY_COLUMNS, h, strict=True)
            if not (np.isfinite(v) and 0.0 <= v <= MAX_HISTORY_VALUE)
        ]
        if bad:
            raise RequestError(
                f"history values must be finite and in 0..{MAX_HISTORY_VALUE:g}: " + ", ".join(bad),
                "history",
            )
        return h

    # ---------------------------------------------------------------- scoring

    def score(
        self,
        user_id: int,
        item_ids: Sequence[int] | np.ndarray,
        hour: int,
        position: int,
        history: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores (float32) of ``item_ids`` for one request; what the model's
        ``score(user_id, item_ids, hour, position[, history])`` returns. ``history``: the
        session so far (``features.HISTORY_COLUMNS``), read by the ranking agents only."""
        if not isinstance(self.model, TrainedRanker):
            h = None if history is None else np.asarray(history, dtype=np.float64)[None, :]
            items = np.asarray(item_ids, dtype=np.int64)
            return self.model.score(user_id, items, hour, position, h).astype(np.float32)
        space = self.model.feature_space
        items = np.asarray(item_ids, dtype=np.int64)
        user_row = torch.from_numpy(space.user_rows(np.array([user_id], dtype=np.int64)))
        item_row = torch.from_numpy(space.item_rows(items))
        context = torch.from_numpy(context_features(np.array([hour]), np.array([position])))
        net = self._net
        with torch.inference_mode():
            out = net(user_row, item_row, context)
            scores = net.expected_play_s(out.log_play)
            if self._use_aspects:
                scores = scores + torch.sigmoid(out.aspect_logits) @ self._weights
        return scores.numpy()

    def rank(
        self,
        user_id: int,
        hour: int,
        position_in_session: int,
        item_ids: Sequence[int],
        k: int = DEFAULT_K,
        explore: bool = False,
        seed: int | None = None,
        history: Sequence[float] | None = None,
    ) -> RankResult:
        """Check the request, score the pool and choose a slate of ``k`` distinct items.

        ``explore=False``: deterministic top-k (propensities 1). ``explore=True``:
        Plackett–Luce at the model's temperature, drawn with ``seed`` (fresh entropy when
        None), with position-wise propensities for logging. ``history``: the session so
        far (6 values, ``features.HISTORY_COLUMNS``); None is an empty session."""
        if not 0 <= hour <= 23:
            raise RequestError(f"hour={hour} must be in 0..23", "hour")
        if not 0 <= position_in_session <= MAX_POSITION:
            raise RequestError(
                f"position_in_session={position_in_session} must be in 0..{MAX_POSITION}",
                "position_in_session",
            )
        h = self.check_history(history)
        self.check(user_id, item_ids, k)
        scores = self.score(user_id, item_ids, hour, position_in_session, h)
        if explore:
            idx, prop = plackett_luce(scores, k, self.temperature, np.random.default_rng(seed))
            propensities = prop.tolist()
            policy, temperature = "plackett_luce", self.temperature
        else:
            idx = top_k(scores, k)
            propensities = [1.0] * len(idx)
            policy, temperature = "top_k", None
        pool = np.asarray(item_ids, dtype=np.int64)
        return RankResult(
            item_ids=pool[idx].tolist(),
            scores=scores[idx].astype(np.float64).tolist(),
            propensities=propensities,
            policy=policy,
            temperature=temperature,
            pool_size=len(pool),
        )
