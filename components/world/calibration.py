"""How the world's watch model compares with real logs: play time against video length.

Under random exposure (KuaiRand's ``is_rand = 1`` log, the world's ``is_random`` slice) the
items shown do not depend on the user, so the relation of play time to video duration is the
watch model's own, not the ranker's. It is summarised by the **duration elasticity**: the
slope ``β`` of the least-squares line

    log E[play | bin b] = c + β·log E[duration | bin b]

over duration bins ``b`` (deciles by default). ``β = 1``: users watch a fixed fraction of
any video, so longer videos earn proportionally more play time; ``β = 0``: play time does
not grow with length. A ranker that maximises expected play seconds is pulled towards long
videos by exactly this slope.

The world's watch model (``components.world.feedback``) gives, for a small watch fraction,
``∂ log play / ∂ log dur ≈ 1 + w_d·(1 − f)``, so the parameter ``feedback.watch_duration``
(``w_d``) sets β.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.io import DataError


@dataclass(frozen=True)
class PlayByDuration:
    """Per duration bin: mean duration, mean play time (both seconds), median watch fraction
    and the number of impressions; ``elasticity`` is β of the module docstring."""

    bins: pd.DataFrame  # columns duration_s, play_s, median_fraction, n
    elasticity: float

    @property
    def mean_play_s(self) -> float:
        b = self.bins
        return float((b["play_s"] * b["n"]).sum() / b["n"].sum())


def play_by_duration(
    play_ms: np.ndarray, duration_ms: np.ndarray, bins: int = 10
) -> PlayByDuration:
    """Bin impressions by duration quantile and fit β (module docstring).

    Impressions with unknown duration (``≤ 0`` or NaN) are left out; at least two distinct
    bins are needed for a slope (:class:`DataError` otherwise).
    """
    play = np.asarray(play_ms, dtype=np.float64)
    dur = np.asarray(duration_ms, dtype=np.float64)
    if play.shape != dur.shape:
        raise ValueError(f"play ({play.shape}) and duration ({dur.shape}) must match")
    keep = np.isfinite(play) & np.isfinite(dur) & (dur > 0)
    play, dur = play[keep], dur[keep]
    if bins < 2 or len(np.unique(dur)) < 2:
        raise DataError(
            f"play-vs-duration needs >= 2 bins and >= 2 distinct durations; got {bins} bins "
            f"over {len(np.unique(dur))} distinct durations ({len(dur)} impressions)"
        )
    frame = pd.DataFrame({"dur": dur / 1000.0, "play": play / 1000.0, "frac": play / dur})
    frame["bin"] = pd.qcut(frame["dur"], bins, duplicates="drop")
    g = frame.groupby("bin", observed=True)
    table = pd.DataFrame(
        {
            "duration_s": g["dur"].mean(),
            "play_s": g["play"].mean(),
            "median_fraction": g["frac"].median(),
            "n": g.size(),
        }
    ).reset_index(drop=True)
    positive = table["play_s"] > 0
    if positive.sum() < 2:
        raise DataError("play-vs-duration: fewer than two bins with any play time")
    t = table[positive]
    slope = float(np.polyfit(np.log(t["duration_s"]), np.log(t["play_s"]), 1)[0])
    return PlayByDuration(table, slope)


def random_slice(requests: pd.DataFrame, impressions: pd.DataFrame) -> pd.DataFrame:
    """The impressions of a world data set's randomly exposed requests (``is_random = 1``)."""
    if "is_random" not in requests:
        raise DataError("the requests table has no 'is_random' column: not world data")
    ids = requests.loc[requests["is_random"] == 1, "request_id"]
    return impressions[impressions["request_id"].isin(ids)]


def kuairand_random_log(paths: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """``play_time_ms`` and ``duration_ms`` of the randomly exposed rows (``is_rand = 1``,
    every row when the column is absent) of KuaiRand log files."""
    frames = []
    for path in paths:
        header = pd.read_csv(path, nrows=0).columns
        missing = {"play_time_ms", "duration_ms"} - set(header)
        if missing:
            raise DataError(f"{path} lacks the column(s) {sorted(missing)}")
        cols = ["play_time_ms", "duration_ms"] + (["is_rand"] if "is_rand" in header else [])
        df = pd.read_csv(path, usecols=cols)
        if "is_rand" in df:
            df = df[df["is_rand"] == 1]
        frames.append(df[["play_time_ms", "duration_ms"]])
    if not frames:
        raise DataError("no KuaiRand log file given")
    return pd.concat(frames, ignore_index=True)


def render_calibration_markdown(results: dict[str, PlayByDuration], command: str) -> str:
    """The report of ``relayrec experiment calibration``: β and mean play per source, then
    the per-bin table of each source."""
    lines = [
        "# Play time against video length under random exposure",
        "",
        f"Produced by `{command}`. Each source's randomly exposed impressions are binned by "
        "duration decile; the duration elasticity β is the slope of log mean play time on "
        "log mean duration over the bins (`components.world.calibration`). β = 1: play "
        "time grows in proportion to length; β = 0: it does not grow at all.",
        "",
        "| source | impressions | mean play (s) | duration elasticity β |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {int(r.bins['n'].sum()):,} | {r.mean_play_s:.1f} | {r.elasticity:.2f} |"
        )
    for name, r in results.items():
        lines += [
            "",
            f"## {name}",
            "",
            "| mean duration (s) | mean play (s) | median watch fraction | impressions |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {row.duration_s:.1f} | {row.play_s:.1f} | {row.median_fraction:.3f} | {row.n:,} |"
            for row in r.bins.itertuples()
        ]
    return "\n".join(lines) + "\n"
