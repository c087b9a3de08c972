"""Writing a generated package to disk atomically: a complete temporary folder renamed into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_package(files: dict[str, str], directory: Path) -> None:
    """Write {file name: text} as the package folder `directory`, replacing any older one."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    for name, text in files.items():
        (tmp / name).write_text(text, encoding="utf-8")
    try:
        os.replace(tmp, directory)
    except OSError:  # target exists (not empty): swap it out
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
        with contextlib.suppress(FileNotFoundError):
            os.replace(directory, old / "pkg")
        try:
            os.replace(tmp, directory)
        except OSError:  # another process won the race with identical content
            _remove(tmp)
        _remove(old)


def _remove(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()
