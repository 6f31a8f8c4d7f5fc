"""Serving latency and throughput: the bare model, a minimal FastAPI endpoint, BentoML.

    python bench/bench_serving.py [--duration 10] [--rounds 2] [--pool 200] [--ablations]
                                  [--model ranker|agents]

One run, side by side, on loopback, with the same model and the same request (a known user,
a pool of ``--pool`` known items, ``k=6``, deterministic top-k):

- ``bare``: the request path in-process, no HTTP: ``ServingModel.score`` (the forward pass)
  and ``ServingModel.rank`` (id checks + forward + top-k), timed call by call;
- ``fastapi``: ``bench/fastapi_app.py`` under uvicorn, one worker, async endpoint, same
  pydantic schema, no access log;
- ``bentoml naive``: ``bench/naive_service.py``: BentoML's defaults and a sync API;
- ``bentoml 1 worker``: ``service.py`` with one worker (per-request overhead vs FastAPI);
- ``bentoml``: ``service.py`` as shipped (one worker per core).

``--ablations`` adds the steps between naive and shipped, one change at a time (access log
off, tracing middleware kept off ``/rank``, ``gc.freeze()``, async API) and adaptive batching.

Load: Debian's ``wrk`` (``apt-get install -y wrk``) with a Lua script for the POST body, one
thread, ``-c 1`` and ``-c 16`` connections, ``-d --duration`` seconds each (every run is
bounded in time). All servers of a group are up at once and the wrk runs alternate between
them for ``--rounds`` rounds; the table shows the median over rounds (the machine may be
shared: a burst of load elsewhere then hits every variant alike). Latency percentiles are
wrk's; throughput is requests/s. Every server is checked to return the bare model's slate
before it is loaded. The model is trained here in a temporary BentoML home (world ``tiny``
data; ``--model ranker``: default ``RankerConfig``, one epoch; ``--model agents``: the MMRF
ranking agents, default ``AgentsConfig`` but one round of one epoch — the network, and so the
serving cost, is the full one) unless ``--model-tag`` names one in ``$BENTOML_HOME``. The
script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _machine import cpu_model  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from components.packaging import Server, start_server  # noqa: E402


@dataclass(frozen=True)
class Load:
    """A wrk load: connections, and whether each request opens a new connection."""

    label: str
    connections: int
    new_connection: bool = False


LOADS = (Load("1", 1), Load("16", 16), Load("16 new", 16, new_connection=True))
READY_TIMEOUT_S = 120


def load_average() -> str:
    """Load averages and, where the kernel has it, the share of time runnable tasks waited
    for a CPU over the last 60 s (``/proc/pressure/cpu``): other work on a shared machine."""
    text = "?"
    with contextlib.suppress(OSError):
        text = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with contextlib.suppress(OSError, IndexError, ValueError):
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        text += f"; CPU pressure avg60 {float(some[2].split('=')[1]):.0f}%"
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------- results


@dataclass
class Row:
    variant: str
    load: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str = ""
    note: str = ""
    cpu: str = ""  # CPU seconds of each server process during the run


@dataclass
class Variant:
    name: str
    start: Callable[[int, Path], Server]
    body: Path
    note: str = ""
    ablation: bool = False


# --------------------------------------------------------------------------- wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: Path, connections: int, duration_s: int) -> dict[str, object]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration_s + 30, check=True
    ).stdout
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, flags=re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"non-2xx {m.group(1)}")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append(f"socket errors: {m.group(1).strip()}")
    return {"rps": rps, "p50": _ms(pct["50"]), "p99": _ms(pct["99"]), "errors": "; ".join(errors)}


def lua_script(body: Path, path: Path, new_connection: bool = False) -> Path:
    """A wrk script that POSTs ``body`` as JSON (with ``Connection: close`` if asked)."""
    lines = [
        f'local f = io.open("{body}", "r")',
        'wrk.method = "POST"',
        'wrk.body = f:read("*a")',
        "f:close()",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if new_connection:
        lines.append('wrk.headers["Connection"] = "close"')
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_seconds(procs: list) -> list[float]:
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except Exception:  # a process that went away
            out.append(float("nan"))
    return out


# ----------------------------------------------------------------------- servers


def post_json(url: str, body: bytes, timeout: float = 30) -> object:
    import urllib.request

    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def bentoml_starter(
    target: str, env: dict[str, str], options: str = "", working_dir: Path | None = None
) -> Callable[[int, Path], Server]:
    def start(port: int, log: Path) -> Server:
        child = dict(env)
        if options:
            child["BENTOML_CONFIG_OPTIONS"] = options
        return start_server(target, port, env=child, log_path=log, working_dir=working_dir)

    return start


def uvicorn_starter(env: dict[str, str]) -> Callable[[int, Path], Server]:
    def start(port: int, log: Path) -> Server:
        cmd = [
            str(Path(sys.executable).with_name("uvicorn")),
            "fastapi_app:app",
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return Server(proc, f"http://127.0.0.1:{port}", log)

    return start


# -------------------------------------------------------------------------- bare


def time_calls(fn: Callable[[], object], seconds: float) -> tuple[float, float, float]:
    """``(calls/s, p50 ms, p99 ms)`` of ``fn`` called back to back for ``seconds``."""
    for _ in range(50):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=100)
    return len(times) / sum(times), q[49] * 1e3, q[98] * 1e3


# -------------------------------------------------------------------------- main


def train_model(tmp: Path, kind: str = "ranker") -> str:
    from components import registry
    from components.agents import train_agents
    from components.io import write_dataset
    from components.training import train_ranker
    from components.world import generate_dataset
    from models.mmrf import AgentsConfig

    tables, meta = generate_dataset("tiny", seed=0)
    write_dataset(tables, meta, tmp / "data")
    if kind == "agents":
        config = AgentsConfig(rounds=1, epochs=1, non_impressions="negative")
        train_agents(tmp / "data", config, seed=0).save(tmp / "model")
    else:
        train_ranker(tmp / "data", seed=0, max_epochs=1).save(tmp / "model")
    return registry.register_model(tmp / "model", {"purpose": "bench_serving"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="wrk runs per variant and load")
    parser.add_argument("--pool", type=int, default=200, help="candidates per request")
    parser.add_argument("--ablations", action="store_true", help="one change at a time")
    parser.add_argument("--model-tag", default=None, help="a model in $BENTOML_HOME")
    parser.add_argument(
        "--model", choices=("ranker", "agents"), default="ranker", help="the model to train"
    )
    parser.add_argument("--only", default=None, help="comma-separated variant names to run")
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print(
            "bench_serving needs Debian's wrk HTTP load generator, which is not installed.\n"
            "Install it with:  sudo apt-get install -y wrk   (then run this again)",
            file=sys.stderr,
        )
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    env = dict(os.environ)
    env |= {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(ROOT)}
    if args.model_tag is None:
        env["BENTOML_HOME"] = str(tmp / "bentoml")
    os.environ.update(env)
    env["RELAYREC_REGISTRY"] = str(tmp / "no-registry")  # serve the pinned model only
    os.environ["RELAYREC_REGISTRY"] = env["RELAYREC_REGISTRY"]
    try:
        return _run(args, tmp, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> int:
    import bentoml
    import fastapi
    import numpy as np
    import torch
    import uvicorn

    from components import serving

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}); "
        f"load average before start: {load_average()}"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, bentoml "
        f"{bentoml.__version__}, fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}"
    )
    t0 = time.perf_counter()
    tag = args.model_tag or train_model(tmp, args.model)
    env[serving.MODEL_TAG_ENV] = tag
    print(f"model: {tag} (ready in {time.perf_counter() - t0:.1f}s)")

    torch.set_num_threads(1)
    model = serving.ServingModel.load(tag)
    space = model.feature_space
    rng = np.random.default_rng(0)
    if args.pool > len(space.item_ids):
        raise SystemExit(
            f"--pool {args.pool} is larger than the model's {len(space.item_ids)} items"
        )
    items = [int(i) for i in rng.choice(space.item_ids, size=args.pool, replace=False)]
    user = int(space.user_ids[len(space.user_ids) // 2])
    request = {"user_id": user, "hour": 20, "position_in_session": 3, "item_ids": items, "k": 6}
    body = tmp / "body.json"
    body.write_text(json.dumps(request))
    batch_body = tmp / "batch_body.json"
    batch_body.write_text(json.dumps({"requests": [request]}))
    expected = model.rank(**request).item_ids

    rows: list[Row] = []
    rate, p50, p99 = time_calls(lambda: model.score(user, items, 20, 3), min(args.duration, 5))
    rows.append(Row("bare forward (score)", "-", rate, p50, p99, note="in-process, no HTTP"))
    rate, p50, p99 = time_calls(lambda: model.rank(**request), min(args.duration, 5))
    rows.append(Row("bare rank() (checks+top-k)", "1", rate, p50, p99, note="in-process"))
    _print_rows(rows[-2:])

    naive = "services.relayrec_naive"
    one = "services.relayrec_ranker.workers=1"
    lean = f"{naive}.logging.access.enabled=false {naive}.tracing.excluded_urls=[/rank$]"
    variants = [
        Variant("fastapi", uvicorn_starter(env), body, "uvicorn, 1 worker, async"),
        Variant(
            "bentoml naive",
            bentoml_starter("naive_service:NaiveRankService", env, working_dir=BENCH),
            body,
            "defaults, sync API, 1 worker",
        ),
        Variant(
            "bentoml 1 worker",
            bentoml_starter("service:RankService", env, one),
            body,
            "service.py, 1 worker",
        ),
        Variant(
            "bentoml",
            bentoml_starter("service:RankService", env),
            body,
            f"service.py as shipped: {os.cpu_count()} workers",
        ),
    ]
    if args.ablations:
        variants += [
            Variant(
                "naive - access log",
                bentoml_starter(
                    "naive_service:NaiveRankService",
                    env,
                    f"{naive}.logging.access.enabled=false",
                    working_dir=BENCH,
                ),
                body,
                "ablations, cumulative from naive",
                ablation=True,
            ),
            Variant(
                "  - tracing on /rank",
                bentoml_starter("naive_service:NaiveRankService", env, lean, working_dir=BENCH),
                body,
                ablation=True,
            ),
            Variant(
                "  + gc.freeze",
                bentoml_starter(
                    "naive_service:NaiveRankService",
                    env | {"BENCH_GC_FREEZE": "1"},
                    lean,
                    working_dir=BENCH,
                ),
                body,
                "sync API (async: bentoml 1 worker)",
                ablation=True,
            ),
            Variant(
                "1 worker + access log",
                bentoml_starter(
                    "service:RankService",
                    env,
                    f"{one} services.relayrec_ranker.logging.access.enabled=true",
                ),
                body,
                "from bentoml 1 worker",
                ablation=True,
            ),
            Variant(
                "1 worker + tracing /rank",
                bentoml_starter(
                    "service:RankService",
                    env,
                    f"{one} services.relayrec_ranker.tracing.excluded_urls=[]",
                ),
                body,
                "from bentoml 1 worker",
                ablation=True,
            ),
            Variant(
                "batchable, 2 workers",
                bentoml_starter("naive_service:BatchedRankService", env, working_dir=BENCH),
                batch_body,
                "adaptive batching (list API)",
                ablation=True,
            ),
        ]
    if args.only:
        keep = {v.strip() for v in args.only.split(",")}
        variants = [v for v in variants if v.name.strip() in keep]

    # The main variants run as one group, the ablations as a second: every server of a group
    # is up at once and the wrk runs alternate between them, round after round, so that a
    # burst of load from elsewhere on a shared machine hits all of them alike.
    groups = [[v for v in variants if not v.ablation], [v for v in variants if v.ablation]]
    for group in groups:
        if group:
            rows += measure_group(group, tmp, expected, args.duration, args.rounds)
    print("\n" + _table(rows))
    print(_ratios(rows))
    print(f"load average after: {load_average()}")
    return 0


def measure_group(
    variants: list[Variant], tmp: Path, expected: list[int], duration: int, rounds: int
) -> list[Row]:
    servers: list[tuple[Variant, Server, float]] = []
    started: list[tuple[Variant, Server]] = []
    results: dict[tuple[str, str], list[dict[str, object]]] = {}
    try:
        for n, variant in enumerate(variants):
            started.append((variant, variant.start(free_port(), tmp / f"{id(variant)}_{n}.log")))
        for variant, server in started:
            try:
                ready_s = server.wait_ready(READY_TIMEOUT_S)
                check = post_json(f"{server.url}/rank", variant.body.read_bytes())
                slate = (check[0] if isinstance(check, list) else check)["slate"]
                if slate != expected:
                    raise RuntimeError(f"returned the slate {slate}, expected {expected}")
            except Exception as exc:  # report it and measure the others
                print(f"{variant.name}: FAILED: {exc}", file=sys.stderr)
                server.stop()
                continue
            servers.append((variant, server, ready_s))
        for rnd in range(rounds):
            for load in LOADS:
                for variant, server, _ in servers:
                    script = lua_script(
                        variant.body, tmp / f"post_{id(variant)}.lua", load.new_connection
                    )
                    procs = server.processes()
                    before = cpu_seconds(procs)
                    r = run_wrk(f"{server.url}/rank", script, load.connections, duration)
                    r["cpu"] = "/".join(
                        f"{b - a:.1f}" for a, b in zip(before, cpu_seconds(procs), strict=True)
                    )
                    results.setdefault((variant.name, load.label), []).append(r)
                    print(
                        f"  round {rnd + 1}/{rounds} {variant.name:<24} c={load.label:<6} "
                        f"{r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:7.2f} ms"
                        f"  cpu s {r['cpu']}  {r['errors']}",
                        flush=True,
                    )
    finally:
        for _, server in started:
            server.stop()
    rows = []
    for variant, _, ready_s in servers:
        for load in LOADS:
            runs = results[(variant.name, load.label)]
            note = {LOADS[0].label: variant.note, LOADS[1].label: f"ready in {ready_s:.0f}s"}
            rows.append(
                Row(
                    variant.name,
                    load.label,
                    statistics.median(float(r["rps"]) for r in runs),
                    statistics.median(float(r["p50"]) for r in runs),
                    statistics.median(float(r["p99"]) for r in runs),
                    "; ".join(str(r["errors"]) for r in runs if r["errors"]),
                    note.get(load.label, ""),
                    " ".join(str(r["cpu"]) for r in runs),
                )
            )
    return rows


def _print_rows(rows: list[Row]) -> None:
    for r in rows:
        print(
            f"  {r.variant:<28} c={r.load:<6} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  {r.errors}",
            flush=True,
        )


def _table(rows: list[Row]) -> str:
    lines = [
        f"{'variant':<28} {'conns':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}  "
        f"{'cpu s per process, each round':<30} notes",
        "-" * 110,
    ]
    for r in rows:
        notes = "; ".join(x for x in (r.note, r.errors) if x)
        lines.append(
            f"{r.variant:<28} {r.load:>6} {r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f}  "
            f"{r.cpu:<30} {notes}"
        )
    lines.append(
        "conns: wrk connections, kept alive ('16 new': a new connection per request); "
        "cpu s: CPU seconds each serving process (BentoML: each worker) used during the run"
    )
    return "\n".join(lines)


def _ratios(rows: list[Row]) -> str:
    def get(name: str, load: str) -> Row | None:
        return next((r for r in rows if r.variant == name and r.load == load), None)

    lines = ["\nagainst the minimal FastAPI endpoint (targets: req/s >= 1x, p50 at c=1 <= 1.5x):"]
    for name in ("bentoml naive", "bentoml 1 worker", "bentoml"):
        parts = []
        for load in LOADS:
            fa, b = get("fastapi", load.label), get(name, load.label)
            if fa and b:
                rps, p50 = b.rps / fa.rps, b.p50_ms / fa.p50_ms
                parts.append(f"c={load.label}: req/s {rps:4.2f}x, p50 {p50:4.2f}x")
        if parts:
            lines.append(f"  {name:<17} " + " | ".join(parts))
    bare, fa1, b1 = get("bare rank() (checks+top-k)", "1"), get("fastapi", "1"), get("bentoml", "1")
    if bare and fa1 and b1:
        lines.append(
            f"  HTTP cost at c=1 (p50 - bare rank() p50): FastAPI {fa1.p50_ms - bare.p50_ms:.2f} "
            f"ms, BentoML {b1.p50_ms - bare.p50_ms:.2f} ms"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
