"""The offline gate: may a challenger replace the champion?

On a held-out, later slice of the logs the gate estimates, with NCIS (DESIGN.md §6), every
feedback aspect under the challenger and under the baseline — the champion, or the logging
policy when there is none — and blesses the challenger only if

1. the main objective (watch time per impression, ``play_time_ms``) improves: the lower
   bound of the paired-bootstrap interval of the relative uplift is above
   ``main_min_uplift``;
2. every auxiliary aspect stays within ``aux_tolerance`` (relative; for ``is_hate`` a rise is
   the harm);
3. the challenger's effective sample size is at least ``min_ess`` (else the estimate is not
   trustworthy);
4. every business constraint a caller passes (live-slot app time and retention, compute
   budget) holds.

This is the "blessing" of a model validator with an off-policy estimate and business
constraints. When the data came from the world, the caller adds each policy's true online
value (``World.rollout``) and the report shows the OPE error ``|NCIS − true|``.

Slates are scored item by item: the challenger's probability of each logged item at its
logged position is the Plackett–Luce probability over the logged candidate set (the
pre-ranked items of the request, from ``pools``) given the logged items above it
(:func:`components.evaluation.slate_propensities`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.evaluation import ASPECTS, per_aspect_ncis, slate_propensities
from components.features import session_history
from components.world.policies import call_score

ScoreFn = Callable[..., np.ndarray]
"""``score(user_ids (B,), item_ids (B, n), hour (B,), position (B,)[, history=(B, 6)]) -> (B, n)``
(a ``history`` parameter receives the session so far, ``features.HISTORY_COLUMNS``)."""

MAIN = "play_time_ms"
LOWER_IS_BETTER = ("is_hate",)


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate (``params.yaml: gate``)."""

    cap: float = 10.0
    main_min_uplift: float = 0.0
    aux_tolerance: float = 0.10
    min_ess: float = 300.0
    n_boot: int = 500
    alpha: float = 0.05
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GateConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate settings {sorted(unknown)} in params.yaml")
        return cls(**d)


@dataclass(frozen=True)
class Check:
    """One rule of the gate and how the challenger fared."""

    name: str
    passed: bool
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with its evidence."""

    promote: bool
    challenger: str
    baseline: str
    checks: tuple[Check, ...]
    table: pd.DataFrame
    true_values: pd.DataFrame | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> tuple[str, ...]:
        failed = [c for c in self.checks if not c.passed]
        return tuple(f"{c.name}: {c.detail}" for c in (failed or self.checks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "challenger": self.challenger,
            "baseline": self.baseline,
            "checks": [asdict(c) for c in self.checks],
            "reasons": list(self.reasons),
            "ncis": self.table.to_dict(orient="records"),
            "true_values": None
            if self.true_values is None
            else self.true_values.to_dict(orient="records"),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class LoggedSlates:
    """The held-out requests as matrices: candidates (padded), mask, logged slate columns."""

    request_id: np.ndarray  # (B,)
    user_id: np.ndarray  # (B,)
    hour: np.ndarray  # (B,)
    position: np.ndarray  # (B,)
    items: np.ndarray  # (B, W) item ids, padded with the first candidate
    mask: np.ndarray  # (B, W)
    slate: np.ndarray  # (B, K) column of each logged item in ``items``
    impressions: pd.DataFrame  # the held-out impressions, rows aligned with ``slate.ravel()``
    history: np.ndarray | None = None  # (B, 6) session so far (features.HISTORY_COLUMNS)


def logged_slates(
    requests: pd.DataFrame, impressions: pd.DataFrame, pools: pd.DataFrame, request_ids: np.ndarray
) -> LoggedSlates:
    """Rebuild each held-out request's ranking candidates (pool items with stage ≥ 2)."""
    req = requests.set_index("request_id").loc[request_ids]
    pool = pools.set_index("request_id").loc[request_ids]
    item_lists = [np.asarray(x) for x in pool["item_ids"]]
    stage_lists = [np.asarray(x) for x in pool["stage"]]
    cands = [i[s >= 2] for i, s in zip(item_lists, stage_lists, strict=True)]
    width = max(len(c) for c in cands)
    items = np.stack([np.pad(c, (0, width - len(c)), constant_values=c[0]) for c in cands])
    mask = np.arange(width)[None, :] < np.array([len(c) for c in cands])[:, None]
    imp = impressions[impressions["request_id"].isin(request_ids)]
    imp = imp.set_index("request_id").loc[request_ids].reset_index()
    imp = imp.sort_values(["request_id", "position"], kind="stable")
    order = pd.Index(request_ids).get_indexer(imp["request_id"])
    k = int(imp.groupby("request_id").size().max())
    if len(imp) != k * len(request_ids):
        raise ValueError("the gate needs the same number of impressions in every request")
    shown = imp["item_id"].to_numpy().reshape(len(request_ids), k)
    hit = items[:, :, None] == shown[:, None, :]
    hit &= mask[:, :, None]
    if not hit.any(axis=1).all():
        raise ValueError("a logged item is missing from its request's pre-ranked candidates")
    slate = hit.argmax(axis=1)
    imp = imp.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    return LoggedSlates(
        request_id=np.asarray(request_ids),
        user_id=req["user_id"].to_numpy(),
        hour=req["hour"].to_numpy(),
        position=req["position_in_session"].to_numpy(),
        items=items,
        mask=mask,
        slate=slate,
        impressions=imp,
        history=session_history(requests, impressions).loc[request_ids].to_numpy(),
    )


def target_propensities(score: ScoreFn, temperature: float, slates: LoggedSlates) -> np.ndarray:
    """A policy's position-wise probability of every logged impression (row order of
    ``slates.impressions``)."""
    s = call_score(
        score, slates.user_id, slates.items, slates.hour, slates.position, slates.history
    )
    s = np.where(slates.mask, s, 0.0)
    return slate_propensities(s, slates.slate, temperature, candidate_mask=slates.mask).ravel()


def decide(
    impressions: pd.DataFrame,
    challenger_propensity: np.ndarray,
    baseline_propensity: np.ndarray | None,
    config: GateConfig,
    challenger: str = "challenger",
    baseline: str = "logging",
    constraints: Sequence[Check] = (),
    true_values: pd.DataFrame | None = None,
) -> GateDecision:
    """Apply the gate's rules (module docstring) and return the decision with its evidence."""
    table = per_aspect_ncis(
        impressions,
        challenger_propensity,
        cap=config.cap,
        n_boot=config.n_boot,
        alpha=config.alpha,
        seed=config.seed,
        baseline_propensity=baseline_propensity,
    )
    rows = table.set_index("aspect")
    main = rows.loc[MAIN]
    checks = [
        Check(
            "main objective uplift",
            bool(main["rel_uplift_ci_low"] > config.main_min_uplift),
            float(main["rel_uplift_ci_low"]),
            config.main_min_uplift,
            f"watch time per impression {main['baseline_value'] / 1000:.2f} s → "
            f"{main['value'] / 1000:.2f} s ({main['rel_uplift']:+.1%}, "
            f"{1 - config.alpha:.0%} lower bound {main['rel_uplift_ci_low']:+.1%}; "
            f"needs > {config.main_min_uplift:+.1%})",
        ),
        Check(
            "effective sample size",
            bool(main["ess"] >= config.min_ess),
            float(main["ess"]),
            config.min_ess,
            f"ESS {main['ess']:.0f} of {int(main['n'])} impressions "
            f"({main['capped_share']:.1%} weights capped at {config.cap:g}); needs ≥ "
            f"{config.min_ess:g}",
        ),
    ]
    for aspect in ASPECTS:
        if aspect == MAIN:
            continue
        rel = float(rows.loc[aspect, "rel_uplift"])
        harm = rel if aspect in LOWER_IS_BETTER else -rel
        ok = bool(np.isnan(rel) or harm <= config.aux_tolerance)
        checks.append(
            Check(
                f"{aspect} within tolerance",
                ok,
                rel,
                config.aux_tolerance,
                f"{aspect} {rows.loc[aspect, 'baseline_value']:.4f} → "
                f"{rows.loc[aspect, 'value']:.4f} ({rel:+.1%}; "
                f"{'a rise' if aspect in LOWER_IS_BETTER else 'a drop'} of at most "
                f"{config.aux_tolerance:.0%} allowed)",
            )
        )
    checks += list(constraints)
    return GateDecision(
        promote=all(c.passed for c in checks),
        challenger=challenger,
        baseline=baseline,
        checks=tuple(checks),
        table=table,
        true_values=true_values,
    )


def write_report(decision: GateDecision, out_dir: str | Path) -> dict[str, Path]:
    """``report.md``, ``report.json`` and ``report.png`` (NCIS with intervals per aspect)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    paths["json"].write_text(json.dumps(decision.to_dict(), indent=2, default=float) + "\n")
    paths["md"].write_text(render_markdown(decision))
    _plot(decision, paths["png"])
    return paths


def render_markdown(decision: GateDecision) -> str:
    verdict = "PROMOTE" if decision.promote else "REJECT"
    lines = [
        f"# Gate: {verdict} {decision.challenger}",
        "",
        f"Challenger `{decision.challenger}` against baseline `{decision.baseline}` on the "
        "held-out slice (NCIS, item-wise Plackett–Luce propensities).",
        "",
        "| rule | passed | detail |",
        "|---|---|---|",
    ]
    lines += [
        f"| {c.name} | {'yes' if c.passed else '**no**'} | {c.detail} |" for c in decision.checks
    ]
    t = decision.table
    lines += ["", "## NCIS per aspect", "", "| aspect | baseline | challenger | 95% CI | uplift |"]
    lines.append("|---|---|---|---|---|")
    for r in t.itertuples():
        lines.append(
            f"| {r.aspect} | {r.baseline_value:.4g} | {r.value:.4g} | "
            f"[{r.ci_low:.4g}, {r.ci_high:.4g}] | {r.rel_uplift:+.1%} |"
        )
    if decision.true_values is not None:
        lines += ["", "## True online value (world rollout) and OPE error", ""]
        lines.append(decision.true_values.to_markdown(index=False, floatfmt=".4g"))
    for note in decision.notes:
        lines.append(f"\nnote: {note}")
    return "\n".join(lines) + "\n"


def _plot(decision: GateDecision, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = decision.table
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(t))
    rel = t["rel_uplift"].to_numpy() * 100
    err = np.vstack([rel - t["rel_uplift_ci_low"] * 100, t["rel_uplift_ci_high"] * 100 - rel])
    colors = ["tab:green" if c.passed else "tab:red" for c in _aspect_checks(decision, t)]
    ax.bar(x, rel, yerr=np.nan_to_num(err), color=colors, capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, t["aspect"], rotation=30, ha="right")
    ax.set_ylabel("NCIS uplift vs baseline (%)")
    verdict = "promote" if decision.promote else "reject"
    ax.set_title(f"{decision.challenger} vs {decision.baseline}: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _aspect_checks(decision: GateDecision, table: pd.DataFrame) -> list[Check]:
    by_name = {c.name: c for c in decision.checks}
    out = []
    for aspect in table["aspect"]:
        name = "main objective uplift" if aspect == MAIN else f"{aspect} within tolerance"
        out.append(by_name[name])
    return out


@dataclass(frozen=True)
class Candidate:
    """A policy the gate scores: a name, its scoring function and its temperature."""

    name: str
    score: ScoreFn
    temperature: float


def true_online_values(
    meta_params: dict[str, Any], seed: int, policies: Sequence[Candidate], days: int = 1
) -> pd.DataFrame:
    """Simulated A/B test in the world that made the data (common random numbers).

    The logging policy is always included as the reference arm.
    """
    from components.world import LoggingPolicy, ScoredRankingPolicy, World, WorldConfig

    world = World(WorldConfig.from_dict(meta_params["world"]), seed=seed)
    arms = [LoggingPolicy()] + [
        ScoredRankingPolicy(p.score, p.temperature, name=p.name) for p in policies
    ]
    rows = []
    for arm in arms:
        s = world.rollout(arm, seed=seed + 1, days=days).summary()
        rows.append(
            {
                "policy": arm.name,
                "true watch time / impression (ms)": 1000.0
                * s["session_watch_time_s"]
                / (s["depth"] * world.config.funnel.slate_size),
                "true session watch time (s)": s["session_watch_time_s"],
                "true depth": s["depth"],
                "true retention": s["retention"],
            }
        )
    return pd.DataFrame(rows)


def evaluate_challenger(
    tables: dict[str, pd.DataFrame],
    meta_params: dict[str, Any],
    world_seed: int | None,
    holdout_request_ids: np.ndarray,
    challenger: Candidate,
    champion: Candidate | None,
    config: GateConfig,
    constraints: Sequence[Check] = (),
    rollout_days: int = 1,
) -> GateDecision:
    """Score the challenger (and champion) on the held-out requests and decide.

    With world data (``meta_params`` holds the world's configuration) each policy's true
    online value is added, and the OPE error ``|NCIS − true|`` of the main objective.
    """
    slates = logged_slates(
        tables["requests"], tables["impressions"], tables["pools"], holdout_request_ids
    )
    pi_c = target_propensities(challenger.score, challenger.temperature, slates)
    pi_b = (
        None
        if champion is None
        else target_propensities(champion.score, champion.temperature, slates)
    )
    decision = decide(
        slates.impressions,
        pi_c,
        pi_b,
        config,
        challenger=challenger.name,
        baseline="logging" if champion is None else champion.name,
        constraints=constraints,
    )
    if "world" not in meta_params or world_seed is None:
        return decision
    arms = [challenger] if champion is None else [challenger, champion]
    truth = true_online_values(meta_params, world_seed, arms, days=rollout_days)
    main = decision.table.set_index("aspect").loc[MAIN]
    ncis_by_arm = {challenger.name: main["value"], decision.baseline: main["baseline_value"]}
    if champion is not None:
        ncis_by_arm["logging"] = slates.impressions[MAIN].mean()
    truth["NCIS watch time / impression (ms)"] = truth["policy"].map(ncis_by_arm)
    truth["OPE error (ms)"] = (
        truth["NCIS watch time / impression (ms)"] - truth["true watch time / impression (ms)"]
    ).abs()
    return GateDecision(
        promote=decision.promote,
        challenger=decision.challenger,
        baseline=decision.baseline,
        checks=decision.checks,
        table=decision.table,
        true_values=truth,
        notes=(
            "true values: a fresh simulated day of the world that made the data; the NCIS "
            "figures estimate watch time per shown item on the held-out day of the logs",
        ),
    )
