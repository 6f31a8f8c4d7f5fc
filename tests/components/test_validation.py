"""Validation of a data set against the contract (Great Expectations 1.x).

A tiny consistent data set is built here from ``components.schema``; each case corrupts one
thing and checks that it is reported with the right table, column, rule and row count, with
no crash, no GE evaluation error and no other failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.io import DataError, DatasetMeta, write_dataset
from components.schema import FEEDBACK_FLAGS, ONEHOT_FEATURES
from components.validation import Failure, ValidationReport, validate_dataset

SLATE = 3
POOL = 5

Tables = dict[str, pd.DataFrame]


def make_tables(seed: int = 0) -> Tables:
    """A small, consistent data set: 4 users, 10 items, 3 sessions, 6 requests."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 4, 10
    users = pd.DataFrame(
        {
            "user_id": np.arange(n_users),
            "user_active_degree": ["high_active", "full_active", "middle_active", "high_active"],
            "is_live_streamer": [0, 1, 0, 0],
            "is_video_author": [1, 0, 0, 1],
            "follow_user_num_range": ["0", "1-10", "10-50", "0"],
            "register_days_range": ["31-60", "61-90", "730+", "31-60"],
            **{f: rng.integers(0, 3, n_users).astype(float) for f in ONEHOT_FEATURES},
            "live_watch_3w": [0.0, 120.5, 3600.0, 0.0],
        }
    )
    users.loc[2, "onehot_feat3"] = np.nan  # nullable
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items),
            "is_live": [0] * 8 + [1] * 2,
            "author_id": rng.integers(0, 5, n_items),
            "video_duration": [15000.0, 30000.0, 9000.0, 60000.0, 12000.0]
            + [45000.0, 20000.0, 7000.0, 0.0, 0.0],
            "video_type": ["NORMAL"] * 8 + ["LIVE"] * 2,
            "music_type": [1.0, np.nan, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, np.nan, np.nan],
            "tag": ["a", "b", None, "c", "a", "b", "c", "a", None, None],
        }
    )
    sessions = pd.DataFrame(
        {
            "session_id": [0, 1, 2],
            "user_id": [0, 1, 2],
            "day": [0, 0, 1],
            "start_hour": [8, 20, 23],
            "n_requests": [2, 3, 1],
            "returned_next_day": [1, 0, 1],
        }
    )
    n_req = 6
    session_of = np.array([0, 0, 1, 1, 1, 2])
    requests = pd.DataFrame(
        {
            "request_id": np.arange(100, 100 + n_req),
            "session_id": session_of,
            "user_id": sessions["user_id"].to_numpy()[session_of],
            "day": sessions["day"].to_numpy()[session_of],
            "hour": [8, 8, 20, 20, 21, 23],
            "position_in_session": [0, 1, 0, 1, 2, 0],
            "traffic": [2, 2, 3, 3, 1, 1],
            "q_match": [5] * n_req,
            "q_pre": [4] * n_req,
            "quota_propensity": [0.5, 0.25, 1.0, 0.5, 0.5, 0.75],
            "compute_cost": rng.uniform(0.1, 1.0, n_req),
            "live_injected": [0, 1, 0, 0, 1, 0],
            "live_item_id": [np.nan, 8, np.nan, np.nan, 9, np.nan],
            "live_propensity": [0.9, 0.1, 0.8, 0.7, 0.2, 0.9],
            "live_play_time_ms": [0.0, 5000.0, 0.0, 0.0, 800.0, 0.0],
            "app_time_ms": rng.uniform(1e4, 1e5, n_req),
            "session_continues": [1, 0, 1, 1, 0, 0],
            "is_random": [0, 0, 0, 1, 0, 0],
        }
    )
    imp_rows, non_rows, pool_rows = [], [], []
    for r in requests.itertuples(index=False):
        pool = rng.choice(8, size=POOL, replace=False)  # videos only
        for pos, item in enumerate(pool[:SLATE]):
            imp_rows.append((r.request_id, r.user_id, int(item), pos))
        for rank, item in enumerate(pool[SLATE:], start=SLATE):
            non_rows.append((r.request_id, int(item), float(rng.normal()), rank))
        stage = np.array([3] * SLATE + [2] * (POOL - SLATE), dtype=np.int64)
        pool_rows.append(
            (
                r.request_id,
                pool.astype(np.int64),
                rng.normal(size=POOL),
                rng.normal(size=POOL),
                stage,
            )
        )
    n_imp = len(imp_rows)
    impressions = pd.DataFrame(imp_rows, columns=["request_id", "user_id", "item_id", "position"])
    impressions["propensity"] = rng.uniform(0.05, 1.0, n_imp)
    for flag in FEEDBACK_FLAGS:
        impressions[flag] = rng.integers(0, 2, n_imp)
    impressions.loc[0, "is_click"] = 1
    impressions.loc[1, "is_click"] = 0
    impressions["play_time_ms"] = rng.uniform(0, 3e4, n_imp)
    impressions["duration_ms"] = items["video_duration"].to_numpy()[impressions["item_id"]]
    non_impressions = pd.DataFrame(
        non_rows, columns=["request_id", "item_id", "logging_score", "rank"]
    )
    pools = pd.DataFrame(
        pool_rows, columns=["request_id", "item_ids", "match_score", "pre_score", "stage"]
    )
    return {
        "users": users,
        "items": items,
        "sessions": sessions,
        "requests": requests,
        "impressions": impressions,
        "non_impressions": non_impressions,
        "pools": pools,
    }


def write(tables: Tables, directory: Path, **meta_kw) -> Path:
    meta = DatasetMeta(source="test", seed=0, slate_size=SLATE, tables=tuple(tables), **meta_kw)
    return write_dataset(tables, meta, directory)


def run(tmp_path: Path, data_dir: Path) -> ValidationReport:
    return validate_dataset(data_dir, out_dir=tmp_path / "out")


def test_valid_dataset_passes(tmp_path: Path) -> None:
    data = write(make_tables(), tmp_path / "data")
    report = run(tmp_path, data)
    assert report.success, report.format_failures()
    assert report.failures == ()
    assert report.format_failures() == "no failures"
    assert report.n_rows == {
        "users": 4,
        "items": 10,
        "sessions": 3,
        "requests": 6,
        "impressions": 6 * SLATE,
        "non_impressions": 6 * (POOL - SLATE),
        "pools": 6,
    }
    assert report.n_expectations > 200
    summary = json.loads(report.summary_path.read_text())
    assert report.summary_path == tmp_path / "out" / "summary.json"
    assert summary["success"] is True and summary["failures"] == []
    assert summary["n_rows"]["impressions"] == 18
    assert summary["tables"]["impressions"]["rows"] == 18
    assert summary["tables"]["impressions"]["failures"] == 0
    assert sum(t["expectations"] for t in summary["tables"].values()) == report.n_expectations
    assert report.docs_index is not None and report.docs_index.is_file()
    assert report.docs_index == tmp_path / "out/gx/uncommitted/data_docs/local_site/index.html"
    index = report.docs_index.read_text()
    assert "relayrec.impressions" in index and "relayrec.impressions_per_request" in index

    # Add-or-update: a second run in the same GE context reuses the suites ...
    again = run(tmp_path, data)
    assert again.success and again.n_expectations == report.n_expectations

    # ... and a source without some tables (like KuaiRand: no pools) validates what it has;
    # the suites whose checks changed (no references to sessions any more) are replaced.
    tables = make_tables()
    for name in ("pools", "non_impressions", "sessions"):
        del tables[name]
    lean = write(tables, tmp_path / "lean", skipped={"pools": "source has no recall pools"})
    third = run(tmp_path, lean)
    assert third.success, third.format_failures()
    assert set(third.n_rows) == {"users", "items", "requests", "impressions"}
    notes = json.loads(third.summary_path.read_text())["notes"]
    assert notes == [
        "requests.session_id -> sessions.session_id not checked: sessions not in the data set"
    ]
    suite = tmp_path / "out/gx/expectations/relayrec/requests.json"
    assert "_fk_user_id" in suite.read_text() and "_fk_session_id" not in suite.read_text()


def test_no_dataset_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="meta.json"):
        validate_dataset(tmp_path / "nothing", out_dir=tmp_path / "out")


# --------------------------------------------------------------------------------------------
# Corruptions. GE costs ~10 ms per expectation whatever the data size (~4 s per validation
# of this data set), so corruptions that cannot interfere share one validation: each group
# below is one corrupted data set, and every case is still asserted on its own.


def _set(table: str, column: str, row: int, value: object) -> Callable[[Tables], None]:
    def corrupt(t: Tables) -> None:
        df = t[table]
        if isinstance(value, float) and df[column].dtype.kind in "iu":
            df[column] = df[column].astype(float)
        df.loc[row, column] = value

    return corrupt


def _null_key(t: Tables) -> None:
    t["users"]["user_id"] = t["users"]["user_id"].astype(float)
    t["users"].loc[3, "user_id"] = np.nan  # user 3 has no session, so no dangling references


def _duplicate_request(t: Tables) -> None:
    t["requests"] = pd.concat([t["requests"], t["requests"].iloc[[0]]], ignore_index=True)


def _duplicate_position(t: Tables) -> None:
    t["impressions"].loc[1, "position"] = 0  # (request 100, position 0) twice


def _string_in_int(t: Tables) -> None:
    t["impressions"]["position"] = t["impressions"]["position"].astype(str)


def _drop(table: str, column: str) -> Callable[[Tables], None]:
    def corrupt(t: Tables) -> None:
        t[table] = t[table].drop(columns=[column])

    return corrupt


def _empty_table(t: Tables) -> None:
    t["non_impressions"] = t["non_impressions"].iloc[0:0]


def _missing_impression(t: Tables) -> None:
    t["impressions"] = t["impressions"].drop(index=[4])  # request 101 shows 2 items


def _unequal_pool_lists(t: Tables) -> None:
    t["pools"].at[2, "pre_score"] = t["pools"].at[2, "pre_score"][:-1]


def _float_stage(t: Tables) -> None:
    t["pools"]["stage"] = [s.astype(float) for s in t["pools"]["stage"]]


def _no_clicks(t: Tables) -> None:
    t["impressions"]["is_click"] = 0


Case = tuple[Callable[[Tables], None], str, str | None, str, int | None]
GROUPS: dict[str, dict[str, Case]] = {
    # case: (corruption, table, column, rule, bad rows or None for "any")
    "g1": {
        "null_key": (_null_key, "users", "user_id", "not_null", 1),
        "negative_play_time": (
            _set("impressions", "play_time_ms", 5, -1.0), "impressions", "play_time_ms", "range", 1,
        ),
        "propensity_zero": (
            _set("impressions", "propensity", 2, 0.0), "impressions", "propensity", "range", 1,
        ),
        "duplicate_request_id": (_duplicate_request, "requests", "request_id", "unique", 2),
        "duplicate_compound_key": (
            _duplicate_position, "impressions", "request_id,position", "unique", 2,
        ),
        "dangling_user_in_requests": (
            _set("requests", "user_id", 3, 999), "requests", "user_id", "foreign_key", 1,
        ),
        "dangling_item_in_impressions": (
            _set("impressions", "item_id", 0, 12345), "impressions", "item_id", "foreign_key", 1,
        ),
        "missing_column": (_drop("requests", "hour"), "requests", "hour", "column_exists", None),
        "empty_table": (_empty_table, "non_impressions", None, "non_empty", None),
        "inf_in_float": (
            _set("requests", "compute_cost", 2, np.inf), "requests", "compute_cost", "finite", 1,
        ),
        "flag_value_two": (
            _set("impressions", "is_like", 6, 2), "impressions", "is_like", "allowed", 1,
        ),
        "hour_out_of_range": (
            _set("sessions", "start_hour", 1, 24), "sessions", "start_hour", "range", 1,
        ),
        "unequal_pool_lists": (
            _unequal_pool_lists, "pools", "item_ids,match_score,pre_score,stage",
            "list_lengths", 1,
        ),
    },
    "g2": {
        "propensity_above_one": (
            _set("impressions", "propensity", 7, 1.5), "impressions", "propensity", "range", 1,
        ),
        "string_in_int_column": (_string_in_int, "impressions", "position", "dtype", None),
        "nan_in_float": (
            _set("impressions", "duration_ms", 3, np.nan), "impressions", "duration_ms",
            "not_null", 1,
        ),
        "wrong_slate_size": (_missing_impression, "impressions", "request_id", "slate_size", 1),
        "dangling_request_in_pools": (
            _set("pools", "request_id", 0, 7), "pools", "request_id", "foreign_key", 1,
        ),
        "list_of_wrong_kind": (_float_stage, "pools", "stage", "dtype", 6),
        "inf_in_nullable_float": (
            _set("users", "onehot_feat5", 1, -np.inf), "users", "onehot_feat5", "finite", 1,
        ),
        "quota_propensity_zero": (
            _set("requests", "quota_propensity", 0, 0.0), "requests", "quota_propensity",
            "range", 1,
        ),
        "no_clicks": (_no_clicks, "impressions", "is_click", "distribution", None),
        "missing_fk_column": (
            _drop("impressions", "item_id"), "impressions", "item_id", "column_exists", None,
        ),
    },
}  # fmt: skip
COLLATERAL = {("users", "user_id", "dtype")}  # a null makes the int key a float column
CASES = [(g, case) for g, cases in GROUPS.items() for case in cases]


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ValidationReport]:
    """One validation per group of corruptions."""
    reports = {}
    for group, cases in GROUPS.items():
        tmp = tmp_path_factory.mktemp(group)
        tables = make_tables()
        for corrupt, *_ in cases.values():
            corrupt(tables)
        reports[group] = run(tmp, write(tables, tmp / "data"))
    return reports


def _matching(report: ValidationReport, table: str, column: str | None, rule: str) -> list[Failure]:
    return [f for f in report.failures if (f.table, f.column, f.rule) == (table, column, rule)]


@pytest.mark.parametrize(("group", "case"), CASES, ids=[c for _, c in CASES])
def test_corruption_is_caught(
    corrupted: dict[str, ValidationReport], group: str, case: str
) -> None:
    _, table, column, rule, bad_rows = GROUPS[group][case]
    report = corrupted[group]
    assert not report.success
    hits = _matching(report, table, column, rule)
    assert len(hits) == 1, f"expected {table}.{column} {rule} in\n{report.format_failures()}"
    if bad_rows is not None:
        assert hits[0].bad_rows == bad_rows, report.format_failures()
    summary = json.loads(report.summary_path.read_text())
    assert summary["success"] is False
    assert asdict(hits[0]) in summary["failures"]


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_nothing_else_fails(corrupted: dict[str, ValidationReport], group: str) -> None:
    """Every failure is one of the corruptions (no crash, no GE error, no false alarm)."""
    expected = {(t, c, r) for _, t, c, r, _ in GROUPS[group].values()} | COLLATERAL
    extra = [f for f in corrupted[group].failures if (f.table, f.column, f.rule) not in expected]
    assert not extra, "\n".join(f.format() for f in extra)


def _truncate(data: Path) -> None:
    path = data / "items.parquet"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_unreadable_tables_are_failures(tmp_path: Path) -> None:
    data = write(make_tables(), tmp_path / "data")
    _truncate(data)
    (data / "sessions.parquet").unlink()
    report = run(tmp_path, data)
    assert not report.success
    assert sorted((f.table, f.column, f.rule, f.bad_rows) for f in report.failures) == [
        ("items", None, "readable", None),
        ("sessions", None, "readable", None),
    ]
    assert "items" not in report.n_rows and "sessions" not in report.n_rows
    assert report.n_rows["impressions"] == 18  # the other tables are still validated
    notes = json.loads(report.summary_path.read_text())["notes"]
    assert any("items.item_id not checked" in n for n in notes), notes
    assert any("sessions.session_id not checked" in n for n in notes), notes


def test_format_failures_names_table_column_and_count(
    corrupted: dict[str, ValidationReport],
) -> None:
    report = corrupted["g1"]
    text = report.format_failures()
    assert len(text.splitlines()) == len(report.failures)
    line = next(x for x in text.splitlines() if "play_time_ms" in x)
    assert line.startswith("impressions.play_time_ms: range (1 bad row) - 1 of 18 values"), line
    assert "-1.0" in line
    line = next(x for x in text.splitlines() if "requests.request_id: unique" in x)
    assert "(2 bad rows)" in line
    assert "requests.hour: column_exists - column missing from requests" in text.splitlines()
