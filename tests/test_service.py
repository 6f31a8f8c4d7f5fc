"""The ranking service: the pure request path, the schemas, the service class in-process, and a
real Bento built, served over HTTP and rolled back.

Two models are trained on world ``tiny`` data (one epoch each) and promoted, first then
second: the multi-task ranker, then MMRF ranking agents (which also read the session so
far). The in-process tests take a few seconds; the HTTP tests build one Bento (the agents
packaged) and start ``bentoml serve`` three times (~60 s together on 2 cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from components import packaging, registry, serving

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # service.py is a top-level module, not an installed package
    sys.path.insert(0, str(ROOT))

SERVER_START_TIMEOUT_S = 90


@dataclass(frozen=True)
class Store:
    home: Path  # the BentoML home this process really uses (see the fixture)
    registry: Path
    first: str
    second: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    from components.agents import train_agents
    from components.io import write_dataset
    from components.training import train_ranker
    from components.world import generate_dataset
    from models.mmrf import AgentsConfig

    tmp = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELAYREC_REGISTRY", str(tmp / "registry"))
        mp.delenv(serving.MODEL_TAG_ENV, raising=False)
        tables, meta = generate_dataset("tiny", seed=0)
        write_dataset(tables, meta, tmp / "data")
        train_ranker(tmp / "data", seed=0, max_epochs=1).save(tmp / "model0")
        config = AgentsConfig(rounds=1, epochs=1, non_impressions="negative")
        train_agents(tmp / "data", config, seed=1, name="mmrf_ns").save(tmp / "model1")
        tags = [registry.register_model(tmp / f"model{s}", {"seed": str(s)}) for s in (0, 1)]
        registry.promote(tags[0], "first", tmp / "registry")
        registry.promote(tags[1], "second", tmp / "registry")
        # BentoML fixes its home on first use in a process: when another test module used
        # the store first, the models went there. Servers and builds must use that home.
        home = registry.model_path(tags[0]).parents[2]
        yield Store(home, tmp / "registry", tags[0], tags[1])


SESSION = {
    "watch_s": 240.0,
    "last_watch_fraction": 0.6,
    "interactions": 2.0,
    "hates": 1.0,
    "live_entered": 0.0,
    "live_skipped": 1.0,
}
HISTORY = list(SESSION.values())  # features.HISTORY_COLUMNS order


@pytest.fixture(scope="module", params=["ranker", "agents"])
def model(store: Store, request: pytest.FixtureRequest) -> serving.ServingModel:
    """Each in-process test runs on both model families."""
    return serving.ServingModel.load(store.first if request.param == "ranker" else store.second)


def _known(model: serving.ServingModel, n_items: int = 30) -> tuple[int, list[int]]:
    space = model.feature_space
    return int(space.user_ids[3]), [int(i) for i in space.item_ids[:n_items]]


# ------------------------------------------------------------------- pure functions


def test_history_columns_are_the_session_fields() -> None:
    from components.features import HISTORY_COLUMNS
    from service import SessionSoFar

    assert tuple(SESSION) == HISTORY_COLUMNS == tuple(SessionSoFar.model_fields)
    assert SessionSoFar(**SESSION).values() == HISTORY


def test_score_matches_the_trained_model(model: serving.ServingModel) -> None:
    user, items = _known(model, 200)
    for history in (None, HISTORY):
        h = None if history is None else np.array([history])
        want = model.model.score(user, np.array(items), 20, 4, *([h] if model.uses_history else []))
        got = model.score(user, items, 20, 4, history)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_only_the_agents_read_the_session(store: Store) -> None:
    ranker, agents = (serving.ServingModel.load(t) for t in (store.first, store.second))
    assert (ranker.kind, ranker.method, ranker.uses_history) == ("multitask_ranker", "bc", False)
    assert (agents.kind, agents.method, agents.uses_history) == ("ranking_agents", "mmrf_ns", True)
    user, items = _known(agents, 50)
    empty = [0.0] * len(HISTORY)
    np.testing.assert_array_equal(
        ranker.score(user, items, 9, 3, HISTORY), ranker.score(user, items, 9, 3, empty)
    )
    a, b = agents.score(user, items, 9, 3, HISTORY), agents.score(user, items, 9, 3, empty)
    assert np.abs(a - b).max() > 1e-6
    # None is the empty session
    np.testing.assert_array_equal(agents.score(user, items, 9, 3, None), b)


def test_top_k_slate_is_the_best_k_in_order(model: serving.ServingModel) -> None:
    user, items = _known(model, 50)
    result = model.rank(user, 9, 0, items, k=6)
    scores = model.score(user, items, 9, 0)
    assert result.policy == "top_k" and result.pool_size == 50
    assert len(result.item_ids) == 6 == len(set(result.item_ids))
    assert set(result.item_ids) <= set(items)
    assert result.scores == sorted(result.scores, reverse=True)
    assert min(result.scores) >= np.sort(scores)[-6] - 1e-6
    assert result.propensities == [1.0] * 6


def test_plackett_luce_is_seeded_distinct_and_has_propensities(
    model: serving.ServingModel,
) -> None:
    user, items = _known(model, 40)
    a = model.rank(user, 9, 0, items, k=8, explore=True, seed=7)
    b = model.rank(user, 9, 0, items, k=8, explore=True, seed=7)
    assert a == b and a.policy == "plackett_luce" and a.temperature == model.temperature
    assert len(set(a.item_ids)) == 8 and set(a.item_ids) <= set(items)
    # the first position's propensity is the softmax probability of the chosen item
    logits = model.score(user, items, 9, 0).astype(np.float64) / model.temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert a.propensities[0] == pytest.approx(p[items.index(a.item_ids[0])], rel=1e-6)
    assert all(0 < q <= 1 for q in a.propensities)
    draws = {tuple(model.rank(user, 9, 0, items, k=8, explore=True).item_ids) for _ in range(5)}
    assert len(draws) > 1  # unseeded draws differ


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"user_id": 10**9}, "user_id", "unknown user_id 1000000000"),
        ({"item_ids": [10**9, 10**9 + 1], "k": 2}, "item_ids", "2 unknown item id(s)"),
        ({"item_ids": []}, "item_ids", "empty"),
        ({"item_ids": list(range(serving.MAX_POOL + 1))}, "item_ids", "at most 1000"),
        ({"k": 31}, "k", "k=31 is not a slate size for a pool of 30"),
        ({"k": 0}, "k", "k=0"),
        ({"hour": 24}, "hour", "0..23"),
        ({"position_in_session": -1}, "position_in_session", "position_in_session=-1"),
        ({"history": [1.0, 2.0]}, "history", "history has 2 values; send 6"),
        ({"history": [1.0, -0.5, 0, 0, 0, 0]}, "history", "last_watch_fraction=-0.5"),
        ({"history": [float("nan"), 0, 0, 0, 0, 0]}, "history", "watch_s=nan"),
    ],
)
def test_bad_requests_raise_request_errors(
    model: serving.ServingModel, change: dict, field: str, message: str
) -> None:
    user, items = _known(model)
    request = {"user_id": user, "hour": 3, "position_in_session": 1, "item_ids": items, "k": 6}
    with pytest.raises(serving.RequestError) as err:
        model.rank(**(request | change))
    assert err.value.field == field and 400 <= err.value.status < 500
    assert message in err.value.message


def test_duplicate_candidates_are_named(model: serving.ServingModel) -> None:
    user, items = _known(model)
    with pytest.raises(serving.RequestError, match=rf"duplicates: {items[2]}, {items[5]}"):
        model.rank(user, 3, 1, items + [items[5], items[2]], k=6)


def test_model_choice_env_then_champion_then_packaged(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {serving.MODEL_TAG_ENV: store.first}
    assert serving.resolve_model_tag(None, store.registry, env) == serving.ModelChoice(
        store.first, "env"
    )
    assert serving.resolve_model_tag(store.first, store.registry, {}).source == "champion"
    assert serving.resolve_model_tag(None, store.registry, {}).tag == store.second
    empty = tmp_path / "no-registry"
    assert serving.resolve_model_tag(store.first, empty, {}) == serving.ModelChoice(
        store.first, "packaged"
    )
    with pytest.raises(serving.ModelUnavailable, match="no model to serve"):
        serving.resolve_model_tag(None, empty, {})
    with pytest.raises(serving.ModelUnavailable, match="RELAYREC_MODEL_TAG"):
        serving.resolve_model_tag(None, empty, {serving.MODEL_TAG_ENV: "relayrec-ranker:nope"})
    # a champion this store does not hold falls back to the packaged model, with a note
    log = tmp_path / "other" / "promotions.jsonl"
    log.parent.mkdir()
    entry = {"action": "promote", "from_tag": None, "to_tag": "x:y", "when": "t", "why": "w"}
    log.write_text(json.dumps(entry) + "\n")
    choice = serving.resolve_model_tag(store.first, log.parent, {})
    assert choice.tag == store.first and choice.source == "packaged" and "x:y" in choice.note
    with pytest.raises(serving.ModelUnavailable, match="x:y"):
        serving.resolve_model_tag(None, log.parent, {})


# ------------------------------------------------------------------------ schemas


def test_request_schema_limits_and_strict_types() -> None:
    from service import RankRequest

    good = {"user_id": 1, "hour": 3, "position_in_session": 0, "item_ids": [4, 5]}
    request = RankRequest.model_validate_json(json.dumps(good))
    assert (request.k, request.explore, request.seed, request.session) == (6, False, None, None)
    partial = RankRequest.model_validate_json(json.dumps(good | {"session": {"hates": 2}}))
    assert partial.session is not None
    assert partial.session.values() == [0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
    bad = [
        {"user_id": "1"},  # string where an int is expected: refused, not converted
        {"item_ids": [4, "5"]},
        {"item_ids": []},
        {"item_ids": list(range(1001))},
        {"hour": 24},
        {"k": 0},
        {"explore": 1},
        {"item_ids": [-1]},
        {"user_id": 2**64},
        {"slate_size": 3},  # unknown field
        {"session": {"watch_s": -1.0}},
        {"session": {"watch_s": "10"}},
        {"session": {"watchtime": 10.0}},
    ]
    for change in bad:
        with pytest.raises(ValidationError):
            RankRequest.model_validate_json(json.dumps(good | change))
    with pytest.raises(ValidationError):
        RankRequest.model_validate_json("{not json")


# --------------------------------------------------------------- service in-process


def test_service_class_in_process(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from service import RankResponse, RankService, SessionSoFar

    monkeypatch.setenv(serving.MODEL_TAG_ENV, store.second)
    svc = RankService()
    assert svc.__is_ready__()
    info = asyncio.run(svc.model_info())
    assert (info.tag, info.source, info.labels["seed"]) == (store.second, "env", "1")
    assert (info.kind, info.method, info.uses_session) == ("ranking_agents", "mmrf_ns", True)
    user, items = _known(svc.served)
    out = asyncio.run(svc.rank(user, 12, 2, items, 5))
    assert isinstance(out, RankResponse)
    assert len(out.slate) == 5 and out.model_tag == store.second and out.quotas is None
    assert json.loads(out.model_dump_json())["live"] is None
    session = SessionSoFar(**SESSION)
    with_session = asyncio.run(svc.rank(user, 12, 2, items, 5, session=session))
    want = svc.served.rank(user, 12, 2, items, 5, history=HISTORY)
    assert with_session.scores == want.scores and with_session.scores != out.scores
    bad = asyncio.run(svc.rank(10**9, 12, 2, items, 5))
    assert bad.status_code == 422
    body = json.loads(bad.body)
    assert body["field"] == "user_id" and "unknown user_id" in body["error"]


def test_build_refuses_an_unknown_model(store: Store) -> None:
    with pytest.raises(registry.RegistryError, match="not in the BentoML model store"):
        packaging.build_bento("relayrec-ranker:doesnotexist")


# ----------------------------------------------------------------- real HTTP serving


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(target: str, store: Store, registry_dir: Path, log: Path) -> Iterator[str]:
    env = dict(os.environ)
    env.pop(serving.MODEL_TAG_ENV, None)
    env |= {
        "BENTOML_HOME": str(store.home),
        "RELAYREC_REGISTRY": str(registry_dir),
        # one worker: starts faster; the API is the same
        "BENTOML_CONFIG_OPTIONS": "services.relayrec_ranker.workers=1",
        "DO_NOT_TRACK": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    with packaging.start_server(target, _free_port(), env=env, log_path=log) as server:
        try:
            server.wait_ready(SERVER_START_TIMEOUT_S)
        except packaging.PackagingError as exc:
            raise AssertionError(str(exc)) from exc
        yield server.url


@pytest.fixture(scope="module")
def bento(store: Store) -> str:
    """The Bento with the second model packaged (the current champion)."""
    env = dict(os.environ) | {"BENTOML_HOME": str(store.home)}
    tag = packaging.build_bento(store.second, env=env)
    import bentoml

    assert store.second in {str(m.tag) for m in bentoml.bentos.get(tag).info.all_models}
    return tag


def test_http_rank_errors_probes_and_metrics(store: Store, bento: str, tmp_path: Path) -> None:
    import bentoml
    import httpx

    model = serving.ServingModel.load(store.second)
    user, items = _known(model, 40)
    with _serving(bento, store, store.registry, tmp_path / "serve.log") as url:
        with bentoml.SyncHTTPClient(url, server_ready_timeout=SERVER_START_TIMEOUT_S) as client:
            out = client.rank(user_id=user, hour=21, position_in_session=2, item_ids=items, k=6)
        assert out["model_tag"] == store.second and out["model_source"] == "champion"
        assert len(out["slate"]) == 6 == len(set(out["slate"])) and set(out["slate"]) <= set(items)
        assert out["scores"] == sorted(out["scores"], reverse=True)
        assert out["slate"] == model.rank(user, 21, 2, items, 6).item_ids
        assert out["quotas"] is None and out["live"] is None and out["compute_cost"] is None
        body = {"user_id": user, "hour": 21, "position_in_session": 2, "item_ids": items}
        session_out = httpx.post(f"{url}/rank", json=body | {"session": SESSION}, timeout=30)
        want = model.rank(user, 21, 2, items, 6, history=HISTORY)
        assert session_out.status_code == 200, session_out.text
        assert session_out.json()["slate"] == want.item_ids
        np.testing.assert_allclose(session_out.json()["scores"], want.scores, rtol=1e-6)

        good = {"user_id": user, "hour": 21, "position_in_session": 2, "item_ids": items}
        bad = {
            "unknown user": (good | {"user_id": 10**9}, 422, "unknown user_id"),
            "unknown item": (good | {"item_ids": [*items[:5], 10**9]}, 422, "unknown item"),
            "duplicates": (good | {"item_ids": items[:5] + items[:1]}, 422, "duplicates"),
            "empty pool": (good | {"item_ids": []}, 400, "validation error"),
            "k > pool": (good | {"item_ids": items[:4], "k": 5}, 422, "k=5"),
            "string for int": (good | {"hour": "21"}, 400, "validation error"),
            "oversized pool": (good | {"item_ids": list(range(1001))}, 400, "validation error"),
            "missing field": ({"user_id": user}, 400, "validation error"),
            "negative session": (good | {"session": {"hates": -1}}, 400, "validation error"),
        }
        with httpx.Client(base_url=url, timeout=30) as http:
            for name, (body, status, message) in bad.items():
                resp = http.post("/rank", json=body)
                assert resp.status_code == status, (name, resp.text)
                assert message in resp.json()["error"], (name, resp.text)
            headers = {"content-type": "application/json"}
            resp = http.post("/rank", content=b"{not json", headers=headers)
            assert resp.status_code == 400
            explore = http.post("/rank", json=good | {"explore": True, "seed": 3}).json()
            assert explore["policy"] == "plackett_luce" and len(set(explore["slate"])) == 6
            for probe in ("/healthz", "/livez", "/readyz"):
                assert http.get(probe).status_code == 200, probe
            metrics = http.get("/metrics")
            assert metrics.status_code == 200
            assert "bentoml_service_request_total" in metrics.text
            assert 'relayrec_rank_requests_total{outcome="ok"' in metrics.text
            assert "rejected_user_id" in metrics.text
            assert "relayrec_rank_model_seconds_bucket" in metrics.text
            info = http.post("/model_info", json={}).json()
            assert info["tag"] == store.second and info["labels"]["seed"] == "1"
            assert (info["kind"], info["method"]) == ("ranking_agents", "mmrf_ns")


def test_http_rollback_serves_the_previous_champion(
    store: Store, bento: str, tmp_path: Path
) -> None:
    import httpx

    reg = tmp_path / "registry"  # a copy: the other tests keep their champion
    shutil.copytree(store.registry, reg)
    back = registry.rollback("second model misbehaves", reg)
    assert (back.from_tag, back.to_tag) == (store.second, store.first)
    model = serving.ServingModel.load(store.first)
    user, items = _known(model, 12)
    body = {"user_id": user, "hour": 5, "position_in_session": 1, "item_ids": items}
    with _serving(bento, store, reg, tmp_path / "serve.log") as url:
        info = httpx.post(f"{url}/model_info", json={}, timeout=30).json()
        out = httpx.post(f"{url}/rank", json=body | {"session": SESSION}, timeout=30).json()
    assert (info["tag"], info["source"]) == (store.first, "champion")
    assert (info["kind"], info["uses_session"]) == ("multitask_ranker", False)
    # the ranker accepts the session and ignores it
    assert out["slate"] == model.rank(user, 5, 1, items).item_ids


def test_http_bento_serves_its_packaged_model_without_registry(
    store: Store, bento: str, tmp_path: Path
) -> None:
    import httpx

    with _serving(bento, store, tmp_path / "no-registry", tmp_path / "serve.log") as url:
        model = serving.ServingModel.load(store.second)
        user, items = _known(model, 10)
        body = {"user_id": user, "hour": 1, "position_in_session": 0, "item_ids": items, "k": 3}
        out = httpx.post(f"{url}/rank", json=body, timeout=30).json()
    assert (out["model_tag"], out["model_source"]) == (store.second, "packaged")
    assert len(out["slate"]) == 3
