"""relayrec's ranking service (BentoML): one request of DESIGN.md §1 in, a slate out.

A thin layer over :mod:`components.serving`: pydantic schemas with limits, a call into the
pure request path, errors as clear 4xx answers, probes and metrics. Run it with::

    bentoml serve service:RankService                 # from the repository (dev)
    bentoml serve relayrec_ranker:latest              # a Bento built by components.packaging

Which model serves (resolved once, in ``__init__``): ``$RELAYREC_MODEL_TAG`` if set, else the
registry's champion (``$RELAYREC_REGISTRY``, an absolute path when serving a Bento: a Bento
runs in its own directory), else the model packaged in the Bento (the build argument
``model_tag``, declared below as a ``BentoModel`` so ``bentoml build`` copies it in). A
rollback is ``relayrec rollback --why ...`` and a restart of the server (each worker
resolves the model once, at start).

Endpoints (BentoML routes every API as POST):

- ``POST /rank`` — :class:`RankRequest` → :class:`RankResponse`. The served model is the
  multi-task ranker or the MMRF ranking agents (``components.ranking``); the agents also read
  the optional ``session`` (:class:`SessionSoFar`, the session so far), which the ranker
  ignores. Schema errors (wrong types,
  missing fields, unknown fields, an empty or oversized pool, out-of-range values) are 400s
  from BentoML's validation; what only the model can judge (unknown user or item ids,
  duplicates, ``k`` above the pool size) is a 422 ``{"error", "field", "status"}``.
- ``POST /model_info`` — the served model: tag, where it came from, kind and method, labels,
  temperature, whether it reads the session.
- ``GET /healthz``, ``/livez`` (alive), ``GET /readyz`` (200 once the model is loaded, via
  ``__is_ready__``), ``GET /metrics`` (Prometheus: BentoML's request counters and latency
  histograms plus ``relayrec_rank_requests_total`` and ``relayrec_rank_model_seconds``).

Speed (measured by ``bench/bench_serving.py``, which has the figures):

- the API is ``async``: the ~0.5 ms model call runs on the event loop; a sync API (a thread
  hop per request, BentoML's ``threads`` 1, 2 or 4) was 10-25% slower;
- BentoML's tracing middleware is kept off the hot paths (``TRACING_EXCLUDED``): with the
  default sample rate 0 it still builds five non-recording spans per request, ~0.3 ms;
- ``gc.freeze()`` after loading: the ~570k objects of the imports (torch, lightning,
  BentoML) leave the collector's generations; without it BentoML's per-request allocations
  trigger full collections of that heap (~260 ms each, measured with ``gc.callbacks``),
  which showed as a ~250 ms 99th-percentile latency;
- the access log is off (a log line per request, ~100 MB/min at full load; enable it with
  ``BENTOML_CONFIG_OPTIONS="services.relayrec_ranker.logging.access.enabled=true"``);
- one worker process per core (``workers="cpu_count"``), one torch thread each. Workers
  share one listening socket: a keep-alive connection stays with the worker that accepted
  it, so a few long-lived client connections may all land on one worker (a load balancer
  with many connections, or new connections, spread them). Adaptive batching
  (``batchable=True``) was slower here: it needs a list API and its dispatcher costs more
  than the one forward pass it saves.

Every setting can be overridden with ``BENTOML_CONFIG_OPTIONS`` (e.g.
``services.relayrec_ranker.workers=1``) without editing this file.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Annotated, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from components import serving
from components.features import HISTORY_COLUMNS

logger = logging.getLogger("relayrec.service")

PACKAGED_MODEL_TAG: str | None = getattr(bentoml.use_arguments(), "model_tag", None) or None
"""The model built into the Bento (``bentoml build --arg model_tag=...``); None in dev."""

TORCH_THREADS_ENV = "RELAYREC_TORCH_THREADS"
TRACING_EXCLUDED = ["/rank$", "/model_info$", "/metrics$", "/healthz$", "/livez$", "/readyz$"]

# ------------------------------------------------------------------------- schemas

Id = Annotated[int, Field(ge=0, le=serving.MAX_ID)]
Amount = Annotated[float, Field(ge=0, le=serving.MAX_HISTORY_VALUE, allow_inf_nan=False)]


class SessionSoFar(BaseModel):
    """What the user did earlier in this session (``features.HISTORY_COLUMNS``), as the
    client's session log counts it. Read by the ranking agents (their state); the multi-task
    ranker ignores it. Absent: an empty session (every field 0)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    watch_s: Amount = Field(0.0, description="seconds watched in the earlier requests")
    last_watch_fraction: Amount = Field(
        0.0, description="mean play time / duration of the previous request's slate"
    )
    interactions: Amount = Field(0.0, description="likes + comments + follows + forwards")
    hates: Amount = Field(0.0, description="hate (dislike) clicks")
    live_entered: Amount = Field(0.0, description="injected live streams entered")
    live_skipped: Amount = Field(0.0, description="injected live streams skipped")

    def values(self) -> list[float]:
        """The fields in ``HISTORY_COLUMNS`` order."""
        return [float(getattr(self, name)) for name in HISTORY_COLUMNS]


class RankRequest(BaseModel):
    """One ranking request (DESIGN.md §1): a user in a context and the recall pool.

    Strict types: a string where a number is expected is refused, not converted; unknown
    fields are refused (a typo is an error, not a silently ignored option)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: Id = Field(description="the user's id (as in the users table)")
    hour: Annotated[int, Field(ge=0, le=23)] = Field(description="hour of day, 0..23")
    position_in_session: Annotated[int, Field(ge=0, le=serving.MAX_POSITION)] = Field(
        description="requests already served in this session (0 for the first)"
    )
    item_ids: Annotated[list[Id], Field(min_length=1, max_length=serving.MAX_POOL)] = Field(
        description=f"the candidate pool: 1..{serving.MAX_POOL} distinct item ids"
    )
    k: Annotated[int, Field(ge=1, le=serving.MAX_POOL)] = Field(
        serving.DEFAULT_K, description="slate size, at most the pool size"
    )
    explore: bool = Field(
        False,
        description="false: deterministic top-k; true: Plackett-Luce sample at the model's "
        "temperature, with position-wise propensities for logging",
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = Field(
        None, description="seed of the exploration draw (reproducible slates); null: random"
    )
    session: SessionSoFar | None = Field(
        None, description="the session so far (read by the ranking agents); null: empty"
    )


class Quotas(BaseModel):
    """Stage quotas of the compute allocator (MaRCA): q_match >= q_pre >= k."""

    q_match: int
    q_pre: int
    k: int


class LiveDecision(BaseModel):
    """The live-slot agent's decision (SL-MGAC)."""

    inject: bool
    item_id: int | None = None
    position: int | None = None
    propensity: float | None = None


class RankResponse(BaseModel):
    """The slate and how it was made (DESIGN.md §1's response, the parts that exist today)."""

    slate: list[int] = Field(description="k distinct item ids from the pool, best first")
    scores: list[float] = Field(description="the model's score of each slate item (seconds)")
    propensities: list[float] = Field(
        description="position-wise probability of each slate item under the policy (1.0 for "
        "top-k); what an impression log records for off-policy evaluation"
    )
    policy: Literal["top_k", "plackett_luce"]
    temperature: float | None = Field(description="Plackett-Luce temperature; null for top-k")
    pool_size: int
    model_tag: str
    model_source: str = Field(description="env, champion or packaged")
    quotas: Quotas | None = Field(
        None, description="stage quotas (compute allocator, MaRCA): null until that agent serves"
    )
    live: LiveDecision | None = Field(
        None, description="live-slot decision (SL-MGAC): null until that agent serves"
    )
    compute_cost: float | None = Field(
        None, description="estimated compute cost of the request: null until MaRCA serves"
    )


class ModelInfo(BaseModel):
    tag: str
    version: str
    source: str
    note: str
    kind: str = Field(description="multitask_ranker or ranking_agents")
    method: str = Field(
        description="bc, wide_deep, deepfm, mmrf, mmrf_co, mmrf_nc, mmrf_da, mmrf_ns, tscac"
    )
    uses_session: bool = Field(description="whether the request's session changes the scores")
    labels: dict[str, str]
    temperature: float
    n_users: int
    n_items: int
    max_pool: int


# ------------------------------------------------------------------------- metrics

RANK_REQUESTS = bentoml.metrics.Counter(
    name="relayrec_rank_requests_total",
    documentation="rank requests that reached the model, by outcome (ok or the rejected field)",
    labelnames=["outcome", "policy"],
)
MODEL_SECONDS = bentoml.metrics.Histogram(
    name="relayrec_rank_model_seconds",
    documentation="time in the model (check, score, slate) per rank request",
    labelnames=["policy"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, float("inf")),
)


# ------------------------------------------------------------------------- service


@bentoml.service(
    name="relayrec_ranker",
    workers="cpu_count",
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
    # BentoML's tracing samples nothing by default (sample_rate 0) but its middleware still
    # builds five non-recording spans per request (~0.3 ms here): keep the hot paths out.
    tracing={"excluded_urls": TRACING_EXCLUDED},
)
class RankService:
    # Declared so that `bentoml build --arg model_tag=...` packages the model into the Bento.
    packaged_model = bentoml.models.BentoModel(PACKAGED_MODEL_TAG) if PACKAGED_MODEL_TAG else None

    def __init__(self) -> None:
        import torch

        self._ready = False
        torch.set_num_threads(int(os.environ.get(TORCH_THREADS_ENV, "1")))
        t0 = time.perf_counter()
        choice = serving.resolve_model_tag(PACKAGED_MODEL_TAG)
        self.served = serving.ServingModel.load(choice)
        labels = _labels(choice.tag)
        self._info = ModelInfo(
            tag=self.served.tag,
            version=self.served.version,
            source=self.served.source,
            note=self.served.note,
            kind=self.served.kind,
            method=self.served.method,
            uses_session=self.served.uses_history,
            labels=labels,
            temperature=self.served.temperature,
            n_users=len(self.served.feature_space.user_ids),
            n_items=len(self.served.feature_space.item_ids),
            max_pool=serving.MAX_POOL,
        )
        self._warm_up()
        gc.collect()
        gc.freeze()  # the imports' objects out of the collector's way: no long GC pauses
        self._ready = True
        logger.info(
            "serving %s (%s) after %.1fs%s",
            self.served.tag,
            self.served.source,
            time.perf_counter() - t0,
            f"; {self.served.note}" if self.served.note else "",
        )

    def _warm_up(self) -> None:
        space = self.served.feature_space
        items = space.item_ids[: min(len(space.item_ids), 200)].tolist()
        self.served.rank(int(space.user_ids[0]), 12, 0, items, k=min(len(items), 6))

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.api(input_spec=RankRequest)
    async def rank(
        self,
        user_id: int,
        hour: int,
        position_in_session: int,
        item_ids: list[int],
        k: int = serving.DEFAULT_K,
        explore: bool = False,
        seed: int | None = None,
        session: SessionSoFar | None = None,
    ) -> RankResponse:
        """Rank the candidate pool for one request and return a slate of ``k`` items."""
        policy = "plackett_luce" if explore else "top_k"
        t0 = time.perf_counter()
        try:
            result = self.served.rank(
                user_id,
                hour,
                position_in_session,
                item_ids,
                k,
                explore=explore,
                seed=seed,
                history=None if session is None else _session_values(session),
            )
        except serving.RequestError as exc:
            RANK_REQUESTS.labels(outcome=f"rejected_{exc.field or 'request'}", policy=policy).inc()
            return JSONResponse(exc.to_dict(), status_code=exc.status)  # type: ignore[return-value]
        MODEL_SECONDS.labels(policy=policy).observe(time.perf_counter() - t0)
        RANK_REQUESTS.labels(outcome="ok", policy=policy).inc()
        return RankResponse.model_construct(
            slate=result.item_ids,
            scores=result.scores,
            propensities=result.propensities,
            policy=result.policy,
            temperature=result.temperature,
            pool_size=result.pool_size,
            model_tag=self.served.tag,
            model_source=self.served.source,
            quotas=None,
            live=None,
            compute_cost=None,
        )

    @bentoml.api
    async def model_info(self) -> ModelInfo:
        """The model this worker serves."""
        return self._info


def _session_values(session: SessionSoFar | dict) -> list[float]:
    """The session's values in ``HISTORY_COLUMNS`` order (a model, or its fields as a dict)."""
    if isinstance(session, dict):
        session = SessionSoFar.model_validate(session)
    return session.values()


def _labels(tag: str) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in bentoml.models.get(tag).info.labels.items()}
    except Exception:  # labels are informative only
        return {}
