"""The MMRF experiment command: results files, summary maths, and the logged session history
the agents and the gate rebuild (it must equal what the world showed the policy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.experiments import TABLE_ASPECTS, contrasts, summarise
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


def test_contrasts_are_paired_by_seed() -> None:
    watch = {  # per seed: mmrf, mmrf_da, mmrf_co, mmrf_oracle
        0: (100.0, 90.0, 99.0, 120.0),
        1: (200.0, 180.0, 210.0, 230.0),
        2: (150.0, 140.0, 149.0, 160.0),
    }
    rows = [
        {"method": m, "seed": seed, "metric": "true_session_watch_s", "value": v}
        for seed, values in watch.items()
        for m, v in zip(("mmrf", "mmrf_da", "mmrf_co", "mmrf_oracle"), values, strict=True)
    ]
    rows.append({"method": "mmrf", "seed": 0, "metric": "depth", "value": 1.0})
    c = contrasts(pd.DataFrame(rows)).set_index(["method", "baseline"])
    # mmrf − mmrf_da = 10, 20, 10: mean 40/3, sample std sqrt(100/3) ≈ 5.77 < mean: clear
    row = c.loc[("mmrf", "mmrf_da")]
    assert row["mean"] == pytest.approx(40 / 3)
    assert row["std"] == pytest.approx(np.sqrt(100 / 3))
    assert bool(row["clear"]) and row["n"] == 3
    # mmrf − mmrf_co = 1, −10, 1: mean −8/3, std ≈ 6.35 > |mean|: not clear
    row = c.loc[("mmrf", "mmrf_co")]
    assert row["mean"] == pytest.approx(-8 / 3) and not bool(row["clear"])
    assert c.loc[("mmrf_oracle", "mmrf_da"), "mean"] == pytest.approx(100 / 3)
    assert c.loc[("mmrf", "mmrf_oracle"), "mean"] == pytest.approx(-20.0)
    assert ("mmrf", "mmrf_ns") not in c.index  # no mmrf_ns runs: no row
    one_seed = contrasts(pd.DataFrame([r for r in rows if r["seed"] == 0]))
    assert not one_seed["clear"].any() and one_seed["std"].isna().all()


def test_rank_correlation_matches_scipy_per_row() -> None:
    from scipy.stats import spearmanr

    from components.experiments import _row_rank_corr

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 9)), rng.normal(size=(40, 9))
    mask = np.arange(9)[None, :] < rng.integers(1, 10, size=40)[:, None]
    want = [
        spearmanr(x[i][mask[i]], y[i][mask[i]]).statistic for i in range(40) if mask[i].sum() >= 3
    ]
    assert _row_rank_corr(x, y, mask) == pytest.approx(np.mean(want), rel=1e-12)
    assert _row_rank_corr(x, 2 * x + 1, mask) == pytest.approx(1.0)
    assert _row_rank_corr(x, -x, mask) == pytest.approx(-1.0)


def test_candidate_metrics_of_the_truth_itself() -> None:
    """A policy that scores by the true affinity picks the best slate of the logged
    candidates and has rank correlation 1; scoring by its negative picks the worst."""
    from types import SimpleNamespace

    from components.experiments import (
        candidate_metrics,
        held_out,
        logging_candidate_metrics,
        true_candidates,
    )
    from components.training import split_by_day
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=1)
    held = held_out(tables, np.asarray(split_by_day(tables["requests"], 1).holdout_request_ids))
    cands = true_candidates(held, tables["truth"])
    # every held-out impression is a shown candidate, with the truth table's affinity
    assert cands.shown.sum() == len(held.impressions)
    assert (cands.mask.sum(axis=1) > cands.shown.sum(axis=1)).any()  # plus non-impressions
    ref = logging_candidate_metrics(held, cands)

    def policy(sign: float) -> SimpleNamespace:
        return SimpleNamespace(score=lambda users, items, hour, pos: sign * cands.affinity)

    best = candidate_metrics(policy(1.0), held, cands)
    assert best["cand_top_affinity"] == pytest.approx(ref["cand_best_affinity"])
    assert best["cand_rank_corr"] == pytest.approx(1.0)
    worst = candidate_metrics(policy(-1.0), held, cands)
    assert worst["cand_rank_corr"] == pytest.approx(-1.0)
    assert worst["cand_top_affinity"] < ref["cand_top_affinity"] < best["cand_top_affinity"]
    assert ref["cand_top_shown"] == 1.0 and 0.0 <= worst["cand_top_shown"] < 1.0


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
            "bc,mmrf_ns,mmrf_oracle",
            "--agent-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    long = pd.read_csv(out / "mmrf.csv")
    assert set(long["method"]) == {"logging", "bc", "mmrf_ns", "mmrf_oracle"}
    wide = long.pivot_table(index="method", columns="metric", values="value")
    for a in TABLE_ASPECTS:
        assert wide.loc[["bc", "mmrf_ns", "mmrf_oracle"], f"gauc_{a}"].between(0, 1).all()
    # on-policy NCIS of the logging policy is the held-out mean watch time per impression;
    # the true value of the logging arm is a rollout and must be positive
    assert wide.loc["logging", "true_session_watch_s"] > 0
    err = wide.loc["bc", "ncis_watch_time"] - wide.loc["bc", "true_watch_per_impression_s"]
    assert wide.loc["bc", "ope_error_watch_per_impression_s"] == pytest.approx(err, rel=1e-5)
    md = (out / "mmrf.md").read_text()
    assert "| bc |" in md and "| mmrf_ns |" in md and "| logging |" in md
    assert "relayrec experiment mmrf --seeds 1" in md
    assert (out / "mmrf.png").stat().st_size > 1000
    assert "| mmrf_oracle |" in md
    assert "## Ranking the logged candidates" in md
    assert wide.loc["logging", "cand_top_shown"] == 1.0
    assert wide.loc["bc", "cand_top_affinity"] <= wide.loc["logging", "cand_best_affinity"]

    # the oracle needs the world's truth: data without it is refused before any training
    from components.experiments import ExperimentConfig, run_experiment

    meta = json.loads((data / "meta.json").read_text())
    meta["tables"] = [t for t in meta["tables"] if t != "truth"]
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no truth table"):
        run_experiment(data, ExperimentConfig(methods=("mmrf_oracle",), seeds=(0,)))


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


def test_experiment_reuses_a_data_set_made_with_its_world(tmp_path: Path) -> None:
    """The same overrides find the data set they made (its meta.json stores tuples as
    lists), so a second experiment on it does not regenerate or refuse it."""
    from flows.cli import _ensure_world_data

    data = tmp_path / "data"
    world = ["days=2", "quality_scale=1.2"]
    assert _ensure_world_data(data, world)  # generates demo data with the overrides
    stamp = (data / "requests.parquet").stat().st_mtime_ns
    assert read_meta(data).params["world"]["funnel"]["match_buckets"] == [40, 60, 90, 120]
    assert _ensure_world_data(data, world)
    assert (data / "requests.parquet").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(ValueError, match="another world"):
        _ensure_world_data(data, ["days=2"])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--ranker-temperature", "0", "temperature must be > 0"),
        ("--agent-temperature", "0", "temperature must be > 0"),
        ("--session-credit", "-1", "session_credit must be >= 0"),
        ("--mc-weight", "1.5", "mc_weight in [0, 1]"),
    ],
)
def test_experiment_refuses_a_bad_agent_setting_before_touching_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    data = tmp_path / "data"
    args = ["experiment", "mmrf", "--data-dir", str(data), "--out", str(tmp_path / "r")]
    assert main([*args, flag, value]) == 1
    assert message in capsys.readouterr().err
    assert not data.exists()  # refused before any data set was generated
