"""Tests of the KuaiRand importer: real files (when present), a hand-made log with known
answers, a features-only directory and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.io import DataError, read_dataset
from components.kuairand import LOG_COLUMNS, import_kuairand
from components.schema import SPECS

REAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "kuairand"
REAL_LOG = REAL_DIR / "log_random_4_22_to_5_08_1k.csv"


def check_contract(tables: dict[str, pd.DataFrame]) -> None:
    """Every table follows its spec in components.schema (columns, nulls, bounds, keys)."""
    for name, df in tables.items():
        spec = SPECS[name]
        missing = [c for c in spec.column_names if c not in df.columns]
        assert not missing, f"{name} lacks {missing}"
        for col in spec.columns:
            s = df[col.name]
            if not col.nullable:
                assert not s.isna().any(), f"{name}.{col.name} has nulls"
            v = s.dropna()
            if col.kind == "int":
                assert pd.api.types.is_integer_dtype(s.dtype), f"{name}.{col.name} {s.dtype}"
            elif col.kind == "float":
                assert pd.api.types.is_numeric_dtype(s.dtype), f"{name}.{col.name} {s.dtype}"
            elif col.kind == "str":
                assert all(isinstance(x, str) for x in v), f"{name}.{col.name} not str"
            if col.min is not None and len(v):
                assert (v > col.min).all() if col.min_exclusive else (v >= col.min).all(), (
                    f"{name}.{col.name} below {col.min}"
                )
            if col.max is not None and len(v):
                assert (v <= col.max).all(), f"{name}.{col.name} above {col.max}"
            if col.allowed is not None:
                assert v.isin(col.allowed).all(), f"{name}.{col.name} outside {col.allowed}"
            if col.unique:
                assert s.is_unique, f"{name}.{col.name} not unique"
        assert not df.duplicated(list(spec.key)).any(), f"{name} key {spec.key} repeats"
        for fk in spec.foreign_keys:
            if fk.ref_table in tables:
                ref = tables[fk.ref_table][fk.ref_column]
                assert df[fk.column].isin(ref).all(), f"{name}.{fk.column} not in {fk.ref_table}"


# ---------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real_default(tmp_path_factory):
    if not REAL_LOG.exists():
        pytest.skip(f"real KuaiRand files absent ({REAL_DIR})")
    out = tmp_path_factory.mktemp("kuairand_real")
    return import_kuairand(REAL_DIR, out)


def test_real_files_counts_and_contract(real_default):
    res = real_default
    tables, meta = read_dataset(res.out_dir)
    check_contract(tables)
    imp, users, items = tables["impressions"], tables["users"], tables["items"]

    assert len(imp) == 43_028 - 1 == res.n_rows["impressions"]
    dup = imp[(imp.user_id == 940) & (imp.item_id == 4121) & (imp.time_ms == 1651499805466)]
    assert len(dup) == 1
    assert any("dropped 1 exact duplicate" in m for m in res.messages)

    assert len(users) == 1_000 and set(users.user_id) == set(range(1_000))
    assert set(imp.user_id) == set(users.user_id)
    assert imp.item_id.nunique() == 7_388
    assert set(imp.item_id) <= set(items.item_id)
    assert len(items) == 7_583 and (items.is_live == 0).all()

    assert (imp.duration_ms == 0).sum() == 1_310
    assert any("1,310 rows with duration_ms = 0" in m for m in res.messages)
    assert ((imp.propensity > 0) & (imp.propensity <= 1)).all()
    assert np.allclose(imp.propensity, 1 / 7_583)

    # Default: the log's users are not joined to the Pure features.
    assert (users.features_known == 0).all() and (users.user_active_degree == "UNKNOWN").all()
    assert any("NOT joined" in n for n in meta.notes)
    assert (users.live_watch_3w == 0).all()

    req = tables["requests"]
    assert req.q_match.equals(req.n_impressions) and (req.live_injected == 0).all()
    assert req.groupby("session_id").session_continues.min().eq(0).all()
    assert meta.slate_size is None and meta.source == "kuairand"
    assert meta.params["capabilities"] == {
        "funnel": False,
        "live": False,
        "random_exposure": True,
        "user_features": False,
        "item_features": True,
    }
    assert set(meta.skipped) == {"pools", "non_impressions", "groups"}
    assert set(meta.tables) == {"users", "items", "sessions", "requests", "impressions"}


def test_real_files_join_cleans_live_streamer(tmp_path):
    if not REAL_LOG.exists():
        pytest.skip(f"real KuaiRand files absent ({REAL_DIR})")
    res = import_kuairand(REAL_DIR, tmp_path, join_user_features=True)
    tables, meta = read_dataset(tmp_path)
    check_contract(tables)
    users = tables["users"]
    raw = pd.read_csv(REAL_DIR / "user_features_pure.csv")
    n_bad = int((raw[raw.user_id < 1_000].is_live_streamer == -124).sum())
    assert n_bad > 0
    assert any(f"-124 in {n_bad:,} of the 1,000 rows" in m for m in res.messages)
    assert users.is_live_streamer.isin((0, 1)).all()
    assert (users.features_known == 1).all()
    assert meta.params["capabilities"]["user_features"] is True


# -------------------------------------------------------------- hand-made log


def _row(user, video, date, hourmin, time_ms, play=1_000, dur=10_000, click=0, rand=1):
    values = dict.fromkeys(LOG_COLUMNS, 0)
    values.update(
        user_id=user,
        video_id=video,
        date=date,
        hourmin=hourmin,
        time_ms=time_ms,
        is_click=click,
        play_time_ms=play,
        duration_ms=dur,
        is_rand=rand,
        tab=1,
    )
    return values


def _write_log(directory: Path, rows: list[dict]) -> Path:
    path = directory / "log_random_test.csv"
    pd.DataFrame(rows, columns=list(LOG_COLUMNS)).to_csv(path, index=False)
    return path


HOUR = 3_600_000
T0 = 1_650_592_800_000  # 2022-04-22 10:00 Beijing time

SMALL_LOG = [
    # user 0, request 0: 2022-04-22 10h, written out of time order
    _row(0, 2, 20220422, 1000, T0 + 200, play=2_000, click=1),
    _row(0, 1, 20220422, 1000, T0 + 100, play=500),
    # user 0, request 1: the next hour -> same session
    _row(0, 3, 20220422, 1100, T0 + HOUR, play=700),
    # user 0, request 2: 15h, four hours later -> new session
    _row(0, 4, 20220422, 1500, T0 + 5 * HOUR),
    # user 0, request 3: next day -> new session; its row is duplicated in the source
    _row(0, 5, 20220423, 900, T0 + 23 * HOUR),
    _row(0, 5, 20220423, 900, T0 + 23 * HOUR),
    # user 1, request 4: 2022-04-22 10h (same hour as user 0's request 0)
    _row(1, 6, 20220422, 1000, T0 + 300),
    # user 1, requests 5 and 6: 23h and midnight -> one session across the day change
    _row(1, 1, 20220423, 2300, T0 + 37 * HOUR + 10, play=300),
    _row(1, 2, 20220423, 2300, T0 + 37 * HOUR + 20, play=400),
    _row(1, 8, 20220424, 0, T0 + 38 * HOUR, dur=0),
    # user 1: a non-random exposure -> dropped (no propensity)
    _row(1, 9, 20220424, 500, T0 + 43 * HOUR, rand=0),
]


def test_small_log_known_answers(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_log(src, SMALL_LOG)
    res = import_kuairand(src, tmp_path / "out")
    tables, meta = read_dataset(tmp_path / "out")
    check_contract(tables)
    imp, req, ses = tables["impressions"], tables["requests"], tables["sessions"]

    assert res.n_rows == {
        "users": 2,
        "items": 7,
        "sessions": 5,
        "requests": 7,
        "impressions": 9,
    }
    # positions follow time within a request, whatever the file order
    first = imp[imp.request_id == 0].sort_values("position")
    assert first.item_id.tolist() == [1, 2] and first.position.tolist() == [0, 1]
    assert imp.request_id.tolist() == [0, 0, 1, 2, 3, 4, 5, 5, 6]
    assert 9 not in set(imp.item_id)  # the is_rand = 0 row is gone
    assert np.allclose(imp.propensity, 1 / 7)  # 7 videos in the catalogue (log only)

    assert req.user_id.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert req.day.tolist() == [0, 0, 0, 1, 0, 1, 2]
    assert req.hour.tolist() == [10, 11, 15, 9, 10, 23, 0]
    assert req.session_id.tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert req.position_in_session.tolist() == [0, 1, 0, 0, 0, 0, 1]
    assert req.session_continues.tolist() == [1, 0, 0, 0, 0, 1, 0]
    assert req.traffic.tolist() == [2, 1, 1, 1, 2, 1, 1]
    assert req.app_time_ms.tolist() == [2_500, 700, 1_000, 1_000, 1_000, 700, 1_000]
    assert req.q_match.tolist() == req.q_pre.tolist() == [2, 1, 1, 1, 1, 2, 1]
    assert (req.quota_propensity == 1).all() and (req.live_propensity == 1).all()
    assert req.live_item_id.isna().all() and (req.is_random == 1).all()

    assert ses.user_id.tolist() == [0, 0, 0, 1, 1]
    assert ses.n_requests.tolist() == [2, 1, 1, 1, 2]
    assert ses.day.tolist() == [0, 0, 1, 0, 1]
    assert ses.start_hour.tolist() == [10, 15, 9, 10, 23]
    assert ses.returned_next_day.tolist() == [1, 1, 0, 1, 0]

    assert any("dropped 1 exact duplicate" in m for m in res.messages)
    assert any("1 rows with is_rand = 0" in m for m in res.messages)
    assert any("1 rows with duration_ms = 0" in m for m in res.messages)
    assert tables["items"].set_index("item_id").loc[8, "video_duration"] == 0
    assert (tables["users"].user_active_degree == "UNKNOWN").all()
    assert meta.params["n_candidates"] == 7
    assert set(meta.params["placeholder_columns"]["requests"]) >= {"q_match", "live_item_id"}


def _write_features(directory: Path) -> None:
    users = pd.DataFrame(
        {
            "user_id": [0, 1, 5],
            "user_active_degree": ["full_active", None, "high_active"],
            "is_lowactive_period": [0, 0, 0],
            "is_live_streamer": [1, -124, -124],
            "is_video_author": [1, 0, 1],
            "follow_user_num": [5, 0, 10],
            "follow_user_num_range": ["(0,10]", "0", "(0,10]"],
            "register_days": [100, 20, 800],
            "register_days_range": ["91-180", "15-30", "730+"],
            **{f"onehot_feat{i}": [1.0, None, 2.0] for i in range(18)},
        }
    )
    users.to_csv(directory / "user_features_pure.csv", index=False)
    videos = pd.DataFrame(
        {
            "video_id": [1, 2, 3, 4, 5, 7],
            "author_id": [10, 11, 10, 12, 13, 14],
            "video_type": ["NORMAL"] * 5 + ["AD"],
            "video_duration": [10_000, 10_000, None, 10_000, None, 8_000],
            "music_type": [9.0, None, 4.0, 9.0, 9.0, 9.0],
            "tag": ["39", "20,43", None, "7", "2", "1"],
        }
    )
    videos.to_csv(directory / "video_features_basic_pure.csv", index=False)


def test_small_log_with_features_join_and_extend(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_log(src, SMALL_LOG)
    _write_features(src)
    res = import_kuairand(src, tmp_path / "out", join_user_features=True)
    tables, _ = read_dataset(tmp_path / "out")
    check_contract(tables)
    users = tables["users"].set_index("user_id")
    assert users.index.tolist() == [0, 1]  # log users only; user 5 is not in the log
    assert users.loc[1, "is_live_streamer"] == 0 and users.loc[0, "is_live_streamer"] == 1
    assert users.loc[1, "user_active_degree"] == "UNKNOWN"
    assert np.isnan(users.loc[1, "onehot_feat3"])
    assert any("-124 in 1 of the 2 rows" in m for m in res.messages)

    items = tables["items"].set_index("item_id")
    assert sorted(items.index) == [1, 2, 3, 4, 5, 6, 7, 8]  # 6 and 8 from the log only
    assert items.loc[6, "features_known"] == 0 and items.loc[6, "video_duration"] == 10_000
    assert items.loc[8, "video_duration"] == 0  # the log's duration_ms is 0
    assert items.loc[5, "video_duration"] == 10_000  # empty in features, taken from the log
    assert items.loc[7, "video_duration"] == 8_000 and items.loc[7, "video_type"] == "AD"
    assert items.loc[6, "author_id"] == 15  # shared unknown-author id: max known + 1
    assert items.loc[2, "tag"] == "20,43" and pd.isna(items.loc[3, "tag"])
    assert np.allclose(tables["impressions"].propensity, 1 / 8)


def test_n_candidates_and_session_gap_override(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_log(src, SMALL_LOG)
    res = import_kuairand(src, tmp_path / "out", n_candidates=100, session_gap_hours=24)
    tables, _ = read_dataset(tmp_path / "out")
    assert np.allclose(tables["impressions"].propensity, 0.01)
    # user 0's requests are all within 24 h of the previous one; user 1 waits 37 h once
    assert res.n_rows["sessions"] == 3


# ----------------------------------------------------------- features only


def test_features_only(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_features(src)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "impressions.parquet").write_bytes(b"stale")
    res = import_kuairand(src, tmp_path / "out")
    tables, meta = read_dataset(tmp_path / "out")
    check_contract(tables)
    assert set(tables) == {"users", "items"}
    assert not (tmp_path / "out" / "impressions.parquet").exists()
    assert tables["users"].user_id.tolist() == [0, 1, 5]
    assert tables["users"].is_live_streamer.tolist() == [1, 0, 0]
    assert tables["users"].follow_user_num_range.tolist()[1] == "0"
    assert len(tables["items"]) == 6
    for name in ("impressions", "requests", "sessions", "pools", "non_impressions", "groups"):
        assert name in meta.skipped
        assert any(m.startswith(f"{name}: skipped") for m in res.messages)
    assert "no interaction log" in meta.skipped["impressions"]
    assert meta.params["capabilities"]["random_exposure"] is False


# ------------------------------------------------------------------ bad input


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist.*user_features_pure.csv.*log_"):
        import_kuairand(tmp_path / "nope", tmp_path / "out")


def test_no_recognisable_file(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing")
    with pytest.raises(DataError, match="no KuaiRand file.*video_features_basic_pure.csv"):
        import_kuairand(tmp_path, tmp_path / "out")


def test_log_missing_columns(tmp_path):
    rows = pd.DataFrame([_row(0, 1, 20220422, 1000, T0)]).drop(columns=["is_rand", "tab"])
    rows.to_csv(tmp_path / "log_broken.csv", index=False)
    with pytest.raises(DataError, match=r"log_broken.csv.*missing columns \['is_rand', 'tab'\]"):
        import_kuairand(tmp_path, tmp_path / "out")


def test_feature_file_without_id(tmp_path):
    pd.DataFrame({"author_id": [1]}).to_csv(tmp_path / "video_features_basic_x.csv", index=False)
    with pytest.raises(DataError, match="no video_id column"):
        import_kuairand(tmp_path, tmp_path / "out")


def test_log_with_no_usable_row(tmp_path):
    rows = [_row(0, 1, 20220422, 1000, T0, rand=0), _row(0, 2, 20220422, 1000, T0) | {"date": "x"}]
    _write_log(tmp_path, rows)
    with pytest.raises(DataError, match="no table could be built.*is_rand = 0"):
        import_kuairand(tmp_path, tmp_path / "out")
