"""Shared test set-up: no telemetry, no network, everything under a temporary directory."""

from __future__ import annotations

import os

from flows.cli import TELEMETRY_OFF

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)
