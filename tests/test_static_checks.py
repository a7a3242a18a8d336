"""Static checks (ruff on the tree, mypy on the core) as part of the test suite, so
`python3 -m pytest` (the README's test command, and CI's) lints the code the same way on every
machine. The rule set is in pyproject.toml
([tool.ruff]); it is kept to findings that are bugs or dead code, so a failure here is worth
fixing rather than silencing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                             "--output-format", "concise", str(ROOT)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_on_the_core():
    """The core's types as configured in pyproject.toml ([tool.mypy] names the files)."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental",
                             "--config-file", str(ROOT / "pyproject.toml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
