"""The retraining flow end to end on a real embedded Prefect API, DVC, GE and BentoML store."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components import registry
from flows.retrain import retrain_flow

PARAMS = {
    "data": {"source": "world", "preset": "tiny", "seed": 0},
    "ranker": {"epochs": 1},
    "simulator": {"epochs": 1},
    "agents": {"rounds": 2, "epochs": 1},
    "gate": {"min_ess": 50, "n_boot": 200},
}
"""The default challenger (MMRF agents with the feedback simulator), kept small."""


@pytest.fixture()
def retrain_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RELAYREC_REGISTRY", raising=False)
    (project / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return project


def test_retrain_gates_reuses_and_never_promotes_a_duplicate(prefect_api, retrain_project) -> None:
    root = retrain_project
    first = retrain_flow(params_path=root / "params.yaml", root=root)
    assert first.status in {"promoted", "rejected"}
    assert first.simulator is not None and first.simulator.startswith("relayrec-simulator:")
    labels = registry.model_labels(first.model)
    assert (labels["kind"], labels["method"], labels["simulator"]) == (
        "ranking_agents",
        "mmrf",
        first.simulator,
    )
    assert first.report is not None and first.report.exists()
    assert "Gate:" in first.report.read_text()
    assert (first.report.parent / "report.json").exists()
    assert first.messages  # the reasons are stated
    if first.status == "rejected":
        assert registry.champion() is None  # nothing promoted
        again = retrain_flow(params_path=root / "params.yaml", root=root)
        assert (again.status, again.model, again.report) == ("rejected", first.model, first.report)
        assert any("reusing that verdict" in m for m in again.messages)
        registry.promote(first.model, "accepted by hand for the test")
    log_before = registry.history()

    second = retrain_flow(params_path=root / "params.yaml", root=root)
    assert second.status == "unchanged"
    assert second.model == first.model  # found in the store, not retrained
    assert second.simulator == first.simulator  # nor refitted
    assert second.data_version == first.data_version
    assert registry.history() == log_before  # no duplicate promotion


def test_corrupt_data_stops_before_training(prefect_api, retrain_project) -> None:
    root = retrain_project
    from components.io import write_dataset
    from components.world import generate_dataset

    tables, meta = generate_dataset("tiny", seed=0)
    tables["impressions"].loc[:2, "propensity"] = 1.5
    write_dataset(tables, meta, root / "data")
    result = retrain_flow(params_path=root / "params.yaml", root=root)
    assert result.status == "invalid_data"
    assert result.model is None
    assert registry.find_model({"data_version": result.data_version}) is None
    summary = pd.read_json(root / "artifacts" / "validation" / "summary.json", typ="series")
    assert summary["success"] is False or summary["success"] == 0


def test_blessed_challenger_is_promoted_and_packaged(prefect_api, retrain_project) -> None:
    """With thresholds any trained model meets, the flow promotes it and builds its Bento."""
    root = retrain_project
    lax = {**PARAMS, "gate": {"min_ess": 1, "n_boot": 100, "main_min_uplift": -1.0}}
    lax["gate"]["aux_tolerance"] = 100.0
    (root / "params.yaml").write_text(yaml.safe_dump(lax))
    result = retrain_flow(params_path=root / "params.yaml", root=root)
    assert result.status == "promoted", result.messages
    assert registry.champion() == result.model
    assert result.bento is not None and result.bento.startswith("relayrec_ranker:")
    import bentoml

    bento = bentoml.get(result.bento)
    assert [str(m.tag) for m in bento.info.all_models] == [result.model]
    assert registry.model_labels(result.model)["kind"] == "ranking_agents"
    # the simulator's held-out accuracy is reported next to the run and stored with it
    reports = list((root / "artifacts" / "simulator").glob("*/report.md"))
    assert len(reports) == 1 and "| is_click |" in reports[0].read_text()
    stored = json.loads(bentoml.models.get(result.simulator).info.metadata["metrics"])
    assert 0.0 < stored["auc"]["is_click"] < 1.0 and stored["n_impressions"] > 0
    [entry] = registry.history()
    assert entry.action == "promote" and entry.why.startswith("gate passed")


def test_multitask_challenger_skips_the_simulator(prefect_api, retrain_project) -> None:
    root = retrain_project
    params = {**PARAMS, "train": {"challenger": "multitask"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = retrain_flow(params_path=root / "params.yaml", root=root)
    assert result.status in {"promoted", "rejected"}, result.messages
    assert result.simulator is None and not (root / "artifacts" / "simulator").exists()
    labels = registry.model_labels(result.model)
    assert (labels["kind"], labels["method"]) == ("multitask_ranker", "bc")
