"""Reading and writing a data set: the Parquet tables of :mod:`components.schema` plus
``meta.json`` (where the data came from, which tables it lacks and why).

A data set is one directory: ``<dir>/<table>.parquet`` for each table the source provides and
``<dir>/meta.json``. Writes go to a temporary file first and are renamed into place, so an
interrupted write never leaves a half-written table behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.schema import SPECS

META_FILE = "meta.json"


class DataError(ValueError):
    """A data set is missing, unreadable or does not follow the contract."""


@dataclass(frozen=True)
class DatasetMeta:
    """What a data set is: its source, how it was made and what it lacks.

    ``skipped`` maps a table name to the reason the source cannot provide it; downstream
    steps train and gate only what the present tables support.
    """

    source: str
    seed: int | None = None
    preset: str | None = None
    slate_size: int | None = None
    tables: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        return cls(
            source=d["source"],
            seed=d.get("seed"),
            preset=d.get("preset"),
            slate_size=d.get("slate_size"),
            tables=tuple(d.get("tables", ())),
            skipped=dict(d.get("skipped", {})),
            params=dict(d.get("params", {})),
            notes=tuple(d.get("notes", ())),
        )


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_table(df: pd.DataFrame, directory: str | Path, name: str) -> Path:
    """Write one table as ``<directory>/<name>.parquet`` (atomically)."""
    if name not in SPECS:
        raise DataError(f"unknown table {name!r}; the contract has {sorted(SPECS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.parquet"
    atomic_write(path, lambda p: df.to_parquet(p, index=False))
    return path


def read_table(directory: str | Path, name: str) -> pd.DataFrame:
    """Read one table; a clear :class:`DataError` if it is absent or unreadable."""
    path = Path(directory) / f"{name}.parquet"
    if not path.exists():
        raise DataError(f"table {name!r} not found at {path}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"table {name!r} at {path} cannot be read: {exc}") from exc


def write_meta(meta: DatasetMeta, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / META_FILE
    atomic_write(path, lambda p: p.write_text(meta.to_json() + "\n"))
    return path


def read_meta(directory: str | Path) -> DatasetMeta:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise DataError(
            f"no data set at {directory} ({META_FILE} missing); "
            "run `relayrec data generate` or `relayrec data import-kuairand DIR` first"
        )
    try:
        return DatasetMeta.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError) as exc:
        raise DataError(f"{path} is not a valid data set description: {exc}") from exc


def write_dataset(
    tables: dict[str, pd.DataFrame], meta: DatasetMeta, directory: str | Path
) -> Path:
    """Write every table and the meta file; remove tables of an older data set there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in SPECS:
        stale = directory / f"{name}.parquet"
        if name not in tables and stale.exists():
            stale.unlink()
    for name, df in tables.items():
        write_table(df, directory, name)
    write_meta(meta, directory)
    return directory


def read_dataset(directory: str | Path) -> tuple[dict[str, pd.DataFrame], DatasetMeta]:
    """Read the meta file and every table it lists."""
    meta = read_meta(directory)
    return {name: read_table(directory, name) for name in meta.tables}, meta
