"""The multi-task ranker: split, arrays, loss maths, training quality, determinism, files.

World ``tiny`` data (3 days: 2 train, 1 held out) and small configs keep the run short.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from components.features import FeatureSpace
from components.io import DataError
from components.training import (
    IndexBatches,
    TrainedRanker,
    build_training_arrays,
    evaluate_ranker,
    split_by_day,
    train_ranker,
)
from models.ranker import (
    ASPECTS,
    MultiTaskRanker,
    RankerConfig,
    RankerModule,
    RankerOutput,
    binary_auc,
    ranker_loss,
)

KUAIRAND_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "kuairand"
SMALL = RankerConfig(batch_size=512, epochs=3, tower_dim=16, hidden_sizes=(32, 16))


@pytest.fixture(scope="module")
def tiny() -> dict[str, pd.DataFrame]:
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=0)
    return tables


@pytest.fixture(scope="module")
def ranker(tiny: dict[str, pd.DataFrame]) -> TrainedRanker:
    return train_ranker(tiny, SMALL, seed=0)


# ----------------------------------------------------------------------- split


def test_split_by_day_holds_out_the_last_day(tiny: dict[str, pd.DataFrame]) -> None:
    req = tiny["requests"]
    split = split_by_day(req, holdout_days=1)
    last = int(req["day"].max())
    assert split.holdout_days == (last,)
    assert last not in split.train_days
    assert set(split.train_request_ids).isdisjoint(split.holdout_request_ids)
    assert len(split.train_request_ids) + len(split.holdout_request_ids) == len(req)
    held = req.set_index("request_id").loc[split.holdout_request_ids, "day"]
    assert (held == last).all()
    everything = split_by_day(req, holdout_days=0)
    assert len(everything.holdout_request_ids) == 0
    with pytest.raises(DataError, match="nothing would be left to train on"):
        split_by_day(req, holdout_days=req["day"].nunique())


# ---------------------------------------------------------------------- arrays


def test_training_arrays(tiny: dict[str, pd.DataFrame]) -> None:
    fs = FeatureSpace.fit(tiny["users"], tiny["items"])
    split = split_by_day(tiny["requests"])
    a = build_training_arrays(tiny, fs, split.train_request_ids)
    imp = tiny["impressions"]
    assert len(a) == int(imp["request_id"].isin(split.train_request_ids).sum())
    assert a.context.shape == (len(a), 3) and a.labels.shape == (len(a), len(ASPECTS))
    assert (a.user_row > 0).all() and (a.item_row > 0).all()  # every id known
    # ordered by (request, position); labels and targets follow the impressions
    first = imp[imp["request_id"] == a.request_id[0]].sort_values("position")
    np.testing.assert_array_equal(a.item_id[: len(first)], first["item_id"])
    np.testing.assert_array_equal(a.labels[: len(first), 0], first["is_click"])
    np.testing.assert_allclose(
        a.log_play[: len(first)], np.log1p(first["play_time_ms"] / 1000), rtol=1e-6
    )
    orphan = {**tiny, "requests": tiny["requests"].iloc[1:]}
    with pytest.raises(DataError, match="absent from the requests table"):
        build_training_arrays(orphan, fs)


def test_index_batches_cover_every_row_once() -> None:
    batches = list(IndexBatches(10, 4, shuffle=True, seed=3))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = list(IndexBatches(10, 4, shuffle=True, seed=3))
    assert all(torch.equal(x, y) for x, y in zip(batches, again, strict=True))
    assert torch.cat(list(IndexBatches(5, 2, shuffle=False))).tolist() == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------ maths


def test_loss_known_answer() -> None:
    # logits 0 -> BCE = log 2 per aspect; play error 2 -> MSE 4
    out = RankerOutput(aspect_logits=torch.zeros(3, 7), log_play=torch.full((3,), 1.0))
    labels = torch.randint(0, 2, (3, 7)).float()
    w = torch.arange(1.0, 8.0)
    total, per_aspect, mse = ranker_loss(out, labels, torch.full((3,), 3.0), w, 0.5)
    np.testing.assert_allclose(per_aspect.numpy(), np.full(7, np.log(2)), rtol=1e-6)
    assert float(mse) == pytest.approx(4.0)
    assert float(total) == pytest.approx(28 * np.log(2) + 0.5 * 4.0, rel=1e-6)


def test_binary_auc_known_answer_and_torchmetrics_agree() -> None:
    # positives score 0.8, 0.4; negatives 0.5, 0.1, 0.4: pairs won 1+1+1 + 0+0.5+1 = 4.5 of 6
    assert binary_auc([0.8, 0.5, 0.4, 0.1, 0.4], [1, 0, 1, 0, 0]) == pytest.approx(0.75)
    assert np.isnan(binary_auc([0.1, 0.2], [1, 1]))
    from torchmetrics.classification import BinaryAUROC

    rng = np.random.default_rng(0)
    s = rng.normal(size=500)
    y = (rng.random(500) < 1 / (1 + np.exp(-s))).astype(int)
    tm = float(BinaryAUROC()(torch.tensor(s), torch.tensor(y)))
    assert binary_auc(s, y) == pytest.approx(tm, abs=1e-6)


def test_validation_metrics_with_and_without_torchmetrics(ranker: TrainedRanker) -> None:
    """Both AUC paths of RankerModule give the same figures on the same batches."""
    g = torch.Generator().manual_seed(0)
    n = 400
    batch = (
        torch.randint(1, ranker.feature_space.n_user_rows, (n,), generator=g),
        torch.randint(1, ranker.feature_space.n_item_rows, (n,), generator=g),
        torch.rand(n, 3, generator=g),
        (torch.rand(n, 7, generator=g) < 0.3).float(),
        torch.rand(n, generator=g) * 4,
    )
    results = []
    for use_tm in (True, False):
        module = RankerModule(ranker.model, ranker.config)
        module._use_torchmetrics = use_tm
        module.eval()
        module.on_validation_epoch_start()
        with torch.no_grad():
            module.validation_step(batch, 0)
        module.log_dict = lambda *a, **k: None  # no trainer attached
        module.on_validation_epoch_end()
        results.append(module.val_metrics)
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-5), key


def test_broadcast_forward_equals_flat_forward(ranker: TrainedRanker) -> None:
    net = ranker.model
    users = torch.tensor([1, 2, 3])
    items = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    ctx = torch.rand(3, 1, 3)
    with torch.no_grad():
        a = net(users[:, None], items, ctx)
        b = net(users.repeat_interleave(4), items.ravel(), ctx.expand(3, 4, 3).reshape(12, 3))
    torch.testing.assert_close(a.aspect_logits.reshape(12, 7), b.aspect_logits)
    torch.testing.assert_close(a.log_play.ravel(), b.log_play)


def test_every_config_builds(ranker: TrainedRanker) -> None:
    fs = ranker.feature_space
    for cfg in (
        RankerConfig(),
        SMALL,
        RankerConfig(id_embedding_dim=0, tag_embedding_dim=0, hidden_sizes=(8,)),
        RankerConfig(id_dropout=0.0, hidden_sizes=(16, 8, 4)),
    ):
        net = cfg.create(fs)
        assert isinstance(net, MultiTaskRanker)
        out = net(torch.tensor([1, 0]), torch.tensor([3, 0]), torch.zeros(2, 3))
        assert out.aspect_logits.shape == (2, 7) and out.log_play.shape == (2,)
        assert RankerConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_config_errors_teach() -> None:
    with pytest.raises(ValueError, match="unknown aspect"):
        RankerConfig(aspect_weights={"is_clik": 1.0})
    with pytest.raises(ValueError, match="temperature"):
        RankerConfig(temperature=0.0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        RankerConfig(hidden_sizes=())
    with pytest.raises(ValueError, match="unknown RankerConfig field"):
        RankerConfig.from_dict({"hidden": 3})


# --------------------------------------------------------------------- training


def test_training_reduces_the_loss(ranker: TrainedRanker) -> None:
    m = ranker.metrics
    # from the priors (output biases at base rates and mean log play) to a fitted model
    assert m["final_train_loss"] < 0.8 * m["initial_train_loss"]
    assert m["epoch_train_loss"][-1] < m["epoch_train_loss"][0]
    assert m["steps"] == m["epochs"] * -(-m["n_train"] // SMALL.batch_size)
    assert m["n_holdout"] > 0 and m["holdout_days"] == [2]


def test_held_out_quality(tiny: dict[str, pd.DataFrame], ranker: TrainedRanker) -> None:
    split = split_by_day(tiny["requests"])
    held = build_training_arrays(tiny, ranker.feature_space, split.holdout_request_ids)
    ev = evaluate_ranker(ranker, held)
    assert ev["auc"]["is_click"] > 0.55
    assert ev["auc"]["long_view"] > 0.7
    # the Lightning validation (torchmetrics) and the rank AUC agree on the held-out day
    assert ranker.metrics["holdout_auc"]["is_click"] == pytest.approx(ev["auc"]["is_click"], 1e-4)
    # expected play time tracks the world's true expected play time of each impression
    pred = ranker.predict(held.user_id, held.item_id, held.hour, held.position_in_session)
    truth = tiny["truth"].set_index(["request_id", "item_id"])["expected_play_ms"]
    true_play = truth.loc[list(zip(held.request_id, held.item_id, strict=True))].to_numpy()
    assert spearmanr(pred.expected_play_s, true_play).statistic > 0.6
    # and is calibrated on average (Duan's smearing), within 30 %
    assert pred.expected_play_s.mean() == pytest.approx(true_play.mean() / 1000, rel=0.3)


def test_same_seed_same_weights(tiny: dict[str, pd.DataFrame]) -> None:
    kw = {"max_epochs": 1, "limit_train_batches": 4}
    a = train_ranker(tiny, SMALL, seed=7, **kw)
    b = train_ranker(tiny, SMALL, seed=7, **kw)
    c = train_ranker(tiny, SMALL, seed=8, **kw)
    assert a.state_dict.keys() == b.state_dict.keys()
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)
    # the process-wide deterministic flag Lightning sets is restored
    assert not torch.are_deterministic_algorithms_enabled()


# ---------------------------------------------------------------------- scoring


def test_score_shapes_and_unknown_ids(ranker: TrainedRanker) -> None:
    users = np.array([0, 5, 9])
    items = np.arange(3 * 200).reshape(3, 200) % 400
    s = ranker.score(users, items, np.array([1, 12, 23]), np.array([0, 3, 7]))
    assert s.shape == (3, 200) and s.dtype == np.float32 and np.isfinite(s).all()
    # 2-D scoring == 1-D scoring of the same pairs
    flat = ranker.score(
        np.repeat(users, 200), items.ravel(), np.repeat([1, 12, 23], 200), np.repeat([0, 3, 7], 200)
    )
    np.testing.assert_allclose(s.ravel(), flat, rtol=1e-5, atol=1e-5)
    # scalars broadcast; unknown ids score (as the unknown row) and are reported
    one = ranker.score(5, np.array([1, 2, 10**9]), 12, 3)
    assert one.shape == (3,) and np.isfinite(one).all()
    assert ranker.feature_space.unknown_item_ids([1, 2, 10**9]).tolist() == [10**9]
    assert ranker.score(5, np.zeros((0,), dtype=np.int64), 12, 3).shape == (0,)
    with pytest.raises(ValueError, match="leading shape"):
        ranker.score(np.array([1, 2]), items, 0, 0)
    # the score is the expected play time when no aspect weights are configured
    pred = ranker.predict(users, items, 12, 3)
    np.testing.assert_allclose(pred.score, pred.expected_play_s)
    assert pred.aspect_probs.shape == (3, 200, 7)
    assert ranker.temperature == SMALL.temperature


def test_score_aspect_weights(ranker: TrainedRanker) -> None:
    cfg = replace(ranker.config, score_aspect_weights={"is_hate": -100.0, "is_like": 10.0})
    other = TrainedRanker(ranker.state_dict, cfg, ranker.feature_space, ranker.metrics)
    items = np.arange(1, 50)
    base = ranker.predict(3, items, 12, 0)
    mixed = other.score(3, items, 12, 0)
    hate, like = ASPECTS.index("is_hate"), ASPECTS.index("is_like")
    expected = base.expected_play_s - 100 * base.aspect_probs[:, hate]
    expected += 10 * base.aspect_probs[:, like]
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-4)


def test_save_load_identical_scores(ranker: TrainedRanker, tmp_path: Path) -> None:
    path = ranker.save(tmp_path / "ranker")
    raw = torch.load(path / "model.pt", weights_only=True)  # no pickled objects
    assert set(raw) == {"state_dict", "features"}
    meta = json.loads((path / "ranker.json").read_text())
    assert meta["config"]["temperature"] == ranker.temperature
    loaded = TrainedRanker.load(path)
    for key in ranker.state_dict:
        assert torch.equal(loaded.state_dict[key], ranker.state_dict[key])
    assert loaded.config == ranker.config and loaded.feature_space.equals(ranker.feature_space)
    items = np.arange(2 * 150).reshape(2, 150) % 410
    a = ranker.score(np.array([1, 2]), items, np.array([8, 20]), np.array([0, 4]))
    b = loaded.score(np.array([1, 2]), items, np.array([8, 20]), np.array([0, 4]))
    np.testing.assert_array_equal(a, b)
    assert loaded.metrics["holdout_auc"]["is_click"] == pytest.approx(
        ranker.metrics["holdout_auc"]["is_click"]
    )
    with pytest.raises(FileNotFoundError, match="model.pt"):
        TrainedRanker.load(tmp_path / "nothing")


# --------------------------------------------------------------------- KuaiRand


@pytest.mark.skipif(not KUAIRAND_DIR.is_dir(), reason="KuaiRand files absent")
def test_trains_on_kuairand(tmp_path: Path) -> None:
    from components.kuairand import import_kuairand

    import_kuairand(KUAIRAND_DIR, tmp_path)
    r = train_ranker(tmp_path, SMALL, seed=0, max_epochs=1, limit_train_batches=20)
    m = r.metrics
    assert m["final_train_loss"] < m["initial_train_loss"]
    assert m["n_train"] > 0 and m["n_holdout"] > 0
    assert np.isfinite(m["holdout_auc"]["is_click"])
    # KuaiRand requests have 1..34 impressions: score them as a padded matrix
    imp = pd.read_parquet(tmp_path / "impressions.parquet")
    sizes = imp.groupby("request_id").size()
    assert sizes.nunique() > 1
    rids = sizes.index[:50]
    width = int(sizes.loc[rids].max())
    grid = np.zeros((len(rids), width), dtype=np.int64)
    mask = np.zeros_like(grid, dtype=bool)
    for i, (_, g) in enumerate(imp[imp["request_id"].isin(rids)].groupby("request_id")):
        grid[i, : len(g)] = g["item_id"].to_numpy()
        mask[i, : len(g)] = True
    users = imp.groupby("request_id")["user_id"].first().loc[rids].to_numpy()
    s = r.score(users, grid, 12, 0)
    assert s.shape == grid.shape and np.isfinite(s[mask]).all()
