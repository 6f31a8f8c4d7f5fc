r"""Off-policy evaluation of slate policies: NCIS, GAUC and Plackett–Luce slate propensities.

NCIS (normalised capped importance sampling)
--------------------------------------------
For logged decisions ``i = 1..n`` with reward ``r_i``, logging (behaviour) propensity
``β_i = β(a_i | x_i)`` and the evaluated (target) policy's probability ``π_i = π(a_i | x_i)``
of the same logged action,

.. math::

    w_i = \min\Big(c, \frac{\pi_i}{\beta_i}\Big), \qquad
    \hat V_{\mathrm{NCIS}} = \frac{\sum_i w_i r_i}{\sum_i w_i}

Capping (``c``) bounds the variance that a few tiny logging propensities would otherwise
cause; normalising by ``Σ w_i`` instead of ``n`` (the self-normalised / weighted importance
sampling estimator) removes the scale of the weights, keeps the estimate inside the range of
the rewards and makes it invariant to a constant factor in ``π``. Both add a bias that
vanishes when ``c`` does not bind and ``n`` grows. When ``π = β`` every weight is 1 and
``V̂`` is the plain on-policy mean of the rewards.

Slates are scored item by item: a decision is one impression, ``β_i`` is the logged
position-wise Plackett–Luce probability of the item at its position given the items placed
before it (``impressions.propensity``) and ``π_i`` is the same quantity under the evaluated
policy, computed by :func:`slate_propensities`.

Diagnostics: the effective sample size ``ESS = (Σ w)² / Σ w²`` (Kish; ``= n`` when all
weights are equal, small when a few weights dominate) and the share of weights the cap
clipped (``π_i/β_i > c``).

References: Swaminathan & Joachims, "The self-normalized estimator for counterfactual
learning", NeurIPS 2015; Gilotte et al., "Offline A/B testing for recommender systems", WSDM
2018 (capped and normalised capped IS); Zou et al., "Pseudo Dyna-Q", WSDM 2020 and Cai et
al., "Two-Stage Constrained Actor-Critic for Short Video Recommendation" (TSCAC), WWW 2023,
which evaluate recommendation policies with NCIS.

Bootstrap confidence interval
-----------------------------
Percentile bootstrap: resample with replacement, recompute ``V̂`` on each of ``n_boot``
resamples and report the ``α/2`` and ``1 − α/2`` quantiles. Without ``groups`` each row is
resampled on its own (i.i.d. bootstrap). With ``groups`` (e.g. ``request_id`` or
``session_id``) whole groups are resampled — the *cluster bootstrap*: the impressions of one
request share a user, a context and a slate, so their rewards are correlated and an i.i.d.
bootstrap would understate the uncertainty. A resample draws ``G`` groups with replacement
(``G`` = number of distinct groups) and keeps all rows of each drawn group, so ``V̂*`` is
``Σ_g N_g* / Σ_g D_g*`` over the per-group sums ``N_g = Σ_{i∈g} w_i r_i`` and
``D_g = Σ_{i∈g} w_i``. The point estimate and the ESS do not depend on ``groups``.

The resampling is vectorised: an ``(chunk, G)`` matrix of group indices per chunk of
resamples (``G`` = rows without ``groups``), no Python loop over rows. A resample in which
every drawn weight is zero has no value; such resamples are ignored by the quantiles (only
possible for tiny inputs), and the interval is ``nan`` when ``n_boot == 0``.

GAUC
----
DIN's group AUC (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD
2018): the AUC of each user's impressions, averaged with the user's number of impressions as
weight, over the users whose labels contain both classes (the others have no AUC and are
dropped)::

    GAUC = Σ_u n_u · AUC_u / Σ_u n_u

``AUC_u`` is the Mann–Whitney statistic with mid-ranks, so a tied (positive, negative) pair
counts ½: ``AUC = (R₊ − n₊(n₊+1)/2) / (n₊ n₋)`` with ``R₊`` the sum of the positives' mid-ranks.
Computed with one sort (``np.lexsort`` by user then score) and ``np.bincount``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from components.schema import FEEDBACK_FLAGS

__all__ = [
    "ASPECTS",
    "DEFAULT_CAP",
    "GAUCResult",
    "NCISResult",
    "auc",
    "gauc",
    "ncis",
    "per_aspect_ncis",
    "slate_propensities",
]

DEFAULT_CAP = 10.0
"""Default cap ``c`` on ``π/β``; the gate reads its own value from ``params.yaml``."""

WATCH_TIME = "play_time_ms"
ASPECTS: tuple[str, ...] = (*FEEDBACK_FLAGS, WATCH_TIME)
"""Reward columns of ``impressions`` evaluated by :func:`per_aspect_ncis`."""

_CHUNK_ELEMENTS = 2_000_000
"""Bootstrap indices drawn per chunk (``chunk × G``): ~16 MB of int64."""


@dataclass(frozen=True)
class NCISResult:
    """NCIS estimate with its bootstrap interval and weight diagnostics.

    ``ess`` is Kish's effective sample size of the capped weights, ``n`` the number of rows,
    ``capped_share`` the share of rows with ``π/β > cap``, ``n_groups`` the number of
    resampling units of the bootstrap (``n`` without ``groups``).
    """

    value: float
    ci_low: float
    ci_high: float
    ess: float
    n: int
    capped_share: float
    cap: float
    n_groups: int
    alpha: float
    n_boot: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class GAUCResult:
    """Impression-weighted mean of per-user AUCs.

    ``n_users``: users used; ``n_users_dropped``: users with a single label class;
    ``n_rows``: impressions of the users used. ``value`` is ``nan`` when no user is usable.
    """

    value: float
    n_users: int
    n_users_dropped: int
    n_rows: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# validation helpers


def _examples(values: np.ndarray, bad: np.ndarray, k: int = 3) -> str:
    return ", ".join(repr(float(v)) for v in values[bad][:k])


def _as_1d_float(x: object, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)
    ):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _check_rule(values: np.ndarray, ok: np.ndarray, name: str, rule: str, fix: str) -> None:
    bad = ~ok
    n_bad = int(bad.sum())
    if n_bad:
        raise ValueError(
            f"{name} must be {rule}; {n_bad} of {len(values)} values are not "
            f"(e.g. {_examples(values, bad)}). {fix}"
        )


def _validate_cap(cap: float) -> float:
    cap = float(cap)
    if np.isnan(cap) or cap <= 0:
        raise ValueError(f"cap must be > 0 (np.inf for no cap), got {cap!r}")
    return cap


def _validate_bootstrap(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _weights(
    target_propensity: object, behavior_propensity: object, cap: float, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated capped weights ``min(c, π/β)`` and the uncapped ratios."""
    pi = _as_1d_float(target_propensity, "target_propensity")
    beta = _as_1d_float(behavior_propensity, "behavior_propensity")
    if len(pi) != len(beta) or (n is not None and len(pi) != n):
        lengths = f"target {len(pi)}, behavior {len(beta)}"
        if n is not None:
            lengths = f"rewards {n}, " + lengths
        raise ValueError(f"rewards and propensities must have the same length; got {lengths}")
    if len(pi) == 0:
        raise ValueError("NCIS needs at least one logged decision; got empty inputs")
    with np.errstate(invalid="ignore"):
        _check_rule(
            beta,
            np.isfinite(beta) & (beta > 0) & (beta <= 1),
            "behavior_propensity",
            "finite and in (0, 1]",
            "Logged propensities must come from a stochastic logging policy.",
        )
        _check_rule(
            pi,
            np.isfinite(pi) & (pi >= 0) & (pi <= 1),
            "target_propensity",
            "finite and in [0, 1]",
            "Pass the evaluated policy's probability of each logged action.",
        )
    ratio = pi / beta
    return np.minimum(ratio, cap), ratio


def _validate_rewards(rewards: object, name: str = "rewards") -> np.ndarray:
    r = _as_1d_float(rewards, name)
    _check_rule(r, np.isfinite(r), name, "finite", "Drop or impute missing rewards first.")
    return r


def _group_codes(groups: object, n: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"groups must be 1-D with one entry per row ({n}), got shape {g.shape}")
    codes, uniques = pd.factorize(g)
    n_missing = int((codes < 0).sum())
    if n_missing:
        raise ValueError(f"groups must not be missing; {n_missing} of {n} values are null")
    return codes, len(uniques)


# --------------------------------------------------------------------------------------------
# bootstrap engine


def _bootstrap_sums(per_group: np.ndarray, n_boot: int, seed: int | None) -> np.ndarray:
    """Column sums of ``n_boot`` with-replacement resamples of the rows of ``per_group``.

    ``per_group`` is ``(G, m)``; returns ``(n_boot, m)``. The draws depend only on ``G``,
    ``n_boot`` and ``seed`` (not on ``m``), so two calls with the same groups and seed use
    the same resamples — :func:`ncis` and :func:`per_aspect_ncis` agree.
    """
    n_groups, m = per_group.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n_groups)
    out = np.empty((n_boot, m))
    packed = per_group[:, 0] + 1j * per_group[:, 1] if m == 2 else None
    # (m, G) @ (G, chunk) was the fastest and steadiest layout of the product in OpenBLAS
    per_group_t = np.ascontiguousarray(per_group.T) if packed is None else None
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        idx = rng.integers(0, n_groups, size=(size, n_groups))
        if packed is not None:
            # one gather of a complex array reads both columns at once (fastest for m = 2)
            s = np.take(packed, idx).sum(axis=1)
            out[start : start + size, 0] = s.real
            out[start : start + size, 1] = s.imag
        else:
            # multinomial counts per resample, then one matrix product for all columns
            offsets = (np.arange(size) * n_groups)[:, None]
            counts = np.bincount((idx + offsets).ravel(), minlength=size * n_groups)
            counts = counts.reshape(size, n_groups).astype(np.float64)
            out[start : start + size] = (per_group_t @ counts.T).T
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _percentile_ci(reps: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise percentile interval of ``reps`` (``(n_boot, m)``), ignoring nan."""
    if reps.shape[0] == 0:
        nan = np.full(reps.shape[1], np.nan)
        return nan, nan.copy()
    ok = ~np.isnan(reps)
    lo = np.full(reps.shape[1], np.nan)
    hi = np.full(reps.shape[1], np.nan)
    has = ok.any(axis=0)
    if has.any():
        q = np.nanquantile(reps[:, has], [alpha / 2, 1 - alpha / 2], axis=0)
        lo[has], hi[has] = q[0], q[1]
    return lo, hi


def _group_sum(codes: np.ndarray, n_groups: int, columns: Sequence[np.ndarray]) -> np.ndarray:
    return np.column_stack([np.bincount(codes, weights=c, minlength=n_groups) for c in columns])


# --------------------------------------------------------------------------------------------
# NCIS


def ncis(
    rewards: object,
    target_propensity: object,
    behavior_propensity: object,
    cap: float = DEFAULT_CAP,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    groups: object = None,
) -> NCISResult:
    r"""Normalised capped importance sampling estimate of the target policy's mean reward.

    .. math::

        \hat V = \frac{\sum_i \min(c, \pi_i/\beta_i)\, r_i}{\sum_i \min(c, \pi_i/\beta_i)}

    (Swaminathan & Joachims 2015; Gilotte et al. 2018; used for recommendation by Zou et al.
    2020 and TSCAC, Cai et al. 2023 — see the module docstring.)

    Args:
        rewards: ``r_i``, one per logged decision (finite).
        target_propensity: ``π_i`` in ``[0, 1]``, the evaluated policy's probability of the
            logged action (for slates: :func:`slate_propensities`).
        behavior_propensity: ``β_i`` in ``(0, 1]``, the logged propensity.
        cap: ``c > 0``; ``np.inf`` disables capping.
        n_boot: bootstrap resamples for the percentile interval (0: no interval, ``nan``).
        alpha: the interval is ``[q_{α/2}, q_{1-α/2}]`` of the bootstrap values.
        seed: seed of the bootstrap's random generator.
        groups: optional cluster label per row (e.g. ``request_id`` or ``session_id``); the
            bootstrap then resamples whole clusters (cluster bootstrap), which is the right
            interval when rows of a cluster are correlated. The point estimate is unchanged.

    Raises:
        ValueError: empty input, lengths that differ, non-finite rewards, behaviour
            propensities outside ``(0, 1]`` or non-finite, target propensities outside
            ``[0, 1]``, ``cap <= 0``, all weights zero, bad ``n_boot``/``alpha``/``groups``.
    """
    cap = _validate_cap(cap)
    _validate_bootstrap(n_boot, alpha)
    r = _validate_rewards(rewards)
    w, ratio = _weights(target_propensity, behavior_propensity, cap, n=len(r))
    total = float(w.sum())
    if total <= 0:
        raise ValueError(
            "all importance weights are zero: the target policy gives probability 0 to every "
            "logged action, so NCIS is undefined. Use a stochastic target policy "
            "(temperature > 0) or evaluate on logs that contain its actions."
        )
    codes, n_groups = _group_codes(groups, len(r))
    value = float(np.dot(w, r) / total)
    ess = total**2 / float(np.dot(w, w))
    lo = hi = np.nan
    if n_boot:
        per_group = _group_sum(codes, n_groups, [w, w * r])
        sums = _bootstrap_sums(per_group, int(n_boot), seed)
        reps = _ratio(sums[:, 1], sums[:, 0])[:, None]
        lo_a, hi_a = _percentile_ci(reps, alpha)
        lo, hi = float(lo_a[0]), float(hi_a[0])
    return NCISResult(
        value=value,
        ci_low=lo,
        ci_high=hi,
        ess=ess,
        n=len(r),
        capped_share=float(np.mean(ratio > cap)),
        cap=cap,
        n_groups=n_groups,
        alpha=float(alpha),
        n_boot=int(n_boot),
    )


def per_aspect_ncis(
    impressions: pd.DataFrame,
    target_propensity: object,
    cap: float = DEFAULT_CAP,
    *,
    aspects: Sequence[str] = ASPECTS,
    behavior_column: str = "propensity",
    group_column: str | None = "request_id",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    baseline_propensity: object | None = None,
) -> pd.DataFrame:
    """NCIS of every feedback aspect for a target policy, next to a baseline's.

    The baseline is the logging policy (its on-policy mean) unless ``baseline_propensity``
    gives another policy's probabilities of the logged actions (e.g. the champion's).

    One row per aspect (default :data:`ASPECTS`: the binary flags ``is_click`` …
    ``long_view`` and ``play_time_ms`` as the watch-time reward). Columns:

    - ``value, ci_low, ci_high, ess, n, capped_share``: :func:`ncis` of the aspect with
      ``target_propensity`` (aligned with the rows of ``impressions``) against
      ``impressions[behavior_column]``; identical to calling :func:`ncis` with the same
      ``cap``, ``n_boot``, ``alpha``, ``seed`` and ``groups``;
    - ``baseline_value, baseline_ci_low, baseline_ci_high``: the same estimator for the
      baseline; for the logging policy ``target = behaviour`` (every weight 1), i.e. its
      on-policy mean;
    - ``uplift, uplift_ci_low, uplift_ci_high``: ``value − baseline_value`` with a *paired*
      bootstrap interval (both estimates recomputed on the same resamples), and
      ``rel_uplift = value / baseline_value − 1`` (``nan`` when the baseline is 0), with
      ``rel_uplift_ci_low/high`` from the same resamples.

    ``group_column`` (default ``request_id``) is the cluster of the bootstrap; ``None`` for
    an i.i.d. bootstrap over impressions.
    """
    cap = _validate_cap(cap)
    _validate_bootstrap(n_boot, alpha)
    needed = [*aspects, behavior_column] + ([group_column] if group_column else [])
    missing = [c for c in needed if c not in impressions.columns]
    if missing:
        raise ValueError(f"impressions lack the columns {missing}")
    n = len(impressions)
    behavior = impressions[behavior_column].to_numpy(dtype=np.float64)
    w, ratio = _weights(target_propensity, behavior, cap, n=n)
    total = float(w.sum())
    if total <= 0:
        raise ValueError("all importance weights are zero: NCIS is undefined for this target")
    rewards = {a: _validate_rewards(impressions[a].to_numpy(dtype=np.float64), a) for a in aspects}
    codes, n_groups = _group_codes(
        impressions[group_column].to_numpy() if group_column else None, n
    )
    if baseline_propensity is None:
        w_base = np.ones(n)
    else:
        w_base, _ = _weights(baseline_propensity, behavior, cap, n=n)
        if w_base.sum() <= 0:
            raise ValueError("all baseline importance weights are zero: NCIS is undefined")
    columns = [w, w_base]
    for a in aspects:
        columns += [w * rewards[a], w_base * rewards[a]]
    full = np.array([c.sum() for c in columns])
    value = full[2::2] / full[0]
    logging_value = full[3::2] / full[1]
    k = len(aspects)
    nan = np.full(k, np.nan)
    lo, hi, lo_l, hi_l, lo_u, hi_u = (nan.copy() for _ in range(6))
    if n_boot:
        sums = _bootstrap_sums(_group_sum(codes, n_groups, columns), int(n_boot), seed)
        reps = _ratio(sums[:, 2::2], sums[:, [0]])
        reps_l = _ratio(sums[:, 3::2], sums[:, [1]])
        lo, hi = _percentile_ci(reps, alpha)
        lo_l, hi_l = _percentile_ci(reps_l, alpha)
        lo_u, hi_u = _percentile_ci(reps - reps_l, alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo_r, hi_r = _percentile_ci(reps / reps_l - 1, alpha)
    else:
        lo_r, hi_r = nan.copy(), nan.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(logging_value != 0, value / logging_value - 1, np.nan)
    return pd.DataFrame(
        {
            "aspect": list(aspects),
            "value": value,
            "ci_low": lo,
            "ci_high": hi,
            "ess": total**2 / float(np.dot(w, w)),
            "n": n,
            "capped_share": float(np.mean(ratio > cap)),
            "baseline_value": logging_value,
            "baseline_ci_low": lo_l,
            "baseline_ci_high": hi_l,
            "uplift": value - logging_value,
            "uplift_ci_low": lo_u,
            "uplift_ci_high": hi_u,
            "rel_uplift": rel,
            "rel_uplift_ci_low": lo_r,
            "rel_uplift_ci_high": hi_r,
        }
    )


# --------------------------------------------------------------------------------------------
# AUC / GAUC


def _labels_scores(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = _as_1d_float(labels, "labels")
    s = _as_1d_float(scores, "scores")
    if len(y) != len(s):
        raise ValueError(f"labels and scores must have the same length; got {len(y)}, {len(s)}")
    if len(y) == 0:
        raise ValueError("AUC needs at least one labelled score; got empty inputs")
    _check_rule(y, (y == 0) | (y == 1), "labels", "0 or 1", "Binarise the feedback first.")
    _check_rule(s, np.isfinite(s), "scores", "finite", "Replace nan/inf scores first.")
    return y, s


def _per_group_auc(
    y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group (AUC, rows, positives) with mid-ranks; AUC is nan for single-class groups."""
    n = len(y)
    order = np.lexsort((s, codes))
    c, ss, yy = codes[order], s[order], y[order]
    pos_idx = np.arange(n)
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = c[1:] != c[:-1]
    new_run = new_group.copy()
    new_run[1:] |= ss[1:] != ss[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, pos_idx, 0))
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)
    run = np.cumsum(new_run) - 1
    # mid-rank (1-based, within the group) of a tie run [start, end): (start + 1 + end) / 2
    midrank = (starts[run] + ends[run] + 1) / 2.0 - group_start
    n_rows = np.bincount(c, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(c, weights=yy, minlength=n_groups)
    rank_pos = np.bincount(c, weights=yy * midrank, minlength=n_groups)
    n_neg = n_rows - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc_g = (rank_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc_g[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc_g, n_rows, n_pos


def auc(labels: object, scores: object) -> float:
    """ROC AUC = P(score of a random positive > random negative), ties counting ½.

    Mann–Whitney with mid-ranks. Raises ``ValueError`` when the labels hold one class only.
    """
    y, s = _labels_scores(labels, scores)
    value, _, n_pos = _per_group_auc(y, s, np.zeros(len(y), dtype=np.intp), 1)
    if np.isnan(value[0]):
        raise ValueError(
            f"AUC is undefined when all labels are one class ({int(n_pos[0])} positives of "
            f"{len(y)})"
        )
    return float(value[0])


def gauc(labels: object, scores: object, users: object) -> GAUCResult:
    """DIN's group AUC: per-user AUC weighted by the user's impressions.

    ``GAUC = Σ_u n_u AUC_u / Σ_u n_u`` over users whose labels hold both classes (the others
    are dropped and counted in ``n_users_dropped``); ties in scores count ½. ``value`` is
    ``nan`` (not an error) when no user has both classes, e.g. a rare aspect on a small
    slice, so that a per-aspect table can still be built.
    """
    y, s = _labels_scores(labels, scores)
    u = np.asarray(users)
    if u.ndim != 1 or len(u) != len(y):
        raise ValueError(f"users must be 1-D with one entry per row ({len(y)}), got {u.shape}")
    codes, uniques = pd.factorize(u)
    if (codes < 0).any():
        raise ValueError(f"users must not be missing; {int((codes < 0).sum())} values are null")
    auc_u, n_rows, _ = _per_group_auc(y, s, codes, len(uniques))
    used = ~np.isnan(auc_u)
    n_used_rows = float(n_rows[used].sum())
    value = float(np.dot(n_rows[used], auc_u[used]) / n_used_rows) if used.any() else np.nan
    return GAUCResult(
        value=value,
        n_users=int(used.sum()),
        n_users_dropped=int((~used).sum()),
        n_rows=int(n_used_rows),
    )


# --------------------------------------------------------------------------------------------
# Plackett–Luce slate propensities


def slate_propensities(
    scores: object,
    slates: object,
    temperature: float,
    candidate_mask: object = None,
) -> np.ndarray:
    r"""Position-wise Plackett–Luce probability of each logged item under a new policy.

    For request ``b`` with candidate scores ``s`` (row ``b`` of ``scores``), valid candidates
    ``M`` (``candidate_mask``) and logged slate ``(a_0, …, a_{K-1})`` (column indices),

    .. math::

        \pi_k = \frac{\exp(s_{a_k}/T)}{\sum_{j \in M \setminus \{a_0..a_{k-1}\}} \exp(s_j/T)}

    the probability that the policy places the logged item at position ``k`` given the
    logged items before it — the same definition as the logged ``impressions.propensity``
    (:func:`components.world.policies.plackett_luce`), so ``π_k/β_k`` is the NCIS ratio.
    Computed per position with a log-sum-exp shifted by the largest remaining score, so
    large ``|s|/T`` neither overflows nor underflows the winner.

    ``temperature == 0`` is the ``T → 0`` limit (greedy ranking): ``1/m`` when the logged
    item has the largest remaining score shared by ``m`` items (``1`` without ties), else
    ``0``. A tiny positive ``T`` converges to the same values.

    Args:
        scores: ``(B, C)`` policy scores; entries outside ``candidate_mask`` may be anything
            (nan included), entries inside must be finite.
        slates: ``(B, K)`` integer column indices of the logged items in logged order. A
            negative index is padding for a shorter slate; padding must come after the items.
        temperature: ``T >= 0``.
        candidate_mask: ``(B, C)`` booleans, ``True`` for real candidates (default: all).

    Returns:
        ``(B, K)`` float array of probabilities, ``nan`` at padding.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (requests, candidates), got shape {s.shape}")
    a = np.asarray(slates)
    if a.ndim != 2 or a.shape[0] != s.shape[0]:
        raise ValueError(
            f"slates must be 2-D (requests, positions) with {s.shape[0]} rows, got {a.shape}"
        )
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"slates must hold integer column indices, got dtype {a.dtype}")
    a = a.astype(np.intp, copy=False)
    n_rows, n_cols = s.shape
    mask = (
        np.ones(s.shape, dtype=bool)
        if candidate_mask is None
        else np.asarray(candidate_mask, dtype=bool)
    )
    if mask.shape != s.shape:
        raise ValueError(
            f"candidate_mask must have the shape of scores {s.shape}, got {mask.shape}"
        )
    t = float(temperature)
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    n_bad = int((mask & ~np.isfinite(s)).sum())
    if n_bad:
        raise ValueError(f"scores of valid candidates must be finite; {n_bad} are not")
    active = a >= 0
    if (active[:, 1:] & ~active[:, :-1]).any():
        raise ValueError("slates: padding (negative index) must come after the logged items")
    if (a >= n_cols).any():
        raise ValueError(f"slates hold column indices >= the {n_cols} candidates")
    rows = np.arange(n_rows)
    safe = np.where(active, a, 0)
    n_invalid = int((active & ~mask[rows[:, None], safe]).sum())
    if n_invalid:
        raise ValueError(f"{n_invalid} logged items are masked-out candidates")
    srt = np.sort(np.where(active, a, -1 - np.arange(a.shape[1])), axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise ValueError("slates must not repeat an item within a request")

    out = np.full(a.shape, np.nan)
    if out.size == 0 or n_cols == 0:
        return out
    remaining = mask.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(a.shape[1]):
            out[:, k] = _position_probability(s, remaining, safe[:, k], active[:, k], t)
            remaining[rows[active[:, k]], safe[active[:, k], k]] = False
    return out


def _position_probability(
    s: np.ndarray, remaining: np.ndarray, col: np.ndarray, on: np.ndarray, t: float
) -> np.ndarray:
    """P(column ``col`` is drawn first among ``remaining``) per row; nan where not ``on``."""
    rows = np.arange(len(s))
    rem_scores = np.where(remaining, s, -np.inf)
    top = rem_scores.max(axis=1)
    top = np.where(np.isfinite(top), top, 0.0)  # rows with nothing left are padding
    chosen = s[rows, col]
    if t > 0:
        z = (rem_scores - top[:, None]) / t
        log_den = np.log(np.exp(z).sum(axis=1))
        p = np.exp((chosen - top) / t - log_den)
    else:
        n_top = (remaining & (s == top[:, None])).sum(axis=1)
        p = np.where(chosen == top, 1.0 / np.maximum(n_top, 1), 0.0)
    return np.where(on, np.minimum(p, 1.0), np.nan)
