"""Spec + Derived + Plan to files: the Jinja rendering of a generated package.

Each template reads `spec` (the checked IR), `package` (package-wide texts and names) and
`memory` (the memory's shape); the torch templates add `torch_code`, the Triton template
`kernel`. Every value a template prints passes `safety.safe_value`, so spec text never reaches
generated code unchecked.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2

from ..derivation.plan import Plan
from ..derivation.symbolic import Derived
from ..ir.spec import Spec
from .package_context import memory_shape, package_context
from .safety import safe_value, verbatim
from .template_dir import template_dir
from .torch_context import torch_context
from .triton_context import triton_context

TORCH_FILES = {"elementwise.py": "elementwise.py.j2", "torch_backend.py": "torch_backend.py.j2"}
PACKAGE_FILES = {"__init__.py": "init.py.j2", "ops.py": "ops.py.j2", "layer.py": "layer.py.j2"}
TRITON_FILES = {"triton_backend.py": "triton_backend.py.j2"}
FILES = {**PACKAGE_FILES, **TORCH_FILES, **TRITON_FILES}  # generated file -> template


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=safe_value,
    )
    env.globals["verbatim"] = verbatim
    return env


def render(spec: Spec, derived: Derived, plan: Plan, source_text: str) -> dict[str, str]:
    """The generated package as {file name: text}."""
    env = environment()
    shared = dict(
        spec=spec, package=package_context(spec, derived, source_text), memory=memory_shape(spec)
    )
    by_target = (
        (PACKAGE_FILES, {}),
        (TORCH_FILES, {"torch_code": torch_context(spec, derived, plan)}),
        (TRITON_FILES, {"kernel": triton_context(spec, derived, plan, source_text)}),
    )
    extra = {out: target for files, target in by_target for out in files}
    return {
        out: env.get_template(template).render(**shared, **extra[out])
        for out, template in FILES.items()
    }
