"""The data flow: load (world or KuaiRand) → version with DVC → validate → reassign groups.

The flow body only calls tasks in order; every task wraps one component function. A failed
validation ends the run cleanly: nothing downstream runs, the run returns the failures and
the CLI exits non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from components import grouping, validation, versioning
from components.io import DatasetMeta, read_meta, write_dataset
from components.kuairand import import_kuairand
from components.world import generate_dataset


@dataclass(frozen=True)
class DataFlowResult:
    """What the data flow did; ``ok`` is False when validation stopped it."""

    ok: bool
    data_dir: Path
    meta: DatasetMeta
    data_version: str | None
    validation: validation.ValidationReport
    groups: grouping.GroupingResult | None = None
    messages: tuple[str, ...] = field(default_factory=tuple)


@task(name="load-data")
def load_data(
    source: str, preset: str, seed: int, kuairand_dir: Path | None, data_dir: Path
) -> tuple[DatasetMeta, tuple[str, ...]]:
    """Generate world data, import KuaiRand, or take the data set already in ``data_dir``."""
    if source == "existing":
        meta = read_meta(data_dir)
        return meta, (f"using the data set in {data_dir} (source {meta.source})",)
    if source == "world":
        tables, meta = generate_dataset(preset=preset, seed=seed)
        write_dataset(tables, meta, data_dir)
        rows = ", ".join(f"{name} {len(df):,}" for name, df in tables.items())
        return meta, (f"generated world data ({preset}, seed {seed}): {rows}",)
    if source == "kuairand":
        if kuairand_dir is None:
            raise ValueError("source 'kuairand' needs a directory of KuaiRand files")
        result = import_kuairand(kuairand_dir, data_dir)
        return result.meta, result.messages
    raise ValueError(f"unknown data source {source!r}; choose 'world', 'kuairand' or 'existing'")


@task(name="version-data", retries=2, retry_delay_seconds=2)
def version_data(root: Path, data_dir: Path) -> str | None:
    """Record the data set as a DVC version (``data.dvc``) and push it to the remote."""
    rel = data_dir.resolve().relative_to(root.resolve()).as_posix()
    version, ran = versioning.track_if_changed(root, rel, push=True)
    if not ran:
        print(f"data unchanged since version {version.md5}: DVC not run")
    return version.md5


@task(name="validate-data")
def validate_data(data_dir: Path, out_dir: Path) -> validation.ValidationReport:
    report = validation.validate_dataset(data_dir, out_dir=out_dir)
    status = "passed" if report.success else "FAILED"
    body = f"# Data validation {status}\n\n{report.n_expectations} expectations.\n\n"
    if not report.success:
        body += "```\n" + report.format_failures() + "\n```\n"
    create_markdown_artifact(key="data-validation", markdown=body, description="validation")
    return report


@task(name="reassign-groups")
def reassign_groups(data_dir: Path, state_dir: Path, n_groups: int) -> grouping.GroupingResult:
    result = grouping.run_grouping(data_dir, state_dir=state_dir, n_groups=n_groups)
    create_markdown_artifact(
        key="user-groups", markdown=result.paths["report"].read_text(), description="groups"
    )
    return result


@flow(name="relayrec-data", log_prints=True)
def data_flow(
    source: str = "world",
    preset: str = "demo",
    seed: int = 0,
    kuairand_dir: Path | None = None,
    root: Path = Path("."),
    n_groups: int = 4,
) -> DataFlowResult:
    """Load → version → validate → reassign user groups."""
    root = Path(root)
    data_dir = root / "data"
    artifacts = root / "artifacts"
    meta, messages = load_data(source, preset, seed, kuairand_dir, data_dir)
    version = version_data(root, data_dir)
    report = validate_data(data_dir, artifacts / "validation")
    if not report.success:
        return DataFlowResult(False, data_dir, meta, version, report, None, messages)
    groups = reassign_groups(data_dir, artifacts / "groups", n_groups)
    return DataFlowResult(True, data_dir, meta, version, report, groups, messages)
