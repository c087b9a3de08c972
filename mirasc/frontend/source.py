"""Reading a spec file: its bytes and the name its errors are reported under."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MirascError


def read_spec(path: str | os.PathLike) -> tuple[bytes, str]:
    """A spec file's bytes and its name for error messages."""
    p = Path(path)
    try:
        return p.read_bytes(), p.name
    except OSError as e:
        raise MirascError(f"cannot read {path}: {e.strerror or e}") from None
