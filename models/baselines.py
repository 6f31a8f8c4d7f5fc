r"""Wide & Deep and DeepFM: the industrial supervised baselines of MMRF's offline comparison.

MMRF (§3.1.3) compares its agents with "industrial commonly applied approaches": the
behaviour-cloning ranker (:class:`models.ranker.MultiTaskRanker`), Wide & Deep (Cheng et
al., "Wide & Deep Learning for Recommender Systems", DLRS 2016) and DeepFM (Guo et al.,
"DeepFM: A Factorization-Machine based Neural Network for CTR Prediction", IJCAI 2017 /
arXiv:1703.04247), all supervised by the logged impressions. Here both networks are drop-in
replacements for ``MultiTaskRanker``: the same constructor arguments (built by
``RankerConfig(architecture="wide_deep" | "deepfm").create``), the same buffers (the
feature tables, non-persistent, and the persistent Duan smearing factor ``play_smearing``),
the same ``init_output_bias`` / ``expected_play_s`` and the same
``forward(user_row, item_row, context) -> RankerOutput``. Loss, optimiser, training,
scoring, saving and serving (``models.ranker.RankerModule``,
``components.training.train_ranker`` / ``TrainedRanker``) are shared unchanged.

Each network has ``H = 8`` outputs — 7 aspect logits and ``μ`` = predicted
``log1p(play_s)`` — and is the sum of a linear/factorised part and a deep part, as in the
papers; the global bias ``b`` of the papers is the bias of the deep output layer
(``heads``), which ``init_output_bias`` sets to the priors. The linear, cross and FM
output weights start at zero, so a fresh network predicts the priors plus a small deep
term, like ``MultiTaskRanker``.

Notation (one impression): ``x_u`` the user row of ``FeatureSpace.user_table`` (standardised
numerics, missing flags, one-hot categoricals), ``x_i`` the item row (standardised
duration, flags, one-hot ``video_type`` / ``music_type``), ``t`` the item's first tag,
``1_t`` its one-hot vector, ``x_c`` the 3 context features, ``u`` / ``i`` the user and item
row ids (0 = unknown id). ``id_dropout`` replaces ``u`` and ``i`` by 0 in training (only
where they index an embedding), as in ``MultiTaskRanker``.

**Wide & Deep** (:class:`WideDeepRanker`; Cheng et al. eq. 3,
``P(Y=1|x) = σ(w_wide^T [x, φ(x)] + w_deep^T a^{(l_f)} + b)``)::

    wide_h = w_u,h·x_u + w_i,h·x_i + w_c,h·x_c              raw features (one-hot included)
           + a_h[u] + b_h[i] + g_h[t]                        id and tag one-hot weights
           + x_u^T C_h [x_i ; 1_t]                           user × item cross products
    a^(0)  = [x_u ; e_u(u) ; x_i ; e_tag(t) ; e_i(i) ; x_c]  dense embeddings + features
    a^(l+1) = ReLU(W_l a^(l) + b_l)                          hidden_sizes
    out_h  = wide_h + w_h·a^(L) + b_h

The cross term is Cheng's cross-product transformation ``φ(x) = Π x_j`` over every pair
(user column, item column) and every pair (user column, first tag): for two one-hot columns,
e.g. ``user_active_degree=full_active`` and ``video_type=AD`` or ``tag=12``, the product is
the indicator ``AND(...)`` of the paper with its own weight per head; for a standardised
numeric user column (``onehot_featK``, ``log1p_live_watch_3w``) it is a tag- or
category-specific slope. ``C_h`` has ``n_user_features × (n_item_features + n_tags)``
entries per head. No user-id × item-id cross: that table would have one weight per
(user, item) pair. Embedding sizes: ``id_embedding_dim`` (``e_u``, ``e_i``) and
``tag_embedding_dim`` (``e_tag``); 0 drops the ids (or the tag) from both parts.
``tower_dim`` is not used. The paper trains the wide part with FTRL + L1 and the deep part
with AdaGrad; here one Adam step updates both (``RankerModule``), as in most
re-implementations.

**DeepFM** (:class:`DeepFMRanker`; Guo et al. eq. 1–4, ``ŷ = σ(y_FM + y_DNN)``). Fields,
each embedded to ``k = tower_dim`` dimensions (the field-embedding layer, Guo et al. §2.1)::

    e_1 = V_u[u]        user id                  e_4 = V_tag[t]   first tag
    e_2 = P_u x_u       user feature block       e_5 = P_i x_i    item feature block
    e_3 = V_i[i]        item id                  e_6 = P_c x_c    context

    y_FM,h  = w_u,h·x_u + w_i,h·x_i + w_c,h·x_c + a_h[u] + b_h[i] + g_h[t]   (first order)
            + p_h · s,    s = ½ ((Σ_f e_f)² − Σ_f e_f²)  ∈ R^k               (second order)
    y_DNN,h = MLP([e_1 ; … ; e_6])_h              the same embeddings (DeepFM's shared input)
    out_h   = y_FM,h + y_DNN,h + b_h

Summing ``s`` over its ``k`` dimensions gives the FM term ``Σ_{f<g} <e_f, e_g>`` (Rendle
2010, lemma 3.1): one shared FM vector, projected to the 8 heads by
``p_h`` (``p_h = 1`` is the paper's single-output FM; each aspect may need its own sign —
an interaction that raises clicks may lower hates). A feature block is one field, so the
FM crosses fields, not the columns within one block. ``id_embedding_dim`` and
``tag_embedding_dim`` only switch the id and tag fields on (> 0) or off (0): the FM needs
one common ``k``.

Both networks split their first deep layer into a user, an item and a context projection
(``Linear`` over a concatenation = the sum of the projections of its parts), and compute the
user-side parts of the wide/FM terms once per user, so user rows ``(R, 1)`` broadcast
against candidates ``(R, C)`` exactly as in ``MultiTaskRanker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.ranker import ASPECTS, MultiTaskRanker, RankerOutput

__all__ = ["DeepFMFields", "DeepFMRanker", "WideDeepRanker", "fm_second_order"]


# ------------------------------------------------------------------------- maths


def fm_second_order(fields: Sequence[Tensor]) -> Tensor:
    """The factorisation machine's pairwise term per embedding dimension,
    ``s = ½ ((Σ_f e_f)² − Σ_f e_f²)`` (element-wise squares), shape ``(..., k)``.

    ``s.sum(-1) = Σ_{f<g} <e_f, e_g>`` (Rendle, "Factorization Machines", ICDM 2010, lemma
    3.1), computed in ``O(F·k)`` instead of ``O(F²·k)``. The field tensors, each
    ``(..., k)``, only need to broadcast against each other (a user field ``(R, 1, k)``
    with an item field ``(R, C, k)``)."""
    if not fields:
        raise ValueError("fm_second_order needs at least one field embedding")
    total = fields[0]
    squares = fields[0] * fields[0]
    for e in fields[1:]:
        total = total + e
        squares = squares + e * e
    return 0.5 * (total * total - squares)


def _hidden_mlp(hidden_sizes: Sequence[int]) -> nn.Sequential:
    """``Linear + ReLU`` between consecutive widths (the layers after the first)."""
    layers: list[nn.Module] = []
    for a, b in zip(hidden_sizes[:-1], hidden_sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


def _embedding(n: int, dim: int, std: float = 0.05) -> nn.Embedding:
    emb = nn.Embedding(n, dim)
    nn.init.normal_(emb.weight, std=std)
    return emb


def _zero_embedding(n: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(n, dim)
    nn.init.zeros_(emb.weight)
    return emb


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    lin = nn.Linear(n_in, n_out, bias=False)
    nn.init.zeros_(lin.weight)
    return lin


# ------------------------------------------------------------------- shared base


class _TableRanker(nn.Module):
    """What every ranking network shares with :class:`MultiTaskRanker`: the feature tables
    as non-persistent buffers, the persistent smearing factor, id dropout, the output-bias
    initialisation of ``heads`` and the expected play time (the methods are
    ``MultiTaskRanker``'s own)."""

    heads: nn.Linear

    def __init__(
        self, user_table: Tensor, item_table: Tensor, item_tag: Tensor, id_dropout: float
    ) -> None:
        super().__init__()
        self.register_buffer("user_table", user_table.float(), persistent=False)
        self.register_buffer("item_table", item_table.float(), persistent=False)
        self.register_buffer("item_tag", item_tag.long(), persistent=False)
        self.register_buffer("play_smearing", torch.tensor(1.0))
        self.id_dropout = float(id_dropout)

    _id_rows = MultiTaskRanker._id_rows
    init_output_bias = MultiTaskRanker.init_output_bias
    expected_play_s = MultiTaskRanker.expected_play_s

    @staticmethod
    def _output(out: Tensor) -> RankerOutput:
        return RankerOutput(aspect_logits=out[..., :-1], log_play=out[..., -1])


# ------------------------------------------------------------------ Wide & Deep


class WideDeepRanker(_TableRanker):
    """Wide & Deep (Cheng et al. 2016) with the 8 heads of the multi-task ranker.

    Wide: linear weights on the raw user, item and context rows, per-id and per-tag weights
    (embeddings of size 1 per head) and the user × [item ; tag] cross products
    ``x_u^T C_h [x_i ; 1_t]``. Deep: an MLP over ``[x_u ; e_u ; x_i ; e_tag ; e_i ; x_c]``.
    Both are summed into the heads; see the module docstring for the equations.
    ``tower_dim`` is accepted for a common signature and not used.
    """

    def __init__(
        self,
        user_table: Tensor,
        item_table: Tensor,
        item_tag: Tensor,
        n_tags: int,
        n_context: int = 3,
        tower_dim: int = 32,
        id_embedding_dim: int = 16,
        tag_embedding_dim: int = 8,
        hidden_sizes: Sequence[int] = (64, 32),
        id_dropout: float = 0.0,
        n_aspects: int = len(ASPECTS),
    ) -> None:
        super().__init__(user_table, item_table, item_tag, id_dropout)
        n_out = n_aspects + 1
        n_users, n_user_features = user_table.shape
        n_items, n_item_features = item_table.shape
        self.n_out = n_out
        self.n_item_features = int(n_item_features)
        self.use_ids = id_embedding_dim > 0
        self.use_tag = tag_embedding_dim > 0
        n_cross = n_item_features + (n_tags if self.use_tag else 0)
        # wide part: all zero at start
        self.wide_user = _zero_linear(n_user_features, n_out)
        self.wide_item = _zero_linear(n_item_features, n_out)
        self.wide_context = _zero_linear(n_context, n_out)
        self.wide_user_id = _zero_embedding(n_users, n_out) if self.use_ids else None
        self.wide_item_id = _zero_embedding(n_items, n_out) if self.use_ids else None
        self.wide_tag = _zero_embedding(n_tags, n_out) if self.use_tag else None
        # C as one (n_user_features, n_cross · H) matrix: x_u @ C is computed once per user
        self.wide_cross = nn.Parameter(torch.zeros(n_user_features, n_cross * n_out))
        # deep part
        self.user_id_emb = _embedding(n_users, id_embedding_dim) if self.use_ids else None
        self.item_id_emb = _embedding(n_items, id_embedding_dim) if self.use_ids else None
        self.tag_emb = _embedding(n_tags, tag_embedding_dim) if self.use_tag else None
        h1 = hidden_sizes[0]
        self.deep_user = nn.Linear(n_user_features + id_embedding_dim, h1)
        self.deep_item = nn.Linear(
            n_item_features + tag_embedding_dim + id_embedding_dim, h1, bias=False
        )
        self.deep_context = nn.Linear(n_context, h1, bias=False)
        self.mlp = _hidden_mlp(hidden_sizes)
        self.heads = nn.Linear(hidden_sizes[-1], n_out)

    def wide_logits(
        self,
        user_row: Tensor,
        item_row: Tensor,
        context: Tensor,
        user_id_row: Tensor | None = None,
        item_id_row: Tensor | None = None,
    ) -> Tensor:
        """The wide part ``(..., H)`` (no bias). ``user_id_row`` / ``item_id_row``: the
        rows of the id weights (default: ``user_row`` / ``item_row``; ``forward`` passes
        them after id dropout)."""
        user_id_row = user_row if user_id_row is None else user_id_row
        item_id_row = item_row if item_id_row is None else item_id_row
        x_u, x_i = self.user_table[user_row], self.item_table[item_row]
        out = self.wide_user(x_u) + self.wide_item(x_i) + self.wide_context(context)
        if self.wide_user_id is not None and self.wide_item_id is not None:
            out = out + self.wide_user_id(user_id_row) + self.wide_item_id(item_id_row)
        # x_u^T C_h [x_i ; 1_t]: per user (.., n_cross, H), then per candidate
        per_user = (x_u @ self.wide_cross).unflatten(-1, (-1, self.n_out))
        n_i = self.n_item_features
        out = out + (per_user[..., :n_i, :] * x_i.unsqueeze(-1)).sum(dim=-2)
        if self.wide_tag is not None:
            tag = self.item_tag[item_row]
            out = out + self.wide_tag(tag)
            tag_cross = torch.take_along_dim(per_user[..., n_i:, :], tag[..., None, None], dim=-2)
            out = out + tag_cross.squeeze(-2)
        return out

    def deep_logits(
        self,
        user_row: Tensor,
        item_row: Tensor,
        context: Tensor,
        user_id_row: Tensor | None = None,
        item_id_row: Tensor | None = None,
    ) -> Tensor:
        """The deep part ``(..., H)``, including the output bias ``b``."""
        user_id_row = user_row if user_id_row is None else user_id_row
        item_id_row = item_row if item_id_row is None else item_id_row
        user_parts = [self.user_table[user_row]]
        item_parts = [self.item_table[item_row]]
        if self.tag_emb is not None:
            item_parts.append(self.tag_emb(self.item_tag[item_row]))
        if self.user_id_emb is not None and self.item_id_emb is not None:
            user_parts.append(self.user_id_emb(user_id_row))
            item_parts.append(self.item_id_emb(item_id_row))
        h = self.deep_user(torch.cat(user_parts, dim=-1))
        h = h + self.deep_item(torch.cat(item_parts, dim=-1)) + self.deep_context(context)
        return self.heads(self.mlp(F.relu(h)))

    def forward(self, user_row: Tensor, item_row: Tensor, context: Tensor) -> RankerOutput:
        user_id_row, item_id_row = self._id_rows(user_row), self._id_rows(item_row)
        out = self.wide_logits(user_row, item_row, context, user_id_row, item_id_row)
        out = out + self.deep_logits(user_row, item_row, context, user_id_row, item_id_row)
        return self._output(out)


# ------------------------------------------------------------------------ DeepFM


@dataclass(frozen=True)
class DeepFMFields:
    """DeepFM's field embeddings, each ``(..., k)``: the user side (user id, user feature
    block), the item side (item id, first tag, item feature block; absent fields left out)
    and the context; the sides broadcast against each other."""

    user: tuple[Tensor, ...]
    item: tuple[Tensor, ...]
    context: Tensor

    def all(self) -> tuple[Tensor, ...]:
        return (*self.user, *self.item, self.context)


class DeepFMRanker(_TableRanker):
    """DeepFM (Guo et al. 2017) with the 8 heads of the multi-task ranker.

    Up to six fields (user id, user features, item id, first tag, item features, context),
    each embedded to ``k = tower_dim``. FM part: first-order weights on the raw rows, ids
    and tag, plus the second-order vector ``s = ½((Σ e)² − Σ e²)`` projected to the heads;
    deep part: an MLP over the concatenated field embeddings — the same embeddings
    (DeepFM's shared input). ``id_embedding_dim`` / ``tag_embedding_dim`` switch the id /
    tag fields on (> 0) or off (0); their values are not used. See the module docstring.
    """

    def __init__(
        self,
        user_table: Tensor,
        item_table: Tensor,
        item_tag: Tensor,
        n_tags: int,
        n_context: int = 3,
        tower_dim: int = 32,
        id_embedding_dim: int = 16,
        tag_embedding_dim: int = 8,
        hidden_sizes: Sequence[int] = (64, 32),
        id_dropout: float = 0.0,
        n_aspects: int = len(ASPECTS),
    ) -> None:
        super().__init__(user_table, item_table, item_tag, id_dropout)
        n_out = n_aspects + 1
        k = int(tower_dim)
        n_users, n_user_features = user_table.shape
        n_items, n_item_features = item_table.shape
        self.k = k
        self.use_ids = id_embedding_dim > 0
        self.use_tag = tag_embedding_dim > 0
        # field embeddings (shared by the FM and the deep part)
        self.user_id_emb = _embedding(n_users, k) if self.use_ids else None
        self.item_id_emb = _embedding(n_items, k) if self.use_ids else None
        self.tag_emb = _embedding(n_tags, k) if self.use_tag else None
        self.user_field = nn.Linear(n_user_features, k, bias=False)
        self.item_field = nn.Linear(n_item_features, k, bias=False)
        self.context_field = nn.Linear(n_context, k, bias=False)
        # FM: first order and the projection of s to the heads, all zero at start
        self.first_user = _zero_linear(n_user_features, n_out)
        self.first_item = _zero_linear(n_item_features, n_out)
        self.first_context = _zero_linear(n_context, n_out)
        self.first_user_id = _zero_embedding(n_users, n_out) if self.use_ids else None
        self.first_item_id = _zero_embedding(n_items, n_out) if self.use_ids else None
        self.first_tag = _zero_embedding(n_tags, n_out) if self.use_tag else None
        self.fm_proj = _zero_linear(k, n_out)
        # deep part over [e_1 ; ... ; e_6], first layer split by side
        n_user_fields = 1 + int(self.use_ids)
        n_item_fields = 1 + int(self.use_ids) + int(self.use_tag)
        h1 = hidden_sizes[0]
        self.deep_user = nn.Linear(n_user_fields * k, h1)
        self.deep_item = nn.Linear(n_item_fields * k, h1, bias=False)
        self.deep_context = nn.Linear(k, h1, bias=False)
        self.mlp = _hidden_mlp(hidden_sizes)
        self.heads = nn.Linear(hidden_sizes[-1], n_out)

    def fields(
        self,
        user_row: Tensor,
        item_row: Tensor,
        context: Tensor,
        user_id_row: Tensor | None = None,
        item_id_row: Tensor | None = None,
    ) -> DeepFMFields:
        """The field embeddings (ids looked up at ``user_id_row`` / ``item_id_row``,
        default ``user_row`` / ``item_row``)."""
        user_id_row = user_row if user_id_row is None else user_id_row
        item_id_row = item_row if item_id_row is None else item_id_row
        user: list[Tensor] = []
        item: list[Tensor] = []
        if self.user_id_emb is not None and self.item_id_emb is not None:
            user.append(self.user_id_emb(user_id_row))
            item.append(self.item_id_emb(item_id_row))
        if self.tag_emb is not None:
            item.append(self.tag_emb(self.item_tag[item_row]))
        user.append(self.user_field(self.user_table[user_row]))
        item.append(self.item_field(self.item_table[item_row]))
        return DeepFMFields(user=tuple(user), item=tuple(item), context=self.context_field(context))

    def fm_logits(
        self,
        user_row: Tensor,
        item_row: Tensor,
        context: Tensor,
        fields: DeepFMFields,
        user_id_row: Tensor | None = None,
        item_id_row: Tensor | None = None,
    ) -> Tensor:
        """``y_FM`` ``(..., H)``: first-order terms + ``p_h · s`` (no bias)."""
        user_id_row = user_row if user_id_row is None else user_id_row
        item_id_row = item_row if item_id_row is None else item_id_row
        out = self.first_user(self.user_table[user_row])
        out = out + self.first_item(self.item_table[item_row]) + self.first_context(context)
        if self.first_user_id is not None and self.first_item_id is not None:
            out = out + self.first_user_id(user_id_row) + self.first_item_id(item_id_row)
        if self.first_tag is not None:
            out = out + self.first_tag(self.item_tag[item_row])
        return out + self.fm_proj(fm_second_order(fields.all()))

    def deep_logits(self, fields: DeepFMFields) -> Tensor:
        """``y_DNN`` ``(..., H)`` over the concatenated fields, including the bias ``b``."""
        h = self.deep_user(torch.cat(fields.user, dim=-1))
        h = h + self.deep_item(torch.cat(fields.item, dim=-1))
        h = h + self.deep_context(fields.context)
        return self.heads(self.mlp(F.relu(h)))

    def forward(self, user_row: Tensor, item_row: Tensor, context: Tensor) -> RankerOutput:
        user_id_row, item_id_row = self._id_rows(user_row), self._id_rows(item_row)
        fields = self.fields(user_row, item_row, context, user_id_row, item_id_row)
        out = self.fm_logits(user_row, item_row, context, fields, user_id_row, item_id_row)
        return self._output(out + self.deep_logits(fields))
