"""Import the public KuaiRand logs (Gao et al., CIKM 2022) into the data contract.

``import_kuairand(src_dir, out_dir)`` reads the KuaiRand files found in ``src_dir``, turns
them into the tables of :mod:`components.schema` and writes them with
:func:`components.io.write_dataset`. Files looked for:

- ``user_features_pure.csv`` (else another ``user_features*.csv``): user features;
- ``video_features_basic_pure.csv`` (else another ``video_features_basic*.csv``): video
  features;
- ``log_*.csv``: interaction logs in KuaiRand's 19-column format (all of them, concatenated).

What KuaiRand is and is not, and the choices made here (each is also written to
``meta.notes`` so that a data set explains itself):

Requests
    KuaiRand logs no request ids. A *request* is a user's exposures in one logged hour:
    the group (user_id, date, hourmin). ``date``/``hourmin`` are the log's Beijing-time hour
    (rounded to the nearest hour for some rows, per the data's README); they are used as
    logged, not recomputed from ``time_ms``. ``position`` is the 0-based order by ``time_ms``
    (ties by video id) within the request.
Sessions
    A user's requests in consecutive logged hours form one session: a new session starts
    when the previous request of the user is more than ``session_gap_hours`` (default 1)
    hour slots earlier, i.e. after at least one logged hour without an exposure. A session's
    ``day``/``start_hour`` are those of its first request; ``returned_next_day`` is 1 when
    another session of the user starts on the following day (0 on the log's last day:
    censored, counted in the notes).
Propensity
    The log's rows with ``is_rand = 1`` are videos drawn uniformly at random from the
    random-exposure candidate pool, so the logging probability of the shown video at its
    position is ``1 / n_candidates``. ``n_candidates`` is the size of the item catalogue
    (the video feature table extended by any logged video it lacks; 7,583 for the real
    KuaiRand-Pure pool) unless the caller passes it. Rows with ``is_rand = 0`` come from the
    production recommender, whose probabilities were not logged; they are dropped and
    counted.
Funnel and live slot
    KuaiRand has no recall pools, stage quotas, compute costs or live-stream slot. The
    ``pools``, ``non_impressions`` and ``groups`` tables are skipped (``meta.skipped``). The
    request columns the schema requires anyway are filled with neutral placeholders
    (``q_match = q_pre`` = number of impressions, ``quota_propensity = 1``,
    ``compute_cost = 0``, ``live_injected = 0``, ``live_item_id`` null,
    ``live_propensity = 1``, ``live_play_time_ms = 0``), listed in
    ``meta.params["placeholder_columns"]``, and ``meta.params["capabilities"]`` says
    ``funnel: False, live: False`` so the flow skips the compute-allocation, stage and
    live-slot agents instead of training them on constants.
Users
    Nothing shows that the KuaiRand-1K log's ``user_id`` is the same user as the
    KuaiRand-Pure feature table's ``user_id``, so by default the users table holds the log's
    users with unknown features (strings ``"UNKNOWN"``, counts and one-hot features NaN,
    flags 0, ``features_known = 0``). ``join_user_features=True`` joins by id when the
    caller knows the two match. Without a log, users are the feature table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.io import DataError, DatasetMeta, write_dataset
from components.schema import FEEDBACK_FLAGS, ONEHOT_FEATURES, SPECS

SOURCE = "kuairand"

LOG_COLUMNS: tuple[str, ...] = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
)
"""KuaiRand's interaction-log columns, in the documented order."""

LOG_EXTRA_COLUMNS: tuple[str, ...] = (
    "time_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "tab",
)
"""Log columns carried into ``impressions`` beyond the contract's minimum."""

USER_FEATURES_PREFERRED = "user_features_pure.csv"
USER_FEATURES_GLOB = "user_features*.csv"
VIDEO_FEATURES_PREFERRED = "video_features_basic_pure.csv"
VIDEO_FEATURES_GLOB = "video_features_basic*.csv"
LOG_GLOB = "log_*.csv"

UNKNOWN = "UNKNOWN"
LIVE_STREAMER_UNKNOWN = -124

# User feature columns by how an unknown value is written.
USER_STR_COLUMNS: tuple[str, ...] = (
    "user_active_degree",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
)
USER_FLAG_COLUMNS: tuple[str, ...] = ("is_lowactive_period", "is_live_streamer", "is_video_author")
USER_COUNT_COLUMNS: tuple[str, ...] = (
    "follow_user_num",
    "fans_user_num",
    "friend_user_num",
    "register_days",
)
USER_COLUMNS: tuple[str, ...] = (
    "user_id",
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num",
    "follow_user_num_range",
    "fans_user_num",
    "fans_user_num_range",
    "friend_user_num",
    "friend_user_num_range",
    "register_days",
    "register_days_range",
    *ONEHOT_FEATURES,
    "live_watch_3w",
    "features_known",
)

ITEM_COLUMNS: tuple[str, ...] = (
    "item_id",
    "is_live",
    "author_id",
    "video_duration",
    "video_type",
    "music_type",
    "tag",
    "upload_dt",
    "upload_type",
    "visible_status",
    "server_width",
    "server_height",
    "music_id",
    "features_known",
)

SKIP_REASONS: dict[str, str] = {
    "pools": "KuaiRand logs no recall pools or stage scores",
    "non_impressions": (
        "KuaiRand logs only shown videos, no ranked-but-not-shown candidates or logging scores"
    ),
    "groups": "user groups are an output of the reassignment step, not of a data source",
}

PLACEHOLDER_COLUMNS: dict[str, str] = {
    "q_match": "number of impressions of the request (no funnel logged)",
    "q_pre": "number of impressions of the request (no funnel logged)",
    "quota_propensity": "1.0 (no quota decision logged)",
    "compute_cost": "0.0 (no compute cost logged)",
    "live_injected": "0 (no live slot in KuaiRand)",
    "live_item_id": "null (no live slot in KuaiRand)",
    "live_propensity": "1.0 (no live decision logged)",
    "live_play_time_ms": "0.0 (no live streams in KuaiRand)",
}


@dataclass(frozen=True)
class KuaiRandFiles:
    """The KuaiRand files found in a directory (``None``/empty where absent)."""

    user_features: Path | None
    video_features: Path | None
    logs: tuple[Path, ...]


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_kuairand` wrote.

    ``messages`` holds one human line per skipped table and per cleaning action;
    ``meta.notes`` holds those plus the definitions the import used.
    """

    out_dir: Path
    meta: DatasetMeta
    n_rows: dict[str, int]
    messages: tuple[str, ...]
    seconds: float = 0.0


class _Log:
    """Collects notes (definitions) and messages (skips and cleaning actions)."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.messages: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def action(self, text: str) -> None:
        self.notes.append(text)
        self.messages.append(text)


def find_kuairand_files(src_dir: str | Path) -> KuaiRandFiles:
    """Locate the KuaiRand files in ``src_dir``; :class:`DataError` if there are none."""
    src = Path(src_dir)
    looked_for = (
        f"{USER_FEATURES_PREFERRED} (or {USER_FEATURES_GLOB}), "
        f"{VIDEO_FEATURES_PREFERRED} (or {VIDEO_FEATURES_GLOB}), {LOG_GLOB}"
    )
    if not src.is_dir():
        raise DataError(f"KuaiRand directory {src} does not exist; looked for {looked_for}")

    def pick(preferred: str, pattern: str) -> Path | None:
        if (src / preferred).is_file():
            return src / preferred
        found = sorted(p for p in src.glob(pattern) if p.is_file())
        return found[0] if found else None

    files = KuaiRandFiles(
        user_features=pick(USER_FEATURES_PREFERRED, USER_FEATURES_GLOB),
        video_features=pick(VIDEO_FEATURES_PREFERRED, VIDEO_FEATURES_GLOB),
        logs=tuple(sorted(p for p in src.glob(LOG_GLOB) if p.is_file())),
    )
    if files.user_features is None and files.video_features is None and not files.logs:
        raise DataError(f"no KuaiRand file in {src}; looked for {looked_for}")
    return files


def _read_csv(path: Path, str_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, nrows=0).columns
        dtype = {c: "str" for c in str_columns if c in header}
        return pd.read_csv(path, dtype=dtype, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as CSV: {exc}") from exc


# ---------------------------------------------------------------------------- log


def _read_logs(paths: tuple[Path, ...], log: _Log) -> pd.DataFrame:
    frames = []
    for path in paths:
        df = _read_csv(path)
        missing = [c for c in LOG_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(
                f"{path.name} is not a KuaiRand interaction log: missing columns {missing} "
                f"(expected the 19 columns {list(LOG_COLUMNS)})"
            )
        frames.append(df[list(LOG_COLUMNS)].assign(_file=path.name))
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    n_raw = len(raw)
    names = ", ".join(p.name for p in paths)
    log.note(f"log: {n_raw:,} rows read from {names}")

    # Every log column is an integer; a cell that is empty or not a number makes the row
    # unusable (it has no user, time or feedback to trust).
    numeric = raw[list(LOG_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1)
    if bad.any():
        log.action(f"log: dropped {int(bad.sum()):,} rows with an empty or non-numeric cell")
    df = numeric[~bad].astype("int64")

    dup = df.duplicated(keep="first")
    if dup.any():
        log.action(
            f"log: dropped {int(dup.sum()):,} exact duplicate row(s) (the same 19 values "
            "twice, e.g. the source's user 940 / video 4121 / time_ms 1651499805466)"
        )
        df = df[~dup]

    not_rand = df["is_rand"] != 1
    if not_rand.any():
        log.action(
            f"log: dropped {int(not_rand.sum()):,} rows with is_rand = 0 (shown by the "
            "production recommender, whose probabilities KuaiRand does not log, so no "
            "propensity can be justified)"
        )
        df = df[~not_rand]

    dates = pd.to_datetime(df["date"].astype(str), format="%Y%m%d", errors="coerce")
    hour, minute = df["hourmin"] // 100, df["hourmin"] % 100
    invalid = (
        dates.isna()
        | (hour < 0)
        | (hour > 23)
        | (minute > 59)
        | (df["user_id"] < 0)
        | (df["video_id"] < 0)
        | (df["play_time_ms"] < 0)
        | (df["duration_ms"] < 0)
        | ~df[list(FEEDBACK_FLAGS)].isin((0, 1)).all(axis=1)
    )
    if invalid.any():
        log.action(
            f"log: dropped {int(invalid.sum()):,} rows with an invalid value (date not "
            "YYYYMMDD, hourmin not HHMM, negative id or time, feedback flag not 0/1)"
        )
    df = df[~invalid].copy()
    df["_date"] = dates[~invalid]

    zero = int((df["duration_ms"] == 0).sum())
    if zero:
        log.action(
            f"log: kept {zero:,} rows with duration_ms = 0 (video length unknown in the "
            "source): duration_ms stays 0, so play fraction is undefined for them; "
            "consumers must treat duration_ms = 0 as unknown"
        )
    return df.reset_index(drop=True)


def _build_interactions(
    df: pd.DataFrame, n_candidates: int, session_gap_hours: int, log: _Log
) -> dict[str, pd.DataFrame]:
    """Impressions, requests and sessions from a cleaned log."""
    first = df["_date"].min()
    df = df.assign(
        day=(df["_date"] - first).dt.days.astype("int64"),
        hour=(df["hourmin"] // 100).astype("int64"),
    )
    df["_slot"] = df["day"] * 24 + df["hour"]
    df = df.sort_values(["user_id", "_slot", "time_ms", "video_id"], kind="stable")
    df = df.reset_index(drop=True)

    new_request = (df["user_id"].diff() != 0) | (df["_slot"].diff() != 0)
    df["request_id"] = new_request.cumsum().astype("int64") - 1
    df["position"] = df.groupby("request_id").cumcount().astype("int64")

    impressions = pd.DataFrame(
        {
            "request_id": df["request_id"],
            "user_id": df["user_id"],
            "item_id": df["video_id"],
            "position": df["position"],
            "propensity": np.full(len(df), 1.0 / n_candidates),
            **{f: df[f].astype("int64") for f in FEEDBACK_FLAGS},
            "play_time_ms": df["play_time_ms"].astype("float64"),
            "duration_ms": df["duration_ms"].astype("float64"),
            **{c: df[c].astype("int64") for c in LOG_EXTRA_COLUMNS},
        }
    )

    req = df.groupby("request_id", sort=True).agg(
        user_id=("user_id", "first"),
        day=("day", "first"),
        hour=("hour", "first"),
        slot=("_slot", "first"),
        n_impressions=("video_id", "size"),
        app_time_ms=("play_time_ms", "sum"),
    )
    req = req.reset_index()
    gap = req.groupby("user_id")["slot"].diff()
    new_session = gap.isna() | (gap > session_gap_hours)
    req["session_id"] = new_session.cumsum().astype("int64") - 1
    req["position_in_session"] = req.groupby("session_id").cumcount().astype("int64")
    last_in_session = req["session_id"].shift(-1) != req["session_id"]
    traffic = req.groupby(["day", "hour"])["request_id"].transform("size")

    n = len(req)
    requests = pd.DataFrame(
        {
            "request_id": req["request_id"].astype("int64"),
            "session_id": req["session_id"],
            "user_id": req["user_id"].astype("int64"),
            "day": req["day"].astype("int64"),
            "hour": req["hour"].astype("int64"),
            "position_in_session": req["position_in_session"],
            "traffic": traffic.astype("int64"),
            "q_match": req["n_impressions"].astype("int64"),
            "q_pre": req["n_impressions"].astype("int64"),
            "quota_propensity": np.ones(n),
            "compute_cost": np.zeros(n),
            "live_injected": np.zeros(n, dtype="int64"),
            "live_item_id": pd.array([pd.NA] * n, dtype="Int64"),
            "live_propensity": np.ones(n),
            "live_play_time_ms": np.zeros(n),
            "app_time_ms": req["app_time_ms"].astype("float64"),
            "session_continues": (~last_in_session).astype("int64"),
            "is_random": np.ones(n, dtype="int64"),
            "n_impressions": req["n_impressions"].astype("int64"),
        }
    )

    ses = req.groupby("session_id", sort=True).agg(
        user_id=("user_id", "first"),
        day=("day", "first"),
        start_hour=("hour", "first"),
        n_requests=("request_id", "size"),
        n_impressions=("n_impressions", "sum"),
        app_time_ms=("app_time_ms", "sum"),
    )
    ses = ses.reset_index()
    starts = set(zip(ses["user_id"], ses["day"], strict=True))
    returned = [(u, d + 1) in starts for u, d in zip(ses["user_id"], ses["day"], strict=True)]
    sessions = pd.DataFrame(
        {
            "session_id": ses["session_id"].astype("int64"),
            "user_id": ses["user_id"].astype("int64"),
            "day": ses["day"].astype("int64"),
            "start_hour": ses["start_hour"].astype("int64"),
            "n_requests": ses["n_requests"].astype("int64"),
            "returned_next_day": np.asarray(returned, dtype="int64"),
            "n_impressions": ses["n_impressions"].astype("int64"),
            "app_time_ms": ses["app_time_ms"].astype("float64"),
        }
    )
    last_day = int(sessions["day"].max())
    n_censored = int((sessions["day"] == last_day).sum())

    log.note(
        "requests: KuaiRand has no request ids; a request is a user's exposures in one "
        "logged hour, the group (user_id, date, hourmin), with date/hourmin used as logged; "
        f"{len(requests):,} requests; position = 0-based order by time_ms within the request; "
        "request_id and session_id are numbered by (user_id, time)"
    )
    log.note(
        "requests: day = days since the log's first date "
        f"({first.date().isoformat()}); traffic = requests in the same day and hour; "
        "app_time_ms = sum of play_time_ms of the request's impressions (random exposures "
        "only, so a lower bound of the user's app time)"
    )
    log.note(
        f"sessions: a user's requests in consecutive logged hours (gap <= {session_gap_hours} "
        "hour slot(s)) form one session; session_continues = 0 on the session's last request; "
        f"{len(sessions):,} sessions; returned_next_day = another session of the user starts "
        f"the next day ({n_censored:,} sessions on the last day {last_day} are censored and "
        "get 0)"
    )
    log.note(
        "impressions: every kept row has is_rand = 1 (uniform random exposure), so "
        f"propensity = 1/n_candidates = 1/{n_candidates:,} (probability of the shown video "
        "at its position under uniform sampling from the candidate catalogue)"
    )
    log.note(
        "requests: KuaiRand has a variable number of impressions per request, so slate_size is None"
    )
    log.note(
        "requests: KuaiRand has no funnel or live slot; the required columns "
        + ", ".join(PLACEHOLDER_COLUMNS)
        + " are neutral placeholders (q_match = q_pre = number of impressions, "
        "quota_propensity = live_propensity = 1, compute_cost = live_injected = "
        "live_play_time_ms = 0, live_item_id null); see meta.params['capabilities']: "
        "downstream steps must skip the compute-allocation, stage and live-slot agents"
    )
    return {"impressions": impressions, "requests": requests, "sessions": sessions}


# -------------------------------------------------------------------------- users


def _clean_user_features(path: Path, log: _Log, keep_ids: np.ndarray | None = None) -> pd.DataFrame:
    """The cleaned user feature table (only ``keep_ids`` when given: counts then refer to
    the rows that enter the users table)."""
    raw = _read_csv(path, USER_STR_COLUMNS)
    if "user_id" not in raw.columns:
        raise DataError(f"{path.name} has no user_id column; columns: {list(raw.columns)}")
    ids = pd.to_numeric(raw["user_id"], errors="coerce")
    bad = ids.isna() | (ids < 0)
    if bad.any():
        log.action(f"users: dropped {int(bad.sum()):,} rows of {path.name} without a valid id")
    raw = raw[~bad].assign(user_id=ids[~bad].astype("int64"))
    dup = raw["user_id"].duplicated()
    if dup.any():
        log.action(f"users: dropped {int(dup.sum()):,} repeated user ids in {path.name}")
        raw = raw[~dup]
    if keep_ids is not None:
        raw = raw[raw["user_id"].isin(keep_ids)]
    rows = f"{len(raw):,} rows taken from {path.name}"
    missing = [c for c in USER_COLUMNS[1:-2] if c not in raw.columns]
    if missing:
        log.action(f"users: {path.name} lacks {missing}; filled as unknown")

    out = pd.DataFrame({"user_id": raw["user_id"].to_numpy()})
    for c in USER_STR_COLUMNS:
        col = raw[c] if c in raw.columns else pd.Series(UNKNOWN, index=raw.index)
        col = col.astype("str").str.strip()
        empty = col.isna() | (col == "")
        if empty.any() and c in raw.columns:
            log.action(f"users: {int(empty.sum()):,} empty {c} cells set to {UNKNOWN!r}")
        out[c] = col.mask(empty, UNKNOWN).to_numpy()
    for c in USER_FLAG_COLUMNS:
        if c not in raw.columns:
            out[c] = 0
            continue
        col = pd.to_numeric(raw[c], errors="coerce")
        if c == "is_live_streamer":
            n_unknown = int((col == LIVE_STREAMER_UNKNOWN).sum())
            if n_unknown:
                log.action(
                    f"users: is_live_streamer = {LIVE_STREAMER_UNKNOWN} in {n_unknown:,} of "
                    f"the {rows}: read as unknown and set to 0"
                )
            col = col.mask(col == LIVE_STREAMER_UNKNOWN, 0)
        other = ~col.isin((0, 1))
        if other.any():
            log.action(f"users: {int(other.sum()):,} {c} values not 0/1 (or empty) set to 0")
        out[c] = col.where(~other, 0).astype("int64").to_numpy()
    empties: dict[str, int] = {}
    for c in (*USER_COUNT_COLUMNS, *ONEHOT_FEATURES):
        if c not in raw.columns:
            out[c] = np.nan
            continue
        col = pd.to_numeric(raw[c], errors="coerce").astype("float64")
        if col.isna().any():
            empties[c] = int(col.isna().sum())
        out[c] = col.to_numpy()
    if empties:
        counts = ", ".join(f"{c} {n:,}" for c, n in empties.items())
        log.action(f"users: empty or non-numeric cells kept as NaN in the {rows}: {counts}")
    out["live_watch_3w"] = 0.0
    out["features_known"] = 1
    return out[list(USER_COLUMNS)].sort_values("user_id").reset_index(drop=True)


def _unknown_users(user_ids: np.ndarray) -> pd.DataFrame:
    n = len(user_ids)
    out = pd.DataFrame({"user_id": np.asarray(user_ids, dtype="int64")})
    for c in USER_STR_COLUMNS:
        out[c] = pd.Series([UNKNOWN] * n, dtype="str")
    for c in USER_FLAG_COLUMNS:
        out[c] = np.zeros(n, dtype="int64")
    for c in (*USER_COUNT_COLUMNS, *ONEHOT_FEATURES):
        out[c] = np.full(n, np.nan)
    out["live_watch_3w"] = np.zeros(n)
    out["features_known"] = np.zeros(n, dtype="int64")
    return out[list(USER_COLUMNS)]


def _build_users(
    log_users: np.ndarray | None,
    feature_path: Path | None,
    join_user_features: bool,
    log: _Log,
) -> pd.DataFrame:
    live_note = (
        "users: KuaiRand has no live-stream data; live_watch_3w = 0.0 for every user "
        "(live-slot grouping has nothing to work on)"
    )
    if log_users is None:
        assert feature_path is not None
        users = _clean_user_features(feature_path, log)
        log.note(f"users: {len(users):,} users from {feature_path.name} (no log present)")
        log.note(live_note)
        return users

    log_users = np.sort(np.unique(log_users))
    if feature_path is None:
        log.note(
            f"users: {len(log_users):,} log users; no user feature file, so features are "
            f"unknown ({UNKNOWN!r} strings, NaN counts and one-hot features, flags 0, "
            "features_known = 0)"
        )
    elif not join_user_features:
        log.action(
            f"users: {len(log_users):,} log users with unknown features; {feature_path.name} "
            "was NOT joined because nothing shows that the log's user_id (e.g. KuaiRand-1K) "
            "names the same user as the feature table's user_id (KuaiRand-Pure); pass "
            "join_user_features=True when they come from the same release"
        )
    if feature_path is None or not join_user_features:
        log.note(live_note)
        return _unknown_users(log_users)

    known = _clean_user_features(feature_path, log, keep_ids=log_users)
    absent = np.setdiff1d(log_users, known["user_id"].to_numpy())
    users = pd.concat([known, _unknown_users(absent)], ignore_index=True)
    users = users.sort_values("user_id").reset_index(drop=True)
    log.action(
        f"users: joined {feature_path.name} to the log's {len(log_users):,} users by user_id "
        f"(join_user_features=True, the caller asserts the ids match); {len(absent):,} log "
        "users absent from the feature table get unknown features"
    )
    log.note(live_note)
    return users


# -------------------------------------------------------------------------- items

_ITEM_STR_COLUMNS = ("video_type", "tag", "upload_dt", "upload_type")
_ITEM_FLOAT_COLUMNS = ("visible_status", "server_width", "server_height", "music_type")


def _read_video_features(path: Path, log: _Log) -> pd.DataFrame:
    raw = _read_csv(path, _ITEM_STR_COLUMNS)
    if "video_id" not in raw.columns:
        raise DataError(f"{path.name} has no video_id column; columns: {list(raw.columns)}")
    ids = pd.to_numeric(raw["video_id"], errors="coerce")
    bad = ids.isna() | (ids < 0)
    if bad.any():
        log.action(f"items: dropped {int(bad.sum()):,} rows of {path.name} without a valid id")
    raw = raw[~bad].assign(video_id=ids[~bad].astype("int64"))
    dup = raw["video_id"].duplicated()
    if dup.any():
        log.action(f"items: dropped {int(dup.sum()):,} repeated video ids in {path.name}")
        raw = raw[~dup]
    wanted = ("author_id", "video_duration", *_ITEM_STR_COLUMNS, *_ITEM_FLOAT_COLUMNS, "music_id")
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        log.action(f"items: {path.name} lacks {missing}; filled as unknown")
    return raw.reset_index(drop=True)


def _build_items(feature_path: Path | None, log_df: pd.DataFrame | None, log: _Log) -> pd.DataFrame:
    raw = _read_video_features(feature_path, log) if feature_path is not None else None
    log_dur = (
        log_df.groupby("video_id")["duration_ms"].max().astype("float64")
        if log_df is not None and len(log_df)
        else pd.Series(dtype="float64")
    )

    if raw is not None:
        nothing = pd.Series(np.nan, index=raw.index)
        author = pd.to_numeric(raw.get("author_id", nothing), errors="coerce")
        valid_authors = author[author >= 0]
        unknown_author = int(valid_authors.max()) + 1 if len(valid_authors) else 0
        items = pd.DataFrame({"item_id": raw["video_id"].astype("int64")})
        items["author_id"] = author
        items["video_duration"] = pd.to_numeric(
            raw.get("video_duration", nothing), errors="coerce"
        ).astype("float64")
        for c in _ITEM_STR_COLUMNS:
            items[c] = raw.get(c, nothing).astype("str")
        for c in _ITEM_FLOAT_COLUMNS:
            items[c] = pd.to_numeric(raw.get(c, nothing), errors="coerce").astype("float64")
        music_id = pd.to_numeric(raw.get("music_id", nothing), errors="coerce")
        items["music_id"] = music_id.astype("Int64")
        items["features_known"] = 1
    else:
        unknown_author = 0
        items = pd.DataFrame({"item_id": pd.Series([], dtype="int64")})

    extra_ids = np.setdiff1d(log_dur.index.to_numpy(), items["item_id"].to_numpy())
    if len(extra_ids):
        extra = pd.DataFrame(
            {
                "item_id": extra_ids.astype("int64"),
                "author_id": np.nan,
                "video_duration": log_dur.loc[extra_ids].to_numpy(),
                "video_type": UNKNOWN,
                "music_type": np.nan,
                "tag": pd.Series([None] * len(extra_ids), dtype="str"),
                "upload_dt": pd.Series([None] * len(extra_ids), dtype="str"),
                "upload_type": pd.Series([None] * len(extra_ids), dtype="str"),
                "visible_status": np.nan,
                "server_width": np.nan,
                "server_height": np.nan,
                "music_id": pd.array([pd.NA] * len(extra_ids), dtype="Int64"),
                "features_known": 0,
            }
        )
        items = pd.concat([items, extra], ignore_index=True) if len(items) else extra
        where = f"absent from {feature_path.name}" if feature_path else "no video feature file"
        log.action(
            f"items: {len(extra_ids):,} logged videos {where} added with unknown features "
            "(video_duration from the log's duration_ms)"
        )

    n_author = int(items["author_id"].isna().sum() + (items["author_id"] < 0).sum())
    if n_author:
        log.action(
            f"items: {n_author:,} items without a valid author_id get the shared "
            f"unknown-author id {unknown_author}"
        )
    items["author_id"] = items["author_id"].where(items["author_id"] >= 0, unknown_author)
    items["author_id"] = items["author_id"].astype("int64")

    dur = items["video_duration"]
    neg = dur < 0
    if neg.any():
        log.action(f"items: {int(neg.sum()):,} negative video_duration values treated as empty")
        dur = dur.mask(neg)
    empty = dur.isna()
    if empty.any():
        from_log = log_dur.reindex(items["item_id"]).to_numpy()
        fill = pd.Series(from_log, index=items.index)
        usable = empty & (fill > 0)
        dur = dur.where(~usable, fill).fillna(0.0)
        log.action(
            f"items: {int(empty.sum()):,} empty video_duration values: {int(usable.sum()):,} "
            f"taken from the log's duration_ms, {int(empty.sum() - usable.sum()):,} set to 0 "
            "(unknown length; the log has duration_ms = 0 or no row for them)"
        )
    items["video_duration"] = dur.astype("float64")

    vt = items["video_type"]
    vt_empty = vt.isna() | (vt.str.strip() == "")
    if vt_empty.any() and raw is not None:
        n_bad = int(vt_empty[items["features_known"] == 1].sum())
        if n_bad:
            log.action(f"items: {n_bad:,} empty video_type cells set to {UNKNOWN!r}")
    items["video_type"] = vt.mask(vt_empty, UNKNOWN).astype("str")
    n_music = int(items["music_type"].isna().sum())
    n_tag = int(items["tag"].isna().sum())
    if n_music or n_tag:
        log.action(
            f"items: {n_music:,} empty music_type and {n_tag:,} empty tag values kept as null "
            "(both columns are nullable)"
        )
    items["is_live"] = 0
    log.note(
        f"items: {len(items):,} videos (is_live = 0: KuaiRand has no live streams); tag is the "
        "source's comma-separated tag id string"
    )
    return items[list(ITEM_COLUMNS)].sort_values("item_id").reset_index(drop=True)


# ------------------------------------------------------------------------- import


def import_kuairand(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    join_user_features: bool = False,
    session_gap_hours: int = 1,
    n_candidates: int | None = None,
) -> ImportResult:
    """Import the KuaiRand files of ``src_dir`` as a contract data set in ``out_dir``.

    ``join_user_features``: join the user feature table to the log's users by user_id (only
    when the caller knows the ids name the same users; default: log users with unknown
    features). ``session_gap_hours``: requests of a user at most this many logged hours
    apart belong to one session. ``n_candidates``: size of the uniform random-exposure
    candidate pool (default: the size of the item catalogue); propensity = 1/n_candidates.

    Raises :class:`DataError` when ``src_dir`` is missing or holds no KuaiRand file, a log
    lacks some of KuaiRand's 19 columns, a feature file has no id column, or no table at all
    can be built (e.g. a log whose every row is dropped and no feature file).
    """
    t0 = time.perf_counter()
    if session_gap_hours < 0:
        raise ValueError(f"session_gap_hours must be >= 0, got {session_gap_hours}")
    if n_candidates is not None and n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    files = find_kuairand_files(src_dir)
    log = _Log()
    tables: dict[str, pd.DataFrame] = {}
    skipped: dict[str, str] = {}

    log_df = _read_logs(files.logs, log) if files.logs else None
    if log_df is not None and len(log_df) == 0:
        log.action("log: no usable row left after cleaning")

    if files.video_features is not None or (log_df is not None and len(log_df)):
        tables["items"] = _build_items(files.video_features, log_df, log)
    else:
        skipped["items"] = "no video feature file (video_features_basic*.csv) and no usable log"

    has_log = log_df is not None and len(log_df) > 0
    if has_log or files.user_features is not None:
        tables["users"] = _build_users(
            log_df["user_id"].to_numpy() if has_log else None,
            files.user_features,
            join_user_features,
            log,
        )
    else:
        skipped["users"] = "no user feature file (user_features*.csv) and no usable log"

    pool = 0
    if has_log:
        pool = n_candidates if n_candidates is not None else len(tables["items"])
        missing = np.setdiff1d(log_df["video_id"].unique(), tables["items"]["item_id"])
        assert len(missing) == 0, "every logged video must be in items"
        tables.update(_build_interactions(log_df, pool, session_gap_hours, log))
    else:
        why = (
            "no interaction log (log_*.csv) in the source"
            if log_df is None
            else "the interaction log has no usable row after cleaning"
        )
        for name in ("sessions", "requests", "impressions"):
            skipped[name] = why
    skipped.update(SKIP_REASONS)
    for name, reason in skipped.items():
        log.messages.append(f"{name}: skipped: {reason}")

    ordered = {name: tables[name] for name in SPECS if name in tables}
    if not ordered:
        raise DataError(f"no table could be built from {Path(src_dir)}: " + "; ".join(log.messages))
    capabilities = {
        "funnel": False,
        "live": False,
        "random_exposure": has_log,
        "user_features": files.user_features is not None and (join_user_features or not has_log),
        "item_features": files.video_features is not None,
    }
    params: dict[str, Any] = {
        "capabilities": capabilities,
        "files": {
            "user_features": files.user_features.name if files.user_features else None,
            "video_features": files.video_features.name if files.video_features else None,
            "logs": [p.name for p in files.logs],
        },
        "join_user_features": join_user_features,
        "session_gap_hours": session_gap_hours,
    }
    if has_log:
        params["n_candidates"] = pool
        params["propensity"] = f"1/n_candidates = 1/{pool} (uniform random exposure)"
        params["placeholder_columns"] = {"requests": dict(PLACEHOLDER_COLUMNS)}
        params["request_definition"] = "(user_id, date, hourmin): a user's exposures in one hour"
        params["session_definition"] = (
            f"a user's requests at most {session_gap_hours} logged hour(s) apart"
        )
    meta = DatasetMeta(
        source=SOURCE,
        slate_size=None,
        tables=tuple(ordered),
        skipped=skipped,
        params=params,
        notes=tuple(log.notes),
    )
    out = write_dataset(ordered, meta, out_dir)
    return ImportResult(
        out_dir=Path(out),
        meta=meta,
        n_rows={name: len(df) for name, df in ordered.items()},
        messages=tuple(log.messages),
        seconds=time.perf_counter() - t0,
    )
