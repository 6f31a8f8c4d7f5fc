"""The retraining steps after validation: train and register the challenger, gate it against
the champion, promote it if blessed. Each step is plain Python; ``flows/retrain.py`` wires
them as Prefect tasks.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components import registry
from components.gate import Candidate, GateDecision, evaluate_challenger, write_report
from components.io import read_meta, read_table
from components.params import RunParams
from components.training import TrainedRanker, split_by_day, train_ranker


@dataclass(frozen=True)
class ModelRef:
    """A registered model: its tag, whether it was trained now or found, and its metrics."""

    tag: str
    reused: bool
    metrics: dict[str, Any]


@dataclass(frozen=True)
class GateOutcome:
    decision: GateDecision
    report_paths: dict[str, Path]
    champion: str | None


def git_commit(root: Path) -> str:
    """The project's current commit, or ``"none"`` outside a git repository."""
    out = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else "none"


def train_and_register(
    data_dir: Path, data_version: str, params: RunParams, commit: str
) -> ModelRef:
    """Train the ranker on ``data_dir`` and save it to the model store — unless a model with
    the same data version and training parameters is already there (then reuse it)."""
    labels = {"data_version": data_version, "params_hash": params.training_hash()}
    found = registry.find_model(labels)
    if found is not None:
        return ModelRef(found, True, {})
    ranker = train_ranker(
        data_dir, params.ranker, seed=params.train_seed, holdout_days=params.holdout_days
    )
    metrics = dict(ranker.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        ranker.save(Path(tmp) / "model")
        tag = registry.register_model(
            Path(tmp) / "model",
            labels | {"git_commit": commit, "kind": "multitask_ranker"},
            # BentoML metadata takes no None values: keep both as JSON strings
            metadata={
                "params": json.dumps(params.raw, sort_keys=True),
                "metrics": json.dumps(_jsonable(metrics), sort_keys=True, default=str),
            },
        )
    return ModelRef(tag, False, metrics)


def load_ranker(tag: str) -> TrainedRanker:
    return TrainedRanker.load(registry.model_path(tag))


def _candidate(tag: str) -> Candidate:
    ranker = load_ranker(tag)
    return Candidate(tag, ranker.score, ranker.temperature)


def gate_challenger(
    data_dir: Path,
    challenger_tag: str,
    params: RunParams,
    out_dir: Path,
    registry_dir: Path | None = None,
) -> GateOutcome:
    """Gate the challenger against the champion (or the logging policy) on the held-out days.

    Needs the ``pools`` table to rebuild each request's candidates; a source without it
    (KuaiRand) cannot be gated off-policy and is refused with that reason.
    """
    meta = read_meta(data_dir)
    if "pools" not in meta.tables:
        raise ValueError(
            f"the gate needs the pools table to rebuild the logged candidates; this {meta.source} "
            f"data set has none ({meta.skipped.get('pools', 'not provided')})"
        )
    tables = {t: read_table(data_dir, t) for t in ("requests", "impressions", "pools")}
    split = split_by_day(tables["requests"], params.holdout_days)
    champion_tag = registry.champion(registry_dir)
    decision = evaluate_challenger(
        tables,
        meta.params,
        meta.seed if meta.source == "world" else None,
        np.asarray(split.holdout_request_ids),
        _candidate(challenger_tag),
        None if champion_tag is None else _candidate(champion_tag),
        params.gate,
    )
    paths = write_report(decision, out_dir)
    return GateOutcome(decision, paths, champion_tag)


def promote_if_blessed(
    outcome: GateOutcome, challenger_tag: str, registry_dir: Path | None = None
) -> registry.Promotion | None:
    """Move the champion pointer to the challenger when the gate blessed it."""
    if not outcome.decision.promote:
        return None
    why = "gate passed: " + "; ".join(outcome.decision.reasons[:1])
    return registry.promote(challenger_tag, why, registry_dir)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
