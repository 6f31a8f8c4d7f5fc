"""Wide & Deep and DeepFM (``models.baselines``): maths against brute force, broadcasting,
training through ``train_ranker``, determinism, files and the config switch.

World ``tiny`` data (3 days: 2 train, 1 held out) and small configs keep the run short.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.features import FeatureSpace
from components.training import TrainedRanker, train_ranker
from models.baselines import DeepFMRanker, WideDeepRanker, fm_second_order
from models.ranker import ARCHITECTURES, MultiTaskRanker, RankerConfig

BASELINES = ("wide_deep", "deepfm")
NET_CLASS = {"mlp": MultiTaskRanker, "wide_deep": WideDeepRanker, "deepfm": DeepFMRanker}
SMALL = RankerConfig(batch_size=512, epochs=3, tower_dim=16, hidden_sizes=(32, 16))


@pytest.fixture(scope="module")
def tiny() -> dict[str, pd.DataFrame]:
    from components.world import generate_dataset

    tables, _ = generate_dataset("tiny", seed=0)
    return tables


@pytest.fixture(scope="module")
def space(tiny: dict[str, pd.DataFrame]) -> FeatureSpace:
    return FeatureSpace.fit(tiny["users"], tiny["items"])


@pytest.fixture(scope="module", params=BASELINES)
def trained(request: pytest.FixtureRequest, tiny: dict[str, pd.DataFrame]) -> TrainedRanker:
    return train_ranker(tiny, replace(SMALL, architecture=request.param), seed=0)


def random_net(arch: str, space: FeatureSpace, **overrides: int) -> torch.nn.Module:
    """A network of ``arch`` with every weight drawn at random (the wide, first-order and FM
    weights start at zero, which would hide them), in eval mode."""
    net = replace(SMALL, architecture=arch, **overrides).create(space)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


# ------------------------------------------------------------------------ maths


def test_fm_second_order_known_answer() -> None:
    # <v1,v2> = 3 - 2 = 1, <v1,v3> = 0.5 + 8 = 8.5, <v2,v3> = 1.5 - 4 = -2.5: sum 7
    # per dimension: 1·3 + 1·0.5 + 3·0.5 = 5 and 2·(-1) + 2·4 + (-1)·4 = 2
    v = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.5, 4.0])]
    s = fm_second_order(v)
    torch.testing.assert_close(s, torch.tensor([5.0, 2.0]))
    assert float(s.sum()) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="at least one field"):
        fm_second_order([])


def test_fm_second_order_equals_pairwise_sum_with_broadcasting() -> None:
    g = torch.Generator().manual_seed(1)
    user = [torch.randn(3, 1, 4, generator=g) for _ in range(2)]  # (R, 1, k)
    item = [torch.randn(3, 5, 4, generator=g) for _ in range(3)]  # (R, C, k)
    fields = [f.expand(3, 5, 4) for f in user + item]
    brute = sum((a * b).sum(-1) for a, b in itertools.combinations(fields, 2))
    torch.testing.assert_close(fm_second_order(user + item).sum(-1), brute)


def test_wide_part_equals_explicit_cross_products(space: FeatureSpace) -> None:
    """``wide_h = w·x_u + w·x_i + w·x_c + a[u] + b[i] + g[t] + Σ_ab x_u[a] C[a,b,h] z[b]``
    with ``z = [x_i ; one_hot(t)]``, written out term by term."""
    net = random_net("wide_deep", space)
    users, items = torch.tensor([1, 7, 0, 30]), torch.tensor([4, 0, 9, 200])
    ctx = torch.rand(4, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = net.wide_logits(users, items, ctx).double().numpy()
    w = {name: p.detach().double().numpy() for name, p in net.named_parameters()}
    x_u = net.user_table[users].double().numpy()
    x_i = net.item_table[items].double().numpy()
    x_c = ctx.double().numpy()
    tag = net.item_tag[items].numpy()
    z = np.concatenate([x_i, np.eye(space.n_tags)[tag]], axis=1)
    c = w["wide_cross"].reshape(x_u.shape[1], z.shape[1], net.n_out)
    for n in range(4):
        for h in range(net.n_out):
            want = w["wide_user.weight"][h] @ x_u[n] + w["wide_item.weight"][h] @ x_i[n]
            want += w["wide_context.weight"][h] @ x_c[n]
            want += w["wide_user_id.weight"][users[n], h] + w["wide_item_id.weight"][items[n], h]
            want += w["wide_tag.weight"][tag[n], h]
            want += sum(
                x_u[n, a] * c[a, b, h] * z[n, b]
                for a in range(c.shape[0])
                for b in range(c.shape[1])
                if x_u[n, a] != 0 and z[n, b] != 0
            )
            assert got[n, h] == pytest.approx(want, rel=1e-4, abs=1e-4), (n, h)


def test_deepfm_fm_term_and_shared_embeddings(space: FeatureSpace) -> None:
    net = random_net("deepfm", space)
    users, items = torch.tensor([1, 7, 0, 30]), torch.tensor([4, 0, 9, 200])
    ctx = torch.rand(4, 3, generator=torch.Generator().manual_seed(3))
    fields = net.fields(users, items, ctx)
    assert len(fields.all()) == 6 and all(e.shape == (4, net.k) for e in fields.all())
    # both parts read the same embeddings: each one's gradient reaches the id table
    for part in (net.fm_logits(users, items, ctx, fields), net.deep_logits(fields)):
        net.zero_grad()
        part.sum().backward(retain_graph=True)
        assert net.user_id_emb.weight.grad.abs().sum() > 0
    # only the FM left (deep weights, first order off; p_h = 1): out = b + Σ_{f<g} <e_f, e_g>
    with torch.no_grad():
        for module in (net.first_user, net.first_item, net.first_context, net.heads):
            module.weight.zero_()
        for emb in (net.first_user_id, net.first_item_id, net.first_tag):
            emb.weight.zero_()
        net.fm_proj.weight.fill_(1.0)
        out = net(users, items, ctx)
        fields = net.fields(users, items, ctx).all()
    pairs = sum((a * b).sum(-1) for a, b in itertools.combinations(fields, 2))
    torch.testing.assert_close(out.log_play, net.heads.bias[-1] + pairs)
    torch.testing.assert_close(out.aspect_logits, net.heads.bias[:-1] + pairs[:, None])


@pytest.mark.parametrize("arch", BASELINES)
def test_broadcast_forward_equals_flat_forward(arch: str, space: FeatureSpace) -> None:
    net = random_net(arch, space)
    users = torch.tensor([1, 2, 3])
    items = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 0]])
    ctx = torch.rand(3, 1, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = net(users[:, None], items, ctx)
        b = net(users.repeat_interleave(4), items.ravel(), ctx.expand(3, 4, 3).reshape(12, 3))
        # the service's layout: one user (1,), candidates (C,), one context row (1, 3)
        c = net(users[:1], items[0], ctx[0])
    assert a.aspect_logits.shape == (3, 4, 7) and a.log_play.shape == (3, 4)
    torch.testing.assert_close(a.aspect_logits.reshape(12, 7), b.aspect_logits)
    torch.testing.assert_close(a.log_play.ravel(), b.log_play)
    torch.testing.assert_close(c.log_play, b.log_play[:4])


# ------------------------------------------------------------------------ config


def test_config_selects_the_network(space: FeatureSpace) -> None:
    assert RankerConfig().architecture == "mlp"
    for arch in ARCHITECTURES:
        for overrides in ({}, {"id_embedding_dim": 0}, {"tag_embedding_dim": 0}):
            cfg = replace(SMALL, architecture=arch, **overrides)
            net = cfg.create(space)
            assert type(net) is NET_CLASS[arch]
            assert "play_smearing" in net.state_dict()
            out = net(torch.tensor([1, 0]), torch.tensor([3, 0]), torch.zeros(2, 3))
            assert out.aspect_logits.shape == (2, 7) and out.log_play.shape == (2,)
            assert RankerConfig.from_dict(json.loads(cfg.to_json())) == cfg
    # configs saved before the field existed read as the multi-task ranker
    old = {k: v for k, v in RankerConfig().to_dict().items() if k != "architecture"}
    assert RankerConfig.from_dict(old).architecture == "mlp"


def test_unknown_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"architecture must be one of .*'wide_deep'.*'dwide'"):
        RankerConfig(architecture="dwide")


# --------------------------------------------------------------------- training


def test_training_reduces_the_loss(trained: TrainedRanker) -> None:
    m = trained.metrics
    assert type(trained.model) is NET_CLASS[trained.config.architecture]
    # from the priors (output biases at base rates, wide/FM weights at zero): the multi-task
    # ranker passes the same bound on this data (tests/components/test_training.py)
    assert m["final_train_loss"] < 0.8 * m["initial_train_loss"]
    assert all(b < a for a, b in itertools.pairwise(m["epoch_train_loss"]))


def test_held_out_quality(trained: TrainedRanker) -> None:
    auc = trained.metrics["holdout_auc"]
    # The held-out day has 8454 impressions, 4088 clicks: a score unrelated to clicks has
    # AUC 0.5 with a standard deviation sqrt((n0 + n1 + 1) / (12 n0 n1)) = 0.0063, so 0.55 is
    # 8 standard deviations above chance (still > 3 if the clustering of impressions by
    # user doubled or tripled it), while the baselines reach about 0.60 (the multi-task
    # ranker 0.58 with this config), a margin for other seeds and platforms.
    assert auc["is_click"] > 0.55
    assert auc["long_view"] > 0.7
    assert trained.metrics["holdout_log_play_rmse"] < 1.0


def test_same_seed_same_weights(tiny: dict[str, pd.DataFrame]) -> None:
    kw = {"max_epochs": 1, "limit_train_batches": 4}
    for arch in BASELINES:
        cfg = replace(SMALL, architecture=arch)
        a = train_ranker(tiny, cfg, seed=7, **kw)
        b = train_ranker(tiny, cfg, seed=7, **kw)
        c = train_ranker(tiny, cfg, seed=8, **kw)
        assert a.state_dict.keys() == b.state_dict.keys()
        for key in a.state_dict:
            assert torch.equal(a.state_dict[key], b.state_dict[key]), (arch, key)
        assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


# ---------------------------------------------------------------------- files


def test_save_load_identical_scores(trained: TrainedRanker, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "ranker")
    meta = json.loads((path / "ranker.json").read_text())
    assert meta["config"]["architecture"] == trained.config.architecture
    loaded = TrainedRanker.load(path)
    assert loaded.config == trained.config
    assert type(loaded.model) is type(trained.model)
    assert float(loaded.model.play_smearing) == pytest.approx(trained.metrics["play_smearing"])
    items = np.arange(2 * 150).reshape(2, 150) % 410
    a = trained.score(np.array([1, 2]), items, np.array([8, 20]), np.array([0, 4]))
    b = loaded.score(np.array([1, 2]), items, np.array([8, 20]), np.array([0, 4]))
    assert a.shape == (2, 150) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
