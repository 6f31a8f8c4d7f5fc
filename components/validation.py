"""Validate a data set against the contract of :mod:`components.schema` with Great Expectations.

One expectation suite per table of the data set (``relayrec.<table>``) is generated from
``components.schema.SPECS`` (nothing here names a contract column twice): the contract's
columns exist, each has its declared kind, non-nullable columns have no nulls, keys are
unique (single and compound), values respect ``Column.min``/``max``/``min_exclusive`` and
``Column.allowed``, float columns hold no ``inf``, and the table is not empty. Checks that
span tables or rows are *derived* columns that GE then expects to be ``True``, or a small
derived table:

- referential integrity (``TableSpec.foreign_keys``): ``_fk_<column>`` is ``True`` where the
  value is null or appears in the referenced column. A ``value_set`` of hundreds of
  thousands of ids inside an expectation would be stored in the suite and rendered into Data
  Docs; a boolean column keeps both small, and ``isin`` on a hash table is fast;
- list columns (``list_int``/``list_float``): ``_kind_<column>`` checks each row holds a 1-d
  array of the right element kind, ``_list_lengths`` that the lists of a row are non-empty
  and of equal length (pools: item_ids, match_score, pre_score, stage);
- exactly ``meta.slate_size`` impressions per request: the derived table
  ``impressions_per_request`` (every request of ``requests`` and ``impressions``) with its
  own suite; its failures are reported against ``impressions.request_id``.

A few distribution checks (:data:`DISTRIBUTION_CHECKS`: click rate strictly inside (0, 1),
mean propensity in (0, 1], play time not all zero) catch a generator or importer that
produced a degenerate but well-typed table.

Reading happens outside GE: a table listed in ``meta.json`` that is missing or cannot be read
is a :class:`Failure` with rule ``"readable"`` (references to it are then not checked, and
``summary.json`` says so in ``notes``). :func:`validate_dataset` never raises on bad data; it
raises :class:`components.io.DataError` only when there is no data set (no ``meta.json``).
Great Expectations (about 5 s to import) is imported inside the functions that run it, so
importing this module is cheap.

Rules used in :attr:`Failure.rule`: ``readable``, ``tables``, ``non_empty``,
``column_exists``, ``dtype``, ``not_null``, ``unique``, ``range``, ``allowed``, ``finite``,
``foreign_key``, ``slate_size``, ``list_lengths``, ``distribution``, ``error`` (GE or a derived
check could not evaluate something that no other failure explains). A compound key's
failure names its columns joined by commas (``request_id,position``).

Speed: GE spends ~10 ms per expectation whatever the data size, plus one pandas hash of each
whole batch (its batch id), so related rules share an expectation where GE allows it (one
column-set check per table; one ``between`` per numeric column for bounds and finiteness),
suites are rewritten only when their planned expectations change, and Data Docs are built
once per run for this run's results.

Notes on GE 1.24.1 with pandas 3:

- pandas 3 reads string columns as ``StringDtype(na_value=nan)`` (``str``); GE's
  ``expect_column_values_to_be_in_type_list`` matches no type name against it (``"str"``,
  ``"string"``, ``"StringDtype"``, ``"object"`` all fail). String columns are therefore
  handed to GE as ``object``, so that its per-value ``isinstance(x, str)`` path runs.
- Parquet list columns arrive as ``object`` columns of ``numpy.ndarray``; GE has no type name
  for ``ndarray`` (hence ``_kind_<column>``), and hashing them for the batch id turns every
  array into a string (~20 s for 300k pools rows): GE sees a list column as its lengths.
- An expectation on a missing or mistyped column fails with an exception inside its result;
  such failures are folded into the ``column_exists`` or ``dtype`` failure of that column.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from components.io import DataError, DatasetMeta, read_meta, read_table
from components.schema import SPECS, Column, TableSpec

logger = logging.getLogger(__name__)

__all__ = [
    "DISTRIBUTION_CHECKS",
    "Failure",
    "ValidationReport",
    "validate_dataset",
]

DATASOURCE = "relayrec"
SUITE_PREFIX = "relayrec."
PER_REQUEST_TABLE = "impressions_per_request"
VALIDATION_RESULTS_LIMIT = 50
"""Data Docs index lists (and loads) at most this many stored validation results."""

_FLOAT_MAX = sys.float_info.max
_INT_TYPES = (
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "Int8Dtype",
    "Int16Dtype",
    "Int32Dtype",
    "Int64Dtype",
    "UInt8Dtype",
    "UInt16Dtype",
    "UInt32Dtype",
    "UInt64Dtype",
)
_FLOAT_TYPES = ("float16", "float32", "float64", "Float32Dtype", "Float64Dtype")


@dataclass(frozen=True)
class DistributionCheck:
    """A table-level statistic of one column that a sane data set keeps inside bounds."""

    table: str
    column: str
    statistic: str  # "mean" or "max"
    min_value: float | None
    max_value: float | None
    strict_min: bool = False
    strict_max: bool = False
    why: str = ""


DISTRIBUTION_CHECKS: tuple[DistributionCheck, ...] = (
    DistributionCheck(
        "impressions", "is_click", "mean", 0, 1, True, True, "click rate strictly inside (0, 1)"
    ),
    DistributionCheck(
        "impressions", "propensity", "mean", 0, 1, True, False, "mean propensity in (0, 1]"
    ),
    DistributionCheck(
        "impressions", "play_time_ms", "max", 0, None, True, False, "play time not all zero"
    ),
)
for _d in DISTRIBUTION_CHECKS:  # fail at import, not at run time, if the contract drifts
    SPECS[_d.table].column(_d.column)


@dataclass(frozen=True)
class Failure:
    """One broken rule: where (table, column), which rule, how many rows, and a sentence."""

    table: str
    column: str | None
    rule: str
    bad_rows: int | None
    detail: str

    def format(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        if self.bad_rows is None:
            return f"{where}: {self.rule} - {self.detail}"
        rows = "bad row" if self.bad_rows == 1 else "bad rows"
        return f"{where}: {self.rule} ({self.bad_rows} {rows}) - {self.detail}"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`validate_dataset`."""

    success: bool
    failures: tuple[Failure, ...]
    n_expectations: int
    n_rows: dict[str, int]
    summary_path: Path
    docs_index: Path | None

    def format_failures(self) -> str:
        """One line per failure: ``table.column: rule (N bad rows) - detail``.

        The count is left out where a rule has no row count (a missing column, an unreadable
        table, a distribution statistic).
        """
        if not self.failures:
            return "no failures"
        return "\n".join(f.format() for f in self.failures)


# --------------------------------------------------------------------------------------------
# Planning: which expectations a table gets (pure Python, no GE import)


@dataclass
class _Check:
    """An expectation to run: GE class name, its kwargs and how to report a failure."""

    table: str  # contract table a failure is reported against
    column: str | None
    rule: str
    expectation: str
    kwargs: dict[str, Any]
    description: str | None = None
    detail: str | None = None  # a precomputed sentence (derived checks)


@dataclass
class _Batch:
    """One GE batch: a data frame (the table plus derived columns) and its checks."""

    name: str  # asset / suite name suffix
    df: pd.DataFrame
    checks: list[_Check] = field(default_factory=list)
    table: str = ""  # contract table failures are reported against (default: name)

    def __post_init__(self) -> None:
        self.table = self.table or self.name


def _interval(c: Column) -> str:
    lo = "(" if c.min_exclusive else "["
    low = "-inf" if c.min is None else f"{c.min:g}"
    high = "inf)" if c.max is None else f"{c.max:g}]"
    return f"{lo}{low}, {high}"


def _type_list(c: Column) -> list[str] | None:
    if c.kind == "int":
        return list(_INT_TYPES + _FLOAT_TYPES) if c.nullable else list(_INT_TYPES)
    if c.kind == "float":
        return list(_FLOAT_TYPES + _INT_TYPES)
    if c.kind == "str":
        return ["str"]
    return None  # lists: derived check


def _column_checks(spec: TableSpec) -> list[_Check]:
    """The per-column expectations of ``spec`` (independent of the data).

    GE costs about 10 ms per expectation whatever the data size, so related rules share one
    expectation where GE allows it: one column-set check per table, and one ``between``
    per numeric column for both its bounds and finiteness (float columns).
    """
    t = spec.name
    checks: list[_Check] = [
        _Check(t, None, "non_empty", "ExpectTableRowCountToBeBetween", {"min_value": 1}),
        _Check(
            t,
            None,
            "column_exists",
            "ExpectTableColumnsToMatchSet",
            {"column_set": list(spec.column_names), "exact_match": False},
            description=f"the {len(spec.columns)} columns of the contract are present",
        ),
    ]
    for c in spec.columns:
        col = {"column": c.name}
        types = _type_list(c)
        if types is not None:
            checks.append(
                _Check(
                    t,
                    c.name,
                    "dtype",
                    "ExpectColumnValuesToBeInTypeList",
                    {**col, "type_list": types},
                    description=f"`{c.name}` is of kind {c.kind}",
                )
            )
        if not c.nullable:
            checks.append(_Check(t, c.name, "not_null", "ExpectColumnValuesToNotBeNull", col))
        bounded = c.min is not None or c.max is not None
        if bounded or c.kind == "float":
            low, high = c.min, c.max
            if c.kind == "float":  # a finite float is inside [-max, max]
                low = -_FLOAT_MAX if low is None else low
                high = _FLOAT_MAX if high is None else high
            checks.append(
                _Check(
                    t,
                    c.name,
                    "range" if bounded else "finite",
                    "ExpectColumnValuesToBeBetween",
                    {**col, "min_value": low, "max_value": high, "strict_min": c.min_exclusive},
                    description=(
                        f"`{c.name}` in {_interval(c)}" + (", finite" if c.kind == "float" else "")
                        if bounded
                        else f"`{c.name}` holds no infinite values"
                    ),
                )
            )
        if c.allowed is not None:
            checks.append(
                _Check(
                    t, c.name, "allowed", "ExpectColumnValuesToBeInSet",
                    {**col, "value_set": list(c.allowed)},
                )
            )  # fmt: skip
    unique_cols = [c.name for c in spec.columns if c.unique]
    if len(spec.key) == 1 and spec.key[0] not in unique_cols:
        unique_cols.append(spec.key[0])
    for name in unique_cols:
        checks.append(_Check(t, name, "unique", "ExpectColumnValuesToBeUnique", {"column": name}))
    if len(spec.key) > 1:
        checks.append(
            _Check(
                t,
                ",".join(spec.key),
                "unique",
                "ExpectCompoundColumnsToBeUnique",
                {"column_list": list(spec.key)},
            )
        )
    for d in DISTRIBUTION_CHECKS:
        if d.table != t:
            continue
        checks.append(
            _Check(
                t,
                d.column,
                "distribution",
                f"ExpectColumn{d.statistic.capitalize()}ToBeBetween",
                {
                    "column": d.column,
                    "min_value": d.min_value,
                    "max_value": d.max_value,
                    "strict_min": d.strict_min,
                    "strict_max": d.strict_max,
                },
                description=d.why,
            )
        )
    return checks


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _list_kind_ok(values: Iterable[Any], kind: str) -> np.ndarray:
    want = "iu" if kind == "list_int" else "iuf"

    def ok(v: Any) -> bool:
        if _is_null(v):
            return True
        if isinstance(v, np.ndarray):
            return v.ndim == 1 and (v.size == 0 or v.dtype.kind in want)
        if isinstance(v, list | tuple):
            return all(
                isinstance(x, int | np.integer)
                or (want == "iuf" and isinstance(x, float | np.floating))
                for x in v
            )
        return False

    return np.fromiter((ok(v) for v in values), dtype=bool)


def _list_len(v: Any) -> int:
    if _is_null(v):
        return -1
    try:
        return len(v)
    except TypeError:
        return -2


def _examples(values: Iterable[Any], n: int = 5) -> str:
    out = []
    for v in values:
        if len(out) >= n:
            break
        out.append(v.item() if isinstance(v, np.generic) else v)
    return ", ".join(map(repr, out))


def _derived_checks(
    spec: TableSpec,
    df: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    meta: DatasetMeta,
    notes: list[str],
) -> list[_Check]:
    """Add derived ``_...`` columns to ``df`` and return the checks that read them."""
    t = spec.name
    checks: list[_Check] = []

    def bool_check(col: str, ok: Any, column: str, rule: str, description: str, detail: str):
        df[col] = np.asarray(ok, dtype=bool)
        checks.append(
            _Check(
                t,
                column,
                rule,
                "ExpectColumnValuesToBeInSet",
                {"column": col, "value_set": [True]},
                description=description,  # stored in the suite: must not depend on the data
                detail=detail,
            )
        )

    for fk in spec.foreign_keys:
        if fk.column not in df.columns:
            continue  # reported as column_exists
        ref = frames.get(fk.ref_table)
        target = f"{fk.ref_table}.{fk.ref_column}"
        if ref is None or fk.ref_column not in ref.columns:
            why = "not in the data set" if fk.ref_table not in meta.tables else "unusable"
            notes.append(f"{t}.{fk.column} -> {target} not checked: {fk.ref_table} {why}")
            continue
        values = df[fk.column]
        ok = values.isin(ref[fk.ref_column].dropna().unique()) | values.isna()
        bad = values[~ok]
        description = f"`{fk.column}` appears in {target}"
        detail = f"{len(bad)} values not found in {target} (e.g. {_examples(bad.unique())})"
        bool_check(f"_fk_{fk.column}", ok, fk.column, "foreign_key", description, detail)

    list_cols = [c for c in spec.columns if c.kind.startswith("list") and c.name in df.columns]
    lengths = []
    for c in list_cols:
        values = df[c.name].to_numpy(dtype=object)
        ok = _list_kind_ok(values, c.kind)
        description = f"`{c.name}` holds arrays of kind {c.kind}"
        found = {str(getattr(v, "dtype", type(v).__name__)) for v in values[~ok][:100]}
        detail = f"{int((~ok).sum())} rows are not arrays of kind {c.kind} (found {found})"
        bool_check(f"_kind_{c.name}", ok, c.name, "dtype", description, detail)
        lengths.append(np.fromiter(map(_list_len, values), np.int64, len(values)))
        # GE fingerprints every batch with pandas' hash of all its columns, which turns each
        # array into a string (~20 s for 300k pools rows): GE sees a list column as its
        # lengths (NaN where null), which is all that not_null needs.
        df[c.name] = np.where(lengths[-1] == -1, np.nan, lengths[-1]).astype(np.float64)
    if list_cols:
        ln = np.stack(lengths)  # -1: null (not_null reports it), -2: not a list (dtype does)
        lo = np.where(ln == -1, np.iinfo(np.int64).max, ln).min(axis=0)
        hi = ln.max(axis=0)
        ok = (lo > 0) & ((lo == hi) | (hi == -1))  # all null: lo is max int, hi is -1
        names = ",".join(c.name for c in list_cols)
        description = f"lists {names} of a row are non-empty and of equal length"
        bad = np.flatnonzero(~ok)[:3]
        eg = "; ".join(f"row {i}: lengths {ln[:, i].tolist()}" for i in bad)
        detail = f"{int((~ok).sum())} rows with empty lists or lists of unequal length ({eg})"
        bool_check("_list_lengths", ok, names, "list_lengths", description, detail)
    return checks


def _per_request_batch(frames: dict[str, pd.DataFrame], meta: DatasetMeta) -> _Batch | None:
    imp = frames.get("impressions")
    k = meta.slate_size
    if k is None or imp is None or "request_id" not in imp.columns:
        return None
    counts = imp["request_id"].value_counts(dropna=True)
    index = counts.index
    req = frames.get("requests")
    if req is not None and "request_id" in req.columns:
        index = index.union(pd.Index(req["request_id"].dropna().unique()), sort=False)
    n = counts.reindex(index, fill_value=0).to_numpy()
    table = pd.DataFrame({"request_id": np.asarray(index), "n_impressions": n})
    bad = table[table["n_impressions"] != k]
    eg = ", ".join(f"request {r!r}: {c}" for r, c in bad.head(5).itertuples(index=False))
    detail = f"{len(bad)} requests without exactly {k} impressions (meta.slate_size; {eg})"
    check = _Check(
        "impressions",
        "request_id",
        "slate_size",
        "ExpectColumnValuesToBeBetween",
        {"column": "n_impressions", "min_value": k, "max_value": k},
        description=f"every request has exactly {k} impressions",
        detail=detail,
    )
    return _Batch(PER_REQUEST_TABLE, table, [check], table="impressions")


def _for_ge(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """A shallow copy of ``df`` in which GE can type-check every ``str`` column.

    GE 1.24 matches no type name against pandas 3's ``str`` dtype, but checks ``object``
    columns value by value (``isinstance(x, str)``); categoricals and all-null columns of a
    nullable string column go the same way.
    """
    out = df.copy(deep=False)
    for c in spec.columns:
        if c.kind != "str" or c.name not in df.columns:
            continue
        s = df[c.name]
        if isinstance(s.dtype, pd.StringDtype | pd.CategoricalDtype) or (
            c.nullable and s.dtype != object and s.isna().all()
        ):
            out[c.name] = s.astype(object)
    return out


# --------------------------------------------------------------------------------------------
# Running GE


def _context(gx_dir: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", context_root_dir=str(gx_dir))
    changed = False
    bars = context.variables.progress_bars
    if bars is None or bars.get("globally", True):
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        changed = True
    sites = context.variables.data_docs_sites or {}
    site = sites.get("local_site")
    if site is not None:
        index = site.setdefault("site_index_builder", {"class_name": "DefaultSiteIndexBuilder"})
        if index.get("validation_results_limit") != VALIDATION_RESULTS_LIMIT:
            index["validation_results_limit"] = VALIDATION_RESULTS_LIMIT
            index["show_cta_footer"] = False
            site["show_how_to_buttons"] = False
            context.variables.data_docs_sites = sites
            changed = True
    if changed:
        context.variables.save()
        context = gx.get_context(mode="file", context_root_dir=str(gx_dir))
    return context


def _batch_definition(context: Any, name: str) -> Any:
    try:
        ds = context.data_sources.get(DATASOURCE)
    except Exception:  # noqa: BLE001 - GE raises several kinds of "not found"
        ds = context.data_sources.add_pandas(DATASOURCE)
    asset = ds.get_asset(name) if name in ds.get_asset_names() else ds.add_dataframe_asset(name)
    try:
        return asset.get_batch_definition("whole")
    except KeyError:
        return asset.add_batch_definition_whole_dataframe("whole")


def _fingerprint(batch: _Batch) -> str:
    plan = [(c.expectation, c.kwargs, c.description) for c in batch.checks]
    blob = json.dumps(plan, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _validation_definition(context: Any, batch: _Batch, force: bool = False) -> tuple[Any, bool]:
    """Add or update the suite and validation definition of ``batch``; True if (re)written.

    GE's own ``suites.add_or_update`` compares every new expectation with every stored one
    (quadratic, about 3 s for this contract), and ``validation_definitions.add_or_update``
    and ``checkpoints.add_or_update`` each repeat it. A fingerprint of the planned
    expectations in the suite's meta lets an unchanged suite be reused as it is; a changed
    one is replaced together with its validation definition.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.exceptions import DataContextError

    name = SUITE_PREFIX + batch.name
    fingerprint = _fingerprint(batch)
    try:
        suite = context.suites.get(name)
    except DataContextError:
        suite = None
    if not force and suite is not None and suite.meta.get("relayrec_fingerprint") == fingerprint:
        try:
            return context.validation_definitions.get(name), False
        except DataContextError:
            pass
    else:
        expectations = []
        for i, check in enumerate(batch.checks):
            extra = {"description": check.description} if check.description else {}
            expectations.append(
                getattr(gxe, check.expectation)(
                    **check.kwargs, meta={"relayrec_check": i}, catch_exceptions=True, **extra
                )
            )
        fresh = gx.ExpectationSuite(
            name,
            expectations=expectations,
            meta={"relayrec_fingerprint": fingerprint, "table": batch.name},
        )
        with contextlib.suppress(DataContextError):
            context.validation_definitions.delete(name)
        if suite is not None:
            context.suites.delete(name)
        suite = context.suites.add(fresh)
    with contextlib.suppress(DataContextError):
        context.validation_definitions.delete(name)
    vd = gx.ValidationDefinition(
        name=name, data=_batch_definition(context, batch.name), suite=suite
    )
    return context.validation_definitions.add(vd), True


def _run_batches(
    gx_dir: Path, batches: list[_Batch]
) -> tuple[list[tuple[_Batch, list[Any]]], Path | None, list[Failure]]:
    """Run each batch's validation definition, then build Data Docs once for all of them.

    A Checkpoint takes one set of batch parameters for all its validation definitions, but
    every table is its own data frame; so the validation definitions run one by one (each
    stores its result) and ``build_data_docs`` renders exactly this run's results, what
    ``UpdateDataDocsAction`` would do per checkpoint, with one index build instead of nine.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = _context(gx_dir)
    run_time = datetime.now(UTC)
    run_id = RunIdentifier(run_name=f"relayrec-{run_time:%Y%m%dT%H%M%S%f}", run_time=run_time)
    outcomes: list[tuple[_Batch, list[Any]]] = []
    errors: list[Failure] = []
    resources: list[Any] = []
    result_format = {"result_format": "BASIC", "partial_unexpected_count": 10}
    for batch in batches:
        result = None
        for force in (False, True):  # a second try rewrites a stale suite / definition
            try:
                vd, changed = _validation_definition(context, batch, force=force)
                result = vd.run(
                    batch_parameters={"dataframe": batch.df},
                    result_format=result_format,
                    run_id=run_id,
                )
                break
            except Exception as exc:  # noqa: BLE001 - never raise on bad data
                logger.debug("validation of %s failed", batch.name, exc_info=True)
                error = exc
        if result is None:
            errors.append(Failure(batch.table, None, "error", None, f"GE run failed: {error}"))
            continue
        suite_id = ExpectationSuiteIdentifier(name=vd.suite.name)
        resources.append(  # the key GE stored the result under
            ValidationResultIdentifier(
                expectation_suite_identifier=suite_id,
                run_id=run_id,
                batch_identifier=result.batch_id,
            )
        )
        if changed:
            resources.append(suite_id)
        outcomes.append((batch, list(result.results)))
    docs_index: Path | None = None
    try:
        urls = context.build_data_docs(resource_identifiers=resources)
        url = urls.get("local_site")
        if url:
            docs_index = Path(url2pathname(urlparse(url).path))
    except Exception:  # noqa: BLE001 - docs are a by-product; keep the verdict
        logger.warning("building Data Docs failed", exc_info=True)
    return outcomes, docs_index, errors


# --------------------------------------------------------------------------------------------
# Turning GE results into failures


def _exception_message(evr: Any) -> str | None:
    info = evr.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for v in info.values():
        if isinstance(v, dict) and v.get("raised_exception"):
            return str(v.get("exception_message"))
    return None


def _n_infinite(df: pd.DataFrame, column: str | None) -> int:
    if column not in df.columns or df[column].dtype.kind != "f":
        return 0
    try:
        return int(np.isinf(df[column].to_numpy(dtype=float, na_value=np.nan)).sum())
    except (TypeError, ValueError):
        return 0


def _failures(check: _Check, evr: Any, df: pd.DataFrame) -> list[tuple[Failure, bool]]:
    """The failures for a failed expectation, each flagged if it came from an exception."""
    error = _exception_message(evr)
    if error is not None:
        msg = error.splitlines()[0] if error else "unknown error"
        failure = Failure(check.table, check.column, check.rule, None, f"not evaluated: {msg}")
        return [(failure, True)]
    res = dict(evr.result or {})
    bad = res.get("unexpected_count")
    n = res.get("element_count")
    examples = _examples(res.get("partial_unexpected_list") or [])
    eg = f" (e.g. {examples})" if examples else ""
    rule, t, col = check.rule, check.table, check.column

    def one(detail: str, bad_rows: int | None = bad) -> list[tuple[Failure, bool]]:
        return [(Failure(t, col, rule, bad_rows, detail), False)]

    if check.detail:
        return one(check.detail)
    if rule == "non_empty":
        return one(f"table has {res.get('observed_value')} rows", None)
    if rule == "column_exists":
        mismatched = (res.get("details") or {}).get("mismatched") or {}
        missing = set(mismatched.get("missing") or ())
        missing = [c for c in check.kwargs["column_set"] if c in missing or c not in df.columns]
        return [(Failure(t, c, rule, None, f"column missing from {t}"), False) for c in missing]
    if rule == "dtype":
        kind = SPECS[t].column(col or "").kind
        dtype = df[col].dtype if col in df.columns else "?"
        detail = f"expected kind {kind}, found dtype {dtype}"
        return one(detail + (f"; {bad} values of another type{eg}" if bad else ""))
    if rule == "not_null":
        return one(f"{bad} of {n} values are null")
    if rule == "unique":
        return one(f"{bad} rows share a duplicated key{eg}")
    if rule in ("range", "finite"):
        n_inf = _n_infinite(df, col)
        out = []
        if n_inf:
            out.append((Failure(t, col, "finite", n_inf, f"{n_inf} infinite values"), False))
        if rule == "range" and (bad is None or bad > n_inf):
            c = SPECS[t].column(col or "")
            rest = None if bad is None else bad - n_inf
            detail = f"{rest} of {n} values outside {_interval(c)}{eg}"
            out.append((Failure(t, col, "range", rest, detail), False))
        return out or one(f"{bad} values out of bounds{eg}")
    if rule == "allowed":
        return one(f"{bad} values not in {check.kwargs['value_set']}{eg}")
    if rule == "distribution":
        return one(f"{check.description}: observed {res.get('observed_value')!r}", None)
    return one(f"{check.expectation} failed{eg}")


def _collect(
    outcomes: list[tuple[_Batch, list[Any]]], raw: dict[str, pd.DataFrame]
) -> list[Failure]:
    found: list[tuple[Failure, bool]] = []
    for batch, evrs in outcomes:
        failed = {}
        for evr in evrs:
            if not evr.success:
                failed[int((evr.expectation_config.meta or {})["relayrec_check"])] = evr
        for i in sorted(failed):  # in suite order (GE lists errored expectations first)
            check = batch.checks[i]
            found += _failures(check, failed[i], raw.get(check.table, batch.df))
    explained = {(f.table, f.column) for f, _ in found if f.rule in ("column_exists", "dtype")}
    empty = {f.table for f, _ in found if f.rule == "non_empty"}
    failures = []
    for f, from_error in found:
        if from_error and (f.table, f.column) in explained:
            continue  # e.g. a range check on a missing or mistyped column
        if f.table in empty and (from_error or f.rule == "distribution"):
            continue
        if from_error:
            f = Failure(f.table, f.column, "error", None, f"{f.rule} {f.detail}")
        failures.append(f)
    return failures


# --------------------------------------------------------------------------------------------
# Entry point


def validate_dataset(
    data_dir: str | Path,
    out_dir: str | Path = "artifacts/validation",
    gx_dir: str | Path | None = None,
) -> ValidationReport:
    """Validate the data set in ``data_dir``; write Data Docs and ``<out_dir>/summary.json``.

    ``gx_dir`` is the Great Expectations file context (default ``<out_dir>/gx``); the pandas
    data source ``relayrec``, one data asset, suite and validation definition per table are
    added or updated there, so repeated runs in the same directory work, and Data Docs are
    written to ``<gx_dir>/uncommitted/data_docs/local_site/index.html``. Never raises on bad
    data; raises :class:`DataError` only when ``data_dir`` holds no data set (no readable
    ``meta.json``).
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)  # DataError when there is no data set at all
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gx_dir = Path(gx_dir) if gx_dir is not None else out_dir / "gx"
    failures: list[Failure] = []
    notes: list[str] = []

    frames: dict[str, pd.DataFrame] = {}
    for name in meta.tables:
        if name not in SPECS:
            notes.append(f"table {name!r} is not part of the contract; not validated")
            continue
        try:
            frames[name] = read_table(data_dir, name)
        except DataError as exc:
            failures.append(Failure(name, None, "readable", None, str(exc)))
    if not meta.tables:
        failures.append(Failure("*", None, "tables", None, "meta.json lists no tables"))

    batches: list[_Batch] = []
    for name, df in frames.items():
        spec = SPECS[name]
        work = _for_ge(df, spec)  # a copy: derived columns must not leak into ``frames``
        checks = _column_checks(spec)
        try:
            checks += _derived_checks(spec, work, frames, meta, notes)
        except Exception as exc:  # noqa: BLE001 - never raise on bad data
            logger.debug("derived checks of %s failed", name, exc_info=True)
            failures.append(Failure(name, None, "error", None, f"derived checks failed: {exc}"))
        batches.append(_Batch(name, work, checks))
    try:
        per_request = _per_request_batch(frames, meta)
    except Exception as exc:  # noqa: BLE001
        per_request = None
        failures.append(Failure("impressions", "request_id", "error", None, f"{exc}"))
    if per_request is not None:
        batches.append(per_request)
    elif meta.slate_size is None and "impressions" in frames:
        notes.append("meta.slate_size unknown: impressions per request not checked")

    docs_index: Path | None = None
    n_expectations = sum(len(b.checks) for b in batches)
    if batches:
        outcomes, docs_index, errors = _run_batches(gx_dir, batches)
        failures += errors + _collect(outcomes, frames)

    n_rows = {name: len(df) for name, df in frames.items()}
    success = not failures
    per_table = {
        name: {
            "rows": n_rows.get(name),
            "expectations": sum(len(b.checks) for b in batches if b.table == name),
            "failures": sum(f.table == name for f in failures),
        }
        for name in meta.tables
    }
    summary_path = out_dir / "summary.json"
    summary = {
        "success": success,
        "data_dir": str(data_dir),
        "source": meta.source,
        "slate_size": meta.slate_size,
        "n_expectations": n_expectations,
        "n_rows": n_rows,
        "tables": per_table,
        "n_failures": len(failures),
        "failures": [asdict(f) for f in failures],
        "skipped": dict(meta.skipped),
        "notes": notes,
        "docs_index": str(docs_index) if docs_index else None,
        "gx_dir": str(gx_dir),
        "seconds": round(time.perf_counter() - started, 3),
    }
    summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return ValidationReport(
        success=success,
        failures=tuple(failures),
        n_expectations=n_expectations,
        n_rows=n_rows,
        summary_path=summary_path,
        docs_index=docs_index,
    )
