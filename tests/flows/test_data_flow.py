"""The data flow on a real embedded Prefect API, real DVC and real Great Expectations."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from components.io import write_dataset
from components.world import generate_dataset
from flows.cli import main
from flows.data import data_flow


def test_flow_generates_versions_validates_and_groups(prefect_api, project: Path) -> None:
    result = data_flow(source="world", preset="tiny", seed=1, root=project)
    assert result.ok
    assert result.validation.success
    assert (project / "data" / "impressions.parquet").exists()
    dvc_file = yaml.safe_load((project / "data.dvc").read_text())
    assert dvc_file["outs"][0]["md5"] == result.data_version
    assert any((project / "remote").rglob("*"))  # pushed to the DVC remote
    groups = pd.read_parquet(project / "artifacts" / "groups" / "current.parquet")
    assert len(groups) == len(pd.read_parquet(project / "data" / "users.parquet"))
    assert result.validation.docs_index is not None and result.validation.docs_index.exists()


def test_flow_stops_at_validation_on_bad_data(prefect_api, project: Path) -> None:
    tables, meta = generate_dataset("tiny", seed=2)
    tables["impressions"].loc[:9, "propensity"] = 0.0  # 10 impossible propensities
    tables["requests"] = tables["requests"].drop(columns=["compute_cost"])
    write_dataset(tables, meta, project / "data")
    result = data_flow(source="existing", root=project)
    assert not result.ok
    assert result.groups is None
    assert not (project / "artifacts" / "groups").exists()  # nothing downstream ran
    failed = {(f.table, f.column) for f in result.validation.failures}
    assert ("impressions", "propensity") in failed
    assert ("requests", "compute_cost") in failed
    bad = [f for f in result.validation.failures if f.column == "propensity"]
    assert any(f.bad_rows == 10 for f in bad)


def test_cli_generate_validate_groups_and_reject(project: Path, capsys) -> None:
    assert main(["data", "generate", "--preset", "tiny", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "impressions" in out and "data version" in out
    assert main(["data", "validate"]) == 0
    assert "validation passed" in capsys.readouterr().out
    assert main(["data", "groups", "--n-groups", "3"]) == 0
    assert "migration" in capsys.readouterr().out
    # corrupt: negative play time in 5 rows → exit 1 and a line naming table, column, count
    path = project / "data" / "impressions.parquet"
    imp = pd.read_parquet(path)
    imp.loc[:4, "play_time_ms"] = -1.0
    imp.to_parquet(path, index=False)
    assert main(["data", "validate"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "play_time_ms" in ln)
    assert "impressions" in line and "5" in line


def test_cli_reports_missing_data_clearly(project: Path, capsys) -> None:
    assert main(["data", "validate"]) == 1
    assert "relayrec data generate" in capsys.readouterr().err
