"""Where the Jinja templates are: `templates/` at the top of a source checkout, shipped inside the
package (`mirasc/templates/`) by a wheel. Light on purpose: the compile cache's fingerprint reads it
without importing the compiler."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def template_dir() -> Path:
    """The folder holding the `*.j2` templates."""
    for candidate in (PACKAGE / "templates", PACKAGE.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mirasc's templates are missing (looked in {PACKAGE} and beside it)")
