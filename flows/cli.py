"""``relayrec`` command line: subcommands grouped by noun (DESIGN.md §8).

    relayrec data generate --preset demo --seed 0     world data → data/ (+ DVC version)
    relayrec data import-kuairand DIR                 KuaiRand files → data/ (+ DVC version)
    relayrec data validate                            Great Expectations suites + Data Docs
    relayrec data groups                              user-group reassignment (MG-SD)
    relayrec data pipeline                            all of the above as one Prefect flow
    relayrec retrain                                  data → simulator → train → gate → promote
    relayrec promote TAG --why "..."                  move the champion pointer
    relayrec rollback --why "..."                     back to the previous champion
    relayrec history                                  the promotion log
    relayrec schedule --cron "0 3 * * *"              serve the retraining flow on a schedule
    relayrec serve                                    the champion over HTTP (BentoML)
    relayrec experiment mmrf --seeds 3                every ranking method → docs/results/mmrf.md
    relayrec experiment simulator                     simulator accuracy → docs/results/simulator.md
    relayrec experiment calibration                   play vs video length, world vs KuaiRand

Paths are relative to the current directory (the project root). Exit codes: 0 success,
1 the data was rejected or is missing, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _version(root: Path, data_dir: Path, enabled: bool) -> None:
    if not enabled:
        return
    from components import versioning

    rel = data_dir.resolve().relative_to(root.resolve()).as_posix()
    versioning.ensure_dvc_repo(root)
    v = versioning.track(root, rel, push=True)
    _say(f"data version {v.md5} recorded in {rel}.dvc (pushed: {v.pushed}, remote {v.remote})")


def cmd_generate(args: argparse.Namespace) -> int:
    from components.io import write_dataset
    from components.world import WorldConfig, generate_dataset

    t0 = time.perf_counter()
    overrides = _world_overrides(getattr(args, "world", None))
    config = WorldConfig.from_preset(args.preset).with_overrides(overrides)
    changed = "".join(f", {k}={v}" for k, v in overrides.items())
    _say(f"generating world data: preset {args.preset}{changed}, seed {args.seed} ...")
    tables, meta = generate_dataset(preset=args.preset, seed=args.seed, config=config)
    write_dataset(tables, meta, args.data_dir)
    for name, df in tables.items():
        _say(f"  {name:<16} {len(df):>10,} rows")
    _say(f"written to {args.data_dir}/ in {time.perf_counter() - t0:.1f} s ({meta.notes[0]})")
    _version(Path.cwd(), Path(args.data_dir), not args.no_version)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from components.kuairand import import_kuairand

    result = import_kuairand(args.src, args.data_dir, join_user_features=args.join_user_features)
    for name, n in result.n_rows.items():
        _say(f"  {name:<16} {n:>10,} rows")
    for line in result.messages:
        _say(f"  note: {line}")
    _say(f"written to {args.data_dir}/")
    _version(Path.cwd(), Path(args.data_dir), not args.no_version)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from components.validation import validate_dataset

    t0 = time.perf_counter()
    report = validate_dataset(args.data_dir, out_dir=args.out)
    rows = sum(report.n_rows.values())
    _say(
        f"{report.n_expectations} expectations on {rows:,} rows in {time.perf_counter() - t0:.1f} s"
    )
    _say(f"Data Docs: {report.docs_index}\nsummary:   {report.summary_path}")
    if report.success:
        _say("validation passed")
        return 0
    _say(f"validation FAILED ({len(report.failures)} failed expectations):")
    _say(report.format_failures())
    return 1


def cmd_groups(args: argparse.Namespace) -> int:
    from components.grouping import run_grouping

    result = run_grouping(Path(args.data_dir), state_dir=Path(args.out), n_groups=args.n_groups)
    _say(result.summary())
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from flows.data import data_flow

    result = data_flow(
        source=args.source,
        preset=args.preset,
        seed=args.seed,
        kuairand_dir=Path(args.kuairand_dir) if args.kuairand_dir else None,
        root=Path.cwd(),
        n_groups=args.n_groups,
    )
    for line in result.messages:
        _say(line)
    _say(f"data version: {result.data_version}")
    _say(f"validation: {'passed' if result.validation.success else 'FAILED'}")
    _say(f"Data Docs: {result.validation.docs_index}")
    if not result.ok:
        _say(result.validation.format_failures())
        _say("stopped: the data was rejected; nothing downstream ran")
        return 1
    assert result.groups is not None
    _say(result.groups.summary())
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain_flow

    t0 = time.perf_counter()
    result = retrain_flow(params_path=Path(args.params), root=Path.cwd())
    for line in result.messages:
        _say(line)
    _say(f"data version: {result.data_version}")
    if result.simulator:
        _say(f"simulator:    {result.simulator}")
    _say(f"challenger:   {result.model}")
    _say(f"champion:     {result.champion}")
    if result.report:
        _say(f"gate report:  {result.report}")
    if result.bento:
        _say(f"bento:        {result.bento} (serve it: bentoml serve {result.bento})")
    _say(f"status:       {result.status} ({time.perf_counter() - t0:.1f} s)")
    return 1 if result.status == "invalid_data" else 0


def cmd_promote(args: argparse.Namespace) -> int:
    from components import registry

    entry = registry.promote(args.tag, args.why)
    _say(f"champion: {entry.from_tag or '-'} → {entry.to_tag}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from components import registry

    entry = registry.rollback(args.why)
    _say(f"champion rolled back: {entry.from_tag} → {entry.to_tag}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from components import registry

    _say(registry.format_history(registry.history()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``bentoml serve`` of the ranking service with the current champion (replaces this
    process)."""
    from components import registry

    tag = registry.champion()
    if tag is None:
        print("error: no champion yet; promote a model first (relayrec promote)", file=sys.stderr)
        return 1
    os.environ["RELAYREC_REGISTRY"] = str(registry.registry_dir().resolve())
    _say(f"serving champion {tag} on http://127.0.0.1:{args.port}")
    from components.packaging import PROJECT_DIR

    bentoml = str(Path(sys.executable).parent / "bentoml")
    argv = [bentoml, "serve", "service:RankService", "--working-dir", str(PROJECT_DIR)]
    os.execv(bentoml, [*argv, "--port", str(args.port)])
    return 0  # not reached


def cmd_schedule(args: argparse.Namespace) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "error: scheduling needs a Prefect server (the embedded one cannot schedule).\n"
            "  start one:  .venv/bin/prefect server start\n"
            "  then:       export PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    if bool(args.cron) == bool(args.interval):
        print("error: give exactly one of --cron or --interval", file=sys.stderr)
        return 2
    from flows.retrain import retrain_flow

    _say(
        f"serving deployment relayrec-retrain/{args.name} "
        f"({'cron ' + args.cron if args.cron else f'every {args.interval} s'}); Ctrl-C stops"
    )
    retrain_flow.serve(
        name=args.name,
        cron=args.cron or None,
        interval=args.interval or None,
        parameters={"params_path": str(Path(args.params).resolve()), "root": str(Path.cwd())},
        limit=1,  # never two retrains of one project at once (DVC, registry, data/)
        global_limit=1,
    )
    return 0


def _world_overrides(items: Sequence[str] | None) -> dict[str, str]:
    """``["funnel.rank_noise=1.0", ...]`` → ``{"funnel.rank_noise": "1.0"}``."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--world takes KEY=VALUE (e.g. funnel.rank_noise=1.0), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _ensure_world_data(data_dir: Path, world: Sequence[str] | None = None) -> bool:
    """An experiment's data: the data set in ``data_dir``, or demo world data (seed 0, with
    the ``--world`` overrides) generated there when it has none. A data set already there
    must have been made with the same overrides. False when generating failed."""
    from components.io import read_meta
    from components.world import WorldConfig

    overrides = _world_overrides(world)
    if (data_dir / "meta.json").exists():
        if overrides:
            want = WorldConfig.from_preset("demo").with_overrides(overrides)
            have = read_meta(data_dir).params.get("world")
            if have is None or WorldConfig.from_dict(have) != want:
                raise ValueError(
                    f"{data_dir} holds a data set made with another world than demo with "
                    f"{overrides}; choose an empty --data-dir"
                )
        return True
    _say(f"no data set in {data_dir}: generating world data (preset demo, seed 0) first")
    args = argparse.Namespace(
        preset="demo", seed=0, data_dir=str(data_dir), no_version=True, world=world
    )
    return cmd_generate(args) == 0


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.name == "simulator":
        return _simulator_experiment(args)
    if args.name == "calibration":
        return _calibration_experiment(args)
    from dataclasses import replace

    from components.experiments import (
        ExperimentConfig,
        parse_methods,
        run_experiment,
        write_results,
    )

    config = ExperimentConfig(
        methods=tuple(parse_methods(args.methods)), seeds=tuple(range(args.seeds))
    )
    if args.agent_epochs:
        config = replace(config, agents=replace(config.agents, epochs=args.agent_epochs))
    if args.agent_temperature is not None:
        config = replace(config, agents=replace(config.agents, temperature=args.agent_temperature))
    if args.critic is not None:
        config = replace(config, agents=replace(config.agents, critic=args.critic))
    if args.mc_weight is not None:
        config = replace(config, agents=replace(config.agents, mc_weight=args.mc_weight))
    if args.session_credit is not None:
        config = replace(config, agents=replace(config.agents, session_credit=args.session_credit))
    if args.ranker_temperature is not None:
        config = replace(config, ranker=replace(config.ranker, temperature=args.ranker_temperature))
    data_dir = Path(args.data_dir)
    if not _ensure_world_data(data_dir, args.world):
        return 1
    command = "relayrec experiment mmrf " + " ".join(args.argv_rest)
    _say(f"MMRF experiment: {len(config.methods)} methods × {args.seeds} seed(s) on {data_dir}")
    t0 = time.perf_counter()
    long = run_experiment(data_dir, config, progress=_say)
    from components.io import read_meta

    meta = read_meta(data_dir)
    source = f"{meta.source} ({meta.preset or ''}, seed {meta.seed})"
    paths = write_results(long, args.out, command.strip(), source)
    _say(
        f"done in {time.perf_counter() - t0:.0f} s: {paths['md']} ({paths['csv']}, {paths['png']})"
    )
    return 0


def _kuairand_logs(kuairand_dir: str | None) -> tuple[Path | None, tuple[Path, ...]]:
    """``(directory, interaction logs)`` of real KuaiRand data: ``kuairand_dir`` when given
    (a directory without KuaiRand files is a ``DataError``), else the one found next to the
    repository (``find_kuairand_dir``), else ``(None, ())``."""
    from components.io import DataError
    from components.kuairand import find_kuairand_files
    from components.world.config import find_kuairand_dir

    if kuairand_dir:
        return Path(kuairand_dir), find_kuairand_files(kuairand_dir).logs
    found = find_kuairand_dir()
    if found is None:
        return None, ()
    try:
        return found, find_kuairand_files(found).logs
    except DataError:
        return None, ()


def _simulator_experiment(args: argparse.Namespace) -> int:
    """World data (generated if missing) and, when present, the real KuaiRand log."""
    import tempfile

    from components.experiments import render_simulator_markdown, simulator_report
    from components.kuairand import import_kuairand

    kdir, logs = _kuairand_logs(args.kuairand_dir)
    data_dir = Path(args.data_dir)
    if not _ensure_world_data(data_dir):
        return 1
    reports = {"world": simulator_report(data_dir)}
    _say(f"world: held-out click AUC {reports['world']['auc']['is_click']:.4f}")
    if kdir is not None and logs:
        with tempfile.TemporaryDirectory() as tmp:
            import_kuairand(kdir, tmp)
            reports["KuaiRand"] = simulator_report(tmp)
        _say(f"KuaiRand: held-out click AUC {reports['KuaiRand']['auc']['is_click']:.4f}")
    else:
        _say("no KuaiRand log found: world data only")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "relayrec experiment simulator " + " ".join(args.argv_rest)
    (out / "simulator.md").write_text(render_simulator_markdown(reports, command.strip()))
    _say(f"written {out / 'simulator.md'}")
    return 0


def _calibration_experiment(args: argparse.Namespace) -> int:
    """Play time against video length under random exposure: the KuaiRand log (when
    present), the demo world (seed 0) and, with ``--world``, the demo world so changed."""
    from components.world import WorldConfig
    from components.world.calibration import (
        PlayByDuration,
        kuairand_random_log,
        play_by_duration,
        random_slice,
        render_calibration_markdown,
    )
    from components.world.dataset import generate_dataset

    results: dict[str, PlayByDuration] = {}
    _, logs = _kuairand_logs(args.kuairand_dir)
    if logs:
        log = kuairand_random_log([str(p) for p in logs])
        results["KuaiRand (random exposure)"] = play_by_duration(
            log["play_time_ms"].to_numpy(), log["duration_ms"].to_numpy()
        )
    else:
        _say("no KuaiRand log found: world data only")
    overrides = _world_overrides(args.world)
    worlds: dict[str, dict[str, str]] = {"world (demo)": {}}
    if overrides:
        changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
        worlds[f"world (demo, {changed})"] = overrides
    for name, changes in worlds.items():
        config = WorldConfig.from_preset("demo").with_overrides(changes)
        _say(f"generating {name} (seed 0) ...")
        tables, _ = generate_dataset(config=config, seed=0)
        imp = random_slice(tables["requests"], tables["impressions"])
        results[f"{name}, random slice"] = play_by_duration(
            imp["play_time_ms"].to_numpy(), imp["duration_ms"].to_numpy()
        )
    for name, r in results.items():
        _say(f"{name}: duration elasticity {r.elasticity:.2f}, mean play {r.mean_play_s:.1f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = ("relayrec experiment calibration " + " ".join(args.argv_rest)).strip()
    (out / "calibration.md").write_text(render_calibration_markdown(results, command))
    _say(f"written {out / 'calibration.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayrec", description=__doc__.split("\n\n")[0])
    nouns = parser.add_subparsers(dest="noun", required=True)
    data = nouns.add_parser("data", help="data sets: generate, import, validate, groups")
    verbs = data.add_subparsers(dest="verb", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default="data", help="data set directory (default: data)")

    g = verbs.add_parser("generate", help="simulate the world and write its logs")
    common(g)
    g.add_argument("--preset", default="demo", choices=["tiny", "demo", "large"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-version", action="store_true", help="do not record a DVC version")
    g.add_argument(
        "--world",
        action="append",
        metavar="KEY=VALUE",
        help="change a world parameter of the preset, e.g. funnel.rank_noise=1.0 (repeatable; "
        "components/world/config.py lists them)",
    )
    g.set_defaults(func=cmd_generate)

    k = verbs.add_parser("import-kuairand", help="turn KuaiRand files into the contract tables")
    k.add_argument("src", help="directory with KuaiRand csv files")
    common(k)
    k.add_argument(
        "--join-user-features",
        action="store_true",
        help="join user features on user_id (only if the log's ids match the feature file's)",
    )
    k.add_argument("--no-version", action="store_true", help="do not record a DVC version")
    k.set_defaults(func=cmd_import)

    v = verbs.add_parser("validate", help="validate the data set with Great Expectations")
    common(v)
    v.add_argument("--out", default="artifacts/validation")
    v.set_defaults(func=cmd_validate)

    gr = verbs.add_parser("groups", help="reassign users to live-watching groups")
    common(gr)
    gr.add_argument("--n-groups", type=int, default=4)
    gr.add_argument("--out", default="artifacts/groups")
    gr.set_defaults(func=cmd_groups)

    p = verbs.add_parser("pipeline", help="load → version → validate → groups as a Prefect flow")
    p.add_argument(
        "--source",
        default="world",
        choices=["world", "kuairand", "existing"],
        help="world: generate; kuairand: import --kuairand-dir; existing: the data set in data/",
    )
    p.add_argument("--preset", default="demo", choices=["tiny", "demo", "large"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kuairand-dir", default=None)
    p.add_argument("--n-groups", type=int, default=4)
    p.set_defaults(func=cmd_pipeline)

    r = nouns.add_parser("retrain", help="the retraining flow: data → train → gate → promote")
    r.add_argument("--params", default="params.yaml")
    r.set_defaults(func=cmd_retrain)
    pr = nouns.add_parser("promote", help="make a registered model the champion")
    pr.add_argument("tag")
    pr.add_argument("--why", required=True)
    pr.set_defaults(func=cmd_promote)
    rb = nouns.add_parser("rollback", help="point back to the previous champion")
    rb.add_argument("--why", required=True)
    rb.set_defaults(func=cmd_rollback)
    h = nouns.add_parser("history", help="show the promotion log")
    h.set_defaults(func=cmd_history)
    sv = nouns.add_parser("serve", help="serve the champion over HTTP (bentoml serve)")
    sv.add_argument("--port", type=int, default=3000)
    sv.set_defaults(func=cmd_serve)
    sc = nouns.add_parser("schedule", help="serve the retraining flow on a schedule")
    sc.add_argument("--cron", default=None, help='cron string, e.g. "0 3 * * *"')
    sc.add_argument("--interval", type=int, default=None, help="seconds between runs")
    sc.add_argument("--params", default="params.yaml")
    sc.add_argument("--name", default="scheduled")
    sc.set_defaults(func=cmd_schedule)
    ex = nouns.add_parser("experiment", help="research experiments (mmrf: every ranking method)")
    ex.add_argument("name", choices=["mmrf", "simulator", "calibration"])
    ex.add_argument(
        "--kuairand-dir", default=None, help="simulator, calibration: KuaiRand files (auto)"
    )
    ex.add_argument("--seeds", type=int, default=3, help="training/rollout seeds 0..N-1")
    ex.add_argument("--data-dir", default="data")
    ex.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    ex.add_argument("--agent-epochs", type=int, default=None, help="epochs per round (agents)")
    ex.add_argument(
        "--ranker-temperature",
        type=float,
        default=None,
        help="mmrf: Plackett–Luce temperature of bc, wide_deep, deepfm (seconds; default 10)",
    )
    ex.add_argument(
        "--agent-temperature",
        type=float,
        default=None,
        help="mmrf: Plackett–Luce temperature of the agents' WatchTime scores (default 0.1)",
    )
    ex.add_argument(
        "--critic",
        choices=("split", "joint"),
        default=None,
        help="mmrf: the agents' critic, immediate reward and continuation regressed apart "
        "(split) or together (joint); default: AgentsConfig's",
    )
    ex.add_argument(
        "--mc-weight",
        type=float,
        default=None,
        metavar="ETA",
        help="mmrf: share of the Monte-Carlo return in the critics' continuation target "
        "(the rest is the target critic's value; default 0.5)",
    )
    ex.add_argument(
        "--session-credit",
        type=float,
        default=None,
        metavar="LAMBDA",
        help="mmrf: weight of the per-item session credit in the agents' WatchTime reward "
        "(what an item's feedback buys of the rest of the session; default 0, off)",
    )
    ex.add_argument("--out", default="docs/results")
    ex.add_argument(
        "--world",
        action="append",
        metavar="KEY=VALUE",
        help="mmrf: generate the demo world with this parameter changed (into an empty "
        "--data-dir; repeatable); calibration: also measure the demo world so changed",
    )
    ex.set_defaults(func=cmd_experiment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    args.argv_rest = list(argv if argv is not None else sys.argv[1:])[2:]
    from components.io import DataError
    from components.registry import RegistryError

    try:
        return int(args.func(args))
    except (DataError, ValueError, FileNotFoundError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
