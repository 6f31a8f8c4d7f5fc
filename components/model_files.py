"""The on-disk form of every trained model: weights and feature space in one tensor file,
config and metrics in one JSON file, side by side in a directory.

    <dir>/<model file>   torch.save({"state_dict": ..., "features": FeatureSpace arrays})
    <dir>/<meta file>    {"format_version", "model", "config", "feature_space", "metrics", ...}

The tensor file holds tensors only, so it is read with ``torch.load(weights_only=True)``.
``TrainedRanker``, ``TrainedSimulator`` and ``TrainedAgents`` each name their two files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.features import FeatureSpace

FORMAT_VERSION = 1


def jsonable(x: Any, nonfinite_as_none: bool = True) -> Any:
    """``x`` with numpy scalars as Python numbers, tuples as lists, keys as strings and —
    unless ``nonfinite_as_none`` is False — non-finite floats as ``None`` (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v, nonfinite_as_none) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v, nonfinite_as_none) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if nonfinite_as_none and isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def save_model_files(
    path: str | Path,
    files: tuple[str, str],
    state_dict: Mapping[str, torch.Tensor],
    feature_space: FeatureSpace,
    meta: Mapping[str, Any],
) -> Path:
    """Write ``files = (model file, meta file)`` under ``path``; ``meta`` gets the format
    version and the feature space's JSON part added."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays, fs_meta = feature_space.to_state()
    payload = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "features": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
    }
    doc = {"format_version": FORMAT_VERSION, **jsonable(dict(meta)), "feature_space": fs_meta}
    torch.save(payload, path / files[0])
    (path / files[1]).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class ModelFiles:
    """What :func:`read_model_files` read back."""

    state_dict: dict[str, torch.Tensor]
    feature_space: FeatureSpace
    meta: dict[str, Any]


def read_model_files(
    path: str | Path, files: tuple[str, str], noun: str, writer: str
) -> ModelFiles:
    """Read what :func:`save_model_files` wrote; ``noun`` and ``writer`` name the model and
    the method that saves it in errors (e.g. ``"ranker"``, ``"TrainedRanker.save"``)."""
    path = Path(path)
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} not found; a saved {noun} is a directory with "
                f"{files[0]} and {files[1]} ({writer})"
            )
    meta = json.loads((path / files[1]).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path / files[1]} has format {meta.get('format_version')!r}; this code "
            f"reads {FORMAT_VERSION}"
        )
    payload = torch.load(path / files[0], map_location="cpu", weights_only=True)
    return ModelFiles(
        state_dict=dict(payload["state_dict"]),
        feature_space=FeatureSpace.from_state(payload["features"], meta["feature_space"]),
        meta=meta,
    )
