"""Metrics tests: the real server over HTTP (``run_server``) and a real bwrap runner with the
scripted model, both exporting ``/metrics``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))  # server_kit
