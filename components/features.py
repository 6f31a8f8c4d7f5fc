"""Feature space of the ranking agents: users, items and request context as numbers.

:class:`FeatureSpace` is fitted once on the ``users`` and ``items`` tables of a training data
set and then frozen; it is saved with every model (:meth:`FeatureSpace.to_state` gives a dict
of arrays plus a JSON-able dict, :meth:`FeatureSpace.from_state` rebuilds it) so that serving
encodes exactly as training did.

Encoding (one row per known id; **row 0 of each table is the "unknown" row** that an id not
seen at fit time maps to):

User row (``user_table``, float32, columns named by ``user_columns``)
    - ``onehot_feat0..17`` standardised, ``z = (x - mean) / std`` with mean and std over the
      non-missing values of the fit table; a missing value (NaN) becomes ``z = 0`` and sets
      the column's missing flag ``missing_onehot_featK = 1``;
    - ``is_live_streamer``, ``is_video_author`` as 0/1 (anything but 1, e.g. KuaiRand's
      -124, is 0);
    - ``log1p(live_watch_3w)`` standardised (NaN → 0);
    - one-hot codes of ``user_active_degree``, ``follow_user_num_range`` and
      ``register_days_range``: one column per value seen at fit time plus a leading
      ``<unk>`` column that takes ``"UNKNOWN"``, empty, NaN and unseen values.
Item row (``item_table``)
    - ``log1p(video_duration / 1000)`` (seconds) standardised over items with a known
      duration; ``duration_unknown = 1`` (and 0 in the value column) for a video whose
      duration is 0 or missing (KuaiRand's unknown length; live streams have no duration and
      are flagged by ``is_live`` instead);
    - ``is_live``;
    - one-hot ``video_type`` and ``music_type`` (leading ``<unk>`` as above);
    - ``item_tag``: the first id of the comma-separated ``tag`` string as an embedding id
      (``0`` = no tag or a tag unseen at fit time, else 1 + its index in ``tag_vocab``).
Context (:func:`context_features`)
    ``sin(2π·hour/24)``, ``cos(2π·hour/24)``, ``log1p(position_in_session)``.

The unknown row has every value 0, every missing flag 1, ``duration_unknown = 1`` and the
``<unk>`` one-hot columns set: the encoding an all-missing user or item would get. Row
indices double as the ids of per-user/per-item embeddings (row 0 = the shared unknown
embedding). :meth:`FeatureSpace.unknown_user_ids` / :meth:`FeatureSpace.unknown_item_ids`
report ids without a row, so a service can reject them instead of scoring a stranger as the
average user.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.io import DataError
from components.schema import ONEHOT_FEATURES

UNKNOWN_STRINGS: frozenset[str] = frozenset({"", "UNKNOWN", "nan", "None", "NaN", "<NA>"})
"""String values read as "unknown" in categorical columns (KuaiRand writes ``"UNKNOWN"``)."""

USER_CATEGORICAL: tuple[str, ...] = (
    "user_active_degree",
    "follow_user_num_range",
    "register_days_range",
)
ITEM_CATEGORICAL: tuple[str, ...] = ("video_type", "music_type")
CONTEXT_COLUMNS: tuple[str, ...] = ("hour_sin", "hour_cos", "log1p_position")
UNK = "<unk>"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- helpers


def _category_keys(values: pd.Series) -> np.ndarray:
    """Values of a categorical column as strings; unknowns become ``""``.

    Floats that are whole numbers print without ``.0`` (``music_type`` 9.0 → ``"9"``).
    """
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values.tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            out[i] = ""
        elif isinstance(v, float) and v.is_integer():
            out[i] = str(int(v))
        else:
            s = str(v).strip()
            out[i] = "" if s in UNKNOWN_STRINGS else s
    return out


def _vocab(values: pd.Series) -> tuple[str, ...]:
    keys = _category_keys(values)
    return tuple(sorted({k for k in keys if k}))


def _codes(values: pd.Series, vocab: Sequence[str]) -> np.ndarray:
    """1 + index in ``vocab``; 0 for unknown or unseen values."""
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    return np.array([lookup.get(k, 0) for k in _category_keys(values)], dtype=np.int64)


def _one_hot(codes: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(codes), size), dtype=np.float32)
    out[np.arange(len(codes)), codes] = 1.0
    return out


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    """A float column (NaN where missing or not a number); all-NaN when the table lacks it."""
    if column not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _column(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series([None] * len(df), dtype=object)
    return df[column]


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and std of the finite values; (0, 1) when none, std 1 when constant."""
    finite = x[np.isfinite(x)]
    if len(finite) == 0:
        return 0.0, 1.0
    std = float(finite.std())
    return float(finite.mean()), std if std > 1e-12 else 1.0


def _standardise(x: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """``(z, missing)``: z-scores with missing values at 0, and the missing flag."""
    missing = ~np.isfinite(x)
    z = np.where(missing, 0.0, (np.where(missing, mean, x) - mean) / std)
    return z.astype(np.float32), missing.astype(np.float32)


def first_tag(tag: pd.Series) -> np.ndarray:
    """The first id of KuaiRand's comma-separated ``tag`` string; -1 where none."""
    out = np.full(len(tag), -1, dtype=np.int64)
    for i, v in enumerate(tag.tolist()):
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            continue
        head = str(v).split(",")[0].strip()
        try:
            out[i] = int(float(head))
        except ValueError:
            continue
    return out


def _check_ids(df: pd.DataFrame, column: str, table: str) -> np.ndarray:
    if column not in df.columns:
        raise DataError(f"{table} table has no {column!r} column; it is the key of the table")
    ids = pd.to_numeric(df[column], errors="coerce")
    if ids.isna().any():
        raise DataError(
            f"{table}.{column} must be integer ids; {int(ids.isna().sum())} value(s) are "
            "missing or not numbers"
        )
    ids = ids.to_numpy(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{table}.{column} must be unique; found duplicate ids")
    return ids


def context_features(hour: Any, position_in_session: Any) -> np.ndarray:
    """``[sin(2π h/24), cos(2π h/24), log1p(position)]`` as float32, shape ``(*shape, 3)``.

    ``hour`` and ``position_in_session`` broadcast against each other; a negative position
    is clipped to 0.
    """
    h = np.asarray(hour, dtype=np.float64)
    p = np.clip(np.asarray(position_in_session, dtype=np.float64), 0.0, None)
    h, p = np.broadcast_arrays(h, p)
    angle = 2.0 * np.pi * h / 24.0
    return np.stack([np.sin(angle), np.cos(angle), np.log1p(p)], axis=-1).astype(np.float32)


HISTORY_COLUMNS: tuple[str, ...] = (
    "watch_s",
    "last_watch_fraction",
    "interactions",
    "hates",
    "live_entered",
    "live_skipped",
)
"""The session so far, as the world's ``Observation.history`` and the service's request carry
it: watch seconds, mean watch fraction of the previous request, and counts of interactions
(like, comment, follow, forward), hates, live streams entered and live streams skipped."""

LIVE_SKIP_MS = 3000.0
"""A skipped live injection logs exactly this play time (the world's ``skip_seconds``)."""


def watch_fraction(play: Any, duration: Any) -> np.ndarray:
    """``play / duration`` (same units), 0 where the duration is unknown (NaN or ≤ 0, e.g.
    live streams) and for negative play."""
    play = np.asarray(play, dtype=np.float64)
    duration = np.asarray(duration, dtype=np.float64)
    ok = np.isfinite(duration) & (duration > 0)
    return np.where(ok, np.clip(play, 0.0, None) / np.where(ok, duration, 1.0), 0.0)


def item_durations_s(items: pd.DataFrame) -> pd.Series:
    """Video duration in seconds by ``item_id``; NaN where unknown (missing, not a number or
    ≤ 0, e.g. live streams), which :func:`watch_fraction` reads as a fraction of 0."""
    dur = _numeric(items, "video_duration")
    dur = np.where(np.isfinite(dur) & (dur > 0), dur / 1000.0, np.nan)
    return pd.Series(dur, index=items["item_id"].to_numpy())


def session_history(requests: pd.DataFrame, impressions: pd.DataFrame) -> pd.DataFrame:
    """The history each logged request was served with: sums over the *earlier* requests of
    its session (``HISTORY_COLUMNS``; ``last_watch_fraction`` is the previous request's mean
    ``play_time_ms / duration_ms``, 0 for the first request and for unknown durations).

    One row per request, indexed by ``request_id``, in the order of ``requests``.
    """
    imp = impressions[["request_id"]].copy()
    play = impressions["play_time_ms"].to_numpy(np.float64)
    dur = impressions["duration_ms"].to_numpy(np.float64)
    imp["watch_s"] = play / 1000.0
    imp["frac"] = watch_fraction(play, dur)
    imp["interactions"] = sum(
        impressions[c].to_numpy(np.float64)
        for c in ("is_like", "is_comment", "is_follow", "is_forward")
    )
    imp["hates"] = impressions["is_hate"].to_numpy(np.float64)
    per = imp.groupby("request_id").agg(
        watch_s=("watch_s", "sum"),
        frac=("frac", "mean"),
        interactions=("interactions", "sum"),
        hates=("hates", "sum"),
    )
    req = requests[["request_id", "session_id", "position_in_session"]].copy()
    req = req.join(per, on="request_id")
    injected = requests["live_injected"].to_numpy() == 1 if "live_injected" in requests else 0
    live_ms = (
        requests["live_play_time_ms"].to_numpy(np.float64)
        if "live_play_time_ms" in requests
        else np.zeros(len(requests))
    )
    skipped = injected & np.isclose(live_ms, LIVE_SKIP_MS)
    req["live_entered"] = (injected & ~skipped).astype(np.float64)
    req["live_skipped"] = skipped.astype(np.float64)
    req = req.fillna(0.0)
    order = req.sort_values(["session_id", "position_in_session"], kind="stable")
    g = order.groupby("session_id", sort=False)
    out = pd.DataFrame(index=order["request_id"].to_numpy())
    for col in ("watch_s", "interactions", "hates", "live_entered", "live_skipped"):
        out[col] = (g[col].cumsum() - order[col]).to_numpy()
    out["last_watch_fraction"] = g["frac"].shift(1).fillna(0.0).to_numpy()
    out.index.name = "request_id"
    return out.loc[requests["request_id"].to_numpy(), list(HISTORY_COLUMNS)]


def history_features(history: Any) -> np.ndarray:
    """Model inputs from raw history ``(*shape, 6)`` in ``HISTORY_COLUMNS`` order:
    ``[log1p(watch_s/60), last_watch_fraction, log1p(counts)...]`` as float32; ``None`` or
    missing values read as an empty history (zeros)."""
    h = np.nan_to_num(np.asarray(history, dtype=np.float64), nan=0.0)
    if h.shape[-1] != len(HISTORY_COLUMNS):
        raise ValueError(
            f"history must have {len(HISTORY_COLUMNS)} columns {list(HISTORY_COLUMNS)}, "
            f"got shape {h.shape}"
        )
    h = np.clip(h, 0.0, None)
    out = np.log1p(h)
    out[..., 0] = np.log1p(h[..., 0] / 60.0)
    out[..., 1] = np.minimum(h[..., 1], 2.0)
    return out.astype(np.float32)


# ---------------------------------------------------------------------- the space


@dataclass(frozen=True, eq=False)
class FeatureSpace:
    """Frozen encoding of users and items (see the module docstring for every column).

    ``user_ids``/``item_ids`` are the known ids, sorted; row ``1 + i`` of ``user_table`` /
    ``item_table`` / ``item_tag`` belongs to ``user_ids[i]`` / ``item_ids[i]``, row 0 is
    the unknown row. ``stats`` holds the means, standard deviations and vocabularies the
    encoding used (JSON-able), so a saved space can be audited.
    """

    user_ids: np.ndarray  # (n_users,) int64, sorted
    user_table: np.ndarray  # (n_users + 1, n_user_features) float32
    item_ids: np.ndarray  # (n_items,) int64, sorted
    item_table: np.ndarray  # (n_items + 1, n_item_features) float32
    item_tag: np.ndarray  # (n_items + 1,) int64 in [0, n_tags)
    user_columns: tuple[str, ...]
    item_columns: tuple[str, ...]
    stats: dict[str, Any]

    # ----------------------------------------------------------------- sizes

    @property
    def n_user_features(self) -> int:
        return int(self.user_table.shape[1])

    @property
    def n_item_features(self) -> int:
        return int(self.item_table.shape[1])

    @property
    def n_context_features(self) -> int:
        return len(CONTEXT_COLUMNS)

    @property
    def n_user_rows(self) -> int:
        """Known users + the unknown row."""
        return int(self.user_table.shape[0])

    @property
    def n_item_rows(self) -> int:
        return int(self.item_table.shape[0])

    @property
    def n_tags(self) -> int:
        """Tag embedding ids: known first tags + id 0 for none/unknown."""
        return len(self.stats["tag_vocab"]) + 1

    # ---------------------------------------------------------------- fitting

    @classmethod
    def fit(cls, users: pd.DataFrame, items: pd.DataFrame) -> FeatureSpace:
        """Fit the encoding on the ``users`` and ``items`` tables of a training data set.

        Works on world data and on KuaiRand imports (``"UNKNOWN"`` strings, NaN features,
        columns a source lacks: a missing column is read as all-missing).
        """
        user_ids = _check_ids(users, "user_id", "users")
        item_ids = _check_ids(items, "item_id", "items")
        users = users.iloc[np.argsort(user_ids, kind="stable")].reset_index(drop=True)
        items = items.iloc[np.argsort(item_ids, kind="stable")].reset_index(drop=True)

        onehot = {}
        for name in ONEHOT_FEATURES:
            mean, std = _mean_std(_numeric(users, name))
            onehot[name] = {"mean": mean, "std": std}
        live_mean, live_std = _mean_std(
            np.log1p(np.clip(_numeric(users, "live_watch_3w"), 0, None))
        )
        duration = _numeric(items, "video_duration")
        known = np.isfinite(duration) & (duration > 0)
        dur_mean, dur_std = _mean_std(np.log1p(duration[known] / 1000.0))
        tags = first_tag(_column(items, "tag"))
        stats: dict[str, Any] = {
            "onehot": onehot,
            "live_watch_3w_log1p": {"mean": live_mean, "std": live_std},
            "duration_s_log1p": {"mean": dur_mean, "std": dur_std},
            "user_vocab": {c: list(_vocab(_column(users, c))) for c in USER_CATEGORICAL},
            "item_vocab": {c: list(_vocab(_column(items, c))) for c in ITEM_CATEGORICAL},
            "tag_vocab": sorted({int(t) for t in tags if t >= 0}),
        }
        user_table, user_columns = _encode_users(users, stats)
        item_table, item_columns, item_tag = _encode_items(items, stats)
        return cls(
            user_ids=np.sort(user_ids),
            user_table=_with_unknown_row(user_table, user_columns),
            item_ids=np.sort(item_ids),
            item_table=_with_unknown_row(item_table, item_columns),
            item_tag=np.r_[0, item_tag].astype(np.int64),
            user_columns=user_columns,
            item_columns=item_columns,
            stats=stats,
        )

    # ---------------------------------------------------------------- lookups

    @staticmethod
    def _rows(known: np.ndarray, ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
                ids = ids.astype(np.int64)
            else:
                raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        if len(known) == 0:
            return np.zeros(ids.shape, dtype=np.int64)
        pos = np.searchsorted(known, ids)
        clipped = np.minimum(pos, len(known) - 1)
        found = known[clipped] == ids
        return np.where(found, clipped + 1, 0).astype(np.int64)

    def user_rows(self, user_ids: Any) -> np.ndarray:
        """Row index of each user id (any shape); 0 (the unknown row) for unknown ids."""
        return self._rows(self.user_ids, user_ids)

    def item_rows(self, item_ids: Any) -> np.ndarray:
        """Row index of each item id (any shape); 0 (the unknown row) for unknown ids."""
        return self._rows(self.item_ids, item_ids)

    def unknown_user_ids(self, user_ids: Any) -> np.ndarray:
        """The distinct ids among ``user_ids`` that have no row (sorted); empty if none."""
        ids = np.asarray(user_ids).ravel()
        return np.unique(ids[self.user_rows(ids) == 0])

    def unknown_item_ids(self, item_ids: Any) -> np.ndarray:
        """The distinct ids among ``item_ids`` that have no row (sorted); empty if none."""
        ids = np.asarray(item_ids).ravel()
        return np.unique(ids[self.item_rows(ids) == 0])

    def user_features(self, user_ids: Any) -> np.ndarray:
        """``(*shape, n_user_features)`` float32 rows of ``user_ids``."""
        return self.user_table[self.user_rows(user_ids)]

    def item_features(self, item_ids: Any) -> np.ndarray:
        """``(*shape, n_item_features)`` float32 rows of ``item_ids``."""
        return self.item_table[self.item_rows(item_ids)]

    # ---------------------------------------------------------- serialisation

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: numeric arrays and a JSON-able dict that rebuild the space."""
        arrays = {
            "user_ids": self.user_ids,
            "user_table": self.user_table,
            "item_ids": self.item_ids,
            "item_table": self.item_table,
            "item_tag": self.item_tag,
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "user_columns": list(self.user_columns),
            "item_columns": list(self.item_columns),
            "stats": self.stats,
        }
        json.dumps(meta)  # fail here, not at save time, if something is not JSON-able
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, Any], meta: dict[str, Any]) -> FeatureSpace:
        """Inverse of :meth:`to_state`; arrays may be numpy arrays or torch tensors."""
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"feature space format {version!r} is not supported (this code reads "
                f"{FORMAT_VERSION}); retrain the model or load it with a matching version"
            )

        def arr(name: str, dtype: Any) -> np.ndarray:
            value = arrays[name]
            value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            return np.ascontiguousarray(value, dtype=dtype)

        space = cls(
            user_ids=arr("user_ids", np.int64),
            user_table=arr("user_table", np.float32),
            item_ids=arr("item_ids", np.int64),
            item_table=arr("item_table", np.float32),
            item_tag=arr("item_tag", np.int64),
            user_columns=tuple(meta["user_columns"]),
            item_columns=tuple(meta["item_columns"]),
            stats=meta["stats"],
        )
        if space.user_table.shape != (len(space.user_ids) + 1, len(space.user_columns)):
            raise ValueError("feature space state is inconsistent: user table shape")
        if space.item_table.shape != (len(space.item_ids) + 1, len(space.item_columns)):
            raise ValueError("feature space state is inconsistent: item table shape")
        return space

    def equals(self, other: FeatureSpace) -> bool:
        """Same ids, tables, columns and statistics."""
        a, ma = self.to_state()
        b, mb = other.to_state()
        return ma == mb and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- encoders


def _with_unknown_row(table: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    unknown = np.zeros((1, table.shape[1]), dtype=np.float32)
    for j, name in enumerate(columns):
        if name.startswith("missing_") or name.endswith(f"={UNK}") or name == "duration_unknown":
            unknown[0, j] = 1.0
    return np.vstack([unknown, table]).astype(np.float32)


def _encode_users(users: pd.DataFrame, stats: dict[str, Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    blocks: list[np.ndarray] = []
    names: list[str] = []
    values, flags = [], []
    for name in ONEHOT_FEATURES:
        s = stats["onehot"][name]
        z, missing = _standardise(_numeric(users, name), s["mean"], s["std"])
        values.append(z)
        flags.append(missing)
    blocks += [np.stack(values, axis=1), np.stack(flags, axis=1)]
    names += list(ONEHOT_FEATURES) + [f"missing_{n}" for n in ONEHOT_FEATURES]
    for flag in ("is_live_streamer", "is_video_author"):
        blocks.append((_numeric(users, flag) == 1).astype(np.float32)[:, None])
        names.append(flag)
    s = stats["live_watch_3w_log1p"]
    live = np.log1p(np.clip(_numeric(users, "live_watch_3w"), 0, None))
    blocks.append(_standardise(live, s["mean"], s["std"])[0][:, None])
    names.append("log1p_live_watch_3w")
    for column in USER_CATEGORICAL:
        vocab = stats["user_vocab"][column]
        blocks.append(_one_hot(_codes(_column(users, column), vocab), len(vocab) + 1))
        names += [f"{column}={v}" for v in (UNK, *vocab)]
    return np.concatenate(blocks, axis=1).astype(np.float32), tuple(names)


def _encode_items(
    items: pd.DataFrame, stats: dict[str, Any]
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    duration = _numeric(items, "video_duration")
    is_live = (_numeric(items, "is_live") == 1).astype(np.float32)
    known = np.isfinite(duration) & (duration > 0)
    s = stats["duration_s_log1p"]
    log_dur = np.where(known, np.log1p(np.where(known, duration, 0.0) / 1000.0), np.nan)
    z, _ = _standardise(log_dur, s["mean"], s["std"])
    unknown = (~known & (is_live == 0)).astype(np.float32)
    blocks = [z[:, None], unknown[:, None], is_live[:, None]]
    names = ["log1p_duration_s", "duration_unknown", "is_live"]
    for column in ITEM_CATEGORICAL:
        vocab = stats["item_vocab"][column]
        blocks.append(_one_hot(_codes(_column(items, column), vocab), len(vocab) + 1))
        names += [f"{column}={v}" for v in (UNK, *vocab)]
    tag_index = {t: i + 1 for i, t in enumerate(stats["tag_vocab"])}
    tags = np.array([tag_index.get(int(t), 0) for t in first_tag(_column(items, "tag"))])
    return np.concatenate(blocks, axis=1).astype(np.float32), tuple(names), tags.astype(np.int64)
