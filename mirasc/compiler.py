"""The pipeline in one place: spec file -> Spec -> Derived -> files, and the on-disk cache
behind `mirasc.compile`."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .checker import load
from .errors import MirascError
from .render import render
from .spec import Spec
from .symbolic import derive


def read_spec(path: str | os.PathLike) -> tuple[bytes, str]:
    p = Path(path)
    try:
        return p.read_bytes(), p.name
    except OSError as e:
        raise MirascError(f"cannot read {path}: {e.strerror or e}") from None


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


def default_cache_dir() -> Path:
    base = os.environ.get("MIRASC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mirasc"
    )
    return Path(base)


def import_package(directory: Path, module_name: str):
    """Import a generated package from its folder under a unique module name."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def compiler_fingerprint() -> bytes:
    """mirasc's version plus a hash of its own sources and templates, so a cached package is
    never reused across compiler changes (even unreleased ones)."""
    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent
    for p in sorted(root.glob("*.py")) + sorted(root.glob("*.lark")) + sorted(root.glob("*.miras")):
        h.update(p.read_bytes())
    for p in sorted((root / "templates").glob("*.j2")):
        h.update(p.read_bytes())
    return h.digest()


def compile_cached(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """`mirasc.compile`: reuse the package cached for this spec text and compiler."""
    data, name = read_spec(path)
    key = hashlib.sha256(data + b"\0" + compiler_fingerprint()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    spec = load(data, name)
    directory = root / f"{spec.module_name}_{key}"
    if not (directory / "__init__.py").exists():
        _, files = build(data, name)
        write_package(files, directory)
    return import_package(directory, f"_mirasc_{spec.module_name}_{key}")
