"""The on-disk cache behind `mirasc.compile`: keyed by the spec's bytes and the compiler's own
sources, written atomically, imported under a unique module name. A hit imports no compiler."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from .. import __version__
from ..codegen.template_dir import template_dir
from ..frontend.source import read_spec


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
    """mirasc's version plus a hash of every source, grammar, prelude and template it compiles
    with (names included), so a cached package is never reused across compiler changes."""
    h = hashlib.sha256(__version__.encode())
    templates = template_dir()
    package = Path(__file__).resolve().parents[1]
    files = [p for pattern in ("*.py", "*.lark", "*.miras") for p in package.rglob(pattern)]
    for root, paths in ((package, files), (templates, list(templates.rglob("*.j2")))):
        for p in sorted(paths):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.digest()


def compile_cached(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """`mirasc.compile`: reuse the package cached for this spec text and compiler.

    A hit costs a hash and an import: the spec is not even parsed again."""
    data, name = read_spec(path)
    key = hashlib.sha256(data + b"\0" + compiler_fingerprint()).hexdigest()[:20]
    entry = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / key
    hits = sorted(entry.glob("*/__init__.py")) if entry.is_dir() else []
    if hits:
        directory = hits[0].parent
    else:
        from .package import write_package
        from .pipeline import build

        result = build(data, name)
        directory = entry / result.spec.module_name
        write_package(result.files, directory)
    return import_package(directory, f"_mirasc_{directory.name}_{key}")
