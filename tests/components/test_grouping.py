"""User-group reassignment (SL-MGAC MG-SD) and CQR (UNEX-RL), on hand-made data.

Quantile rule under test: ``b_k = sorted(x)[ceil(n k / K) - 1]`` and
``group(x) = #{k : b_k < x}`` (ties share a group, a boundary value goes to the lower group).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.grouping import (
    NEW,
    assign_live_groups,
    cqr,
    item_duration_groups,
    quantile_boundaries,
    run_grouping,
    user_activity_groups,
)
from components.io import write_table
from components.schema import GROUPS


def users(values: list[float], ids: list[int] | None = None) -> pd.DataFrame:
    ids = ids if ids is not None else list(range(1, len(values) + 1))
    return pd.DataFrame({"user_id": ids, "live_watch_3w": values})


# users 1..8 with distinct live watch times
EIGHT = [50.0, 10.0, 0.0, 70.0, 30.0, 20.0, 60.0, 40.0]


def groups_of(a) -> dict[int, int]:  # type: ignore[no-untyped-def]
    return dict(zip(a.groups["user_id"], a.groups["group"], strict=True))


# ------------------------------------------------------------------ quantile boundaries


def test_eight_distinct_users_four_groups() -> None:
    # sorted: 0 10 20 30 40 50 60 70; b_k = s[ceil(8k/4) - 1] = s[2k - 1] -> 10, 30, 50
    # groups: {0,10} -> 0, {20,30} -> 1, {40,50} -> 2, {60,70} -> 3
    a = assign_live_groups(users(EIGHT), 4, run_id="r1")
    assert a.boundaries == (10.0, 30.0, 50.0)
    # user:        1  2  3  4  5  6  7  8  (values 50 10 0 70 30 20 60 40)
    assert groups_of(a) == {1: 2, 2: 0, 3: 0, 4: 3, 5: 1, 6: 1, 7: 3, 8: 2}
    assert a.sizes == {0: 2, 1: 2, 2: 2, 3: 2}
    assert a.warnings == ()
    # the same rule as numpy's inverted-CDF quantile
    np.testing.assert_array_equal(
        a.boundaries, np.quantile(EIGHT, [0.25, 0.5, 0.75], method="inverted_cdf")
    )
    assert list(a.groups.columns) == list(GROUPS.column_names)
    assert (a.groups["previous_group"] == NEW).all() and (a.groups["run_id"] == "r1").all()
    assert a.groups["user_id"].is_monotonic_increasing


def test_n_not_divisible_by_k() -> None:
    # values 1..10, K=4: b1 = s[ceil(2.5)-1] = s[2] = 3, b2 = s[4] = 5, b3 = s[ceil(7.5)-1] = 8
    a = assign_live_groups(users([float(v) for v in range(1, 11)]), 4)
    assert a.boundaries == (3.0, 5.0, 8.0)
    assert a.sizes == {0: 3, 1: 2, 2: 3, 3: 2}
    # a value equal to a boundary goes to the lower group
    assert groups_of(a)[3] == 0 and groups_of(a)[4] == 1 and groups_of(a)[8] == 2


def test_boundary_inside_the_zero_mass_keeps_all_zeros_in_group_0() -> None:
    # 3 zeros + 5..11, K=4: s = 0 0 0 5 6 7 8 9 10 11
    # b1 = s[2] = 0 (inside the zeros), b2 = s[4] = 6, b3 = s[7] = 9
    # group 0 = the 3 zeros (more than n/K = 2.5), (0,6] = {5,6}, (6,9] = {7,8,9}, >9 = {10,11}
    a = assign_live_groups(users([0, 0, 0, 5, 6, 7, 8, 9, 10, 11]), 4)
    assert a.boundaries == (0.0, 6.0, 9.0)
    assert a.sizes == {0: 3, 1: 2, 2: 3, 3: 2}
    assert a.warnings == ()


def test_zero_mass_over_two_quantile_levels_leaves_a_group_empty() -> None:
    # 5 zeros + 1..5, K=4: s = 0 0 0 0 0 1 2 3 4 5
    # b1 = s[2] = 0, b2 = s[4] = 0, b3 = s[7] = 3 -> group 1 = (0, 0] is empty
    a = assign_live_groups(users([0, 3, 0, 1, 0, 5, 0, 2, 0, 4]), 4)
    assert a.boundaries == (0.0, 0.0, 3.0)
    assert a.sizes == {0: 5, 1: 0, 2: 3, 3: 2}
    g = groups_of(a)
    assert {g[u] for u in (1, 3, 5, 7, 9)} == {0}  # every zero in group 0
    assert len(a.warnings) == 1
    assert "group 1 is empty" in a.warnings[0] and "5 of 10 users" in a.warnings[0]


def test_all_equal_values_one_group_and_a_warning() -> None:
    a = assign_live_groups(users([12.5] * 5), 4)
    assert set(a.groups["group"]) == {0}
    assert a.sizes == {0: 5, 1: 0, 2: 0, 3: 0}
    assert a.boundaries == (12.5, 12.5, 12.5)
    assert len(a.warnings) == 1 and "everyone is in group 0" in a.warnings[0]
    # K = 1 is a legitimate single group: no boundaries, no warning
    one = assign_live_groups(users(EIGHT), 1)
    assert one.boundaries == () and one.sizes == {0: 8} and one.warnings == ()


def test_integer_column_and_quantile_helper() -> None:
    a = assign_live_groups(users([3, 1, 2, 4]), 2)  # ints; b1 = s[1] = 2
    assert a.boundaries == (2.0,) and groups_of(a) == {1: 1, 2: 0, 3: 0, 4: 1}
    assert quantile_boundaries(np.array([5.0]), 3) == (5.0, 5.0)


# ------------------------------------------------------------------ migration


def test_migration_matrix_between_two_runs() -> None:
    first = assign_live_groups(users(EIGHT), 4, run_id="r1")
    # run 1 groups (from test_eight_distinct_users_four_groups):
    #   u1 2, u2 0, u3 0, u4 3, u5 1, u6 1, u7 3, u8 2
    # run 2: u3 and u4 swap values (0 <-> 70), u8 leaves, u9 arrives with 45.
    # values u1 50, u2 10, u3 70, u4 0, u5 30, u6 20, u7 60, u9 45
    # sorted 0 10 20 30 45 50 60 70 -> b = (10, 30, 50)
    #   u1 2, u2 0, u3 3, u4 0, u5 1, u6 1, u7 3, u9 2
    second = assign_live_groups(
        users([50, 10, 70, 0, 30, 20, 60, 45], ids=[1, 2, 3, 4, 5, 6, 7, 9]),
        4,
        previous=first.groups,
        run_id="r2",
    )
    assert second.boundaries == (10.0, 30.0, 50.0)
    expected = pd.DataFrame(
        [
            [0, 0, 1, 0],  # new: u9 -> 2
            [1, 0, 0, 1],  # from 0: u2 -> 0, u3 -> 3
            [0, 2, 0, 0],  # from 1: u5, u6 -> 1
            [0, 0, 1, 0],  # from 2: u1 -> 2 (u8 left)
            [1, 0, 0, 1],  # from 3: u4 -> 0, u7 -> 3
        ],
        index=pd.Index([NEW, 0, 1, 2, 3], name="previous_group"),
        columns=pd.Index([0, 1, 2, 3], name="group"),
    )
    pd.testing.assert_frame_equal(second.migration, expected, check_dtype=False)
    prev = dict(zip(second.groups["user_id"], second.groups["previous_group"], strict=True))
    assert prev == {1: 2, 2: 0, 3: 0, 4: 3, 5: 1, 6: 1, 7: 3, 9: NEW}
    assert second.dropped == 1 and second.n_moved == 2
    # first run: everyone is new, the "new" row holds the group sizes
    assert first.migration.loc[NEW].tolist() == [2, 2, 2, 2]
    assert first.migration.drop(index=NEW).to_numpy().sum() == 0


def test_previous_run_with_more_groups_adds_rows() -> None:
    first = assign_live_groups(users(EIGHT), 8)  # groups 0..7
    second = assign_live_groups(users(EIGHT), 4, previous=first.groups)
    assert list(second.migration.index) == [NEW, 0, 1, 2, 3, 4, 5, 6, 7]
    assert second.migration.to_numpy().sum() == 8
    assert any("different K" in w for w in second.warnings)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("frame", "n_groups", "needle"),
    [
        (pd.DataFrame({"user_id": [1, 2]}), 4, "live_watch_3w"),
        (users([1.0, float("nan"), 3.0]), 4, "NaN"),
        (users([1.0, -5.0]), 4, "smallest is -5"),
        (users([1.0, float("inf")]), 4, "finite"),
        (users([1.0, 2.0], ids=[7, 7]), 4, "user 7"),
        (users([]), 4, "empty"),
        (users([1.0, 2.0]), 0, "got 0"),
        (users([1.0, 2.0]), 2.5, "got 2.5"),
    ],
)
def test_bad_input_is_a_clear_value_error(frame: pd.DataFrame, n_groups, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="must") as info:
        assign_live_groups(frame, n_groups)
    assert needle in str(info.value)


def test_messages_state_rule_value_and_fix() -> None:
    with pytest.raises(ValueError) as info:
        assign_live_groups(users([1.0, -5.0, -2.0]), 4)
    msg = str(info.value)
    assert "must be >= 0" in msg and "2 value(s) are negative" in msg and "fix" in msg
    with pytest.raises(ValueError) as info:
        assign_live_groups(pd.DataFrame({"user_id": [1]}), 4)
    assert "it has ['user_id']" in str(info.value) and "trailing 3 weeks" in str(info.value)


# ------------------------------------------------------------------ CQR groups


def test_user_activity_and_item_duration_groups() -> None:
    # impressions per user: u1 1, u2 2, u3 3, u4 4; K=2: b1 = s[1] = 2 -> {1,2} 0, {3,4} 1
    imps = pd.DataFrame(
        {
            "user_id": [1, 2, 2, 3, 3, 3, 4, 4, 4, 4],
            "play_time_ms": [9000, 100, 100, 50, 50, 50, 10, 10, 10, 10],
        }
    )
    ug = user_activity_groups(imps, 2)
    assert ug.name == "user_group" and ug.index.name == "user_id"
    assert ug.to_dict() == {1: 0, 2: 0, 3: 1, 4: 1}
    # mean play time: u1 9000, u2 100, u3 50, u4 10 -> b1 = s[1] = 50 -> u3, u4 in 0
    assert user_activity_groups(imps, 2, by="play_time").to_dict() == {1: 1, 2: 1, 3: 0, 4: 0}

    # videos 1000..4000 ms, K=4: b = s[0], s[1], s[2] = 1000, 2000, 3000; the live stream -> 4
    items = pd.DataFrame(
        {
            "item_id": [10, 11, 12, 13, 14],
            "video_duration": [4000.0, 1000.0, 0.0, 3000.0, 2000.0],
            "is_live": [0, 0, 1, 0, 0],
        }
    )
    ig = item_duration_groups(items, 4)
    assert ig.to_dict() == {10: 3, 11: 0, 12: 4, 13: 2, 14: 1}
    assert ig.name == "item_group" and ig.index.name == "item_id"


def test_cqr_hand_example_with_ties() -> None:
    # cell (0,a): rewards 1 2 2 3 -> mid-ranks 1 2.5 2.5 4 -> (r - 1/2)/4 = .125 .5 .5 .875
    # cell (1,a): one reward -> 1/2
    # cell (0,b): rewards 4 0 -> ranks 2 1 -> .75 .25
    reward = np.array([2.0, 4.0, 1.0, 5.0, 3.0, 0.0, 2.0])
    ug = np.array([0, 0, 0, 1, 0, 0, 0])
    ig = np.array(["a", "b", "a", "a", "a", "b", "a"])
    out = cqr(reward, ug, ig)
    np.testing.assert_allclose(out, [0.5, 0.75, 0.125, 0.5, 0.875, 0.25, 0.5])


def test_cqr_is_uniform_and_order_preserving_within_cells() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    ug = rng.integers(0, 4, n)
    ig = rng.integers(0, 5, n)
    # rewards on very different scales per cell (the variance CQR removes), some ties
    scale = 10.0 ** (ug + ig)
    reward = rng.lognormal(0.0, 1.0, n) * scale
    reward[rng.random(n) < 0.1] = 0.0  # a mass of tied zero rewards
    out = cqr(reward, ug, ig)
    assert out.min() > 0 and out.max() < 1
    for u in range(4):
        for i in range(5):
            m = (ug == u) & (ig == i)
            r, q = reward[m], out[m]
            assert abs(q.mean() - 0.5) < 1e-12  # mid-distribution: mean exactly 1/2
            order = np.argsort(r, kind="stable")
            rs, qs = r[order], q[order]
            assert (np.diff(qs)[np.diff(rs) > 0] > 0).all()  # strictly order-preserving
            assert (np.diff(qs)[np.diff(rs) == 0] == 0).all()  # ties share the value
            # above the zero tie (fraction z) the distinct rewards sit exactly on the
            # uniform grid z + (j - 1/2)/n, j = 1..k; the tie itself gets z/2
            k = int((r > 0).sum())
            z = 1.0 - k / len(r)
            expected = z + (np.arange(k) + 0.5) / len(r)
            np.testing.assert_allclose(np.sort(q[r > 0]), expected, atol=1e-12)
            np.testing.assert_allclose(q[r == 0], z / 2, atol=1e-12)
    # invariant to a monotone transform of the reward (it is a quantile)
    np.testing.assert_allclose(cqr(np.log1p(reward), ug, ig), out)
    assert out.var() < 0.09 < reward.var()


def test_cqr_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        cqr(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        cqr(np.array([1.0, np.nan]), np.zeros(2), np.zeros(2))
    assert cqr(np.zeros(0), np.zeros(0), np.zeros(0)).shape == (0,)


# ------------------------------------------------------------------ the pipeline step


def _dataset(directory: Path, live: list[float], with_logs: bool = True) -> Path:
    write_table(users(live), directory, "users")
    if with_logs:
        n = len(live)
        write_table(
            pd.DataFrame(
                {
                    "request_id": np.arange(2 * n),
                    "user_id": np.repeat(np.arange(1, n + 1), 2),
                    "item_id": np.tile([10, 11], n),
                    "play_time_ms": np.linspace(0, 1000, 2 * n),
                }
            ),
            directory,
            "impressions",
        )
        write_table(
            pd.DataFrame({"item_id": [10, 11], "video_duration": [1000.0, 0.0], "is_live": [0, 1]}),
            directory,
            "items",
        )
    return directory


def test_run_grouping_twice_shows_migration(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "state"
    _dataset(data, EIGHT)
    r1 = run_grouping(data, state, n_groups=4, run_id="r1")
    for key in ("current", "history", "migration", "report", "cqr_user_groups", "cqr_item_groups"):
        assert r1.paths[key].exists(), key
    assert r1.paths["history"] == state / "history" / "r1.parquet"
    cur = pd.read_parquet(state / "current.parquet")
    assert list(cur.columns) == list(GROUPS.column_names) and (cur["run_id"] == "r1").all()
    assert (cur["previous_group"] == NEW).all()
    assert pd.read_parquet(state / "cqr_item_groups.parquet").to_dict("list") == {
        "item_id": [10, 11],
        "item_group": [0, 4],  # one video -> group 0; the live stream -> its own group 4
    }

    # users 3 (0 s) and 4 (70 s) swap their live watch time: 3 goes 0 -> 3, 4 goes 3 -> 0
    live = list(EIGHT)
    live[2], live[3] = live[3], live[2]
    _dataset(data, live)
    r2 = run_grouping(data, state, n_groups=4, run_id="r2")
    m = r2.assignment.migration
    assert m.loc[0, 3] == 1 and m.loc[3, 0] == 1 and m.loc[0, 0] == 1 and m.loc[3, 3] == 1
    assert m.loc[1, 1] == 2 and m.loc[2, 2] == 2 and m.loc[NEW].sum() == 0
    assert r2.assignment.n_moved == 2
    cur = pd.read_parquet(state / "current.parquet").set_index("user_id")
    assert (cur.loc[3, "previous_group"], cur.loc[3, "group"]) == (0, 3)
    assert sorted(p.name for p in (state / "history").iterdir()) == ["r1.parquet", "r2.parquet"]

    csv = pd.read_csv(state / "migration.csv", index_col=0)
    assert [str(i) for i in csv.index] == ["new", "0", "1", "2", "3"]
    assert csv.to_numpy().tolist() == m.to_numpy().tolist()
    report = (state / "report.md").read_text()
    assert "run `r2`" in report and "10, 30, 50" in report and "2 users changed group" in report
    assert "| new | 0 | 0 | 0 | 0 |" in report and "| 0 | 1 | 0 | 0 | 1 |" in report
    summary = r2.summary()
    assert "K=4, 8 users (2 moved, 0 new, 0 gone" in summary
    assert "prev \\ new" in summary and "new" in summary


def test_run_grouping_without_logs_and_warnings_in_report(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "state"
    _dataset(data, EIGHT)
    run_grouping(data, state, run_id="a")
    assert (state / "cqr_user_groups.parquet").exists()
    (data / "impressions.parquet").unlink()
    (data / "items.parquet").unlink()
    r = run_grouping(data, tmp_path / "state", run_id="b")
    assert not (state / "cqr_user_groups.parquet").exists()  # stale file removed
    assert "cqr_user_groups" not in r.paths and r.user_groups is None
    assert "no impressions table" in r.summary()

    _dataset(data, [0.0] * 6 + [1.0, 2.0], with_logs=False)  # 6 zeros of 8: 2 levels
    r = run_grouping(data, state, run_id="c")
    assert r.assignment.sizes == {0: 6, 1: 0, 2: 0, 3: 2}  # b = s[1], s[3], s[5] = 0, 0, 0
    report = (state / "report.md").read_text()
    assert "group 1 is empty" in report and "group 2 is empty" in report
    assert "warning: group 1 is empty" in r.summary()


def test_run_grouping_default_run_id_and_bad_run_id(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", EIGHT, with_logs=False)
    r1 = run_grouping(data, tmp_path / "s")
    r2 = run_grouping(data, tmp_path / "s")
    assert r1.run_id != r2.run_id and r1.run_id.endswith("Z")
    with pytest.raises(ValueError, match="run_id"):
        run_grouping(data, tmp_path / "s", run_id="../escape")
    with pytest.raises(ValueError, match="not found"):
        run_grouping(tmp_path / "nowhere", tmp_path / "s")
