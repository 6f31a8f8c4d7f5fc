"""Packaging and running the ranking service: build a Bento with a model in it, serve it.

- :func:`build_bento` — builds ``bentofile.yaml`` with BentoML's Python API
  (``bentoml.bentos.build_bentofile``) and the build argument ``model_tag``: ``service.py``
  reads it with ``bentoml.use_arguments()`` and declares ``BentoModel(model_tag)``, so the
  model is packaged into the Bento and the Bento serves it with no registry present. Returns
  the Bento tag.

  The build runs in a fresh interpreter (``python -m components.packaging <tag>``): the build
  imports ``service.py`` *with* the argument set, and in a process that has already imported
  it (a test, a notebook, a flow) BentoML would reuse the stale module and package nothing;
  BentoML's build arguments are also process-global state. The built Bento is checked to
  carry the model either way.
- :func:`start_server` — ``bentoml serve`` (of a Bento tag or of ``service:RankService``) as
  a subprocess in a session of its own; the :class:`Server` it returns waits for
  ``/readyz`` and stops the process group and every worker BentoML started (each worker runs
  in a session of its own). Used by the tests and the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import registry

PROJECT_DIR = Path(__file__).resolve().parents[1]
BENTOFILE = "bentofile.yaml"
SERVICE = "service:RankService"
BUILD_TIMEOUT_S = 600


class PackagingError(RuntimeError):
    """A Bento could not be built or a server did not come up."""


# ------------------------------------------------------------------------- build


def build_bento(
    model_tag: str,
    project_dir: str | Path | None = None,
    version: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = BUILD_TIMEOUT_S,
) -> str:
    """Build the service's Bento with ``model_tag`` packaged; return the Bento tag.

    The model must be in the BentoML model store (``$BENTOML_HOME``); the Bento lands in the
    same home. ``project_dir`` holds ``bentofile.yaml`` (default: this repository).
    """
    registry.model_path(model_tag)  # fail early, with the registry's message
    project = Path(project_dir or PROJECT_DIR).resolve()
    cmd = [sys.executable, "-m", "components.packaging", model_tag, "--project-dir", str(project)]
    if version:
        cmd += ["--version", version]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_DIR), child_env.get("PYTHONPATH", "")) if p
    )
    try:
        out = subprocess.run(
            cmd,
            cwd=project,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PackagingError(f"bento build did not finish in {timeout_s:.0f}s") from exc
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
        raise PackagingError(f"bento build failed (exit {out.returncode}):\n{tail}")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if not lines:
        raise PackagingError("bento build printed no tag")
    return lines[-1].strip()


def _build_here(model_tag: str, project_dir: Path, version: str | None = None) -> str:
    """The build itself, in this process (see the module docstring for why a fresh one)."""
    import bentoml

    bento = bentoml.bentos.build_bentofile(
        str(project_dir / BENTOFILE),
        build_ctx=str(project_dir),
        version=version,
        labels={"model_tag": model_tag},
        args={"model_tag": model_tag},
        reload=True,
    )
    packaged = {str(m.tag) for m in bento.info.all_models}
    if model_tag not in packaged:
        bentoml.bentos.delete(bento.tag)
        raise PackagingError(
            f"the built Bento does not carry {model_tag} (it has {sorted(packaged)}); "
            "service.py must declare BentoModel(model_tag) from bentoml.use_arguments()"
        )
    return str(bento.tag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.packaging",
        description="Build the ranking service's Bento with a model packaged; print its tag.",
    )
    parser.add_argument("model_tag", help="a model in the BentoML model store")
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR)
    parser.add_argument("--version", default=None, help="Bento version (default: generated)")
    args = parser.parse_args(argv)
    try:
        tag = _build_here(args.model_tag, args.project_dir.resolve(), args.version)
    except (PackagingError, registry.RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tag)
    return 0


# ------------------------------------------------------------------------ serving


@dataclass(eq=False)
class Server:
    """A server process started by :func:`start_server` (or wrapped around any ``Popen``
    started with ``start_new_session=True``); a context manager that stops it on exit."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None
    _children: list[Any] = field(default_factory=list, repr=False)

    def wait_ready(self, timeout_s: float = 90.0, path: str = "/readyz") -> float:
        """Poll ``<url><path>`` until it answers 200; return the seconds it took.

        Raises :class:`PackagingError` (with the log's tail) when the process exits first
        or the time runs out. Records the worker processes for :meth:`stop`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise PackagingError(
                    f"the server exited with code {self.proc.returncode} before it was ready"
                    f"\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as resp:
                    if resp.status == 200:
                        self._remember_children()
                        return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise PackagingError(f"{self.url} was not ready after {timeout_s:.0f}s\n{self.log_tail()}")

    def _remember_children(self) -> None:
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            known = {c.pid for c in self._children}
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                if child.pid not in known:
                    self._children.append(child)

    def processes(self) -> list[Any]:
        """The processes that serve requests (``psutil.Process``): the workers BentoML
        started, or the server's own process when it started none (uvicorn, one worker)."""
        import psutil

        self._remember_children()
        workers = [p for p in self._children if p.is_running()]
        return workers or [psutil.Process(self.proc.pid)]

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the process group (BentoML's arbiter then stops its workers), SIGKILL if
        it lingers, then kill any worker left: BentoML starts each worker in a session of
        its own, out of reach of the group's signals if the arbiter dies first."""
        import psutil

        self._remember_children()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for child in self._children:  # normally gone with the arbiter
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        _, alive = psutil.wait_procs(self._children, timeout=5)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(alive, timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not Path(self.log_path).exists():
            return ""
        return Path(self.log_path).read_text(errors="replace")[-chars:]

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    target: str,
    port: int,
    env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None,
    working_dir: str | Path | None = None,
    host: str = "127.0.0.1",
) -> Server:
    """``bentoml serve <target> --port <port>`` in a session of its own.

    ``target``: a Bento tag or ``service:RankService``. Output goes to ``log_path`` (or is
    discarded); telemetry is off. Use the result as a context manager, or call
    :meth:`Server.wait_ready` and :meth:`Server.stop`."""
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("DO_NOT_TRACK", "1")
    child_env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    bentoml_bin = Path(sys.executable).with_name("bentoml")
    cmd = [
        str(bentoml_bin) if bentoml_bin.exists() else "bentoml",
        "serve",
        target,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if working_dir is not None:
        cmd += ["--working-dir", str(working_dir)]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=working_dir or PROJECT_DIR,
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()
    return Server(proc, f"http://{host}:{port}", Path(log_path) if log_path else None)


if __name__ == "__main__":
    sys.exit(main())
