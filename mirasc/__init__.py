"""mirasc: compile a declarative test-time memory spec (.miras) into PyTorch (and GPU) layers.

`import mirasc` is cheap: the compiler (lark, sympy, jinja2) and torch load only when used.
"""

__version__ = "0.1.0"

from .errors import MirascError


def compile(path, *, cache_dir=None):  # noqa: A001 - the name users expect
    """Compile a spec file (cached on disk) and return the imported generated module."""
    from .compiler.cache import compile_cached

    return compile_cached(path, cache_dir=cache_dir)


__all__ = ["MirascError", "__version__", "compile"]
