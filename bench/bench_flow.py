"""Orchestration overhead: the retraining flow vs calling its components directly.

    python bench/bench_flow.py [--preset demo]

Both variants run every step (with the default challenger of ``params.yaml``, the MMRF
agents: the feedback simulator is fitted, then the agents trained) on fresh projects (new
git repo, DVC remote, BentoML store and registry) with the same params. The flow's time
includes starting Prefect's embedded API (first flow of the process), reported apart; the
overhead share is (flow − direct) / flow, with and without that start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from flows.cli import TELEMETRY_OFF

for _k, _v in TELEMETRY_OFF.items():
    os.environ.setdefault(_k, _v)


def _project(base: Path, name: str, preset: str) -> Path:
    root = base / name
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"preset": preset}}))
    return root


def _env(root: Path) -> None:
    os.environ["BENTOML_HOME"] = str(root / "bentoml")
    os.environ["RELAYREC_REGISTRY"] = str(root / "artifacts" / "registry")
    os.environ["RELAYREC_DVC_REMOTE"] = str(root / "remote")


def direct(root: Path) -> float:
    from components import grouping, validation, versioning
    from components.io import write_dataset
    from components.params import load_params
    from components.retraining import (
        fit_and_register_simulator,
        gate_challenger,
        promote_if_blessed,
        train_and_register,
    )
    from components.world import generate_dataset

    t0 = time.perf_counter()
    params = load_params(root / "params.yaml")
    tables, meta = generate_dataset(params.data["preset"], seed=params.data["seed"])
    write_dataset(tables, meta, root / "data")
    versioning.ensure_dvc_repo(root)
    version = versioning.track(root, "data").md5
    assert validation.validate_dataset(root / "data", out_dir=root / "artifacts/validation").success
    grouping.run_grouping(root / "data", state_dir=root / "artifacts/groups")
    simulator = None
    if params.needs_simulator:
        out = root / "artifacts" / "simulator" / params.simulator_hash()
        simulator = fit_and_register_simulator(root / "data", version, params, "bench", out).tag
    model = train_and_register(root / "data", version, params, "bench", simulator)
    assert not model.reused
    outcome = gate_challenger(root / "data", model.tag, params, root / "artifacts/gate")
    promote_if_blessed(outcome, model.tag)
    return time.perf_counter() - t0


def via_flow(root: Path) -> tuple[float, float]:
    from prefect import flow

    from flows.retrain import retrain_flow

    @flow
    def noop() -> None:
        return None

    t0 = time.perf_counter()
    noop()  # starts the embedded API
    start = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = retrain_flow(params_path=root / "params.yaml", root=root)
    assert result.model is not None and result.status != "unchanged", result
    return time.perf_counter() - t1, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--variant", choices=["direct", "flow"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # one variant in this fresh process (BentoML reads its home at import)
        root = Path(args.root)
        _env(root)
        out = direct(root) if args.variant == "direct" else via_flow(root)
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for variant in ("direct", "flow"):
            root = _project(Path(tmp), variant, args.preset)
            run = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--root", str(root)],
                capture_output=True,
                text=True,
                check=True,
            )
            times[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    t_direct = times["direct"]
    t_flow, t_start = times["flow"]
    print(f"preset {args.preset}, {os.cpu_count()} cores")
    print(f"components called directly:        {t_direct:7.1f} s")
    print(f"retraining flow (API already up):  {t_flow:7.1f} s")
    print(f"embedded Prefect API start:        {t_start:7.1f} s")
    print(f"orchestration overhead, API up:    {(t_flow - t_direct) / t_flow:7.1%}")
    total = t_flow + t_start
    print(f"overhead incl. API start:          {(total - t_direct) / total:7.1%}")


if __name__ == "__main__":
    main()
