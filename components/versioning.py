"""Data and model versioning with DVC: track a directory, push it, read and restore versions.

A *version* of a tracked path (``data`` by default) is the md5 that DVC records in
``<path>.dvc``. Git versions the small ``.dvc`` file, DVC's cache and remote hold the
content; checking out an older md5 brings the content back (rollback, reproduction).

How DVC is called
-----------------
Every DVC operation runs the ``dvc`` command line in a child process
(``sys.executable -m dvc ...``, i.e. the DVC of this interpreter's environment, with
``cwd`` = the repository root). The command line is DVC's public, documented interface;
``dvc.repo.Repo`` is internal and changes between releases, keeps SQLite state and index
handles open, and reconfigures the ``dvc`` logger of the calling process. A child process
costs ~0.3 s of start-up per call, which is small next to the work of ``add``/``push``, and
it isolates DVC completely: a crash or a stuck lock cannot leak into the pipeline process.

Output: DVC draws progress bars only on a terminal, and its stdout/stderr are captured, so a
caller sees nothing on success. ``--quiet`` is *not* passed because it also hides DVC's
``ERROR:`` lines; on failure a :class:`VersioningError` carries the command, the exit code
and DVC's message.

Concurrency: two DVC commands at once in one repository fail on DVC's repository lock
(DVC retries it for only ~3 s, so a long ``push`` makes a concurrent command fail).
Every public function holds an exclusive ``flock`` on the repository root directory while
it runs DVC (re-entrant within a thread), so concurrent callers — threads of one process or
separate processes, e.g. parallel Prefect tasks — serialize instead of failing. Locking the
directory itself means no lock file appears in the workspace and ``dvc init`` is covered.

md5 convention
--------------
:attr:`Version.md5` is exactly the string DVC writes in ``outs[0].md5`` of ``<path>.dvc``:
for a directory it is the md5 of DVC's directory manifest *with* the ``.dir`` suffix
(``3cca...c241.dir``), for a single file the file's md5. :func:`checkout_version` accepts
that string, and for a directory also the bare 32-hex form.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_REMOTE_ENV = "RELAYREC_DVC_REMOTE"
"""Environment variable that overrides the default remote location (a path or a URL)."""

DEFAULT_REMOTE_DIR = "dvc-remote"
"""Default remote: ``<root>/dvc-remote`` (git-ignored), stored relative in ``.dvc/config``."""

DEFAULT_LOCK_TIMEOUT_S = 600.0
DEFAULT_COMMAND_TIMEOUT_S = 3600.0

_MD5_RE = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
_URL_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class VersioningError(RuntimeError):
    """A DVC command failed, the lock could not be taken, or a ``.dvc`` file is invalid."""

    def __init__(
        self,
        message: str,
        command: Sequence[str] | None = None,
        returncode: int | None = None,
        output: str = "",
    ) -> None:
        self.command = tuple(command) if command else None
        self.returncode = returncode
        self.output = output
        super().__init__(message)


@dataclass(frozen=True)
class Version:
    """One recorded version of a tracked path.

    ``md5`` follows the module's convention (``.dir`` suffix for a directory); ``n_files``
    and ``size`` (bytes) are DVC's ``nfiles``/``size``; ``pushed`` is true when every object
    of the version is known to be in the default remote (checked on disk for a local
    remote; for a cloud remote only :func:`track` with ``push=True`` can say so);
    ``remote`` is the name of the default remote, ``None`` if there is none.
    """

    path: str
    md5: str
    n_files: int
    size: int
    pushed: bool
    remote: str | None

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")

    @property
    def short(self) -> str:
        """First 8 hex digits of the md5, for logs and labels."""
        return self.md5[:8]


# --------------------------------------------------------------------------------------
# locking and running DVC


_held = threading.local()


@contextlib.contextmanager
def repo_lock(root: Path, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive DVC lock of ``root`` (an ``flock`` on the directory).

    Re-entrant within one thread; other threads and processes wait up to ``timeout``
    seconds, then get a :class:`VersioningError`.
    """
    key = str(Path(root).resolve())
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key, 0) > 0:
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise VersioningError(
                        f"another DVC operation on {key} holds the lock for more than "
                        f"{timeout:.1f} s; wait for it to finish or raise the timeout"
                    ) from None
                time.sleep(0.05)
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    return env


def _run_dvc(root: Path, args: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT_S) -> str:
    """Run ``dvc <args>`` in ``root`` under the repository lock; return its stdout."""
    cmd = [sys.executable, "-m", "dvc", *args]
    shown = "dvc " + " ".join(args)
    with repo_lock(root):
        try:
            proc = subprocess.run(
                cmd,
                cwd=root,
                env=_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise VersioningError(
                f"`{shown}` in {root} did not finish within {timeout:.0f} s", command=cmd
            ) from exc
    if proc.returncode != 0:
        out = "\n".join(s.strip() for s in (proc.stderr, proc.stdout) if s.strip())
        errors = [ln for ln in out.splitlines() if ln.startswith("ERROR")]
        detail = "\n".join(errors) if errors else out[-2000:]
        raise VersioningError(
            f"`{shown}` failed in {root} (exit {proc.returncode}): {detail or 'no message'}",
            command=cmd,
            returncode=proc.returncode,
            output=out,
        )
    return proc.stdout


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:  # no git on this machine
        return None


def _git_toplevel(root: Path) -> Path | None:
    proc = _git(root, "rev-parse", "--show-toplevel")
    if proc is None or proc.returncode != 0:
        return None
    return Path(proc.stdout.strip()).resolve()


# --------------------------------------------------------------------------------------
# configuration


def _read_config(root: Path) -> dict[str, Any]:
    """Merge ``.dvc/config`` and ``.dvc/config.local`` (DVC's INI dialect, via configobj)."""
    from configobj import ConfigObj  # a dependency of DVC

    merged: dict[str, Any] = {}
    for name in ("config", "config.local"):
        p = root / ".dvc" / name
        if not p.exists():
            continue
        for section, values in ConfigObj(str(p)).items():
            if isinstance(values, dict):
                merged.setdefault(section, {}).update(values)
    return merged


def _default_remote(root: Path) -> tuple[str | None, str | None]:
    """(name, url as written) of the default remote, or ``(None, None)``."""
    conf = _read_config(root)
    name = conf.get("core", {}).get("remote")
    if not name:
        return None, None
    url = conf.get(f'remote "{name}"', {}).get("url")
    return (name, url) if url else (None, None)


def _local_remote_path(root: Path, url: str | None) -> Path | None:
    """Filesystem path of a local remote (relative URLs are relative to ``.dvc/``)."""
    if not url:
        return None
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif _URL_SCHEME_RE.match(url):
        return None
    p = Path(url)
    return (p if p.is_absolute() else (root / ".dvc" / p)).resolve()


def _cache_dir(root: Path) -> Path:
    d = _read_config(root).get("cache", {}).get("dir")
    if not d:
        return root / ".dvc" / "cache"
    p = Path(d)
    return (p if p.is_absolute() else root / ".dvc" / p).resolve()


def _resolve_remote_arg(root: Path, remote_url: str) -> tuple[str, Path | None]:
    """What to pass to ``dvc remote add`` (cwd = root) and the local path, if local.

    A local path (absolute, or relative to ``root``) is passed relative to ``root``, which
    DVC stores relative to ``.dvc/`` — the configuration survives moving or cloning the
    repository together with its remote. URLs (``s3://``, ``ssh://``, ...) pass unchanged.
    """
    if _URL_SCHEME_RE.match(remote_url) and not remote_url.startswith("file://"):
        return remote_url, None
    raw = remote_url[len("file://") :] if remote_url.startswith("file://") else remote_url
    p = Path(raw).expanduser()
    p = (p if p.is_absolute() else root / p).resolve()
    return os.path.relpath(p, root), p


def _default_remote_url() -> str:
    return os.environ.get(DEFAULT_REMOTE_ENV) or DEFAULT_REMOTE_DIR


def _git_ignore(root: Path, target: Path) -> None:
    """Add ``target`` (inside ``root``) to ``root/.gitignore`` unless git ignores it already."""
    try:
        rel = target.resolve().relative_to(root.resolve())
    except ValueError:
        return  # outside the workspace
    proc = _git(root, "check-ignore", "-q", str(rel))
    if proc is None or proc.returncode == 0 or _git_toplevel(root) is None:
        return
    gi = root / ".gitignore"
    text = gi.read_text() if gi.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    gi.write_text(text + f"/{rel.as_posix()}/\n")


def ensure_dvc_repo(root: Path, remote_url: str | None = None, remote_name: str = "local") -> None:
    """Make ``root`` a DVC repository with a default remote; idempotent.

    - ``.dvc/`` missing: ``dvc init`` (with ``--subdir`` when ``root`` is inside a git
      repository but not its top level, ``--no-scm`` when it is not in git at all).
    - ``remote_url`` given: it becomes remote ``remote_name`` and the default (added, or
      its URL replaced).
    - ``remote_url`` not given: an existing default remote is kept; otherwise
      ``$RELAYREC_DVC_REMOTE`` or ``<root>/dvc-remote`` becomes remote ``remote_name``.
    Local remotes are stored relative in ``.dvc/config`` and their directory is created;
    one inside the workspace is added to ``.gitignore``.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise VersioningError(f"repository root {root} is not a directory; create it first")
    with repo_lock(root):
        if not (root / ".dvc").is_dir():
            top = _git_toplevel(root)
            if top is None:
                _run_dvc(root, ["init", "--no-scm"])
            elif top == root:
                _run_dvc(root, ["init"])
            else:
                _run_dvc(root, ["init", "--subdir"])
        name, url = _default_remote(root)
        if remote_url is None and name is not None:
            return
        arg, local = _resolve_remote_arg(root, remote_url or _default_remote_url())
        conf = _read_config(root)
        existing = conf.get(f'remote "{remote_name}"', {}).get("url")
        same = existing is not None and (
            existing == arg or (local is not None and _local_remote_path(root, existing) == local)
        )
        if same:
            if name != remote_name:
                _run_dvc(root, ["remote", "default", remote_name])
        else:
            _run_dvc(root, ["remote", "add", "--default", "--force", remote_name, arg])
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
            _git_ignore(root, local)


# --------------------------------------------------------------------------------------
# versions


def _dvc_file(root: Path, path: str) -> Path:
    return root / f"{path.rstrip('/')}.dvc"


def _read_out(root: Path, path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    f = _dvc_file(root, path)
    if not f.exists():
        return None
    try:
        doc = yaml.safe_load(f.read_text()) or {}
        out = doc["outs"][0]
        if not isinstance(out, dict) or "md5" not in out:
            raise KeyError("md5")
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise VersioningError(
            f"{f} is not a valid DVC file (expected `outs: [{{md5: ..., path: ...}}]`): "
            f"{exc!r}; re-create it with `dvc add {path}`"
        ) from exc
    return doc, out


def _object_rel(md5: str) -> Path:
    return Path("files") / "md5" / md5[:2] / md5[2:]


def _objects_in(store: Path, md5: str) -> bool:
    """True if ``store`` (a cache or local remote) holds every object of ``md5``."""
    top = store / _object_rel(md5)
    if not top.exists():
        return False
    if not md5.endswith(".dir"):
        return True
    try:
        entries = json.loads(top.read_text())
    except ValueError:
        return False
    return all((store / _object_rel(e["md5"])).exists() for e in entries)


def _pushed(root: Path, md5: str) -> bool:
    _, url = _default_remote(root)
    remote = _local_remote_path(root, url)
    return remote is not None and _objects_in(remote, md5)


def current_version(root: Path, path: str = "data") -> Version | None:
    """The version recorded in ``<path>.dvc`` (read directly, no DVC run); ``None`` if untracked.

    ``pushed`` is checked on disk for a local remote and is ``False`` for a cloud remote
    (use ``dvc status --cloud`` there).
    """
    root = Path(root).resolve()
    found = _read_out(root, path)
    if found is None:
        return None
    _, out = found
    md5 = str(out["md5"])
    name, _ = _default_remote(root)
    return Version(
        path=path.rstrip("/"),
        md5=md5,
        n_files=int(out.get("nfiles", 1)),
        size=int(out.get("size", 0)),
        pushed=_pushed(root, md5),
        remote=name,
    )


def track(root: Path, path: str = "data", push: bool = True) -> Version:
    """``dvc add <path>`` and (by default) ``dvc push <path>.dvc``; return the new version.

    Makes ``root`` a DVC repository with a default remote first if needed
    (:func:`ensure_dvc_repo`). The ``.dvc`` file and ``.gitignore`` are left for the caller
    to commit. Adding unchanged content is a no-op and yields the same md5.
    """
    root = Path(root).resolve()
    path = path.rstrip("/")
    if not (root / path).exists():
        raise VersioningError(f"cannot track {root / path}: it does not exist")
    with repo_lock(root):
        ensure_dvc_repo(root)
        _run_dvc(root, ["add", path])
        if push:
            _run_dvc(root, ["push", f"{path}.dvc"])
        version = current_version(root, path)
    if version is None:  # pragma: no cover - dvc add always writes the file
        raise VersioningError(f"`dvc add {path}` succeeded but wrote no {path}.dvc")
    if push and not version.pushed:
        # a cloud remote cannot be checked on disk; the push above succeeded
        version = dataclasses.replace(version, pushed=True)
    return version


def _stamp(target: Path) -> dict[str, list[int]]:
    """Size and mtime of every file under ``target`` (what DVC's own state cache keys on)."""
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return {
        str(p.relative_to(target.parent)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files
    }


def track_if_changed(root: Path, path: str = "data", push: bool = True) -> tuple[Version, bool]:
    """:func:`track`, skipped when no file under ``path`` changed since the last call.

    ``.dvc/tmp/relayrec-stamp-<path>.json`` records the files' sizes and mtimes with the md5
    they were tracked as; when they and ``<path>.dvc`` still agree (and the version is on the
    remote when ``push``), the recorded version is returned without running DVC (two DVC
    commands cost ~3 s). Returns the version and whether DVC ran.
    """
    root = Path(root).resolve()
    path = path.rstrip("/")
    stamp_file = root / ".dvc" / "tmp" / f"relayrec-stamp-{path.replace('/', '_')}.json"
    current = current_version(root, path)
    if current is not None and stamp_file.exists() and (root / path).exists():
        seen = json.loads(stamp_file.read_text())
        same = seen.get("md5") == current.md5 and seen.get("files") == _stamp(root / path)
        if same and (current.pushed or not push):
            return current, False
    version = track(root, path, push=push)
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps({"md5": version.md5, "files": _stamp(root / path)}))
    return version, True


def _workspace_stats(target: Path) -> tuple[int, int]:
    if target.is_file():
        return 1, target.stat().st_size
    n = size = 0
    for dirpath, _dirs, files in os.walk(target):
        for f in files:
            n += 1
            size += (Path(dirpath) / f).stat().st_size
    return n, size


def _dump_dvc(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def checkout_version(root: Path, path: str, md5: str, force: bool = False) -> None:
    """Restore ``path`` to the version ``md5`` (rollback / reproduction).

    Writes ``<path>.dvc`` with that md5 and runs ``dvc checkout``; when the cache lacks the
    objects it runs ``dvc pull`` (fetch from the default remote + checkout). Afterwards the
    ``.dvc`` file has DVC's own layout (md5, size, nfiles, hash, path), so restoring the
    version of an earlier commit reproduces that commit's ``.dvc`` file exactly.

    Workspace content that is not in the cache is never deleted silently: DVC refuses and a
    :class:`VersioningError` says so, unless ``force=True``. On failure the previous
    ``.dvc`` file is put back.
    """
    root = Path(root).resolve()
    path = path.rstrip("/")
    md5 = md5.strip().lower()
    if not _MD5_RE.match(md5):
        raise VersioningError(
            f"{md5!r} is not a DVC md5: expected 32 hex digits, optionally with '.dir' "
            "(see `Version.md5` or the md5 line of an old .dvc file)"
        )
    dvc_file = _dvc_file(root, path)
    if not (root / ".dvc").is_dir():
        raise VersioningError(f"{root} is not a DVC repository; run ensure_dvc_repo first")
    with repo_lock(root):
        found = _read_out(root, path)
        if not md5.endswith(".dir"):
            dir_hint = (found is not None and str(found[1]["md5"]).endswith(".dir")) or (
                root / path
            ).is_dir()
            _, url = _default_remote(root)
            stores = [_cache_dir(root), _local_remote_path(root, url)]
            if dir_hint or any(
                s is not None and (s / _object_rel(md5 + ".dir")).exists() for s in stores
            ):
                md5 += ".dir"
        old_text = dvc_file.read_text() if dvc_file.exists() else None
        doc: dict[str, Any] = found[0] if found is not None else {"outs": [{}]}
        doc["outs"][0] = {"md5": md5, "hash": "md5", "path": Path(path).name}
        dvc_file.write_text(_dump_dvc(doc))
        flags = ["--force"] if force else []
        try:
            if _objects_in(_cache_dir(root), md5):
                _run_dvc(root, ["checkout", *flags, f"{path}.dvc"])
            else:
                _run_dvc(root, ["pull", *flags, f"{path}.dvc"])
        except VersioningError as exc:
            if old_text is None:
                dvc_file.unlink(missing_ok=True)
            else:
                dvc_file.write_text(old_text)
            if "--force" in exc.output and not force:
                raise VersioningError(
                    f"{exc}\n{root / path} has changes that are not in the DVC cache; "
                    "track() them first to keep them, or pass force=True to discard them",
                    command=exc.command,
                    returncode=exc.returncode,
                    output=exc.output,
                ) from exc
            raise
        n_files, size = _workspace_stats(root / path)
        out: dict[str, Any] = {"md5": md5, "size": size}
        if md5.endswith(".dir"):
            out["nfiles"] = n_files
        out.update({"hash": "md5", "path": Path(path).name})
        doc["outs"][0] = out
        dvc_file.write_text(_dump_dvc(doc))
