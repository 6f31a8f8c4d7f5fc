"""FeatureSpace: known encodings on hand-made tables, unknown ids, NaN, world and KuaiRand data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.features import FeatureSpace, context_features, first_tag
from components.io import DataError
from components.schema import ONEHOT_FEATURES

KUAIRAND_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "kuairand"


def hand_users() -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": [30, 10, 20],
            "user_active_degree": ["full_active", "UNKNOWN", "high_active"],
            "is_live_streamer": [1, -124, 0],
            "is_video_author": [0, 1, 0],
            "follow_user_num_range": ["0", None, "500+"],
            "register_days_range": ["730+", "730+", "UNKNOWN"],
            "live_watch_3w": [np.expm1(1.0), np.expm1(3.0), np.nan],
        }
    )
    for name in ONEHOT_FEATURES:
        df[name] = [1.0, 3.0, np.nan]  # by user_id: 10 -> 3.0, 20 -> NaN, 30 -> 1.0
    return df


def hand_items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [5, 7, 9, 11],
            "is_live": [0, 0, 0, 1],
            "author_id": [1, 2, 3, 4],
            "video_duration": [np.expm1(1.0) * 1000, np.expm1(3.0) * 1000, 0.0, 0.0],
            "video_type": ["NORMAL", "AD", "UNKNOWN", "LIVE"],
            "music_type": [9.0, np.nan, 4.0, np.nan],
            "tag": ["3,62,42", "19", None, None],
        }
    )


@pytest.fixture(scope="module")
def space() -> FeatureSpace:
    return FeatureSpace.fit(hand_users(), hand_items())


def col(space: FeatureSpace, kind: str, name: str) -> int:
    return (space.user_columns if kind == "user" else space.item_columns).index(name)


def test_ids_sorted_and_rows(space: FeatureSpace) -> None:
    assert space.user_ids.tolist() == [10, 20, 30]
    assert space.item_ids.tolist() == [5, 7, 9, 11]
    assert space.user_table.shape == (4, space.n_user_features)
    assert space.item_table.shape == (5, space.n_item_features)
    assert space.user_table.dtype == np.float32 and space.item_table.dtype == np.float32
    np.testing.assert_array_equal(space.user_rows([10, 20, 30]), [1, 2, 3])
    np.testing.assert_array_equal(space.item_rows(np.array([[11, 5], [7, 9]])), [[4, 1], [2, 3]])


def test_unknown_ids_map_to_row_zero_and_are_reported(space: FeatureSpace) -> None:
    rows = space.user_rows([10, 999, -1, 30, 15])
    np.testing.assert_array_equal(rows, [1, 0, 0, 3, 0])
    np.testing.assert_array_equal(space.unknown_user_ids([10, 999, 999, -1, 30]), [-1, 999])
    np.testing.assert_array_equal(space.unknown_item_ids([[5, 6], [7, 10**12]]), [6, 10**12])
    assert space.unknown_item_ids([5, 7]).size == 0
    np.testing.assert_array_equal(space.user_features([12345])[0], space.user_table[0])
    with pytest.raises(TypeError, match="integers"):
        space.user_rows(np.array([1.5]))


def test_standardised_onehot_with_nan(space: FeatureSpace) -> None:
    # values 1 and 3 (NaN ignored): mean 2, std 1 -> z = -1, +1; NaN -> 0 with the flag set
    j = col(space, "user", "onehot_feat4")
    m = col(space, "user", "missing_onehot_feat4")
    u = space.user_features([30, 10, 20])
    np.testing.assert_allclose(u[:, j], [-1.0, 1.0, 0.0])
    np.testing.assert_array_equal(u[:, m], [0.0, 0.0, 1.0])
    assert space.stats["onehot"]["onehot_feat4"] == {"mean": 2.0, "std": 1.0}
    assert np.isfinite(space.user_table).all()


def test_flags_live_watch_and_categories(space: FeatureSpace) -> None:
    u = space.user_features([30, 10, 20])
    # -124 (KuaiRand's unknown) is not a live streamer
    np.testing.assert_array_equal(u[:, col(space, "user", "is_live_streamer")], [1, 0, 0])
    # log1p(live_watch) = 1, 3 -> z = -1, +1; NaN -> 0
    np.testing.assert_allclose(u[:, col(space, "user", "log1p_live_watch_3w")], [-1, 1, 0])
    unk = col(space, "user", "user_active_degree=<unk>")
    full = col(space, "user", "user_active_degree=full_active")
    np.testing.assert_array_equal(u[:, unk], [0, 1, 0])
    np.testing.assert_array_equal(u[:, full], [1, 0, 0])
    # None and "UNKNOWN" are the same unknown category; vocabularies hold only real values
    assert space.stats["user_vocab"]["follow_user_num_range"] == ["0", "500+"]
    assert space.stats["user_vocab"]["register_days_range"] == ["730+"]
    np.testing.assert_array_equal(
        u[:, col(space, "user", "follow_user_num_range=<unk>")], [0, 1, 0]
    )
    # one category per categorical column is on
    for c in ("user_active_degree", "follow_user_num_range", "register_days_range"):
        idx = [i for i, n in enumerate(space.user_columns) if n.startswith(c + "=")]
        np.testing.assert_array_equal(u[:, idx].sum(axis=1), [1, 1, 1])


def test_item_encoding(space: FeatureSpace) -> None:
    x = space.item_features([5, 7, 9, 11])
    # log1p(duration_s) = 1, 3 over known durations -> z = -1, +1; unknown -> 0
    np.testing.assert_allclose(x[:, col(space, "item", "log1p_duration_s")], [-1, 1, 0, 0])
    # duration 0 on a video = unknown length; a live stream has none and is flagged is_live
    np.testing.assert_array_equal(x[:, col(space, "item", "duration_unknown")], [0, 0, 1, 0])
    np.testing.assert_array_equal(x[:, col(space, "item", "is_live")], [0, 0, 0, 1])
    np.testing.assert_array_equal(x[:, col(space, "item", "video_type=<unk>")], [0, 0, 1, 0])
    np.testing.assert_array_equal(x[:, col(space, "item", "music_type=9")], [1, 0, 0, 0])
    np.testing.assert_array_equal(x[:, col(space, "item", "music_type=<unk>")], [0, 1, 0, 1])
    # first tag as an embedding id: vocab (3, 19) -> ids 1, 2; no tag -> 0
    assert space.stats["tag_vocab"] == [3, 19]
    assert space.n_tags == 3
    np.testing.assert_array_equal(space.item_tag[space.item_rows([5, 7, 9, 11])], [1, 2, 0, 0])
    assert space.item_tag[0] == 0


def test_unknown_row_is_the_all_missing_encoding(space: FeatureSpace) -> None:
    u0 = dict(zip(space.user_columns, space.user_table[0], strict=True))
    assert all(u0[f"missing_{n}"] == 1 for n in ONEHOT_FEATURES)
    assert all(u0[n] == 0 for n in ONEHOT_FEATURES)
    assert u0["user_active_degree=<unk>"] == 1 and u0["user_active_degree=full_active"] == 0
    i0 = dict(zip(space.item_columns, space.item_table[0], strict=True))
    assert i0["duration_unknown"] == 1 and i0["video_type=<unk>"] == 1 and i0["is_live"] == 0


def test_first_tag_parsing() -> None:
    tags = pd.Series(["3,62,42", " 7 ", None, np.nan, "x,1", "12.0"], dtype=object)
    np.testing.assert_array_equal(first_tag(tags), [3, 7, -1, -1, -1, 12])


def test_context_features_known_values() -> None:
    c = context_features(np.array([0, 6, 12, 18]), np.array([0, 1, 0, np.e - 1]))
    assert c.shape == (4, 3) and c.dtype == np.float32
    np.testing.assert_allclose(c[:, 0], [0, 1, 0, -1], atol=1e-6)
    np.testing.assert_allclose(c[:, 1], [1, 0, -1, 0], atol=1e-6)
    np.testing.assert_allclose(c[:, 2], [0, np.log(2), 0, 1], atol=1e-6)
    # broadcasting: per-request hour against per-candidate position
    assert context_features(np.zeros((2, 1)), np.zeros((2, 5))).shape == (2, 5, 3)
    # 23h and 0h are neighbours on the circle
    assert np.linalg.norm(context_features(23, 0) - context_features(0, 0)) < 0.3


def test_state_round_trip_through_json(space: FeatureSpace) -> None:
    arrays, meta = space.to_state()
    meta = json.loads(json.dumps(meta))
    back = FeatureSpace.from_state({k: v.copy() for k, v in arrays.items()}, meta)
    assert back.equals(space)
    np.testing.assert_array_equal(back.user_rows([20, 99]), space.user_rows([20, 99]))
    with pytest.raises(ValueError, match="format"):
        FeatureSpace.from_state(arrays, {**meta, "format_version": 99})


def test_missing_columns_read_as_missing() -> None:
    users = pd.DataFrame({"user_id": [1, 2]})
    items = pd.DataFrame({"item_id": [1]})
    fs = FeatureSpace.fit(users, items)
    assert np.isfinite(fs.user_table).all() and np.isfinite(fs.item_table).all()
    m = fs.user_columns.index("missing_onehot_feat0")
    np.testing.assert_array_equal(fs.user_table[:, m], [1, 1, 1])


def test_bad_ids_are_rejected() -> None:
    with pytest.raises(DataError, match="unique"):
        FeatureSpace.fit(pd.DataFrame({"user_id": [1, 1]}), hand_items())
    with pytest.raises(DataError, match="user_id"):
        FeatureSpace.fit(pd.DataFrame({"id": [1]}), hand_items())


def test_world_tables(tiny_world: dict[str, pd.DataFrame]) -> None:
    fs = FeatureSpace.fit(tiny_world["users"], tiny_world["items"])
    assert fs.n_user_rows == len(tiny_world["users"]) + 1
    assert fs.n_item_rows == len(tiny_world["items"]) + 1
    assert np.isfinite(fs.user_table).all() and np.isfinite(fs.item_table).all()
    # every logged id is known
    imp = tiny_world["impressions"]
    assert fs.unknown_user_ids(imp["user_id"]).size == 0
    assert fs.unknown_item_ids(imp["item_id"]).size == 0
    # live streams exist in world data and are flagged
    live = tiny_world["items"].loc[tiny_world["items"]["is_live"] == 1, "item_id"]
    assert (fs.item_features(live)[:, fs.item_columns.index("is_live")] == 1).all()


@pytest.fixture(scope="module")
def tiny_world() -> dict[str, pd.DataFrame]:
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=0)
    return tables


@pytest.mark.skipif(not KUAIRAND_DIR.is_dir(), reason="KuaiRand files absent")
def test_kuairand_tables(tmp_path: Path) -> None:
    from components.kuairand import import_kuairand

    import_kuairand(KUAIRAND_DIR, tmp_path)
    users = pd.read_parquet(tmp_path / "users.parquet")
    items = pd.read_parquet(tmp_path / "items.parquet")
    fs = FeatureSpace.fit(users, items)
    assert np.isfinite(fs.user_table).all() and np.isfinite(fs.item_table).all()
    # the 1K log's users have unknown features ("UNKNOWN", NaN): all rows read as unknown
    j = fs.user_columns.index("user_active_degree=<unk>")
    assert (fs.user_table[:, j] == 1).all()
    assert fs.stats["user_vocab"]["user_active_degree"] == []
    # videos with an unknown length are flagged, not given length 0
    k = fs.item_columns.index("duration_unknown")
    known = (items["video_duration"] > 0).to_numpy()
    assert (fs.item_features(items["item_id"])[~known, k] == 1).all()
    assert fs.n_tags > 10
