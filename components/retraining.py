"""The retraining steps after validation: fit the feedback simulator, train and register the
challenger, gate it against the champion, promote it if blessed. Each step is plain Python;
``flows/retrain.py`` wires them as Prefect tasks.

The challenger is ``params.train.challenger`` (``components.params.CHALLENGERS``): by default
the MMRF ranking agents, trained by Algorithm 1 with the feedback simulator that
:func:`fit_and_register_simulator` fitted on the same training days; or the supervised
multi-task ranker. Both are saved to the BentoML model store as ``relayrec-ranker`` (label
``kind``: ``ranking_agents`` or ``multitask_ranker``, ``method``: mmrf, …, bc) and load back
through :func:`components.ranking.load_ranking_model`, so the gate and the service treat
them alike. The simulator is stored as ``relayrec-simulator`` with its held-out accuracy.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from components import registry
from components.agents import agent_tables, train_agents
from components.gate import Candidate, GateDecision, evaluate_challenger, write_report
from components.io import read_meta, read_table
from components.model_files import jsonable
from components.params import RunParams
from components.ranking import RankingModel, load_ranking_model, method_name, model_kind
from components.training import split_by_day, train_ranker

SIMULATOR_NAME = "relayrec-simulator"


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


def fit_and_register_simulator(
    data_dir: Path,
    data_version: str,
    params: RunParams,
    commit: str,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelRef:
    """Fit MMRF's feedback simulator on the training days of ``data_dir``, score it on the
    held-out days (``components.simulator.evaluate_simulator``: per-aspect AUC / GAUC,
    play-time error, and on world data the Bayes-optimal AUC) and store it — unless one with
    the same data version and simulator parameters is stored (then reuse it).

    ``out_dir``: where ``report.md`` and ``metrics.json`` of the held-out scores go.
    """
    from components.experiments import render_simulator_markdown

    labels = {"data_version": data_version, "params_hash": params.simulator_hash()}
    found = registry.find_model(labels, name=SIMULATOR_NAME)
    if found is not None:
        ref = ModelRef(found, True, _stored_metrics(found))
    else:
        ref = _fit_simulator(data_dir, params, labels | {"git_commit": commit}, progress)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        title = f"held-out days, {ref.tag}" + (" (reused)" if ref.reused else "")
        report = render_simulator_markdown({title: ref.metrics}, "relayrec retrain")
        (out_dir / "report.md").write_text(report)
        (out_dir / "metrics.json").write_text(json.dumps(ref.metrics, indent=2) + "\n")
    return ref


def _fit_simulator(
    data_dir: Path,
    params: RunParams,
    labels: dict[str, str],
    progress: Callable[[str], None] | None,
) -> ModelRef:
    from components.experiments import fit_and_evaluate_simulator

    say = progress or (lambda _m: None)
    sim, held = fit_and_evaluate_simulator(
        data_dir, params.simulator, params.train_seed, params.holdout_days
    )
    held = jsonable(held)
    say(
        f"feedback simulator fitted in {held['fit_seconds']:.0f} s; held-out AUC "
        + ", ".join(f"{a} {'n/a' if v is None else f'{v:.3f}'}" for a, v in held["auc"].items())
    )
    with tempfile.TemporaryDirectory() as tmp:
        sim.save(Path(tmp) / "model")
        tag = registry.register_model(
            Path(tmp) / "model",
            labels | {"kind": "feedback_simulator"},
            metadata={
                "params": json.dumps(params.raw.get("simulator") or {}, sort_keys=True),
                "metrics": json.dumps(held, sort_keys=True),
            },
            name=SIMULATOR_NAME,
        )
    return ModelRef(tag, False, held)


def train_and_register(
    data_dir: Path,
    data_version: str,
    params: RunParams,
    commit: str,
    simulator_tag: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelRef:
    """Train the challenger (``params.challenger``) on ``data_dir`` and save it to the model
    store — unless a model with the same data version and training parameters is already
    there (then reuse it).

    The agents that learn from simulated non-impressions need ``simulator_tag`` (from
    :func:`fit_and_register_simulator`); a data set without a ``non_impressions`` table
    trains them on the impressions only (as MMRF-DA), and says so through ``progress``.
    """
    labels = {"data_version": data_version, "params_hash": params.training_hash()}
    found = registry.find_model(labels)
    if found is not None:
        return ModelRef(found, True, {})
    model = _train(data_dir, params, simulator_tag, progress or (lambda _m: None))
    metrics = dict(model.metrics)
    kind = {"kind": model_kind(model), "method": method_name(model)}
    if simulator_tag is not None:
        kind["simulator"] = simulator_tag
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model")
        tag = registry.register_model(
            Path(tmp) / "model",
            labels | {"git_commit": commit} | kind,
            # BentoML metadata takes no None values: keep both as JSON strings
            metadata={
                "params": json.dumps(params.raw, sort_keys=True),
                "metrics": json.dumps(
                    jsonable(metrics, nonfinite_as_none=False), sort_keys=True, default=str
                ),
            },
        )
    return ModelRef(tag, False, metrics)


def _train(
    data_dir: Path, params: RunParams, simulator_tag: str | None, say: Callable[[str], None]
) -> RankingModel:
    if not params.trains_agents:
        return train_ranker(
            data_dir, params.ranker, seed=params.train_seed, holdout_days=params.holdout_days
        )
    from components.simulator import SimulatorLabeller, TrainedSimulator

    tables = agent_tables(data_dir)
    labeller = None
    if params.needs_simulator:
        if "non_impressions" not in tables:
            say(
                "the data set has no non_impressions table: the agents train on the logged "
                "impressions only (as MMRF-DA)"
            )
        elif simulator_tag is None:
            raise ValueError(
                f"challenger {params.challenger!r} learns from simulated non-impressions: fit "
                "the feedback simulator first (fit_and_register_simulator) and pass its tag"
            )
        else:
            sim = TrainedSimulator.load(registry.model_path(simulator_tag))
            labeller = SimulatorLabeller(sim, tables, seed=params.train_seed)
    config = params.agents
    if labeller is None and config.non_impressions == "simulated":
        config = replace(config, non_impressions="none")
    return train_agents(
        tables,
        config,
        seed=params.train_seed,
        holdout_days=params.holdout_days,
        labeller=labeller,
        name=params.challenger,
        progress=say,
    )


def load_ranker(tag: str) -> RankingModel:
    """The registered ranking model ``tag``, of either family."""
    return load_ranking_model(registry.model_path(tag))


def _candidate(tag: str) -> Candidate:
    ranker = load_ranker(tag)
    return Candidate(tag, ranker.score, ranker.temperature)


def _stored_metrics(tag: str) -> dict[str, Any]:
    import bentoml

    raw = bentoml.models.get(tag).info.metadata.get("metrics", "{}")
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


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
