"""scripts/lint with the project's own pyproject.toml, run on a small tree of packages named
like taskbus's: a layer or privacy violation, an uncovered package and an ignore without a
reason each fail the run and name the gate; a clean tree passes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of scripts/lint and pyproject.toml over six tiny packages that keep every contract."""
    if not (VENV / "bin" / "lint-imports").exists():
        pytest.fail(f"{VENV}/bin/lint-imports is missing: run scripts/setup python")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "lint", tmp_path / "scripts" / "lint")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / ".venv").symlink_to(VENV)
    files = {
        "bus/__init__.py": "from ._codec import encode as encode\n",
        "bus/_codec.py": "def encode(x: int) -> int:\n    return x\n",
        "profiles/__init__.py": "from bus import encode as encode\n",
        "audit/__init__.py": "from bus import encode as encode\n",
        "sandbox/__init__.py": "from ._tools import find as find\n",
        "sandbox/_tools.py": "from bus import encode\n\n\ndef find() -> int:\n    return encode(1)\n",
        "server/__init__.py": "from ._cli import main as main\n",
        "cli/__init__.py": "from server import main as main\n",
        "server/_cli.py": "from sandbox import find\n\n\ndef main() -> int:\n    return find()\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    return tmp_path


def lint(tree: Path, *gates: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The tree's packages come first on the path, before the installed taskbus ones.
    environ = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1", **env}
    return subprocess.run([str(tree / "scripts" / "lint"), *gates], cwd=tree, env=environ, capture_output=True, text=True, timeout=300)


def test_lint_passes_a_tree_that_keeps_the_contracts(tree: Path) -> None:
    done = lint(tree, "packages", "imports", "reasons", TASKBUS_LINT_MYPY="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed: packages imports reasons" in done.stderr


@pytest.mark.parametrize(
    ("path", "text", "reported"),
    [
        pytest.param("server/_cli.py", "from sandbox._tools import find\n", "server._cli -> sandbox._tools", id="private-module"),
        pytest.param("bus/_x.py", "import profiles\n", "bus._x -> profiles", id="lower-imports-higher"),
        pytest.param("profiles/_policy.py", "import sandbox\n", "profiles._policy -> sandbox", id="siblings"),
    ],
)
def test_lint_fails_on_an_import_that_breaks_a_contract(tree: Path, path: str, text: str, reported: str) -> None:
    (tree / path).write_text(text)
    done = lint(tree, "imports")
    assert done.returncode == 1
    assert reported in done.stdout
    assert "gate 'imports' failed" in done.stderr


def test_lint_fails_on_a_top_level_package_the_checks_do_not_cover(tree: Path) -> None:
    (tree / "relay").mkdir()
    (tree / "relay" / "__init__.py").write_text("")
    done = lint(tree, "packages")
    assert done.returncode == 1
    assert "[tool.importlinter] root_packages lacks relay" in done.stderr
    assert "[tool.mypy] packages lacks relay" in done.stderr
    assert "[tool.setuptools] packages.find.include lacks relay" in done.stderr


def test_lint_fails_on_an_ignore_without_a_reason_and_ci_cannot_switch_it_off(tree: Path) -> None:
    (tree / "bus" / "_codec.py").write_text("def encode(x: int) -> int:\n    return x  # type: ignore[return-value]\n")
    assert lint(tree, "reasons", CI="").returncode == 1  # enforced by default
    assert lint(tree, "reasons", TASKBUS_LINT_MYPY="0", CI="true").returncode == 1  # CI always enforces
    advisory = lint(tree, "reasons", TASKBUS_LINT_MYPY="0", CI="")
    assert advisory.returncode == 0
    assert "bus/_codec.py:2:" in advisory.stderr
    (tree / "bus" / "_codec.py").write_text("def encode(x: int) -> int:\n    return x  # type: ignore[return-value]  # why\n")
    assert lint(tree, "reasons", TASKBUS_LINT_MYPY="1").returncode == 0
