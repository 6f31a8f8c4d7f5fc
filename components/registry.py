"""Model registry: the BentoML model store plus a champion pointer with an append-only log.

Trained models are saved to the BentoML model store (``$BENTOML_HOME/models``) with labels
(data version, git commit, params hash, gate decision). Which model serves is decided by the
**promotion log** ``<registry>/promotions.jsonl``: every promotion and rollback appends one
JSON line (action, from, to, when, why) and nothing is ever rewritten. Replaying the log as a
stack — ``promote`` pushes, ``rollback`` pops — gives the champion; ``champion.json`` is a
cache of it for the service. A rollback is therefore a pointer move, never a retrain.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODEL_NAME = "relayrec-ranker"
DEFAULT_REGISTRY = Path("artifacts/registry")


class RegistryError(RuntimeError):
    """A registry operation cannot be done (no champion, unknown model, no earlier one)."""


@dataclass(frozen=True)
class Promotion:
    """One line of the promotion log."""

    action: str  # "promote" or "rollback"
    from_tag: str | None
    to_tag: str
    when: str
    why: str


def registry_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$RELAYREC_REGISTRY``, else ``artifacts/registry``."""
    return Path(path or os.environ.get("RELAYREC_REGISTRY") or DEFAULT_REGISTRY)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def register_model(
    model_dir: Path,
    labels: dict[str, str],
    metadata: dict[str, Any] | None = None,
    name: str = MODEL_NAME,
) -> str:
    """Copy the files of a saved model into the BentoML model store; return its tag."""
    import bentoml

    model_dir = Path(model_dir)
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise RegistryError(f"no saved model files in {model_dir}")
    clean = {k: str(v) for k, v in labels.items()}
    with bentoml.models.create(name, labels=clean, metadata=metadata or {}) as ref:
        shutil.copytree(model_dir, ref.path, dirs_exist_ok=True)
    return str(ref.tag)


def find_model(labels: dict[str, str], name: str = MODEL_NAME) -> str | None:
    """Tag of the newest stored model whose labels include all of ``labels``, if any."""
    import bentoml

    try:
        stored = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:  # raised when no model of that name exists yet
        return None
    hits = [m for m in stored if all(m.info.labels.get(k) == str(v) for k, v in labels.items())]
    if not hits:
        return None
    return str(max(hits, key=lambda m: m.info.creation_time).tag)


def model_path(tag: str) -> Path:
    """Directory of a stored model's files."""
    import bentoml

    try:
        return Path(bentoml.models.get(tag).path)
    except bentoml.exceptions.NotFound as exc:
        raise RegistryError(f"model {tag!r} is not in the BentoML model store") from exc


def model_labels(tag: str) -> dict[str, str]:
    import bentoml

    return dict(bentoml.models.get(tag).info.labels)


def history(directory: str | Path | None = None) -> list[Promotion]:
    """Every promotion and rollback, oldest first."""
    log = registry_dir(directory) / "promotions.jsonl"
    if not log.exists():
        return []
    return [Promotion(**json.loads(line)) for line in log.read_text().splitlines() if line]


def _lineage(entries: list[Promotion]) -> list[str]:
    stack: list[str] = []
    for e in entries:
        if e.action == "promote":
            stack.append(e.to_tag)
        elif e.action == "rollback" and stack:
            stack.pop()
    return stack


def champion(directory: str | Path | None = None) -> str | None:
    """The serving model's tag (replayed from the log), or None before the first promotion."""
    stack = _lineage(history(directory))
    return stack[-1] if stack else None


def _append(directory: Path, entry: Promotion) -> None:
    with open(directory / "promotions.jsonl", "a") as fh:
        fh.write(json.dumps(asdict(entry), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    pointer = directory / "champion.json"
    tmp = pointer.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"tag": entry.to_tag, "since": entry.when}) + "\n")
    os.replace(tmp, pointer)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote(tag: str, why: str, directory: str | Path | None = None) -> Promotion:
    """Make ``tag`` the champion; the previous one stays in the log for rollback."""
    model_path(tag)  # must exist in the store
    d = registry_dir(directory)
    with _locked(d):
        current = champion(d)
        if current == tag:
            raise RegistryError(f"{tag} is already the champion")
        entry = Promotion("promote", current, tag, _now(), why)
        _append(d, entry)
    return entry


def rollback(why: str, directory: str | Path | None = None) -> Promotion:
    """Point back to the champion before the current one."""
    d = registry_dir(directory)
    with _locked(d):
        stack = _lineage(history(d))
        if len(stack) < 2:
            raise RegistryError(
                "nothing to roll back to: "
                + ("no champion yet" if not stack else f"{stack[0]} is the first champion")
            )
        entry = Promotion("rollback", stack[-1], stack[-2], _now(), why)
        _append(d, entry)
    return entry


def format_history(entries: list[Promotion]) -> str:
    """A plain-text table of the log for the CLI."""
    if not entries:
        return "no promotions yet"
    lines = [f"{'when':<26} {'action':<9} {'from':<36} {'to':<36} why"]
    for e in entries:
        lines.append(f"{e.when:<26} {e.action:<9} {e.from_tag or '-':<36} {e.to_tag:<36} {e.why}")
    return "\n".join(lines)
