"""The pipeline in one place: spec file -> Spec -> Derived -> files on disk."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .cache import read_spec
from .checker import load
from .render import render
from .spec import Spec
from .symbolic import derive


def build(data: bytes | str, file: str = "<spec>") -> tuple[Spec, dict[str, str]]:
    """Spec text to (checked spec, {file name: generated text})."""
    spec = load(data, file)
    text = data if isinstance(data, str) else data.decode("utf-8")
    return spec, render(spec, derive(spec), text)


def write_package(files: dict[str, str], directory: Path) -> None:
    """Write a package atomically: a complete temporary folder renamed into place."""
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


def compile_to(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Compile one spec file into `out_dir/<module_name>/`; returns the package folder."""
    data, name = read_spec(path)
    spec, files = build(data, name)
    target = Path(out_dir) / spec.module_name
    write_package(files, target)
    return target
