"""Data-plane throughput: world generation and Great Expectations validation.

    python bench/bench_data.py [--preset large] [--seed 0]

Prints rows/s for generation (simulation + shaping + Parquet write) and for validation
(all suites + Data Docs), counted over all tables and over impressions alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

for key, value in {"GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(key, value)

from components.io import write_dataset  # noqa: E402
from components.validation import validate_dataset  # noqa: E402
from components.world import generate_dataset  # noqa: E402


def _rates(rows: int, impressions: int, seconds: float) -> None:
    per_s = f"{rows / seconds:>12,.0f} rows/s  {impressions / seconds:>10,.0f} impressions/s"
    print(f"          {per_s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="large")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        t0 = time.perf_counter()
        tables, meta = generate_dataset(args.preset, seed=args.seed)
        t1 = time.perf_counter()
        write_dataset(tables, meta, data_dir)
        t2 = time.perf_counter()
        rows = sum(len(df) for df in tables.values())
        imps = len(tables["impressions"])
        print(f"preset {args.preset}: {rows:,} rows in all, {imps:,} impressions")
        print(f"generate: {t2 - t0:8.1f} s  (simulate {t1 - t0:.1f} s, write {t2 - t1:.1f} s)")
        _rates(rows, imps, t2 - t0)
        del tables
        t3 = time.perf_counter()
        report = validate_dataset(data_dir, out_dir=Path(tmp) / "validation")
        t4 = time.perf_counter()
        assert report.success, report.format_failures()
        print(f"validate: {t4 - t3:8.1f} s  ({report.n_expectations} expectations, passed)")
        _rates(rows, imps, t4 - t3)
        print(f"validation / generation time: {(t4 - t3) / (t2 - t0):.2f}")


if __name__ == "__main__":
    main()
