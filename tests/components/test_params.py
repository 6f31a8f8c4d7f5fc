"""``params.yaml``: the challenger choice, its configs, and what the caching hashes depend on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.params import CHALLENGERS, RunParams, load_params


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_project_params_train_mmrf_with_the_simulator() -> None:
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert params.challenger == "mmrf" and params.trains_agents and params.needs_simulator
    assert params.agents.collaboration == "attention"


@pytest.mark.parametrize(
    ("challenger", "agents", "simulator", "collaboration", "non_impressions"),
    [
        ("multitask", False, False, "attention", "simulated"),
        ("mmrf", True, True, "attention", "simulated"),
        ("mmrf_co", True, True, "concat", "simulated"),
        ("mmrf_nc", True, True, "none", "simulated"),
        ("mmrf_da", True, False, "attention", "none"),
        ("mmrf_ns", True, False, "attention", "negative"),
        ("tscac", True, False, "none", "none"),
    ],
)
def test_each_challenger_gets_its_variant(
    tmp_path: Path,
    challenger: str,
    agents: bool,
    simulator: bool,
    collaboration: str,
    non_impressions: str,
) -> None:
    params = load_params(_write(tmp_path, {"train": {"challenger": challenger}}))
    assert (params.trains_agents, params.needs_simulator) == (agents, simulator)
    assert params.agents.collaboration == collaboration
    assert params.agents.non_impressions == non_impressions
    assert challenger in CHALLENGERS


def test_bad_params_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train.challenger 'dqn' is not a ranking model"):
        load_params(_write(tmp_path, {"train": {"challenger": "dqn"}}))
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['agent'\]"):
        load_params(_write(tmp_path, {"agent": {"epochs": 1}}))
    with pytest.raises(ValueError):
        load_params(_write(tmp_path, {"agents": {"no_such_knob": 1}}))
    with pytest.raises(ValueError):
        load_params(_write(tmp_path, {"simulator": {"no_such_knob": 1}}))


def test_training_hash_follows_only_what_the_challenger_uses() -> None:
    base = RunParams({"agents": {"epochs": 2}, "simulator": {"epochs": 3}, "ranker": {}})
    h = base.training_hash()
    # the ranker's section does not change the agents, the gate changes no model
    assert RunParams(base.raw | {"ranker": {"epochs": 9}}).training_hash() == h
    assert RunParams(base.raw | {"gate": {"cap": 3.0}}).training_hash() == h
    # writing a default out changes nothing
    assert RunParams(base.raw | {"train": {"challenger": "mmrf", "seed": 0}}).training_hash() == h
    # the agents and the simulator they learn from do
    assert RunParams(base.raw | {"agents": {"epochs": 3}}).training_hash() != h
    assert RunParams(base.raw | {"simulator": {"epochs": 4}}).training_hash() != h
    assert RunParams(base.raw | {"train": {"seed": 1}}).training_hash() != h
    # MMRF-DA does not use the simulator; the multi-task ranker uses neither
    da = RunParams(base.raw | {"train": {"challenger": "mmrf_da"}})
    assert da.training_hash() != h
    assert RunParams(da.raw | {"simulator": {"epochs": 9}}).training_hash() == da.training_hash()
    mt = RunParams({"train": {"challenger": "multitask"}, "ranker": {"epochs": 2}})
    assert RunParams(mt.raw | {"agents": {"epochs": 9}}).training_hash() == mt.training_hash()
    assert RunParams(mt.raw | {"ranker": {"epochs": 3}}).training_hash() != mt.training_hash()


def test_simulator_hash_follows_its_section_and_the_split() -> None:
    base = RunParams({"simulator": {"epochs": 3}})
    h = base.simulator_hash()
    assert RunParams(base.raw | {"agents": {"epochs": 9}}).simulator_hash() == h
    assert RunParams(base.raw | {"simulator": {"epochs": 4}}).simulator_hash() != h
    assert RunParams(base.raw | {"train": {"holdout_days": 2}}).simulator_hash() != h
