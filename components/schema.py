"""The data contract: every source becomes these Parquet tables.

One :class:`TableSpec` per table lists the minimum columns, their kind and the rules a valid
table obeys. The world generator, the KuaiRand importer, the validation suites and the
training code all read this module, so a column is named in exactly one place.

Kinds are deliberately coarse (``int``, ``float``, ``str``, ``list_int``, ``list_float``):
Parquet and pandas may widen or narrow a dtype on the way, and a consumer only needs to know
what kind of value to expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["int", "float", "str", "list_int", "list_float"]

FEEDBACK_FLAGS: tuple[str, ...] = (
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
)
"""Binary feedback aspects of one impression (KuaiRand's names)."""

ONEHOT_FEATURES: tuple[str, ...] = tuple(f"onehot_feat{i}" for i in range(18))

TABLE_NAMES: tuple[str, ...] = (
    "users",
    "items",
    "sessions",
    "requests",
    "impressions",
    "non_impressions",
    "pools",
    "groups",
    "truth",
)


@dataclass(frozen=True)
class Column:
    """One column of a table and the rules its values obey.

    ``min``/``max`` are inclusive bounds unless ``min_exclusive`` is set; ``allowed`` is a
    closed set of values; ``unique`` marks a key; ``nullable`` allows missing values.
    """

    name: str
    kind: Kind
    nullable: bool = False
    unique: bool = False
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    allowed: tuple[object, ...] | None = None
    doc: str = ""


@dataclass(frozen=True)
class ForeignKey:
    """``column`` of this table must appear in ``ref_table.ref_column``."""

    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class TableSpec:
    """A table of the contract: its columns, key and references to other tables."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...] = field(default_factory=tuple)
    doc: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")


def _flag(name: str, doc: str = "") -> Column:
    return Column(name, "int", allowed=(0, 1), doc=doc)


USERS = TableSpec(
    name="users",
    doc="One row per user: KuaiRand user features plus trailing live watch time.",
    key=("user_id",),
    columns=(
        Column("user_id", "int", unique=True, min=0),
        Column("user_active_degree", "str"),
        _flag("is_live_streamer"),
        _flag("is_video_author"),
        Column("follow_user_num_range", "str"),
        Column("register_days_range", "str"),
        *(Column(n, "float", nullable=True) for n in ONEHOT_FEATURES),
        Column(
            "live_watch_3w",
            "float",
            min=0,
            doc="seconds of live streams watched in the trailing 3 weeks",
        ),
    ),
)

ITEMS = TableSpec(
    name="items",
    doc="One row per video or live stream.",
    key=("item_id",),
    columns=(
        Column("item_id", "int", unique=True, min=0),
        _flag("is_live"),
        Column("author_id", "int", min=0),
        Column("video_duration", "float", min=0, doc="ms; 0 for live streams"),
        Column("video_type", "str"),
        Column("music_type", "float", nullable=True),
        Column("tag", "str", nullable=True),
    ),
)

SESSIONS = TableSpec(
    name="sessions",
    doc="One row per session (a user's visit that ends when the user leaves).",
    key=("session_id",),
    foreign_keys=(ForeignKey("user_id", "users", "user_id"),),
    columns=(
        Column("session_id", "int", unique=True, min=0),
        Column("user_id", "int", min=0),
        Column("day", "int", min=0),
        Column("start_hour", "int", min=0, max=23),
        Column("n_requests", "int", min=1),
        _flag("returned_next_day", doc="the user came back the next day"),
    ),
)

REQUESTS = TableSpec(
    name="requests",
    doc="One row per request of a session: funnel quotas, compute cost and the live slot.",
    key=("request_id",),
    foreign_keys=(
        ForeignKey("user_id", "users", "user_id"),
        ForeignKey("session_id", "sessions", "session_id"),
    ),
    columns=(
        Column("request_id", "int", unique=True, min=0),
        Column("session_id", "int", min=0),
        Column("user_id", "int", min=0),
        Column("day", "int", min=0),
        Column("hour", "int", min=0, max=23),
        Column("position_in_session", "int", min=0),
        Column("traffic", "int", min=1, doc="requests in the same day and hour"),
        Column("q_match", "int", min=1),
        Column("q_pre", "int", min=1),
        Column("quota_propensity", "float", min=0, max=1, min_exclusive=True),
        Column("compute_cost", "float", min=0),
        _flag("live_injected"),
        Column("live_item_id", "int", nullable=True, min=0),
        Column("live_propensity", "float", min=0, max=1, min_exclusive=True),
        Column("live_play_time_ms", "float", min=0),
        Column("app_time_ms", "float", min=0),
        _flag("session_continues"),
        _flag("is_random", doc="uniformly random exposure slice"),
    ),
)

IMPRESSIONS = TableSpec(
    name="impressions",
    doc="One row per shown item with the logging propensity and the user's feedback.",
    key=("request_id", "position"),
    foreign_keys=(
        ForeignKey("request_id", "requests", "request_id"),
        ForeignKey("item_id", "items", "item_id"),
        ForeignKey("user_id", "users", "user_id"),
    ),
    columns=(
        Column("request_id", "int", min=0),
        Column("user_id", "int", min=0),
        Column("item_id", "int", min=0),
        Column("position", "int", min=0),
        Column(
            "propensity",
            "float",
            min=0,
            max=1,
            min_exclusive=True,
            doc="logging policy's probability of this item at this position",
        ),
        *(_flag(n) for n in FEEDBACK_FLAGS),
        Column("play_time_ms", "float", min=0),
        Column("duration_ms", "float", min=0),
    ),
)

NON_IMPRESSIONS = TableSpec(
    name="non_impressions",
    doc="Sampled candidates that were ranked but not shown; no feedback.",
    key=("request_id", "item_id"),
    foreign_keys=(
        ForeignKey("request_id", "requests", "request_id"),
        ForeignKey("item_id", "items", "item_id"),
    ),
    columns=(
        Column("request_id", "int", min=0),
        Column("item_id", "int", min=0),
        Column("logging_score", "float"),
        Column("rank", "int", min=0, doc="position in the logging ranking"),
    ),
)

POOLS = TableSpec(
    name="pools",
    doc=(
        "One row per request: the recall pool and the logged stage scores, enough to "
        "rebuild every stage's observation (UNEX-RL's cascading information chain)."
    ),
    key=("request_id",),
    foreign_keys=(ForeignKey("request_id", "requests", "request_id"),),
    columns=(
        Column("request_id", "int", unique=True, min=0),
        Column("item_ids", "list_int"),
        Column("match_score", "list_float", doc="logged matching score per pool item"),
        Column("pre_score", "list_float", doc="logged pre-ranking score per pool item"),
        Column(
            "stage",
            "list_int",
            doc="furthest stage reached: 0 recall, 1 matched, 2 pre-ranked, 3 shown",
        ),
    ),
)

GROUPS = TableSpec(
    name="groups",
    doc="Output of user-group reassignment (SL-MGAC MG-SD).",
    key=("user_id",),
    foreign_keys=(ForeignKey("user_id", "users", "user_id"),),
    columns=(
        Column("user_id", "int", unique=True, min=0),
        Column("group", "int", min=0),
        Column("previous_group", "int", min=-1, doc="-1 when the user had no group"),
        Column("run_id", "str"),
    ),
)

TRUTH = TableSpec(
    name="truth",
    doc=(
        "World data only: the true feedback probabilities of every impression and sampled "
        "non-impression at the moment it was logged (Bayes-optimal predictions). Never a "
        "training input; used to score simulators and estimators against the truth."
    ),
    key=("request_id", "item_id"),
    foreign_keys=(
        ForeignKey("request_id", "requests", "request_id"),
        ForeignKey("item_id", "items", "item_id"),
    ),
    columns=(
        Column("request_id", "int", min=0),
        Column("item_id", "int", min=0),
        _flag("shown"),
        Column("affinity", "float"),
        *(
            Column(f"p_{a}", "float", min=0, max=1)
            for a in ("click", "like", "follow", "comment", "forward", "hate", "long_view")
        ),
        Column("expected_play_ms", "float", min=0),
    ),
)

SPECS: dict[str, TableSpec] = {
    s.name: s
    for s in (
        USERS,
        ITEMS,
        SESSIONS,
        REQUESTS,
        IMPRESSIONS,
        NON_IMPRESSIONS,
        POOLS,
        GROUPS,
        TRUTH,
    )
}
