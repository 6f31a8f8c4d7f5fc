r"""User-group reassignment (SL-MGAC's MG-SD) and the groups of UNEX-RL's category-quantile
rescaling (CQR).

Live-stream groups (SL-MGAC, Multi-Group State Decomposition)
-------------------------------------------------------------
SL-MGAC puts users into ``K`` disjoint groups "according to their activity level of the live
stream, which is determined by the cumulative watch time of the live stream during the past 3
weeks" and gives each group its own actor/critic layers. Here the activity is
``users.live_watch_3w`` (seconds) and the groups are its empirical quantile bands:

- boundaries ``b_k = x_(ceil(n k / K))`` for ``k = 1 .. K-1`` — the *inverted-CDF* empirical
  quantile at level ``k/K`` (the smallest observed value ``v`` with ``F_n(v) >= k/K``;
  numpy's ``method="inverted_cdf"``), computed with exact integer arithmetic;
- ``group(x) = #{k : b_k < x}``: group 0 is ``[min, b_1]``, group ``k`` is
  ``(b_k, b_{k+1}]``, group ``K-1`` is ``(b_{K-1}, max]``. Group 0 = least live watching.

Ties. The group is a function of the value alone, so users with equal ``live_watch_3w`` are
always in the same group (a tie is never split), and a value equal to a boundary goes to the
lower group. With ``n`` distinct values and ``K | n`` every group has exactly ``n/K`` users.
A tie that holds more than ``1/K`` of the users — typically the mass at zero: most users
watch no live stream — makes consecutive boundaries coincide. Then group 0 holds the whole
tie (all zero-watchers are in group 0, always, since ``b_1 >= min``), and the group between two
equal boundaries is *empty*; group ids keep their meaning (band ``k`` of the quantile
ladder) rather than being renumbered, so they stay comparable across runs. Example: values
``0,0,0,0,0,1,2,3,4,5`` and ``K = 4`` give boundaries ``(0, 0, 3)`` and sizes
``{0: 5, 1: 0, 2: 3, 3: 2}``. Every empty group is reported in ``warnings``. When all users
have the same value everyone is in group 0 and a warning says the grouping carries no
information.

Periodic reassignment (the paper reassigns periodically; a user's group can change between
runs): ``previous_group`` is the user's group in the previous run (-1 when the user had none)
and the migration matrix counts users from previous group ``i`` (row; ``-1`` = new user) to
new group ``j`` (column).

CQR groups (UNEX-RL)
--------------------
UNEX-RL (Zhang et al., "UNEX-RL: Reinforcing Long-Term Rewards in Multi-Stage Recommender
Systems with UNidirectional EXecution", AAAI 2024, arXiv:2401.06470) reduces the variance of
the critic's target by replacing the raw reward with its quantile conditioned on a user group
``G_u`` and an item group ``G_i``:

.. math::

    \tilde r_{t,ui} = \Phi(r_{t,ui} \mid G_u, G_i)

Here ``G_u`` = quantile bucket of the user's activity (number of impressions, or mean play
time) and ``G_i`` = quantile bucket of the video duration (live streams, which have no
duration, form their own item group ``K``); both use the same quantile rule as above.
:func:`cqr` estimates ``Phi`` by the empirical distribution of the rewards in each
``(G_u, G_i)`` cell, with mid-ranks for ties (the *mid-distribution function*):

.. math::

    \hat\Phi(r_i) = \frac{\#\{j \in c(i): r_j < r_i\} + \tfrac12 \#\{j \in c(i): r_j = r_i\}}
                         {n_{c(i)}} = \frac{\mathrm{midrank}_i - \tfrac12}{n_{c(i)}}

so values lie in ``(0, 1)``, are order-preserving within a cell, have mean exactly ``1/2`` in
every cell, are exactly uniform on ``{(i - 1/2)/n}`` when the rewards of a cell are distinct,
and a cell whose rewards are all equal (or that has one reward) maps to the neutral ``1/2``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from components.io import DataError, atomic_write, read_table
from components.schema import GROUPS

LIVE_COLUMN = "live_watch_3w"
NEW = -1
"""``previous_group`` (and migration row) of a user who had no group in the previous run."""

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --------------------------------------------------------------------------------------
# validation and the quantile rule


def _check_n_groups(n_groups: object) -> int:
    if isinstance(n_groups, bool) or not isinstance(n_groups, int | np.integer) or n_groups < 1:
        raise ValueError(
            f"n_groups must be an integer >= 1 (the number of quantile groups K), got "
            f"{n_groups!r}; use e.g. n_groups=4"
        )
    return int(n_groups)


def _check_values(values: pd.Series, what: str, table: str) -> np.ndarray:
    """A float array of ``values``; non-numeric, NaN, infinite or negative -> DataError."""
    num = pd.to_numeric(values, errors="coerce")
    bad_type = num.isna() & values.notna()
    if bad_type.any():
        raise DataError(
            f"{table}.{what} must be numeric; {int(bad_type.sum())} value(s) are not, e.g. "
            f"{values[bad_type].iloc[0]!r}; convert the column to numbers"
        )
    x = num.to_numpy(dtype=float, na_value=np.nan)
    nan = np.isnan(x)
    if nan.any():
        raise DataError(
            f"{table}.{what} must not be missing; {int(nan.sum())} of {len(x)} value(s) are "
            f"NaN (e.g. at row {int(np.flatnonzero(nan)[0])}); fill them (0 = no activity) "
            "or drop those rows before grouping"
        )
    if np.isinf(x).any():
        raise DataError(
            f"{table}.{what} must be finite; {int(np.isinf(x).sum())} value(s) are infinite; "
            "fix the source values"
        )
    neg = x < 0
    if neg.any():
        raise DataError(
            f"{table}.{what} must be >= 0; {int(neg.sum())} value(s) are negative, the "
            f"smallest is {x.min():g}; fix the source (a duration cannot be negative)"
        )
    return x


def _require(df: pd.DataFrame, columns: Sequence[str], table: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{table} must have the column(s) {missing} for grouping; it has "
            f"{list(df.columns)}" + (f"; {hint}" if hint else "")
        )
    if len(df) == 0:
        raise DataError(
            f"{table} must not be empty (it has 0 rows): there is nothing to group; "
            "load a data set first"
        )


def quantile_boundaries(x: np.ndarray, n_groups: int) -> tuple[float, ...]:
    """Inverted-CDF empirical quantiles of ``x`` at ``1/K, ..., (K-1)/K``.

    ``b_k = sorted(x)[ceil(n k / K) - 1]``, computed in integers (no float rounding).
    """
    k = _check_n_groups(n_groups)
    s = np.sort(np.asarray(x, dtype=float))
    n = len(s)
    if n == 0:
        raise DataError("cannot compute quantile boundaries of no values")
    return tuple(float(s[(n * j + k - 1) // k - 1]) for j in range(1, k))


def quantile_groups(x: np.ndarray, n_groups: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """Group of each value (``#{k: b_k < x}``) and the boundaries; ties share a group."""
    b = quantile_boundaries(x, n_groups)
    groups = np.searchsorted(np.asarray(b, dtype=float), np.asarray(x, dtype=float), "left")
    return groups.astype(np.int64), b


def _tie_warnings(
    x: np.ndarray, groups: np.ndarray, b: tuple[float, ...], n_groups: int, what: str
) -> list[str]:
    n = len(x)
    if n_groups == 1:
        return []
    values, counts = np.unique(x, return_counts=True)
    if len(values) == 1:
        return [
            f"all {n} users have {what} = {values[0]:g}: everyone is in group 0 and groups "
            f"1..{n_groups - 1} are empty, so the grouping carries no information "
            f"(is {what} filled in by the source?)"
        ]
    sizes = np.bincount(groups, minlength=n_groups)
    out = []
    for g in (int(i) for i in np.flatnonzero(sizes == 0)):
        # group g = (b_g, b_{g+1}] is empty: b_g = b_{g+1} (or b_g = max for the last group)
        v = b[g - 1]
        c = int(counts[values == v][0])
        home = int(np.searchsorted(b, v, "left"))
        if g < n_groups - 1:
            why = (
                f"this tie spans the quantile levels {g}/{n_groups} and {g + 1}/{n_groups}, "
                f"so boundaries {g} and {g + 1} are both {v:g}"
            )
        else:
            why = (
                f"the largest value, and this tie reaches down to the quantile level "
                f"{g}/{n_groups}, so boundary {g} is the maximum"
            )
        out.append(
            f"group {g} is empty: {c} of {n} users ({c / n:.1%}) have {what} = {v:g}; {why}; "
            f"ties are never split, so all these users are in group {home} and the groups "
            "are unequal in size"
        )
    return out


# --------------------------------------------------------------------------------------
# live-stream groups


@dataclass(frozen=True)
class GroupAssignment:
    """Result of one reassignment.

    ``groups``: columns of :data:`components.schema.GROUPS` (user_id, group, previous_group,
    run_id), one row per user, sorted by user_id. ``boundaries``: the ``K-1`` quantile
    boundaries of ``live_watch_3w``. ``migration``: ``(K+1) x K`` counts, index
    ``previous_group`` (``-1`` = new user first, then ``0..K-1``, plus any other group of an
    earlier run with a different ``K``), columns the new ``group``. ``sizes``: users per new
    group (all ``K`` groups, zeros included). ``dropped``: users of the previous run that are
    no longer in ``users``.
    """

    groups: pd.DataFrame
    boundaries: tuple[float, ...]
    migration: pd.DataFrame
    sizes: dict[int, int]
    warnings: tuple[str, ...]
    n_groups: int = 4
    dropped: int = 0

    @property
    def run_id(self) -> str:
        return str(self.groups["run_id"].iloc[0]) if len(self.groups) else ""

    @property
    def n_moved(self) -> int:
        """Users whose group changed (new users not counted)."""
        g = self.groups
        return int(((g["previous_group"] != NEW) & (g["previous_group"] != g["group"])).sum())


def _previous_groups(previous: pd.DataFrame) -> pd.Series:
    _require(previous, ["user_id", "group"], "previous assignment")
    prev = previous[["user_id", "group"]]
    g = pd.to_numeric(prev["group"], errors="coerce")
    if g.isna().any() or (g < 0).any() or (g != g.round()).any():
        bad = prev["group"][g.isna() | (g < 0) | (g != g.round())].iloc[0]
        raise DataError(
            f"previous assignment: group must be an integer >= 0, got {bad}; pass the "
            "`groups` table of an earlier run (or None to start fresh)"
        )
    if prev["user_id"].duplicated().any():
        dup = prev["user_id"][prev["user_id"].duplicated()].iloc[0]
        raise DataError(
            f"previous assignment: user_id must be unique, user {dup} appears twice; pass "
            "the `groups` table of one earlier run"
        )
    return pd.Series(g.astype(np.int64).to_numpy(), index=prev["user_id"].to_numpy())


def assign_live_groups(
    users: pd.DataFrame,
    n_groups: int = 4,
    previous: pd.DataFrame | None = None,
    run_id: str = "",
) -> GroupAssignment:
    """Assign every user to one of ``n_groups`` live-watch-time quantile groups (see module).

    ``previous`` is the ``groups`` table of the previous run (user_id, group, ...), or None.
    Raises :class:`components.io.DataError` (a ``ValueError``) for a missing column, NaN,
    infinite or negative ``live_watch_3w``, duplicate user ids; ``ValueError`` for
    ``n_groups < 1``.
    """
    k = _check_n_groups(n_groups)
    _require(
        users,
        ["user_id", LIVE_COLUMN],
        "users",
        f"{LIVE_COLUMN} = seconds of live streams watched in the trailing 3 weeks "
        "(0 when the source has no live streams)",
    )
    if users["user_id"].duplicated().any():
        dup = users["user_id"][users["user_id"].duplicated()].iloc[0]
        raise DataError(
            f"users.user_id must be unique, user {dup} appears more than once; "
            "deduplicate the users table"
        )
    x = _check_values(users[LIVE_COLUMN], LIVE_COLUMN, "users")
    groups, b = quantile_groups(x, k)
    warnings = _tie_warnings(x, groups, b, k, LIVE_COLUMN)

    out = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy(),
            "group": groups,
        }
    )
    dropped = 0
    prev_index: list[int] = [NEW, *range(k)]
    if previous is not None:
        prev = _previous_groups(previous)
        out["previous_group"] = out["user_id"].map(prev).fillna(NEW).astype(np.int64).to_numpy()
        dropped = int((~prev.index.isin(out["user_id"])).sum())
        extra = sorted(set(prev.unique().tolist()) - set(range(k)))
        if extra:
            prev_index += extra
            warnings.append(
                f"the previous run used other groups ({extra}, i.e. a different K): they "
                f"appear as extra rows of the migration matrix; K is now {k}"
            )
    else:
        out["previous_group"] = np.full(len(out), NEW, dtype=np.int64)
    out["run_id"] = pd.Series([str(run_id)] * len(out), dtype=object)
    out = out[list(GROUPS.column_names)].sort_values("user_id", kind="stable")
    out = out.reset_index(drop=True)

    migration = (
        pd.crosstab(out["previous_group"], out["group"])
        .reindex(index=prev_index, columns=range(k), fill_value=0)
        .astype(np.int64)
    )
    migration.index.name = "previous_group"
    migration.columns.name = "group"
    sizes = {int(g): int(c) for g, c in enumerate(np.bincount(groups, minlength=k))}
    return GroupAssignment(
        groups=out,
        boundaries=b,
        migration=migration,
        sizes=sizes,
        warnings=tuple(warnings),
        n_groups=k,
        dropped=dropped,
    )


# --------------------------------------------------------------------------------------
# CQR groups and the CQR transform


def user_activity_groups(
    impressions: pd.DataFrame, n_groups: int = 4, by: str = "impressions"
) -> pd.Series:
    """User group ``G_u`` for CQR: quantile bucket of the user's activity in the log.

    ``by="impressions"`` (default): number of impressions per user; ``by="play_time"``:
    mean ``play_time_ms`` per user. Same quantile rule as the live groups (ties share a
    bucket, 0 = least active). Index ``user_id`` (users with impressions only), name
    ``user_group``.
    """
    k = _check_n_groups(n_groups)
    if by == "impressions":
        _require(impressions, ["user_id"], "impressions")
        activity = impressions.groupby("user_id", sort=True).size().astype(float)
    elif by == "play_time":
        _require(impressions, ["user_id", "play_time_ms"], "impressions")
        _check_values(impressions["play_time_ms"], "play_time_ms", "impressions")
        activity = impressions.groupby("user_id", sort=True)["play_time_ms"].mean()
    else:
        raise ValueError(
            f"by must be 'impressions' (count per user) or 'play_time' (mean play time per "
            f"user), got {by!r}"
        )
    groups, _ = quantile_groups(activity.to_numpy(dtype=float), k)
    return pd.Series(groups, index=activity.index.rename("user_id"), name="user_group")


def item_duration_groups(items: pd.DataFrame, n_groups: int = 4) -> pd.Series:
    """Item group ``G_i`` for CQR: quantile bucket of ``video_duration`` among videos.

    Live streams (``is_live == 1``, no duration) form their own group ``n_groups``; when
    there are no videos at all every item is in that group. Index ``item_id``, name
    ``item_group``.
    """
    k = _check_n_groups(n_groups)
    _require(items, ["item_id", "video_duration"], "items")
    live = (
        items["is_live"].fillna(0).astype(int).to_numpy() == 1
        if "is_live" in items.columns
        else np.zeros(len(items), dtype=bool)
    )
    out = np.full(len(items), k, dtype=np.int64)
    if (~live).any():
        dur = _check_values(items["video_duration"][~live], "video_duration", "items")
        out[~live], _ = quantile_groups(dur, k)
    return pd.Series(
        out, index=pd.Index(items["item_id"].to_numpy(), name="item_id"), name="item_group"
    )


def cqr(reward: np.ndarray, user_group: np.ndarray, item_group: np.ndarray) -> np.ndarray:
    r"""Category-quantile rescaling (UNEX-RL, arXiv:2401.06470, Sec. "variance reduction").

    :math:`\tilde r_i = \hat\Phi(r_i \mid G_u, G_i) = (\mathrm{midrank}_i - \tfrac12) / n_c`,
    the mid-distribution function of the rewards in the cell ``c = (G_u, G_i)`` of ``i``:
    the fraction of rewards of that cell below ``r_i`` plus half the fraction equal to it.
    Output in ``(0, 1)``, order-preserving within a cell, mean ``1/2`` per cell; ties get the
    same value; a one-reward cell gives ``1/2``. ``user_group``/``item_group`` may be any
    hashable labels (one per reward). Vectorised (one pandas groupby).
    """
    r = np.asarray(reward, dtype=float)
    ug = np.asarray(user_group)
    ig = np.asarray(item_group)
    if r.ndim != 1 or ug.shape != r.shape or ig.shape != r.shape:
        raise ValueError(
            "cqr needs three 1-d arrays of the same length (one reward, user group and item "
            f"group per observation), got shapes {r.shape}, {ug.shape}, {ig.shape}"
        )
    if not np.isfinite(r).all():
        raise ValueError(
            f"cqr: rewards must be finite, {int((~np.isfinite(r)).sum())} are NaN or "
            "infinite; drop or fill those observations first"
        )
    if len(r) == 0:
        return np.zeros(0, dtype=float)
    s = pd.Series(r)
    grouped = s.groupby([ug, ig], sort=False)
    rank = grouped.rank(method="average").to_numpy()
    n = grouped.transform("size").to_numpy(dtype=float)
    return (rank - 0.5) / n


# --------------------------------------------------------------------------------------
# the pipeline step


@dataclass(frozen=True)
class GroupingResult:
    """What :func:`run_grouping` did: the assignment, the CQR groups and the files written."""

    assignment: GroupAssignment
    run_id: str
    paths: dict[str, Path]
    user_groups: pd.Series | None = None
    item_groups: pd.Series | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """Plain-text summary for the CLI (boundaries, sizes, migration matrix, warnings)."""
        a = self.assignment
        lines = [
            f"user groups: run {self.run_id}, K={a.n_groups}, {len(a.groups)} users "
            f"({a.n_moved} moved, {int((a.groups['previous_group'] == NEW).sum())} new, "
            f"{a.dropped} gone since the previous run)",
            f"boundaries of {LIVE_COLUMN} (s): "
            + (", ".join(f"{v:g}" for v in a.boundaries) or "none (K=1)"),
            "",
            _text_table(["group", f"{LIVE_COLUMN} range", "users"], _size_rows(a)),
            "",
            "migration (rows: previous group, columns: new group)",
            _text_table(*_migration_rows(a.migration)),
        ]
        for w in a.warnings:
            lines.append(f"warning: {w}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if "current" in self.paths:
            lines.append(f"written to {self.paths['current'].parent}")
        return "\n".join(lines)


def _ranges(a: GroupAssignment) -> list[str]:
    b = a.boundaries
    if not b:
        return ["all"]
    out = [f"<= {b[0]:g}"]
    out += [f"({b[i - 1]:g}, {b[i]:g}]" for i in range(1, len(b))]
    out.append(f"> {b[-1]:g}")
    return out


def _size_rows(a: GroupAssignment) -> list[list[str]]:
    ranges = [r + (" (empty)" if a.sizes[g] == 0 else "") for g, r in enumerate(_ranges(a))]
    return [[str(g), ranges[g], str(a.sizes[g])] for g in range(a.n_groups)]


def _label(g: int) -> str:
    return "new" if g == NEW else str(g)


def _migration_rows(m: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["prev \\ new", *(str(c) for c in m.columns)]
    rows = [[_label(int(i)), *(str(int(v)) for v in m.loc[i])] for i in m.index]
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    cols = list(zip(header, *rows, strict=True))
    widths = [max(len(c) for c in col) for col in cols]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _report(result: GroupingResult) -> str:
    a = result.assignment
    g = a.groups
    lines = [
        f"# User groups — run `{result.run_id}`",
        "",
        f"SL-MGAC MG-SD: {len(g)} users in K = {a.n_groups} groups by quantiles of "
        f"`{LIVE_COLUMN}` (seconds of live streams watched in the trailing 3 weeks). "
        "Group 0 = least live watching; ties share a group, a value equal to a boundary "
        "goes to the lower group.",
        "",
        "## Boundaries",
        "",
        ", ".join(f"{v:g}" for v in a.boundaries) or "none (K = 1)",
        "",
        "## Group sizes",
        "",
        _md_table(["group", f"{LIVE_COLUMN} range", "users"], _size_rows(a)),
        "",
        "## Migration from the previous run",
        "",
        f"{a.n_moved} users changed group, {int((g['previous_group'] == NEW).sum())} are new, "
        f"{a.dropped} of the previous run are gone. Rows: previous group (`new` = no previous "
        "group), columns: new group.",
        "",
        _md_table(*_migration_rows(a.migration)),
        "",
        "## Warnings",
        "",
    ]
    lines += [f"- {w}" for w in a.warnings] or ["none"]
    lines += ["", "## CQR groups (UNEX-RL)", ""]
    for name, s in (
        ("user (activity)", result.user_groups),
        ("item (duration)", result.item_groups),
    ):
        if s is None:
            lines.append(f"- {name}: not computed")
        else:
            counts = s.value_counts().sort_index()
            lines.append(
                f"- {name}: " + ", ".join(f"group {int(i)}: {int(c)}" for i, c in counts.items())
            )
    lines += [f"- note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def _new_run_id(history: Path) -> str:
    base = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id, i = base, 1
    while (history / f"{run_id}.parquet").exists():
        i += 1
        run_id = f"{base}-{i}"
    return run_id


def run_grouping(
    data_dir: Path,
    state_dir: Path = Path("artifacts/groups"),
    n_groups: int = 4,
    run_id: str | None = None,
) -> GroupingResult:
    """Reassign user groups from the data set in ``data_dir`` and persist the state.

    Reads ``users`` (required) and ``impressions``/``items`` (optional, for the CQR groups)
    with :func:`components.io.read_table`; the previous assignment is
    ``state_dir/current.parquet`` when present. Writes (atomically) ``current.parquet``,
    ``history/<run_id>.parquet``, ``migration.csv``, ``report.md`` and
    ``cqr_user_groups.parquet`` / ``cqr_item_groups.parquet`` (removed when the data set
    lacks the table, so no stale file survives). ``run_id`` defaults to the UTC time.
    """
    data_dir, state_dir = Path(data_dir), Path(state_dir)
    k = _check_n_groups(n_groups)
    history = state_dir / "history"
    if run_id is None:
        run_id = _new_run_id(history)
    elif not _RUN_ID_RE.match(run_id):
        raise ValueError(
            f"run_id must be 1-128 characters of letters, digits, '.', '_' or '-' starting "
            f"with a letter or digit (it names a file), got {run_id!r}"
        )
    users = read_table(data_dir, "users")
    current = state_dir / "current.parquet"
    previous = None
    if current.exists():
        try:
            previous = pd.read_parquet(current)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(
                f"previous group assignment {current} cannot be read ({exc}); delete it to "
                "start without a previous assignment"
            ) from exc
    assignment = assign_live_groups(users, k, previous=previous, run_id=run_id)

    notes: list[str] = []
    user_groups = item_groups = None
    if (data_dir / "impressions.parquet").exists():
        user_groups = user_activity_groups(read_table(data_dir, "impressions"), k)
    else:
        notes.append("no impressions table: CQR user groups not computed")
    if (data_dir / "items.parquet").exists():
        item_groups = item_duration_groups(read_table(data_dir, "items"), k)
    else:
        notes.append("no items table: CQR item groups not computed")

    paths = {
        "current": current,
        "history": history / f"{run_id}.parquet",
        "migration": state_dir / "migration.csv",
        "report": state_dir / "report.md",
        "cqr_user_groups": state_dir / "cqr_user_groups.parquet",
        "cqr_item_groups": state_dir / "cqr_item_groups.parquet",
    }
    groups = assignment.groups
    atomic_write(paths["history"], lambda p: groups.to_parquet(p, index=False))
    atomic_write(paths["current"], lambda p: groups.to_parquet(p, index=False))
    mig = assignment.migration.rename(index=_label)
    atomic_write(paths["migration"], lambda p: mig.to_csv(p))
    for key, s in (("cqr_user_groups", user_groups), ("cqr_item_groups", item_groups)):
        if s is None:
            paths[key].unlink(missing_ok=True)
            del paths[key]
        else:
            frame = s.reset_index()
            atomic_write(paths[key], lambda p, f=frame: f.to_parquet(p, index=False))
    result = GroupingResult(
        assignment=assignment,
        run_id=run_id,
        paths=paths,
        user_groups=user_groups,
        item_groups=item_groups,
        notes=tuple(notes),
    )
    atomic_write(paths["report"], lambda p: p.write_text(_report(result)))
    return result


__all__ = [
    "NEW",
    "GroupAssignment",
    "GroupingResult",
    "assign_live_groups",
    "cqr",
    "item_duration_groups",
    "quantile_boundaries",
    "quantile_groups",
    "run_grouping",
    "user_activity_groups",
]
