"""Play time against video length: the elasticity fit, the slices it reads and its report."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.io import DataError
from components.world.calibration import kuairand_random_log, play_by_duration, random_slice
from flows.cli import main


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_power_law_play_gives_its_exponent_exactly(beta: float) -> None:
    # play = 2 s · (dur / 1 s)^β for every impression: every bin mean lies on the line
    # only when the bin holds one duration, so give each decile a single duration
    dur_s = np.repeat(np.geomspace(5.0, 300.0, 10), 50)
    play_s = 2.0 * dur_s**beta
    r = play_by_duration(play_s * 1000, dur_s * 1000)
    assert r.elasticity == pytest.approx(beta, abs=1e-9)
    assert len(r.bins) == 10 and (r.bins["n"] == 50).all()
    np.testing.assert_allclose(
        r.bins["median_fraction"], 2.0 * np.geomspace(5.0, 300.0, 10) ** (beta - 1)
    )
    assert r.mean_play_s == pytest.approx(play_s.mean())


def test_noise_independent_of_length_leaves_the_exponent() -> None:
    rng = np.random.default_rng(0)
    dur = rng.uniform(5_000, 300_000, 200_000)
    play = 0.1 * dur**0.4 * rng.lognormal(0.0, 0.8, dur.size)  # E[noise] is one constant
    assert play_by_duration(play, dur).elasticity == pytest.approx(0.4, abs=0.03)


def test_unknown_durations_are_left_out_and_too_little_is_refused() -> None:
    dur = np.array([10_000.0, 20_000.0, 0.0, np.nan] * 5)
    play = np.array([1_000.0, 2_000.0, 99_000.0, 99_000.0] * 5)
    r = play_by_duration(play, dur, bins=2)
    assert r.elasticity == pytest.approx(1.0) and int(r.bins["n"].sum()) == 10
    with pytest.raises(DataError, match="distinct durations"):
        play_by_duration(np.ones(4), np.full(4, 10_000.0))
    with pytest.raises(ValueError, match="must match"):
        play_by_duration(np.ones(3), np.ones(4))


def test_slices_read_only_random_exposure(tmp_path: Path) -> None:
    requests = pd.DataFrame({"request_id": [1, 2, 3], "is_random": [1, 0, 1]})
    impressions = pd.DataFrame({"request_id": [1, 1, 2, 3], "play_time_ms": [1, 2, 3, 4]})
    assert random_slice(requests, impressions)["play_time_ms"].tolist() == [1, 2, 4]
    with pytest.raises(DataError, match="is_random"):
        random_slice(requests.drop(columns="is_random"), impressions)
    log = tmp_path / "log_random.csv"
    pd.DataFrame(
        {"play_time_ms": [5, 6, 7], "duration_ms": [10, 20, 30], "is_rand": [1, 0, 1]}
    ).to_csv(log, index=False)
    assert kuairand_random_log([str(log)])["play_time_ms"].tolist() == [5, 7]
    pd.DataFrame({"play_time_ms": [5]}).to_csv(log, index=False)
    with pytest.raises(DataError, match="duration_ms"):
        kuairand_random_log([str(log)])


def test_calibration_command_reports_that_watch_duration_sets_the_elasticity(
    tmp_path: Path,
) -> None:
    """``w_d`` more negative makes long videos lose watch fraction faster, so β falls."""
    out = tmp_path / "r"
    rc = main(
        [
            "experiment",
            "calibration",
            "--world",
            "feedback.watch_duration=-1.25",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = (out / "calibration.md").read_text()
    rows = dict(
        re.findall(r"^\| (world \(demo[^|]*) \| [\d,]+ \| [\d.]+ \| ([-\d.]+) \|$", text, re.M)
    )
    assert set(rows) == {
        "world (demo), random slice",
        "world (demo, feedback.watch_duration=-1.25), random slice",
    }
    default = float(rows["world (demo), random slice"])
    steeper = float(rows["world (demo, feedback.watch_duration=-1.25), random slice"])
    assert default > steeper + 0.3


@pytest.mark.parametrize("name", ["simulator", "calibration"])
def test_kuairand_experiments_refuse_a_directory_without_kuairand_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    empty, data, out = tmp_path / "empty", tmp_path / "data", tmp_path / "r"
    empty.mkdir()
    args = ["experiment", name, "--kuairand-dir", str(empty), "--data-dir", str(data)]
    assert main([*args, "--out", str(out)]) == 1
    assert "no KuaiRand file" in capsys.readouterr().err
    assert not data.exists() and not out.exists()  # refused before any work


def test_an_auto_found_directory_without_kuairand_files_means_no_real_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import _kuairand_logs

    monkeypatch.setenv("RELAYREC_KUAIRAND_DIR", str(tmp_path))  # exists, holds nothing
    assert _kuairand_logs(None) == (None, ())
    (tmp_path / "log_random_4_22_to_5_08_pure.csv").write_text("user_id\n")
    assert _kuairand_logs(None) == (tmp_path, (tmp_path / "log_random_4_22_to_5_08_pure.csv",))
