"""Shared test set-up: no telemetry, no network, everything under a temporary directory."""

from __future__ import annotations

import os
import tempfile

from flows.cli import TELEMETRY_OFF

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)

# One BentoML store for the whole test session, never the user's: BentoML fixes its home the
# first time it is used in a process, so a per-test BENTOML_HOME would not take effect (and
# would mislead the subprocesses — builds, servers — that read it).
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="relayrec-test-bentoml-")
