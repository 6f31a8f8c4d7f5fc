"""What every model config shares: building it from a dict that may only name its fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

C = TypeVar("C")


def config_from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
    """``cls(**d)``, refusing keys that are not fields of the dataclass ``cls`` (a typo in
    ``params.yaml`` or a file from another version) with the list of known ones."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    return cls(**dict(d))
