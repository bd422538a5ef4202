"""Console tests: the real stack on real ports (see tests/metrics/stack_kit.py)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_TESTS / "server"))  # server_kit
sys.path.insert(0, str(_TESTS / "metrics"))  # stack_kit
