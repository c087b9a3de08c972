"""README's two opening commands are the ones that are kept true: CI runs the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The command lines of README's first code block (comments left out)."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_readme_test_command():
    main_job, tests = readme_commands()
    assert "mirasc train" in main_job
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == tests
