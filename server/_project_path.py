"""How dispatch resolves a requested project path: ``os.path.realpath``, so a symlink
inside an allowed root that points outside it is seen for where it leads.

``resolve_policy`` compares the resolved path with the profile's roots (each resolved
the same way) and refuses with ``PolicyDenied`` naming the roots; the signed Policy
carries the resolved path, which the runner checks again before mounting it.
"""

from __future__ import annotations

import os

__all__ = ["project_realpath"]


def project_realpath(path: str) -> str:
    """``path`` with every symlink resolved (components that do not exist are kept)."""
    return os.path.realpath(path)
