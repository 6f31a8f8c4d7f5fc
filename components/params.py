"""``params.yaml``: the values a run uses, read into typed parts, hashed for caching."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.gate import GateConfig
from models.ranker import RankerConfig

SECTIONS = ("data", "groups", "train", "ranker", "gate")


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
    def ranker(self) -> RankerConfig:
        return RankerConfig.from_dict(self.raw.get("ranker") or {})

    @property
    def gate(self) -> GateConfig:
        return GateConfig.from_dict(self.raw.get("gate") or {})

    def training_hash(self) -> str:
        """Hash of everything that changes the trained model (not the gate thresholds)."""
        part = {k: self.raw.get(k) for k in ("train", "ranker")}
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


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
    params.ranker, params.gate  # noqa: B018 - validate now, not halfway through a run
    return params
