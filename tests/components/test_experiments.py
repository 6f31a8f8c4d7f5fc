"""The MMRF experiment command: results files, summary maths, and the logged session history
the agents and the gate rebuild (it must equal what the world showed the policy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.experiments import TABLE_ASPECTS, summarise
from components.features import HISTORY_COLUMNS, session_history
from components.io import read_meta, read_table
from flows.cli import main


def test_summarise_mean_and_sample_std() -> None:
    long = pd.DataFrame(
        {
            "method": ["bc", "bc", "mmrf", "mmrf"],
            "seed": [0, 1, 0, 1],
            "metric": ["true_session_watch_s"] * 4,
            "value": [10.0, 14.0, 20.0, 20.0],
        }
    )
    s = summarise(long)
    assert list(s.index) == ["bc", "mmrf"]
    assert s.loc["bc", "true_session_watch_s"] == 12.0
    assert s.loc["bc", "true_session_watch_s_std"] == pytest.approx(np.sqrt(8.0))  # ddof=1
    assert s.loc["mmrf", "true_session_watch_s_std"] == 0.0


def test_session_history_equals_what_the_world_showed_the_policy() -> None:
    from components.world import World, WorldConfig
    from components.world.policies import Policy

    seen: list[np.ndarray] = []

    class Recording(Policy):
        def rank(self, obs, items, mask, world, rng):  # type: ignore[no-untyped-def]
            seen.append(obs.history.copy())
            return super().rank(obs, items, mask, world, rng)

    world = World(WorldConfig.from_preset("tiny"), seed=3, kuairand_dir=None)
    raw, _ = world.generate(Recording(), days=1)
    requests, impressions = raw["requests"], raw["impressions"]
    shown = np.concatenate(seen)  # request ids are assigned in this same order
    got = session_history(requests, impressions).to_numpy()
    order = np.argsort(requests["request_id"].to_numpy())
    assert got.shape == (len(shown), len(HISTORY_COLUMNS))
    np.testing.assert_allclose(got[order], shown, rtol=1e-6, atol=1e-6)


def test_experiment_command_writes_table_csv_and_plot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert (
        main(["data", "generate", "--preset", "tiny", "--data-dir", str(data), "--no-version"]) == 0
    )
    out = tmp_path / "results"
    rc = main(
        [
            "experiment",
            "mmrf",
            "--seeds",
            "1",
            "--data-dir",
            str(data),
            "--methods",
            "bc,mmrf_ns",
            "--agent-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    long = pd.read_csv(out / "mmrf.csv")
    assert set(long["method"]) == {"logging", "bc", "mmrf_ns"}
    wide = long.pivot_table(index="method", columns="metric", values="value")
    for a in TABLE_ASPECTS:
        assert wide.loc[["bc", "mmrf_ns"], f"gauc_{a}"].between(0, 1).all()
    # on-policy NCIS of the logging policy is the held-out mean watch time per impression;
    # the true value of the logging arm is a rollout and must be positive
    assert wide.loc["logging", "true_session_watch_s"] > 0
    err = wide.loc["bc", "ncis_watch_time"] - wide.loc["bc", "true_watch_per_impression_s"]
    assert wide.loc["bc", "ope_error_watch_per_impression_s"] == pytest.approx(err, rel=1e-5)
    md = (out / "mmrf.md").read_text()
    assert "| bc |" in md and "| mmrf_ns |" in md and "| logging |" in md
    assert "relayrec experiment mmrf --seeds 1" in md
    assert (out / "mmrf.png").stat().st_size > 1000


def test_experiment_rejects_unknown_method(tmp_path: Path) -> None:
    from components.experiments import ExperimentConfig

    with pytest.raises(ValueError, match="unknown method"):
        ExperimentConfig(methods=("bc", "nope"))


def test_simulator_report_table_has_one_cell_per_column() -> None:
    from components.experiments import render_simulator_markdown

    aspects = {"is_click": 0.7, "long_view": 0.8}
    world = {
        "source": "world (tiny, seed 0)",
        "auc": aspects,
        "gauc": aspects,
        "bayes_auc": aspects,
        "prob_mae": {"impressions": aspects, "non_impressions": aspects},
        "play": {"rmse_s": 1.0, "mae_s": 0.5, "mean_expected_s": 2.0, "mean_logged_s": 2.1},
        "uncertainty": {"impressions": 0.01},
        "fit_seconds": 3.0,
    }
    real = {k: v for k, v in world.items() if k not in ("bayes_auc", "prob_mae")}
    md = render_simulator_markdown({"world": world, "KuaiRand": real}, "cmd")
    rows = [line for line in md.splitlines() if line.startswith("|")]
    widths = {
        line.count("|") for line in rows if "Bayes" in line or "0.7000 | 0.7000 | 0.7" in line
    }
    assert widths == {7}  # 6 columns with the truth, header, separator and rows alike
    assert "| is_click | 0.7000 | 0.7000 |" in md and "Fit 3 s" in md
    for line in rows:
        assert line.count("|") in (4, 7)


def test_world_overrides_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    args = ["data", "generate", "--preset", "tiny", "--data-dir", str(data), "--no-version"]
    assert main([*args, "--world", "funnel.rank_noise=1.5", "--world", "days=2"]) == 0
    meta = read_meta(data)
    assert meta.preset == "custom" and meta.params["world"]["funnel"]["rank_noise"] == 1.5
    assert sorted(read_table(data, "requests")["day"].unique()) == [0, 1]
    assert main([*args, "--world", "funnel.no_such=1"]) == 1
    assert "unknown world parameter 'funnel.no_such'" in capsys.readouterr().err
    assert main([*args, "--world", "rank_noise"]) == 1
    assert "--world takes KEY=VALUE" in capsys.readouterr().err
    # an experiment refuses a data set made with another world than the one it asks for
    other = ["experiment", "mmrf", "--data-dir", str(data), "--out", str(tmp_path / "r")]
    assert main([*other, "--world", "funnel.rank_noise=1.0"]) == 1
    assert "another world" in capsys.readouterr().err
