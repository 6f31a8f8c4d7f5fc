"""``params.yaml``: the values a run uses, read into typed parts, hashed for caching."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.agents import with_variant
from components.gate import GateConfig
from models.mmrf import AgentsConfig
from models.ranker import RankerConfig
from models.simulator import SimulatorConfig

SECTIONS = ("data", "groups", "train", "ranker", "simulator", "agents", "gate")
AGENT_CHALLENGERS = ("mmrf", "mmrf_co", "mmrf_nc", "mmrf_da", "mmrf_ns", "tscac")
CHALLENGERS = ("multitask", *AGENT_CHALLENGERS)
"""``train.challenger``: the ranking model a run trains. ``multitask`` is the supervised
multi-task ranker (``ranker:`` section; behaviour cloning, or Wide & Deep / DeepFM with
``ranker.architecture``); the others are the ranking agents of ``models.mmrf`` (``agents:``
section) as ``components.agents.with_variant`` names them: MMRF, its ablations and TSCAC."""


@dataclass(frozen=True)
class RunParams:
    """The whole configuration of one retraining run (seen only at the top, by the flow)."""

    raw: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        return {"source": "world", "preset": "demo", "seed": 0, "kuairand_dir": None} | dict(
            self.raw.get("data") or {}
        )

    @property
    def n_groups(self) -> int:
        return int((self.raw.get("groups") or {}).get("n_groups", 4))

    @property
    def train_seed(self) -> int:
        return int((self.raw.get("train") or {}).get("seed", 0))

    @property
    def holdout_days(self) -> int:
        return int((self.raw.get("train") or {}).get("holdout_days", 1))

    @property
    def challenger(self) -> str:
        """The ranking model to train (``CHALLENGERS``); ``mmrf`` unless set."""
        return str((self.raw.get("train") or {}).get("challenger", "mmrf"))

    @property
    def trains_agents(self) -> bool:
        return self.challenger in AGENT_CHALLENGERS

    @property
    def needs_simulator(self) -> bool:
        """Whether the run fits the feedback simulator: only the agents that learn from
        simulated non-impressions (MMRF, MMRF-CO) use it."""
        return self.trains_agents and self.agents.non_impressions == "simulated"

    @property
    def ranker(self) -> RankerConfig:
        return RankerConfig.from_dict(self.raw.get("ranker") or {})

    @property
    def simulator(self) -> SimulatorConfig:
        return SimulatorConfig.from_dict(self.raw.get("simulator") or {})

    @property
    def agents(self) -> AgentsConfig:
        """The ``agents:`` section with the challenger's variant applied."""
        base = AgentsConfig.from_dict(self.raw.get("agents") or {})
        return with_variant(base, self.challenger) if self.trains_agents else base

    @property
    def gate(self) -> GateConfig:
        return GateConfig.from_dict(self.raw.get("gate") or {})

    def training_hash(self) -> str:
        """Hash of everything that changes the trained ranking model (not the gate
        thresholds, nor the sections the challenger does not use)."""
        sections = ["ranker"]
        if self.trains_agents:
            sections = ["agents", *(["simulator"] if self.needs_simulator else [])]
        return _hash(self.train_part(), *(self.raw.get(k) for k in sections))

    def simulator_hash(self) -> str:
        """Hash of what changes the fitted feedback simulator."""
        return _hash(self.train_seed, self.holdout_days, self.raw.get("simulator"))

    def train_part(self) -> dict[str, Any]:
        """The ``train:`` section with its defaults filled in (so that writing a default
        out does not change the hash)."""
        return {
            "seed": self.train_seed,
            "holdout_days": self.holdout_days,
            "challenger": self.challenger,
        }


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def load_params(path: str | Path = "params.yaml") -> RunParams:
    """Read and check ``params.yaml``; a missing file means the documented defaults."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of sections {SECTIONS}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    params = RunParams(raw)
    if params.challenger not in CHALLENGERS:
        raise ValueError(
            f"{path}: train.challenger {params.challenger!r} is not a ranking model; choose one "
            f"of {list(CHALLENGERS)}"
        )
    # validate every section now, not halfway through a run
    params.ranker, params.simulator, params.agents, params.gate  # noqa: B018
    return params
