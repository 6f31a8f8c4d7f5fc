"""The minimal FastAPI endpoint that ``bench_serving.py`` compares BentoML with.

The same model, request schema and request path as ``service.py`` (``RankRequest``,
``components.serving.ServingModel.rank``, ``RankResponse``), served by uvicorn with one
worker. Run from the repository root::

    RELAYREC_MODEL_TAG=<tag> uvicorn fastapi_app:app --app-dir bench --workers 1 --no-access-log
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import serving  # noqa: E402
from service import RankRequest, RankResponse  # noqa: E402

torch.set_num_threads(1)
model = serving.ServingModel.load(os.environ[serving.MODEL_TAG_ENV])
app = FastAPI()


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/rank", response_model=None)
async def rank(req: RankRequest) -> RankResponse | JSONResponse:
    try:
        r = model.rank(
            req.user_id,
            req.hour,
            req.position_in_session,
            req.item_ids,
            req.k,
            req.explore,
            req.seed,
        )
    except serving.RequestError as exc:
        return JSONResponse(exc.to_dict(), status_code=exc.status)
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
