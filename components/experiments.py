"""The MMRF experiment: every ranking method on the same logs, offline and in the world.

``relayrec experiment mmrf --seeds 3`` trains, per seed, the supervised baselines (behaviour
cloning = the multi-task ranker, Wide & Deep, DeepFM), TSCAC, MMRF and its ablations
(MMRF-CO, MMRF-DA, MMRF-NS) on the training days of one data set, plus ``mmrf_oracle``:
MMRF whose non-impression sample is labelled with the world's exact expected feedback
instead of the simulator's (the best any simulator could do; world data only). Each is
scored on the held-out day:

- GAUC per aspect (the paper's Table 1): the method's score for that aspect against the
  logged label, per user (``components.evaluation.gauc``). Supervised models use their
  aspect probability; agents their aspect agent's action (the Hate agent's action is a
  "no hate" score, so its negative is used). WatchTime's label is ``play_time_ms`` above
  the held-out day's median, scored by the ranking score.
- NCIS per aspect (item-wise Plackett–Luce propensities over the logged candidates, as the
  gate computes them; ``components.gate``);
- when the data came from the world, the true online value from ``World.rollout`` of a
  fresh day: session watch time, depth and aspect totals per session, and the OPE error
  ``NCIS − true`` of watch time per impression.

Results are returned long (one row per method, seed, metric) and summarised as mean ± std
over seeds by :func:`write_results` (markdown, CSV, plot).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.agent_data import AGENTS
from components.agents import TrainedAgents, train_agents, with_variant
from components.evaluation import gauc, per_aspect_ncis
from components.gate import LoggedSlates, logged_slates, target_propensities
from components.io import read_meta, read_table
from components.training import split_by_day, train_ranker
from models.mmrf import AgentsConfig
from models.ranker import ASPECTS, RankerConfig

SUPERVISED = {"bc": "mlp", "wide_deep": "wide_deep", "deepfm": "deepfm"}
AGENT_METHODS = ("tscac", "mmrf_nc", "mmrf_co", "mmrf_da", "mmrf_ns", "mmrf")
ORACLE = "mmrf_oracle"
"""MMRF trained with the world's exact expected feedback on its non-impression sample
(``components.simulator.TruthLabeller``): the upper bound of any feedback simulator."""
METHODS: tuple[str, ...] = (*SUPERVISED, *AGENT_METHODS, ORACLE)
TABLE_ASPECTS: tuple[str, ...] = (
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_hate",
    "long_view",
    "watch_time",
)
"""The paper's Table 1 columns, in its order."""

TABLES = ("users", "items", "requests", "impressions", "non_impressions", "pools")


@dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment runs: methods, seeds, model configs, evaluation settings."""

    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    ranker: RankerConfig = field(default_factory=lambda: RankerConfig(temperature=10.0))
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    holdout_days: int = 1
    ncis_cap: float = 10.0
    n_boot: int = 200
    rollout_days: int = 1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if not self.seeds:
            raise ValueError("the experiment needs at least one seed")


Policy = Any  # TrainedRanker | TrainedAgents


def aspect_scores(model: Policy, holdout: pd.DataFrame, history: np.ndarray) -> dict[str, Any]:
    """Per held-out impression, the method's score for every Table-1 aspect (higher = more
    of the aspect)."""
    users = holdout["user_id"].to_numpy()
    items = holdout["item_id"].to_numpy()
    hour = holdout["hour"].to_numpy()
    pos = holdout["position_in_session"].to_numpy()
    if isinstance(model, TrainedAgents):
        a = model.actions(users, items[:, None], hour, pos, history)[:, 0, :]
        out = {agent: a[:, j] for j, agent in enumerate(AGENTS) if agent != "watch_time"}
        out["is_hate"] = -out["is_hate"]
        out["watch_time"] = a[:, 0]
        return out
    pred = model.predict(users, items, hour, pos)
    out = {a: pred.aspect_probs[:, k] for k, a in enumerate(ASPECTS)}
    out["watch_time"] = pred.score
    return out


@dataclass(frozen=True, eq=False)
class HeldOut:
    """The held-out requests, rebuilt once for every method: the logged slates (as the gate
    sees them), their impressions with ``hour`` and ``position_in_session``, and each
    impression's session history (its request's ``slates.history`` row)."""

    slates: LoggedSlates
    impressions: pd.DataFrame
    history: np.ndarray


def held_out(tables: Mapping[str, pd.DataFrame], holdout_ids: np.ndarray) -> HeldOut:
    slates = logged_slates(tables["requests"], tables["impressions"], tables["pools"], holdout_ids)
    context = tables["requests"][["request_id", "hour", "position_in_session"]]
    imp = slates.impressions.merge(context, on="request_id", how="left", validate="many_to_one")
    k = slates.slate.shape[1]  # impressions are aligned with slate.ravel(): K rows a request
    return HeldOut(slates, imp, np.repeat(slates.history, k, axis=0))


@dataclass(frozen=True, eq=False)
class TrueCandidates:
    """World data only: each held-out request's logged candidates whose true affinity the
    ``truth`` table holds (the shown items and the logged non-impressions), padded to
    ``(R, C)``, in the order of ``HeldOut.slates`` (whose users, context and history they
    share)."""

    items: np.ndarray  # (R, C) item ids, padded with the row's first item
    mask: np.ndarray  # (R, C)
    shown: np.ndarray  # (R, C) shown by the logging policy
    affinity: np.ndarray  # (R, C) true affinity a_ui at that request (0 where masked)


def true_candidates(held: HeldOut, truth: pd.DataFrame) -> TrueCandidates:
    """:class:`TrueCandidates` of the held-out requests from the world's truth table."""
    rid = held.slates.request_id
    t = truth[truth["request_id"].isin(rid)]
    row = pd.Series(np.arange(len(rid)), index=rid).loc[t["request_id"].to_numpy()].to_numpy()
    order = np.lexsort((-t["shown"].to_numpy(), row))
    row = row[order]
    counts = np.bincount(row, minlength=len(rid))
    col = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = int(counts.max(initial=1))
    items = np.zeros((len(rid), width), np.int64)
    mask = np.zeros((len(rid), width), bool)
    shown = np.zeros((len(rid), width), bool)
    affinity = np.zeros((len(rid), width))
    items[row, col] = t["item_id"].to_numpy(np.int64)[order]
    mask[row, col] = True
    shown[row, col] = t["shown"].to_numpy()[order] == 1
    affinity[row, col] = t["affinity"].to_numpy(np.float64)[order]
    return TrueCandidates(np.where(mask, items, items[:, :1]), mask, shown, affinity)


def _top_k(scores: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest unmasked scores of each row."""
    return np.argsort(-np.where(mask, scores, -np.inf), axis=1, kind="stable")[:, :k]


def _row_rank_corr(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Mean over rows with ≥ 3 entries of Spearman's correlation of ``x`` and ``y`` over the
    unmasked entries (ranks by double argsort; ties are not averaged)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(np.where(mask, v, np.inf), axis=1), axis=1).astype(float)

    n = mask.sum(axis=1)
    rx, ry = ranks(x), ranks(y)
    mean = np.where(n > 0, (n - 1) / 2.0, 0.0)[:, None]
    dx, dy = np.where(mask, rx - mean, 0.0), np.where(mask, ry - mean, 0.0)
    den = np.sqrt((dx**2).sum(1) * (dy**2).sum(1))
    ok = (n >= 3) & (den > 0)
    return float(((dx * dy).sum(1)[ok] / den[ok]).mean()) if ok.any() else float("nan")


def candidate_metrics(model: Policy, held: HeldOut, cands: TrueCandidates) -> dict[str, float]:
    """How the method ranks the logged candidates by the world's truth: the mean true
    affinity of its top ``K`` (the slate size), the share of those the logging policy
    showed, and the per-request rank correlation of its score with the true affinity."""
    from components.world.policies import call_score

    s = held.slates
    scores = call_score(model.score, s.user_id, cands.items, s.hour, s.position, s.history)
    top = _top_k(scores, cands.mask, s.slate.shape[1])
    return {
        "cand_top_affinity": float(np.take_along_axis(cands.affinity, top, 1).mean()),
        "cand_top_shown": float(np.take_along_axis(cands.shown, top, 1).mean()),
        "cand_rank_corr": _row_rank_corr(scores, cands.affinity, cands.mask),
    }


def logging_candidate_metrics(held: HeldOut, cands: TrueCandidates) -> dict[str, float]:
    """The logging policy's row of :func:`candidate_metrics` (the items it showed) and the
    best ``K`` of the logged candidates by true affinity (``cand_best_affinity``)."""
    k = held.slates.slate.shape[1]
    best = _top_k(cands.affinity, cands.mask, k)
    return {
        "cand_top_affinity": float(cands.affinity[cands.shown].mean()),
        "cand_top_shown": 1.0,
        "cand_best_affinity": float(np.take_along_axis(cands.affinity, best, 1).mean()),
    }


def offline_metrics(
    model: Policy, held: HeldOut, config: ExperimentConfig, seed: int
) -> dict[str, float]:
    """GAUC and NCIS per aspect on the held-out requests."""
    slates, imp = held.slates, held.impressions
    scores = aspect_scores(model, imp, held.history)
    out: dict[str, float] = {}
    labels = {a: imp[a].to_numpy() for a in TABLE_ASPECTS if a != "watch_time"}
    play = imp["play_time_ms"].to_numpy()
    labels["watch_time"] = (play > np.median(play)).astype(np.int64)
    for a in TABLE_ASPECTS:
        out[f"gauc_{a}"] = gauc(labels[a], scores[a], imp["user_id"].to_numpy()).value
    pi = target_propensities(model.score, model.temperature, slates)
    table = per_aspect_ncis(
        slates.impressions, pi, cap=config.ncis_cap, n_boot=config.n_boot, seed=seed
    ).set_index("aspect")
    for a in TABLE_ASPECTS:
        key = "play_time_ms" if a == "watch_time" else a
        value = float(table.loc[key, "value"])
        out[f"ncis_{a}"] = value / 1000.0 if a == "watch_time" else value
    out["ncis_ess"] = float(table.loc["play_time_ms", "ess"])
    out["logging_ncis_watch_time"] = float(table.loc["play_time_ms", "baseline_value"]) / 1000
    return out


def true_metrics(world: Any, policy: Any, seed: int, days: int) -> dict[str, float]:
    """``World.rollout`` of ``policy``: session watch time, depth and aspects per session."""
    s = world.rollout(policy, seed=seed, days=days).summary()
    k = world.config.funnel.slate_size
    out = {
        "true_session_watch_s": s["session_watch_time_s"],
        "true_depth": s["depth"],
        "true_watch_per_impression_s": s["session_watch_time_s"] / (s["depth"] * k),
        "true_retention": s["retention"],
    }
    for a in ("click", "like", "follow", "comment", "hate", "long_view"):
        out[f"true_{a}_per_session"] = s[f"{a}_per_session"]
    return out


def train_method(
    method: str,
    tables: Mapping[str, pd.DataFrame],
    config: ExperimentConfig,
    seed: int,
    labeller_factory: Callable[[str], Any],
    inspect: Callable[[Any], None] | None = None,
) -> Policy:
    """Train one method on the training days; ``labeller_factory(method)`` gives the
    non-impression labeller of a method that simulates them (MMRF, MMRF-CO, the oracle).
    ``inspect`` is passed to ``train_agents`` (agent methods only: the trained module)."""
    if method in SUPERVISED:
        from dataclasses import replace

        rc = replace(config.ranker, architecture=SUPERVISED[method])
        return train_ranker(tables, rc, seed=seed, holdout_days=config.holdout_days)
    agents_config = with_variant(config.agents, "mmrf" if method == ORACLE else method)
    simulated = agents_config.non_impressions == "simulated"
    labeller = labeller_factory(method) if simulated else None
    return train_agents(
        tables,
        agents_config,
        seed=seed,
        holdout_days=config.holdout_days,
        labeller=labeller,
        name=method,
        inspect=inspect,
    )


def method_labellers(
    tables: Mapping[str, pd.DataFrame],
    truth: pd.DataFrame | None,
    train_ids: np.ndarray,
    seed: int,
    progress: Callable[[str], None] = print,
) -> Callable[[str], Any]:
    """The ``labeller_factory`` of :func:`train_method` for one seed: ``mmrf_oracle`` gets a
    ``TruthLabeller`` on ``truth``; every other simulating method shares one feedback
    simulator, fitted on ``train_ids`` the first time a method asks for it."""
    from components.simulator import SimulatorLabeller, TruthLabeller, fit_simulator

    cache: dict[str, Any] = {}

    def labeller(method: str) -> Any:
        if method == ORACLE:
            if truth is None:
                raise ValueError(f"{ORACLE} needs the world's truth table; this data has none")
            return TruthLabeller(tables, truth)
        if "sim" not in cache:
            t0 = time.perf_counter()
            cache["sim"] = fit_simulator(tables, seed=seed, request_ids=train_ids)
            progress(f"  seed {seed}: simulator fitted in {time.perf_counter() - t0:.0f} s")
        return SimulatorLabeller(cache["sim"], tables, seed=seed)

    return labeller


def run_experiment(
    data_dir: str | Path,
    config: ExperimentConfig,
    progress: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Every method × seed: train, score offline, and (world data) roll out. Long format:
    columns ``method, seed, metric, value``."""
    from components.world import LoggingPolicy, ScoredRankingPolicy, World, WorldConfig

    meta = read_meta(data_dir)
    tables = {t: read_table(data_dir, t) for t in TABLES if t in meta.tables}
    missing = [t for t in ("pools", "non_impressions") if t not in tables]
    if missing:
        raise ValueError(
            f"the MMRF experiment needs the {missing} table(s) (logged candidates for NCIS "
            f"and non-impressions for the simulator); {meta.source} data lacks them"
        )
    if ORACLE in config.methods and "truth" not in meta.tables:
        raise ValueError(
            f"{ORACLE} labels non-impressions with the world's exact feedback, and "
            f"{meta.source} data has no truth table; leave it out of --methods"
        )
    truth = read_table(data_dir, "truth") if "truth" in meta.tables else None
    split = split_by_day(tables["requests"], config.holdout_days)
    held = held_out(tables, np.asarray(split.holdout_request_ids))
    cands = true_candidates(held, truth) if truth is not None else None
    logging_cands = logging_candidate_metrics(held, cands) if cands is not None else None
    world = (
        World(WorldConfig.from_dict(meta.params["world"]), seed=meta.seed)
        if meta.source == "world"
        else None
    )
    rows: list[dict[str, Any]] = []

    def add(method: str, seed: int, metrics: Mapping[str, float]) -> None:
        rows.extend(
            {"method": method, "seed": seed, "metric": k, "value": float(v)}
            for k, v in metrics.items()
        )

    train_ids = np.asarray(split.train_request_ids)
    for seed in config.seeds:
        labeller = method_labellers(tables, truth, train_ids, seed, progress)
        if world is not None:
            add("logging", seed, true_metrics(world, LoggingPolicy(), 1000 + seed, 1))
        if logging_cands is not None:
            add("logging", seed, logging_cands)  # the same logs every seed
        for method in config.methods:
            t0 = time.perf_counter()
            model = train_method(method, tables, config, seed, labeller)
            fit_s = time.perf_counter() - t0
            metrics = offline_metrics(model, held, config, seed)
            metrics["fit_seconds"] = fit_s
            if cands is not None:
                metrics |= candidate_metrics(model, held, cands)
            if world is not None:
                policy = ScoredRankingPolicy(model.score, model.temperature, name=method)
                metrics |= true_metrics(world, policy, 1000 + seed, config.rollout_days)
                metrics["ope_error_watch_per_impression_s"] = (
                    metrics["ncis_watch_time"] - metrics["true_watch_per_impression_s"]
                )
            add(method, seed, metrics)
            true_watch = metrics.get("true_session_watch_s", float("nan"))
            progress(
                f"  seed {seed} {method:>9}: fit {fit_s:5.0f} s, GAUC watch "
                f"{metrics['gauc_watch_time']:.4f}, NCIS watch {metrics['ncis_watch_time']:.2f} "
                f"s/impression, true session watch {true_watch:.0f} s"
            )
    return pd.DataFrame(rows)


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds: one row per method, columns ``<metric>`` and
    ``<metric>_std``, methods in ``METHODS`` order (the logging policy first)."""
    g = long.groupby(["method", "metric"])["value"]
    mean = g.mean().unstack("metric")
    std = g.std(ddof=1).unstack("metric").fillna(0.0).add_suffix("_std")
    out = mean.join(std)
    order = [m for m in ("logging", *METHODS) if m in out.index]
    return out.loc[order]


CONTRASTS: tuple[tuple[str, str, str], ...] = (
    ("learning from simulated non-impressions", "mmrf", "mmrf_da"),
    ("simulated labels vs a constant negative", "mmrf", "mmrf_ns"),
    ("attentive collaboration vs concatenation", "mmrf", "mmrf_co"),
    ("collaboration at all (attention and auxiliary actions)", "mmrf", "mmrf_nc"),
    ("exact labels on non-impressions (upper bound)", ORACLE, "mmrf_da"),
    ("simulator vs exact labels", "mmrf", ORACLE),
)
"""The ablations' questions as (question, method, baseline) pairs of :func:`contrasts`."""


def contrasts(long: pd.DataFrame, metric: str = "true_session_watch_s") -> pd.DataFrame:
    """Paired differences ``method − baseline`` of ``metric`` per seed (the two share the
    training seed, the data and the rollout seed), for each :data:`CONTRASTS` pair present:
    columns ``question, method, baseline, mean, std, n, clear``; ``clear`` when
    ``|mean| > std`` over at least two seeds (the difference exceeds its seed-to-seed
    spread)."""
    wide = long[long["metric"] == metric].pivot_table(
        index="seed", columns="method", values="value"
    )
    rows = []
    for question, method, baseline in CONTRASTS:
        if method not in wide.columns or baseline not in wide.columns:
            continue
        d = (wide[method] - wide[baseline]).dropna()
        std = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
        rows.append(
            {
                "question": question,
                "method": method,
                "baseline": baseline,
                "mean": float(d.mean()),
                "std": std,
                "n": len(d),
                "clear": bool(len(d) > 1 and abs(d.mean()) > std),
            }
        )
    return pd.DataFrame(
        rows, columns=["question", "method", "baseline", "mean", "std", "n", "clear"]
    )


def _pm(s: pd.DataFrame, method: str, metric: str, fmt: str) -> str:
    if metric not in s.columns or pd.isna(s.loc[method, metric]):
        return "–"
    return f"{s.loc[method, metric]:{fmt}} ± {s.loc[method, metric + '_std']:{fmt}}"


def render_markdown(long: pd.DataFrame, command: str, source: str) -> str:
    """The results page: Table 1 (GAUC, NCIS per aspect) and the world's true values."""
    s = summarise(long)
    seeds = sorted(int(x) for x in long["seed"].unique())
    methods = [m for m in METHODS if m in s.index]
    lines = [
        "# MMRF experiment: ranking methods offline and in the world",
        "",
        f"Produced by `{command}` on {source} data; mean ± std over seeds {seeds} "
        "(training seeds; each seed also rolls the world out with its own seed).",
        "",
        "## Table 1 layout: GAUC and NCIS per aspect on the held-out day",
        "",
        "NCIS: item-wise Plackett–Luce propensities over the logged candidates, cap "
        "10; aspects are rates per impression, WatchTime seconds per impression.",
        "",
        "| method | " + " | ".join(f"{a} GAUC | {a} NCIS" for a in TABLE_ASPECTS) + " |",
        "|---|" + "---|---|" * len(TABLE_ASPECTS),
    ]
    for m in methods:
        cells = []
        for a in TABLE_ASPECTS:
            cells.append(_pm(s, m, f"gauc_{a}", ".4f"))
            cells.append(_pm(s, m, f"ncis_{a}", ".4g"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if "true_session_watch_s" in s.columns:
        lines += [
            "",
            "## True online value (World.rollout, one fresh day per seed)",
            "",
            "| method | session watch time (s) | depth | watch / impression (s) | "
            "NCIS watch / impression (s) | NCIS − true (s) | likes / session | "
            "comments / session | hates / session | fit (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in ["logging", *methods]:
            if m not in s.index:
                continue
            lines.append(
                f"| {m} | {_pm(s, m, 'true_session_watch_s', '.0f')} | "
                f"{_pm(s, m, 'true_depth', '.2f')} | "
                f"{_pm(s, m, 'true_watch_per_impression_s', '.1f')} | "
                f"{_pm(s, m, 'ncis_watch_time', '.1f')} | "
                f"{_pm(s, m, 'ope_error_watch_per_impression_s', '.1f')} | "
                f"{_pm(s, m, 'true_like_per_session', '.2f')} | "
                f"{_pm(s, m, 'true_comment_per_session', '.2f')} | "
                f"{_pm(s, m, 'true_hate_per_session', '.3f')} | "
                f"{_pm(s, m, 'fit_seconds', '.0f')} |"
            )
        ranked = s.loc[methods, "true_session_watch_s"].sort_values(ascending=False)
        lines += [
            "",
            "Order by true session watch time: "
            + " > ".join(f"{m} ({v:.0f})" for m, v in ranked.items()),
        ]
    if "cand_top_affinity" in s.columns:
        best = s.loc["logging", "cand_best_affinity"] if "logging" in s.index else float("nan")
        lines += [
            "",
            "## Ranking the logged candidates by the world's truth (held-out day)",
            "",
            "Candidates: the shown items and the logged non-impressions of each held-out "
            "request, with their true affinity at that request (the truth table). The logging "
            f"row is the items it showed; the best slate of these candidates has a mean true "
            f"affinity of {best:.3f}.",
            "",
            "| method | true affinity of its top K | share the logging policy showed | "
            "rank correlation with true affinity |",
            "|---|---|---|---|",
        ]
        for m in ["logging", *methods]:
            if m in s.index:
                lines.append(
                    f"| {m} | {_pm(s, m, 'cand_top_affinity', '.3f')} | "
                    f"{_pm(s, m, 'cand_top_shown', '.2f')} | "
                    f"{_pm(s, m, 'cand_rank_corr', '.3f')} |"
                )
    if "true_session_watch_s" in s.columns:
        effects = contrasts(long)
        if len(effects):
            lines += [
                "",
                "## Do the ablated parts matter? (true session watch time, paired by seed)",
                "",
                "Difference method − baseline per seed (same data, training and rollout "
                "seed), mean ± std over seeds; *clear* when |mean| exceeds the std.",
                "",
                "| question | method − baseline | difference (s) | clear |",
                "|---|---|---|---|",
            ]
            for e in effects.itertuples():
                std = "–" if np.isnan(e.std) else f"{e.std:.0f}"
                verdict = "yes" if e.clear else ("no" if e.n > 1 else "n/a (1 seed)")
                lines.append(
                    f"| {e.question} | {e.method} − {e.baseline} | {e.mean:+.0f} ± {std} | "
                    f"{verdict} |"
                )
    ranked_ncis = s.loc[methods, "ncis_watch_time"].sort_values(ascending=False)
    lines += [
        "",
        "Order by WatchTime NCIS: " + " > ".join(f"{m} ({v:.1f})" for m, v in ranked_ncis.items()),
        "",
        "Raw per-seed values: `mmrf.csv`; plot: `mmrf.png`.",
    ]
    return "\n".join(lines) + "\n"


def write_results(
    long: pd.DataFrame, out_dir: str | Path, command: str, source: str
) -> dict[str, Path]:
    """``mmrf.md``, ``mmrf.csv`` (long, per seed) and ``mmrf.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "mmrf.md", "csv": out / "mmrf.csv", "png": out / "mmrf.png"}
    long.to_csv(paths["csv"], index=False, float_format="%.6g")
    paths["md"].write_text(render_markdown(long, command, source))
    _plot(summarise(long), paths["png"])
    return paths


def _plot(s: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "true_session_watch_s" if "true_session_watch_s" in s.columns else "ncis_watch_time"
    label = (
        "true session watch time (s)"
        if metric == "true_session_watch_s"
        else "NCIS watch time / impression (s)"
    )
    s = s[s[metric].notna()]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(s))
    ax.bar(x, s[metric], yerr=s[metric + "_std"], capsize=3, color="tab:blue")
    ax.set_xticks(x, s.index, rotation=30, ha="right")
    ax.set_ylabel(label)
    ax.set_title("MMRF experiment: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_methods(text: str | None) -> Sequence[str]:
    """``"bc,mmrf"`` → ``("bc", "mmrf")``; ``None`` → every method."""
    if not text:
        return METHODS
    return tuple(m.strip() for m in text.split(",") if m.strip())


# ------------------------------------------------------------- simulator accuracy


def _num(v: float | None) -> str:
    """``v`` to 4 decimals; ``n/a`` for a missing or undefined value (e.g. an AUC of an
    aspect with one label class, stored as JSON null)."""
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.4f}"


def _bias_table(means: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """Mean predicted vs mean true value on impressions and non-impressions: the simulator's
    labels of what the logging policy did not show, against the truth."""
    lines = [
        "",
        "Selection bias: mean predicted vs mean true value (the simulator's labels of what the "
        "logging policy did not show, against the truth).",
        "",
        "| | impressions: predicted | true | non-impressions: predicted | true |",
        "|---|---|---|---|---|",
    ]
    imp, ni = means["impressions"], means.get("non_impressions")
    for name in imp["predicted"]:
        cells = [_num(imp["predicted"][name]), _num(imp["true"][name])]
        cells += [_num(ni["predicted"][name]), _num(ni["true"][name])] if ni else ["n/a"] * 2
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


SIMULATOR_TABLES = ("users", "items", "requests", "impressions", "non_impressions", "truth")
"""What the simulator is fitted and scored on (``truth`` only exists for world data)."""


def fit_and_evaluate_simulator(
    data_dir: str | Path,
    config: Any = None,
    seed: int = 0,
    holdout_days: int = 1,
) -> tuple[Any, dict[str, Any]]:
    """Fit the feedback simulator (``config``: a ``SimulatorConfig``, default when None) on
    all but the last ``holdout_days`` day(s) of ``data_dir`` and evaluate it on the held-out
    days (``components.simulator.evaluate_simulator``, plus ``fit_seconds`` and ``source``).
    Returns the ``TrainedSimulator`` and that report."""
    from components.simulator import evaluate_simulator, fit_simulator

    meta = read_meta(data_dir)
    tables = {t: read_table(data_dir, t) for t in SIMULATOR_TABLES if t in meta.tables}
    split = split_by_day(tables["requests"], holdout_days)
    t0 = time.perf_counter()
    sim = fit_simulator(tables, config, seed=seed, request_ids=np.asarray(split.train_request_ids))
    fit_s = time.perf_counter() - t0
    result = evaluate_simulator(sim, tables, np.asarray(split.holdout_request_ids))
    result["fit_seconds"] = fit_s
    result["source"] = (
        f"{meta.source} ({meta.preset}, seed {meta.seed})" if meta.preset else meta.source
    )
    return sim, result


def simulator_report(data_dir: str | Path, seed: int = 0, holdout_days: int = 1) -> dict[str, Any]:
    """The held-out report of :func:`fit_and_evaluate_simulator` with the default config."""
    return fit_and_evaluate_simulator(data_dir, seed=seed, holdout_days=holdout_days)[1]


def render_simulator_markdown(reports: Mapping[str, Mapping[str, Any]], command: str) -> str:
    """One table per data set: AUC, GAUC, (world) Bayes-optimal AUC and the mean absolute
    error of the predicted vs the true probability on impressions and on non-impressions
    (selection bias shows as a larger error on the candidates the logging policy did not
    show); play-time error and uncertainty below it."""
    lines = [
        "# Feedback simulator: held-out accuracy",
        "",
        f"Produced by `{command}`. Fitted on every day but the last, scored on the last day.",
    ]
    for name, r in reports.items():
        lines += ["", f"## {name}: {r['source']}", ""]
        has_truth = "bayes_auc" in r
        head = "| aspect | AUC | GAUC |"
        if has_truth:
            head += " Bayes-optimal AUC | prob. error, impressions | prob. error, non-impressions |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for a, v in r["auc"].items():
            row = f"| {a} | {_num(v)} | {_num(r['gauc'][a])} |"
            if has_truth:
                pm = r["prob_mae"]
                ni = pm.get("non_impressions", {}).get(a)
                row += f" {_num(r['bayes_auc'][a])} | {_num(pm['impressions'][a])} | {_num(ni)} |"
            lines.append(row)
        if "mean_vs_true" in r:
            lines += _bias_table(r["mean_vs_true"])
        p = r["play"]
        lines += [
            "",
            f"Play time: RMSE {p['rmse_s']:.1f} s, MAE {p['mae_s']:.1f} s (expected mean "
            f"{p['mean_expected_s']:.1f} s vs logged {p['mean_logged_s']:.1f} s). Twin "
            "uncertainty (mean): "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["uncertainty"].items())
            + f". Fit {r['fit_seconds']:.0f} s.",
        ]
    return "\n".join(lines) + "\n"
