"""A real Prefect server, the retraining flow served on an interval, a run that completes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_schedule_refuses_without_a_server(monkeypatch, capsys) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["schedule", "--interval", "60"]) == 2
    assert "prefect server start" in capsys.readouterr().err


@pytest.mark.slow
def test_scheduled_retraining_runs_on_a_prefect_server(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "RELAYREC_DVC_REMOTE": str(tmp_path / "remote"),
    }
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    params = {"data": {"preset": "tiny"}, "ranker": {"epochs": 1}, "gate": {"min_ess": 50}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    served = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("prefect server did not start in 120 s")
        served = subprocess.Popen(
            [str(bin_dir / "relayrec"), "schedule", "--interval", "20", "--name", "test"],
            cwd=project,
            env=env,
            stdout=open(tmp_path / "served.log", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        states: list[str] = []
        deadline = time.time() + 240
        while time.time() < deadline and "COMPLETED" not in states:
            time.sleep(3)
            req = urllib.request.Request(
                f"{api}/flow_runs/filter",
                data=json.dumps(
                    {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 5}
                ).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                states = [r["state_type"] for r in json.loads(resp.read())]
        assert "COMPLETED" in states, states
        assert (project / "data.dvc").exists()
        assert list((project / "artifacts" / "gate").rglob("report.md"))
    finally:
        for proc in (served, server):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
