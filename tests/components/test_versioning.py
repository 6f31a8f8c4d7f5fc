"""DVC versioning, run for real in temporary git repositories (each DVC command ~0.5-1.5 s).

One git+DVC repository is initialised per module and copied for each test, so a test pays
only for the DVC commands it is about.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from components.versioning import (
    Version,
    VersioningError,
    checkout_version,
    current_version,
    ensure_dvc_repo,
    repo_lock,
    track,
    track_if_changed,
)

MD5_DIR = re.compile(r"^[0-9a-f]{32}\.dir$")


def _write_data(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / "data" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


FILES = {"users.csv": "user_id,x\n1,2\n", "sub/items.csv": "item_id\n7\n"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    ensure_dvc_repo(root)
    return root


@pytest.fixture()
def repo(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(template, root, symlinks=True)
    return root


def _remote_objects(root: Path) -> list[Path]:
    return [p for p in (root / "dvc-remote").rglob("*") if p.is_file()]


def test_ensure_dvc_repo_sets_relative_default_remote(repo: Path) -> None:
    config = (repo / ".dvc" / "config").read_text()
    assert "remote = local" in config
    assert "url = ../dvc-remote" in config  # relative to .dvc/: a moved/cloned repo works
    assert (repo / "dvc-remote").is_dir()
    assert "/dvc-remote/" in (repo / ".gitignore").read_text()
    ensure_dvc_repo(repo)  # idempotent: no DVC call, nothing changes
    assert (repo / ".dvc" / "config").read_text() == config


def test_ensure_dvc_repo_explicit_remote_and_no_scm(tmp_path: Path) -> None:
    root = tmp_path / "plain"  # not a git repository -> dvc init --no-scm
    root.mkdir()
    elsewhere = tmp_path / "store"
    ensure_dvc_repo(root, remote_url=str(elsewhere), remote_name="store")
    config = (root / ".dvc" / "config").read_text()
    assert "remote = store" in config
    assert "url = ../../store" in config  # absolute input, stored relative
    assert elsewhere.is_dir()


def test_track_pushes_and_versions_are_content_addressed(repo: Path) -> None:
    _write_data(repo, FILES)
    v1 = track(repo)
    assert isinstance(v1, Version)
    assert MD5_DIR.match(v1.md5)
    assert (v1.path, v1.n_files, v1.size) == ("data", 2, 14 + 10)
    assert v1.pushed and v1.remote == "local"
    assert f"md5: {v1.md5}" in (repo / "data.dvc").read_text()
    # the remote holds the directory manifest and both files
    objects = _remote_objects(repo)
    assert len(objects) == 3
    assert any(p.name == v1.md5[2:] for p in objects)
    assert current_version(repo) == v1

    # one file changes -> a new md5
    (repo / "data" / "users.csv").write_text("user_id,x\n1,3\n")
    v2 = track(repo)
    assert v2.md5 != v1.md5 and MD5_DIR.match(v2.md5)
    assert v2.pushed and len(_remote_objects(repo)) == 5  # new manifest + new file

    # the same content again -> the same md5 (deterministic, content addressed)
    (repo / "data" / "users.csv").write_text(FILES["users.csv"])
    v3 = track(repo, push=False)
    assert v3.md5 == v1.md5
    assert v3.pushed  # its objects were pushed with v1


def test_checkout_version_restores_from_remote(repo: Path) -> None:
    _write_data(repo, FILES)
    v1 = track(repo)
    v1_dvc_file = (repo / "data.dvc").read_text()
    (repo / "data" / "users.csv").write_text("changed\n")
    (repo / "data" / "new.csv").write_text("extra\n")
    v2 = track(repo)
    assert v2.n_files == 3

    # lose the workspace copy and the local cache: only the remote has v1
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    checkout_version(repo, "data", v1.md5[:32])  # bare md5 accepted for a directory
    assert (repo / "data" / "users.csv").read_text() == FILES["users.csv"]
    assert (repo / "data" / "sub" / "items.csv").read_text() == FILES["sub/items.csv"]
    assert not (repo / "data" / "new.csv").exists()
    assert (repo / "data.dvc").read_text() == v1_dvc_file  # byte-identical .dvc file
    assert current_version(repo) == v1

    # forward again: v2's objects are not in the fresh cache either -> pulled too
    checkout_version(repo, "data", v2.md5)
    assert (repo / "data" / "new.csv").read_text() == "extra\n"
    assert current_version(repo) == v2


def test_checkout_refuses_to_drop_unsaved_changes(repo: Path) -> None:
    _write_data(repo, FILES)
    v1 = track(repo, push=False)
    (repo / "data" / "users.csv").write_text("never tracked\n")
    before = (repo / "data.dvc").read_text()
    with pytest.raises(VersioningError, match=r"dvc checkout(.|\n)*force=True"):
        checkout_version(repo, "data", v1.md5)
    assert (repo / "data" / "users.csv").read_text() == "never tracked\n"
    assert (repo / "data.dvc").read_text() == before  # rolled back
    checkout_version(repo, "data", v1.md5, force=True)
    assert (repo / "data" / "users.csv").read_text() == FILES["users.csv"]


def test_checkout_unknown_md5_is_a_clear_error(repo: Path) -> None:
    _write_data(repo, FILES)
    track(repo, push=False)
    before = (repo / "data.dvc").read_text()
    with pytest.raises(VersioningError) as info:
        checkout_version(repo, "data", "0" * 32 + ".dir")
    msg = str(info.value)
    assert "dvc pull" in msg and "exit" in msg and str(repo) in msg
    assert info.value.returncode not in (None, 0)
    assert (repo / "data.dvc").read_text() == before
    with pytest.raises(VersioningError, match="32 hex digits"):
        checkout_version(repo, "data", "not-an-md5")


def test_current_version_untracked_and_missing_path(tmp_path: Path, repo: Path) -> None:
    assert current_version(tmp_path) is None  # not even a DVC repo: no DVC run needed
    assert current_version(repo, "data") is None
    with pytest.raises(VersioningError, match="does not exist"):
        track(repo, "nothing-here")


def test_concurrent_callers_serialize(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads track two paths at once: every DVC process runs alone.

    (DVC retries its own repository lock for only ~3 s, so without the file lock a long
    ``dvc push`` makes a concurrent command fail; here we check the intervals directly.)
    """
    _write_data(repo, FILES)
    (repo / "models").mkdir()
    (repo / "models" / "m.bin").write_bytes(b"\x00\x01")
    intervals: list[tuple[float, float]] = []
    real_run = subprocess.run

    def recording_run(cmd, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        try:
            return real_run(cmd, *args, **kwargs)
        finally:
            if "dvc" in cmd:
                intervals.append((start, time.monotonic()))

    monkeypatch.setattr(subprocess, "run", recording_run)
    results: dict[str, Version] = {}
    errors: list[BaseException] = []

    def work(path: str) -> None:
        try:
            results[path] = track(repo, path, push=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in ("data", "models")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results["data"].n_files == 2 and results["models"].n_files == 1
    assert len(intervals) == 2
    (s1, e1), (s2, e2) = sorted(intervals)
    assert e1 <= s2, "two DVC commands overlapped"


def test_lock_times_out_with_a_clear_message(repo: Path) -> None:
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with repo_lock(repo), repo_lock(repo):  # re-entrant within one thread
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(VersioningError, match="holds the lock"), repo_lock(repo, timeout=0.2):
            pass
    finally:
        release.set()
        t.join()
    with repo_lock(repo, timeout=1):  # released again
        pass


def test_track_if_changed_skips_dvc_only_when_nothing_changed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("one")
    first, ran = track_if_changed(root, "data")
    assert ran and first.pushed
    again, ran = track_if_changed(root, "data")
    assert not ran and again.md5 == first.md5
    (root / "data" / "a.txt").write_text("two")  # content (and size/mtime) changed
    changed, ran = track_if_changed(root, "data")
    assert ran and changed.md5 != first.md5
