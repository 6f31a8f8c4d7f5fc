"""BentoML variants for ``bench_serving.py``'s ablations (not deployed).

- ``NaiveRankService``: the service as one first writes it: BentoML's default configuration
  (one worker, access log on, tracing middleware on every request) and a synchronous API,
  which BentoML runs in a thread per request. ``BENCH_GC_FREEZE=1`` adds ``gc.freeze()`` after
  loading, as ``service.py`` does.
- ``BatchedRankService``: adaptive batching (``@bentoml.api(batchable=True)``): the API
  takes a list of requests, BentoML merges concurrent ones into one call, scored in one
  forward pass (pools padded to the longest).

Same model, schema and request path as ``service.py``.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import bentoml
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import serving  # noqa: E402
from components.features import context_features  # noqa: E402
from service import TRACING_EXCLUDED, RankRequest, RankResponse  # noqa: E402


def _load() -> serving.ServingModel:
    torch.set_num_threads(1)
    model = serving.ServingModel.load(serving.resolve_model_tag())
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()
    return model


def _response(model: serving.ServingModel, r: serving.RankResult) -> RankResponse:
    return RankResponse.model_construct(
        slate=r.item_ids,
        scores=r.scores,
        propensities=r.propensities,
        policy=r.policy,
        temperature=r.temperature,
        pool_size=r.pool_size,
        model_tag=model.tag,
        model_source=model.source,
        quotas=None,
        live=None,
        compute_cost=None,
    )


@bentoml.service(name="relayrec_naive")
class NaiveRankService:
    def __init__(self) -> None:
        self.model = _load()

    @bentoml.api(input_spec=RankRequest)
    def rank(
        self,
        user_id: int,
        hour: int,
        position_in_session: int,
        item_ids: list[int],
        k: int = serving.DEFAULT_K,
        explore: bool = False,
        seed: int | None = None,
    ) -> RankResponse:
        r = self.model.rank(user_id, hour, position_in_session, item_ids, k, explore, seed)
        return _response(self.model, r)


@bentoml.service(
    name="relayrec_batched",
    workers="cpu_count",
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": TRACING_EXCLUDED},
)
class BatchedRankService:
    def __init__(self) -> None:
        self.model = _load()

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=20)
    async def rank(self, requests: list[RankRequest]) -> list[RankResponse]:
        m = self.model
        space = m.feature_space
        width = max(len(r.item_ids) for r in requests)
        items = np.empty((len(requests), width), dtype=np.int64)
        for j, r in enumerate(requests):
            m.check(r.user_id, r.item_ids, r.k)
            items[j, : len(r.item_ids)] = r.item_ids
            items[j, len(r.item_ids) :] = r.item_ids[0]  # padding, never chosen
        users = space.user_rows(np.array([r.user_id for r in requests]))[:, None]
        ctx = context_features(
            np.array([r.hour for r in requests]),
            np.array([r.position_in_session for r in requests]),
        )[:, None, :]
        with torch.inference_mode():
            out = m._net(
                torch.from_numpy(users),
                torch.from_numpy(space.item_rows(items)),
                torch.from_numpy(ctx),
            )
            scores = m._net.expected_play_s(out.log_play)
            if m._use_aspects:
                scores = scores + torch.sigmoid(out.aspect_logits) @ m._weights
            scores = scores.numpy()
        results = []
        for j, r in enumerate(requests):
            s = scores[j, : len(r.item_ids)]
            idx = serving.top_k(s, r.k)
            pool = np.asarray(r.item_ids)
            res = serving.RankResult(
                item_ids=pool[idx].tolist(),
                scores=s[idx].astype(float).tolist(),
                propensities=[1.0] * len(idx),
                policy="top_k",
                temperature=None,
                pool_size=len(pool),
            )
            results.append(_response(m, res))
        return results
