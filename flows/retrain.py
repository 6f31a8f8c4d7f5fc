"""The retraining flow: load → version → validate → groups → fit feedback simulator → train
→ gate → promote → Bento.

The challenger is ``train.challenger`` of ``params.yaml`` (default ``mmrf``: the MMRF ranking
agents, which learn from non-impressions labelled by the feedback simulator fitted in the
step before; ``multitask`` trains the supervised ranker and skips the simulator).

Steps are cached on the data version: a re-run with unchanged data and parameters reuses the
validated data, finds the already-registered model instead of training, and skips the gate
because the challenger is already the champion — so it promotes no duplicate. A failed
validation or a rejected gate ends the run cleanly with the reason; the champion keeps
serving.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components import registry
from components.io import read_meta
from components.packaging import build_bento
from components.params import RunParams, load_params
from components.retraining import (
    GateOutcome,
    ModelRef,
    fit_and_register_simulator,
    gate_challenger,
    git_commit,
    promote_if_blessed,
    train_and_register,
)
from flows.data import load_data, reassign_groups, validate_data, version_data


@dataclass(frozen=True)
class RetrainResult:
    """What the run did and why it stopped where it did."""

    status: str  # promoted | rejected | unchanged | rolled_back | invalid_data
    data_version: str | None
    model: str | None = None
    champion: str | None = None
    report: Path | None = None
    messages: tuple[str, ...] = field(default_factory=tuple)
    bento: str | None = None
    simulator: str | None = None


@task(name="validate-data-version", cache_policy=NO_CACHE)
def validate_version(data_dir: Path, out_dir: Path, data_version: str) -> bool:
    """Validation is a function of the data version: run it once per version.

    ``<out_dir>/validated.json`` records the version last validated and the verdict; the
    suites run again only when the version differs (or the record is gone).
    """
    marker = out_dir / "validated.json"
    if marker.exists():
        seen = json.loads(marker.read_text())
        if seen.get("data_version") == data_version:
            print(f"data version {data_version} already validated: {seen['success']}")
            return bool(seen["success"])
    success = validate_data.fn(data_dir, out_dir).success
    marker.write_text(json.dumps({"data_version": data_version, "success": success}) + "\n")
    return success


@task(name="fit-feedback-simulator", cache_policy=NO_CACHE)
def fit_simulator_step(
    data_dir: Path, data_version: str, params: RunParams, root: Path, out_dir: Path
) -> ModelRef:
    """MMRF's feedback simulator, fitted once per data version and simulator parameters; its
    held-out accuracy goes to ``<out_dir>/report.md`` and a Prefect artifact."""
    ref = fit_and_register_simulator(
        data_dir, data_version, params, git_commit(root), out_dir, progress=print
    )
    if ref.reused:
        print(f"feedback simulator {ref.tag} (same data and parameters) reused")
    create_markdown_artifact(
        key="feedback-simulator",
        markdown=(out_dir / "report.md").read_text(),
        description="simulator",
    )
    return ref


@task(name="train-challenger", cache_policy=NO_CACHE)
def train_challenger(
    data_dir: Path, data_version: str, params: RunParams, root: Path, simulator: str | None
) -> ModelRef:
    ref = train_and_register(
        data_dir, data_version, params, git_commit(root), simulator, progress=print
    )
    if ref.reused:
        print(f"challenger {ref.tag} (same data and parameters) found in the model store")
    return ref


@task(name="gate-challenger", cache_policy=NO_CACHE)
def gate(data_dir: Path, tag: str, params: RunParams, out_dir: Path) -> GateOutcome:
    outcome = gate_challenger(data_dir, tag, params, out_dir)
    create_markdown_artifact(
        key="gate-report", markdown=outcome.report_paths["md"].read_text(), description="gate"
    )
    return outcome


@task(name="package-bento", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def package(tag: str) -> str:
    """Build the serving Bento with the new champion packaged (``bentofile.yaml``)."""
    return build_bento(tag)


@task(name="promote", cache_policy=NO_CACHE)
def promote(outcome: GateOutcome, tag: str) -> str | None:
    entry = promote_if_blessed(outcome, tag)
    return None if entry is None else entry.to_tag


def _reuse_or_load(params: RunParams, data_dir: Path) -> tuple[str, ...]:
    d = params.data
    if d["source"] == "world" and (data_dir / "meta.json").exists():
        meta = read_meta(data_dir)
        if (meta.source, meta.preset, meta.seed) == ("world", d["preset"], d["seed"]):
            return (f"data unchanged: reusing {data_dir} (world {d['preset']}, seed {d['seed']})",)
    kdir = Path(d["kuairand_dir"]) if d.get("kuairand_dir") else None
    _, messages = load_data(d["source"], d["preset"], int(d["seed"]), kdir, data_dir)
    return messages


@flow(name="relayrec-retrain", log_prints=True)
def retrain_flow(params_path: Path = Path("params.yaml"), root: Path = Path(".")) -> RetrainResult:
    """Load → version → validate → groups → train → gate → promote (module docstring)."""
    root = Path(root)
    params = load_params(params_path)
    data_dir, artifacts = root / "data", root / "artifacts"
    messages = _reuse_or_load(params, data_dir)
    version = version_data(root, data_dir)
    if not validate_version(data_dir, artifacts / "validation", version):
        return RetrainResult("invalid_data", version, messages=messages)
    reassign_groups(data_dir, artifacts / "groups", params.n_groups)
    simulator = None
    if params.needs_simulator and "non_impressions" in read_meta(data_dir).tables:
        simulator = fit_simulator_step(
            data_dir, version, params, root, artifacts / "simulator" / params.simulator_hash()
        ).tag
    model = train_challenger(data_dir, version, params, root, simulator)
    champion = registry.champion()
    if model.tag == champion:
        note = f"{model.tag} (same data and parameters) is already the champion: nothing to do"
        return RetrainResult(
            "unchanged", version, model.tag, champion, None, (*messages, note), None, simulator
        )
    run_dir = artifacts / "gate" / _run_name(version, model.tag, champion, params)
    earlier = _earlier_verdict(run_dir)
    if earlier is not None:
        promote_before, reasons = earlier
        status = "rejected" if not promote_before else "rolled_back"
        note = (
            "the gate already judged this challenger against this champion on this data: "
            + ("rejected" if not promote_before else "it was promoted and later rolled back")
            + "; reusing that verdict"
        )
        return RetrainResult(
            status,
            version,
            model.tag,
            champion,
            run_dir / "report.md",
            (*messages, note, *reasons),
            None,
            simulator,
        )
    outcome = gate(data_dir, model.tag, params, run_dir)
    promoted = promote(outcome, model.tag)
    bento = package(model.tag) if promoted else None
    status = "promoted" if promoted else "rejected"
    reasons = tuple(outcome.decision.reasons)
    return RetrainResult(
        status,
        version,
        model.tag,
        registry.champion(),
        outcome.report_paths["md"],
        (*messages, *reasons),
        bento,
        simulator,
    )


def _run_name(version: str, tag: str, champion: str | None, params: RunParams) -> str:
    key = json.dumps([version, tag, champion, params.raw.get("gate")], sort_keys=True)
    return tag.replace(":", "-") + "-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _earlier_verdict(run_dir: Path) -> tuple[bool, tuple[str, ...]] | None:
    """The verdict of an identical earlier gate run (same data, challenger, champion and
    thresholds), if its report is there."""
    report = run_dir / "report.json"
    if not report.exists():
        return None
    data = json.loads(report.read_text())
    return bool(data["promote"]), tuple(data["reasons"])
