"""Registry: real BentoML model store, champion pointer replayed from an append-only log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import registry


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A fresh champion pointer and log; models go to the session's BentoML store."""
    return tmp_path / "registry"


def _model(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "weights.txt").write_text(name)
    return d


def test_register_promote_rollback_history(tmp_path: Path, store: Path) -> None:
    key = tmp_path.name  # labels unique to this test: the store is shared by the session
    assert registry.find_model({"data_version": "v1", "test": key}) is None
    a = registry.register_model(_model(tmp_path, "a"), {"data_version": "v1", "test": key})
    b = registry.register_model(_model(tmp_path, "b"), {"data_version": "v2", "test": key})
    assert (registry.model_path(a) / "weights.txt").read_text() == "a"
    assert registry.find_model({"data_version": "v2", "test": key}) == b
    assert registry.find_model({"data_version": "v9", "test": key}) is None
    assert registry.champion(store) is None
    with pytest.raises(registry.RegistryError, match="no champion yet"):
        registry.rollback("nothing", store)

    registry.promote(a, "first", store)
    registry.promote(b, "better", store)
    assert registry.champion(store) == b
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.promote(b, "again", store)
    back = registry.rollback("b misbehaves", store)
    assert (back.from_tag, back.to_tag) == (b, a)
    assert registry.champion(store) == a
    assert json.loads((store / "champion.json").read_text())["tag"] == a
    with pytest.raises(registry.RegistryError, match="first champion"):
        registry.rollback("again", store)

    log = registry.history(store)
    assert [(e.action, e.from_tag, e.to_tag) for e in log] == [
        ("promote", None, a),
        ("promote", a, b),
        ("rollback", b, a),
    ]
    text = registry.format_history(log)
    assert "rollback" in text and "b misbehaves" in text
    # the log is append-only: earlier lines are unchanged after more moves
    before = (store / "promotions.jsonl").read_text()
    registry.promote(b, "fixed", store)
    assert (store / "promotions.jsonl").read_text().startswith(before)


def test_unknown_model_and_empty_dir_are_refused(tmp_path: Path, store: Path) -> None:
    with pytest.raises(registry.RegistryError, match="not in the BentoML model store"):
        registry.promote("relayrec-ranker:doesnotexist", "x", store)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(registry.RegistryError, match="no saved model files"):
        registry.register_model(empty, {})
